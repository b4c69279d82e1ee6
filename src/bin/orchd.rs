//! `orchd`: the supervisor daemon. Parses arguments, sets up logging, maps errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use clap::Parser;

/// Supervise services: restarts with backoff, health checks, alerts, zero-downtime deploys.
#[derive(Debug, Parser)]
#[command(name = "orchd", version = orch::VERSION)]
struct Args {
    /// Configuration file; relative paths inside it are relative to its directory.
    #[arg(
        long,
        short,
        value_name = "PATH",
        default_value = "/etc/orch/orchd.toml",
        env = "ORCHD_CONFIG"
    )]
    config: PathBuf,
    /// Validate the configuration and every unit, print each error as FILE:LINE:COL: message,
    /// and exit 0 (valid) or 2 (errors).
    #[arg(long)]
    check: bool,
    /// Print the orchd(8) man page (roff) and exit; used when packaging.
    #[arg(long, hide = true)]
    print_man: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_man {
        use clap::CommandFactory;
        return match orch::manpage::render(
            Args::command(),
            "8",
            orch::manpage::ORCHD_EXTRA,
            &mut std::io::stdout(),
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("orchd: {e}");
                ExitCode::from(1)
            }
        };
    }
    if args.check {
        return check(&args.config);
    }
    // Before any thread exists (the tokio runtime starts them): see its comment.
    orch::process::block_sigchld();
    // Held to the end of main: dropping it writes out the lines still queued.
    let _log_writer = init_tracing();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("orchd: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let report = orch::config::check(path);
    let errors = report.errors;
    if errors.is_empty() {
        println!(
            "{}: configuration is valid ({} unit(s) in {})",
            path.display(),
            report.units,
            report.units_dir.display()
        );
        return ExitCode::SUCCESS;
    }
    for e in &errors {
        println!("{e}");
    }
    eprintln!("{} error(s)", errors.len());
    ExitCode::from(2)
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = match orch::config::load(&args.config) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            anyhow::bail!(
                "configuration {} is invalid; nothing was started",
                args.config.display()
            );
        }
    };
    // reqwest (health checks) and lettre use rustls without a built-in crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(orch::daemon::run(config))?;
    Ok(())
}

/// Lines of orchd's stderr log that may wait for a slow reader before new ones are dropped
/// (each up to ~8 KiB: a service's line).
const STDERR_QUEUE: usize = 1024;

/// Whether writing to stderr can wait on someone: a pipe, a socket or a terminal can; a
/// regular file or `/dev/null` cannot, and is written directly (no thread, no hand-over per
/// line: the crash-loop restart path logs a few lines each time).
fn stderr_may_stall() -> bool {
    use nix::sys::stat::{SFlag, fstat};
    let Ok(st) = fstat(std::io::stderr()) else {
        return true;
    };
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    let tty = nix::unistd::isatty(std::io::stderr()).unwrap_or(true);
    !(kind == SFlag::S_IFREG || kind == SFlag::S_IFCHR && !tty)
}

/// journald when stderr is the journal (`JOURNAL_STREAM`), else plain stderr. `ORCH_LOG`
/// (or `RUST_LOG`) sets the filter, default `info`.
///
/// Where stderr may stall ([`stderr_may_stall`]), lines are written by a thread of their own:
/// a pipe nobody reads fast enough (`orchd 2>&1 | slow`) must never stall orchd's runtime, and
/// with it the supervision of every service. When it falls behind, lines are dropped, and the
/// next line written says how many.
fn init_tracing() -> Option<tracing_appender::non_blocking::WorkerGuard> {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("ORCH_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            registry
                .with(journald.with_syslog_identifier("orchd".into()))
                .init();
            return None;
        }
    }
    let (writer, guard) = if stderr_may_stall() {
        let dropped = Arc::new(OnceLock::new());
        let (stderr, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(STDERR_QUEUE)
            .thread_name("orchd-log")
            .finish(SaysDrops {
                out: std::io::stderr(),
                dropped: dropped.clone(),
                told: 0,
            });
        let _ = dropped.set(stderr.error_counter());
        (BoxMakeWriter::new(stderr), Some(guard))
    } else {
        (BoxMakeWriter::new(std::io::stderr), None)
    };
    // Colours only for a person at a terminal, not in a file or a pipe to a log collector.
    let colour = nix::unistd::isatty(std::io::stderr()).unwrap_or(false)
        && std::env::var_os("NO_COLOR").is_none();
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(colour)
                .with_target(false),
        )
        .init();
    guard
}

/// orchd's stderr, as the log thread writes it: says how many lines were dropped before the
/// first line written after them.
struct SaysDrops {
    out: std::io::Stderr,
    dropped: Arc<OnceLock<tracing_appender::non_blocking::ErrorCounter>>,
    /// Drops already reported.
    told: usize,
}

impl std::io::Write for SaysDrops {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let dropped = self.dropped.get().map_or(0, |c| c.dropped_lines());
        if dropped > self.told {
            let note = format!(
                "orchd: {} lines of this log were dropped: stderr could not keep up\n",
                dropped - self.told
            );
            self.told = dropped;
            self.out.write_all(note.as_bytes())?;
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
