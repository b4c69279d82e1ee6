//! N loopback HTTP endpoints for the health-check benchmark (issue 4): records when each
//! request arrives, per endpoint, and reports how far the probes are from their schedule.
//!
//! usage: probe_endpoints N PORTS_FILE [INTERVAL_MS=1000]
//!
//! Binds N listeners on 127.0.0.1 (ephemeral ports, so nothing else on the machine collides),
//! writes their ports to PORTS_FILE (one a line, written whole), then answers every request
//! (`GET …` without a body) with `200 ok`, keep-alive. One thread (a current-thread runtime), so
//! the endpoints take as little of the 2 cores as possible. Needs `ulimit -n` > 2 N + 20.
//!
//! SIGUSR1 starts the measured window (earlier requests are forgotten); SIGUSR2 ends it, prints
//! the figures and exits. Per endpoint, with the requests sorted by arrival (monotonic clock):
//! - `interval_drift`: |arrival − previous arrival − INTERVAL| (the issue's "actual vs intended
//!   interval");
//! - `lateness`: arrival − (first arrival + k·INTERVAL) − the endpoint's smallest such offset,
//!   k = the nearest whole number of intervals, i.e. how late each probe is against the best
//!   fitting fixed schedule (does not double-count one late probe as two bad intervals).
//!
//! Output: `key value` lines (ms with 3 decimals), as bench/run.sh expects.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n";

type Records = Arc<Mutex<Vec<(u32, Instant)>>>;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = || anyhow::anyhow!("usage: probe_endpoints N PORTS_FILE [INTERVAL_MS]");
    let n: usize = args.get(1).ok_or_else(usage)?.parse()?;
    let ports_file = args.get(2).ok_or_else(usage)?.clone();
    let interval_ms: f64 = args.get(3).map_or(Ok(1000.0), |s| s.parse())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(n, ports_file, interval_ms))
}

async fn run(n: usize, ports_file: String, interval_ms: f64) -> anyhow::Result<()> {
    let records: Records = Arc::new(Mutex::new(Vec::with_capacity(n * 200)));
    let mut ports = String::new();
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..n {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        ports.push_str(&format!("{}\n", l.local_addr()?.port()));
        listeners.push(l);
    }
    let tmp = format!("{ports_file}.tmp");
    std::fs::write(&tmp, ports)?;
    std::fs::rename(&tmp, &ports_file)?;
    for (i, l) in listeners.into_iter().enumerate() {
        tokio::spawn(accept(l, i as u32, records.clone()));
    }
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    usr1.recv().await;
    let (start, cpu0) = (Instant::now(), cpu_ms());
    records
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clear();
    usr2.recv().await;
    let (secs, cpu) = (start.elapsed().as_secs_f64(), cpu_ms() - cpu0);
    let recs = std::mem::take(&mut *records.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    report(n, &recs, interval_ms, secs, cpu);
    Ok(())
}

async fn accept(l: TcpListener, idx: u32, records: Records) {
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let records = records.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            // Position in "\r\n\r\n" matched so far, carried across reads.
            let mut matched = 0usize;
            loop {
                let got = match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => k,
                };
                let now = Instant::now();
                let mut complete = 0;
                for &b in &buf[..got] {
                    let want = b"\r\n\r\n"[matched];
                    matched = if b == want {
                        matched + 1
                    } else if b == b'\r' {
                        1
                    } else {
                        0
                    };
                    if matched == 4 {
                        complete += 1;
                        matched = 0;
                    }
                }
                if complete > 0 {
                    if let Ok(mut r) = records.lock() {
                        for _ in 0..complete {
                            r.push((idx, now));
                        }
                    }
                    for _ in 0..complete {
                        if s.write_all(RESPONSE).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

fn cpu_ms() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 * 1e3 + v.tv_usec as f64 / 1e3;
    t(u.ru_utime) + t(u.ru_stime)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(n: usize, recs: &[(u32, Instant)], interval_ms: f64, secs: f64, cpu: f64) {
    let mut by: Vec<Vec<Instant>> = vec![Vec::new(); n];
    for &(i, t) in recs {
        by[i as usize].push(t);
    }
    let (mut drift, mut late) = (Vec::new(), Vec::new());
    let (mut missed, mut silent, mut min_signed, mut max_signed) = (0usize, 0usize, 0f64, 0f64);
    for ts in &mut by {
        ts.sort();
        if ts.is_empty() {
            silent += 1;
            continue;
        }
        for w in ts.windows(2) {
            let d = (w[1] - w[0]).as_secs_f64() * 1e3 - interval_ms;
            if d > interval_ms / 2.0 {
                missed += 1;
            }
            min_signed = min_signed.min(d);
            max_signed = max_signed.max(d);
            drift.push(d.abs());
        }
        let t0 = ts[0];
        let offs: Vec<f64> = ts
            .iter()
            .map(|t| {
                let e = (*t - t0).as_secs_f64() * 1e3;
                e - (e / interval_ms).round() * interval_ms
            })
            .collect();
        let min = offs.iter().cloned().fold(f64::INFINITY, f64::min);
        late.extend(offs.iter().map(|o| o - min));
    }
    drift.sort_by(f64::total_cmp);
    late.sort_by(f64::total_cmp);
    println!("endpoints {n}");
    println!("window_s {secs:.1}");
    println!("requests {}", recs.len());
    println!("requests_per_s {:.1}", recs.len() as f64 / secs);
    println!("endpoints_without_requests {silent}");
    println!("intervals {}", drift.len());
    println!("intervals_over_1.5x {missed}");
    for (name, v) in [("interval_drift", &drift), ("lateness", &late)] {
        for p in [50.0, 90.0, 99.0, 99.9] {
            println!("{name}_p{p}_ms {:.3}", pct(v, p));
        }
        println!("{name}_max_ms {:.3}", v.last().copied().unwrap_or(f64::NAN));
    }
    println!("interval_signed_min_ms {min_signed:.3}");
    println!("interval_signed_max_ms {max_signed:.3}");
    println!("endpoint_server_cpu_ms {cpu:.0}");
}
