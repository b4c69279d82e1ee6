//! `orchd`: the supervisor daemon. Parses arguments, sets up logging, maps errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

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
    orch::supervisor::process::block_sigchld();
    init_tracing();
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

/// journald when stderr is the journal (`JOURNAL_STREAM`), else plain stderr. `ORCH_LOG`
/// (or `RUST_LOG`) sets the filter, default `info`.
fn init_tracing() {
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
            return;
        }
    }
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false),
        )
        .init();
}
