//! Socket load benchmark: C concurrent clients, each on its own connection, issue `status`
//! back to back for D seconds; prints requests/s and latency percentiles.
//!
//! usage: socket_load SOCKET [CLIENTS=16] [SECONDS=5] [WARMUP_SECONDS=1]
//!
//! Run by `bench/run.sh socket`. Each request is one `Client::call(Status)` (write the line, read
//! the response, parse it), i.e. what orchctl does minus process start-up.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use orch::api::client::Client;
use orch::api::proto::Command;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let socket = PathBuf::from(args.get(1).ok_or_else(|| {
        anyhow::anyhow!("usage: socket_load SOCKET [CLIENTS] [SECONDS] [WARMUP_SECONDS]")
    })?);
    let clients: usize = args.get(2).map_or(Ok(16), |s| s.parse())?;
    let secs: f64 = args.get(3).map_or(Ok(5.0), |s| s.parse())?;
    let warmup: f64 = args.get(4).map_or(Ok(1.0), |s| s.parse())?;
    // A single-threaded client runtime: the load generator should take as little of the two
    // cores as it can, leaving the rest to orchd.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(socket, clients, secs, warmup))
}

async fn run(socket: PathBuf, clients: usize, secs: f64, warmup: f64) -> anyhow::Result<()> {
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let socket = socket.clone();
        tasks.spawn(async move {
            let mut client = Client::connect(&socket).await?;
            let mut lat = Vec::with_capacity(100_000);
            let mut errors = 0u64;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                let r = client.call(Command::Status { services: vec![] }).await?;
                let done = Instant::now();
                if t >= measure_from {
                    if r.error.is_some() {
                        errors += 1;
                    }
                    lat.push(done.duration_since(t));
                }
            }
            anyhow::Ok((lat, errors))
        });
    }
    let mut all = Vec::new();
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        let (lat, e) = r??;
        all.extend(lat);
        errors += e;
    }
    all.sort();
    let pct = |p: f64| {
        let i = ((all.len() as f64 - 1.0) * p).round() as usize;
        all.get(i).copied().unwrap_or_default().as_secs_f64() * 1e3
    };
    println!("clients {clients}");
    println!("seconds {secs}");
    println!("requests {}", all.len());
    println!("errors {errors}");
    println!("rps {:.0}", all.len() as f64 / secs);
    println!("p50_ms {:.3}", pct(0.50));
    println!("p90_ms {:.3}", pct(0.90));
    println!("p99_ms {:.3}", pct(0.99));
    println!("max_ms {:.3}", pct(1.0));
    Ok(())
}
