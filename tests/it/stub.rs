//! A real HTTP server for health-check tests, on 127.0.0.1, told what to answer.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What the stub answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// 200 with body "ok".
    Ok = 0,
    /// 500.
    Error = 1,
    /// Accepts and never answers (until the mode changes or 30 s pass).
    Hang = 2,
    /// 200 with body "something else".
    WrongBody = 3,
}

pub struct HttpStub {
    pub port: u16,
    mode: Arc<AtomicU8>,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl HttpStub {
    pub fn start(mode: Mode) -> HttpStub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind stub");
        let port = listener.local_addr().unwrap().port();
        let stub = HttpStub {
            port,
            mode: Arc::new(AtomicU8::new(mode as u8)),
            hits: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (m, h, s) = (stub.mode.clone(), stub.hits.clone(), stub.stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (m, h) = (m.clone(), h.clone());
                std::thread::spawn(move || serve(conn, &m, &h));
            }
        });
        stub
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/health", self.port)
    }
}

impl Drop for HttpStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(conn: TcpStream, mode: &AtomicU8, hits: &AtomicUsize) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
        }
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let mut conn = conn;
    let started = Instant::now();
    let respond = |conn: &mut TcpStream, status: &str, body: &str| {
        let _ = write!(
            conn,
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    };
    loop {
        match mode.load(Ordering::SeqCst) {
            0 => return respond(&mut conn, "200 OK", "ok"),
            1 => return respond(&mut conn, "500 Internal Server Error", "boom"),
            3 => return respond(&mut conn, "200 OK", "something else"),
            _ if started.elapsed() > Duration::from_secs(30) => return,
            // Hang: the probe's own timeout must end this, not the stub.
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// An HTTPS server on 127.0.0.1 with a self-signed certificate (rcgen, rustls): answers every
/// request `200 ok` and closes the connection.
pub struct TlsStub {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl TlsStub {
    pub fn start() -> TlsStub {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
            .expect("self-signed certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![key.cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der())),
            )
            .expect("TLS server config");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind TLS stub");
        let stub = TlsStub {
            port: listener.local_addr().unwrap().port(),
            stop: Arc::default(),
        };
        let stop = stub.stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let config = config.clone();
                std::thread::spawn(move || {
                    let Ok(tls) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    let mut s = rustls::StreamOwned::new(tls, conn);
                    let mut reader = BufReader::new(&mut s);
                    let mut line = String::new();
                    // The request head; a client that rejects the certificate ends here.
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line.trim().is_empty() => break,
                            Ok(_) => {}
                        }
                    }
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    );
                    s.conn.send_close_notify();
                    let _ = s.flush();
                });
            }
        });
        stub
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/health", self.port)
    }
}

impl Drop for TlsStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
