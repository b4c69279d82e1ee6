//! Real loopback receivers for alert tests: an HTTP webhook receiver (std threads, records
//! every request and answers from a script) and an SMTP server (aiosmtpd via
//! `tests/support/smtpd.py`, optionally with STARTTLS and AUTH), plus test certificates.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Hit {
    pub path: String,
    /// Lower-case names.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub at: SystemTime,
}

impl Hit {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// An HTTP server on 127.0.0.1 that records requests and answers the next scripted status
/// (200 once the script is empty).
pub struct Receiver {
    pub port: u16,
    hits: Arc<Mutex<Vec<Hit>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    pub fn start(script: &[u16]) -> Receiver {
        Self::on(
            TcpListener::bind("127.0.0.1:0").expect("bind receiver"),
            script,
        )
    }

    /// Listen on a given port (to come up where an earlier test left nothing listening).
    pub fn start_on(port: u16, script: &[u16]) -> Receiver {
        Self::on(
            TcpListener::bind(("127.0.0.1", port)).expect("bind receiver port"),
            script,
        )
    }

    fn on(listener: TcpListener, script: &[u16]) -> Receiver {
        let r = Receiver {
            port: listener.local_addr().unwrap().port(),
            hits: Arc::default(),
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
            stop: Arc::default(),
        };
        let (hits, script, stop) = (r.hits.clone(), r.script.clone(), r.stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (hits, script) = (hits.clone(), script.clone());
                std::thread::spawn(move || serve(conn, &hits, &script));
            }
        });
        r
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(conn: TcpStream, hits: &Mutex<Vec<Hit>>, script: &Mutex<VecDeque<u16>>) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut first = String::new();
    if reader.read_line(&mut first).unwrap_or(0) == 0 {
        return;
    }
    let path = first.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line.trim().is_empty() => break,
            Ok(_) => {
                if let Some((k, v)) = line.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
            }
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let at = SystemTime::now();
    let status = script.lock().unwrap().pop_front().unwrap_or(200);
    hits.lock().unwrap().push(Hit {
        path,
        headers,
        body,
        at,
    });
    let mut conn = conn;
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"
    );
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An aiosmtpd server writing each message into `dir`.
pub struct Smtp {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

/// STARTTLS certificate files and AUTH credentials for [`Smtp::start`].
pub struct Secure<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub user: &'a str,
    pub password: &'a str,
}

impl Smtp {
    pub fn start(dir: &Path, secure: Option<Secure<'_>>) -> Smtp {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/smtpd.py");
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(script)
            .arg("--port")
            .arg(port.to_string())
            .arg("--dir")
            .arg(dir);
        if let Some(s) = &secure {
            cmd.arg("--cert").arg(s.cert).arg("--key").arg(s.key);
            cmd.args(["--user", s.user, "--password", s.password]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect(
                "start /usr/bin/python3 tests/support/smtpd.py (apt-get install python3-aiosmtpd)",
            );
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "smtpd.py did not start");
        Smtp {
            port,
            dir: dir.to_owned(),
            child,
        }
    }

    /// Received messages, oldest first.
    pub fn mails(&self) -> Vec<String> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }

    pub fn wait_mails(&self, n: usize, timeout: Duration) -> Vec<String> {
        crate::util::wait_some(&format!("{n} mail(s)"), timeout, || {
            let m = self.mails();
            (m.len() >= n).then_some(m)
        })
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and a leaf for 127.0.0.1 (CA:FALSE, serverAuth): writes `ca.pem`, `cert.pem`,
/// `key.pem` into `dir`.
pub fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa};
    use rcgen::{Issuer, KeyPair, KeyUsagePurpose};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "orch test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, leaf_cert.pem()).unwrap();
    std::fs::write(&paths.2, leaf_key.serialize_pem()).unwrap();
    paths
}
