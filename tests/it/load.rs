//! A small load client for deploy tests: threads sending a continuous stream of HTTP/1.1
//! requests through the proxy, over keep-alive connections and over new connections, counting
//! every failure and recording which release answered.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One answered request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub at: Instant,
    pub release: String,
    /// Sent on a connection opened for it (true) or on a kept-alive one (false).
    pub fresh: bool,
}

#[derive(Debug, Default)]
pub struct Tally {
    pub answers: Vec<Answer>,
    pub failures: Vec<String>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn read_response(r: &mut BufReader<TcpStream>) -> Result<(u16, String), String> {
    let mut status = String::new();
    r.read_line(&mut status)
        .map_err(|e| format!("reading status: {e}"))?;
    if status.is_empty() {
        return Err("connection closed before the response".into());
    }
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(format!("bad status line {status:?}"))?;
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)
            .map_err(|e| format!("reading headers: {e}"))?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .map_err(|e| format!("reading body: {e}"))?;
    Ok((code, String::from_utf8_lossy(&body).trim().to_owned()))
}

fn record(tally: &Mutex<Tally>, r: Result<(u16, String), String>, fresh: bool) {
    let mut t = tally.lock().unwrap();
    match r {
        Ok((200, release)) => t.answers.push(Answer {
            at: Instant::now(),
            release,
            fresh,
        }),
        Ok((code, body)) => t.failures.push(format!("HTTP {code}: {body}")),
        Err(e) => t.failures.push(e),
    }
}

impl Load {
    /// Start `keepalive` threads on kept-alive connections and `fresh` threads opening a new
    /// connection per request, all against 127.0.0.1:`port`.
    pub fn start(port: u16, keepalive: usize, fresh: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let mut threads = Vec::new();
        for _ in 0..keepalive {
            let (stop, tally) = (stop.clone(), tally.clone());
            threads.push(std::thread::spawn(move || {
                let mut conn: Option<BufReader<TcpStream>> = None;
                while !stop.load(Ordering::SeqCst) {
                    let c = match conn.take() {
                        Some(c) => c,
                        None => match TcpStream::connect(("127.0.0.1", port)) {
                            Ok(s) => BufReader::new(s),
                            Err(e) => {
                                record(&tally, Err(format!("connect: {e}")), true);
                                continue;
                            }
                        },
                    };
                    let mut c = c;
                    let sent = c
                        .get_mut()
                        .write_all(b"GET / HTTP/1.1\r\nHost: load\r\n\r\n");
                    let r = sent
                        .map_err(|e| format!("writing: {e}"))
                        .and_then(|_| read_response(&mut c));
                    let ok = r.is_ok();
                    record(&tally, r, false);
                    if ok {
                        conn = Some(c);
                    }
                }
            }));
        }
        for _ in 0..fresh {
            let (stop, tally) = (stop.clone(), tally.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let r = TcpStream::connect(("127.0.0.1", port))
                        .map_err(|e| format!("connect: {e}"))
                        .and_then(|mut s| {
                            s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                            s.write_all(
                                b"GET / HTTP/1.1\r\nHost: load\r\nConnection: close\r\n\r\n",
                            )
                            .map_err(|e| format!("writing: {e}"))?;
                            read_response(&mut BufReader::new(s))
                        });
                    record(&tally, r, true);
                }
            }));
        }
        Load {
            stop,
            tally,
            threads,
        }
    }

    /// Answers so far.
    pub fn count(&self) -> usize {
        self.tally.lock().unwrap().answers.len()
    }

    /// Stop and return everything recorded.
    pub fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        std::mem::take(&mut *self.tally.lock().unwrap())
    }
}
