//! `orchctl`: the CLI for orchd. Talks to its socket; human output or `--json`; exit codes per
//! DESIGN §5 (0 done, 1 failed, 2 usage/validation, 3 cannot reach orchd, 4 permission denied).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use orch::api::client::{Client, ClientError};
use orch::api::proto::{Command, DeployOutcome, DeployReply, Reply, Response};
use serde_json::Value;

use orch::ctl as render;

/// Control orchd: status, start/stop, logs, events, deploys, reload, alerts.
#[derive(Debug, Parser)]
#[command(name = "orchctl", version = orch::VERSION)]
struct Cli {
    /// orchd's socket.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "ORCH_SOCKET",
        default_value = "/run/orch/orchd.sock"
    )]
    socket: PathBuf,
    /// Print JSON (one object per line for streams) instead of human output.
    #[arg(long, global = true)]
    json: bool,
    /// Give up (exit 3) when orchd has not answered within this, e.g. "10s": a stuck orchd
    /// must not hang a script. Not for `logs -f`, `events -f`, `deploy` and `rollback`, which
    /// wait as long as their operation takes.
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        env = "ORCHCTL_REPLY_TIMEOUT",
        default_value = "60s",
        value_parser = humantime::parse_duration
    )]
    reply_timeout: std::time::Duration,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Show state, health, pid, release, restarts and uptime of services (all by default).
    Status { services: Vec<String> },
    /// Start services (waits until they are ready or have failed).
    Start {
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Stop services gracefully (stop signal, then SIGKILL after the unit's stop timeout).
    Stop {
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Restart services; also clears a `failed` state and the restart counters.
    Restart {
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Clear `failed` and backoff: a service that gave up restarting starts again.
    Reset {
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Show a service's recent output (kept in memory: the last 1000 lines).
    Logs {
        service: String,
        /// Number of lines.
        #[arg(short = 'n', long = "lines", default_value_t = 50)]
        n: usize,
        /// Keep printing new lines until interrupted.
        #[arg(short, long)]
        follow: bool,
    },
    /// Show recent events (starts, exits, restarts, failures, deploys).
    Events {
        /// Keep printing new events until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// Number of recent events.
        #[arg(short = 'n', long = "lines", default_value_t = 50)]
        n: usize,
    },
    /// Deploy a release with a zero-downtime port swap (exit 0 only when it succeeded).
    Deploy {
        service: String,
        /// The release to run: substituted for {release} in the unit, exported as ORCH_RELEASE.
        #[arg(long, value_name = "R")]
        release: String,
        /// Override the unit's deploy.timeout, e.g. "90s".
        #[arg(long, value_name = "DUR")]
        timeout: Option<String>,
        /// Return once the deploy has started instead of waiting for the result.
        #[arg(long)]
        detach: bool,
    },
    /// Switch back to the previous release (or --to a named one).
    Rollback {
        service: String,
        /// The release to go back to (default: the previous one).
        #[arg(long, value_name = "R")]
        to: Option<String>,
    },
    /// Show a service's deploy history.
    History { service: String },
    /// Re-read orchd.toml and the units; apply only what changed. Invalid config changes nothing.
    Reload {
        /// Show what would change without doing it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Send a test alert through every channel (or one).
    AlertTest { channel: Option<String> },
    /// Hold back alerts for a service (or `all`) for a while.
    Silence {
        target: String,
        #[arg(long = "for", value_name = "DUR")]
        duration: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// List active silences.
    Silences,
    /// End a silence.
    Unsilence { id: String },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the orchctl(1) man page (roff).
    Man,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("orchctl: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    ExitCode::from(rt.block_on(run(cli)))
}

fn to_command(cmd: Cmd) -> Result<Command, Cmd> {
    Ok(match cmd {
        Cmd::Status { services } => Command::Status { services },
        Cmd::Start { services } => Command::Start { services },
        Cmd::Stop { services } => Command::Stop { services },
        Cmd::Restart { services } => Command::Restart { services },
        Cmd::Reset { services } => Command::Reset { services },
        Cmd::Logs { service, n, follow } => Command::Logs { service, n, follow },
        Cmd::Events { follow, n } => Command::Events { follow, n },
        Cmd::Deploy {
            service,
            release,
            timeout,
            detach,
        } => Command::Deploy {
            service,
            release,
            timeout,
            detach,
        },
        Cmd::Rollback { service, to } => Command::Rollback { service, to },
        Cmd::History { service } => Command::History { service },
        Cmd::Reload { dry_run } => Command::Reload { dry_run },
        Cmd::AlertTest { channel } => Command::AlertTest { channel },
        Cmd::Silence {
            target,
            duration,
            reason,
        } => Command::Silence {
            target,
            duration,
            reason,
        },
        Cmd::Silences => Command::Silences {},
        Cmd::Unsilence { id } => Command::Unsilence { id },
        other => return Err(other),
    })
}

async fn run(cli: Cli) -> u8 {
    let command = match to_command(cli.command) {
        Ok(c) => c,
        Err(Cmd::Completions { shell }) => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "orchctl", &mut script);
            // A closed pipe (`| head`) is not worth a panic.
            return match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Ok(()) => 0,
                Err(_) => 1,
            };
        }
        Err(_) => {
            let man = orch::manpage::render(
                Cli::command(),
                "1",
                orch::manpage::ORCHCTL_EXTRA,
                &mut std::io::stdout(),
            );
            return match man {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("orchctl: {e}");
                    1
                }
            };
        }
    };
    let out = render::Output::new(
        cli.json,
        std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    );
    // Operations that last as long as they take, or stream until stopped, are not timed.
    let wait = match &command {
        Command::Logs { follow: true, .. }
        | Command::Events { follow: true, .. }
        | Command::Deploy { .. }
        | Command::Rollback { .. } => None,
        _ => Some(cli.reply_timeout),
    };
    let talking = talk(&cli.socket, command, &out);
    let answered = match wait {
        Some(wait) => match tokio::time::timeout(wait, talking).await {
            Ok(answered) => answered,
            Err(_) => {
                eprintln!(
                    "orchctl: orchd at {} did not answer within {}: it may be stuck (see its \
                     log: journalctl -u orchd); --reply-timeout sets the wait",
                    cli.socket.display(),
                    humantime::format_duration(wait)
                );
                return 3;
            }
        },
        None => talking.await,
    };
    match answered {
        Ok(code) => code,
        Err(e @ ClientError::Protocol(_)) => {
            eprintln!("orchctl: {e}");
            1
        }
        Err(e) => {
            eprintln!("orchctl: {e}");
            3
        }
    }
}

async fn talk(
    socket: &std::path::Path,
    command: Command,
    out: &render::Output,
) -> Result<u8, ClientError> {
    let mut client = Client::connect(socket).await?;
    let name = command.name();
    client.send(command).await?;
    loop {
        let resp: Response = client.next().await?;
        if let Some(err) = &resp.error {
            out.error(err);
            return Ok(err.code.exit_code());
        }
        let result = resp.result.unwrap_or(Value::Null);
        let unreadable = |e: serde_json::Error| ClientError::Protocol(format!("{e}: {result}"));
        if !resp.done {
            out.partial(&result).map_err(unreadable)?;
            continue;
        }
        let reply = out.result(name, &result).map_err(unreadable)?;
        // A deploy that ran and did not succeed is a failed operation (exit 1). A rollback
        // succeeded when it switched back (an instant one reports the deploy it ended as
        // `rolled_back`) or when its deploy of the previous release succeeded.
        let ok = match (name, reply) {
            ("deploy", Reply::Deploy(DeployReply::Finished(r))) => {
                r.result == DeployOutcome::Succeeded
            }
            ("rollback", Reply::Deploy(DeployReply::Finished(r))) => {
                r.result != DeployOutcome::Failed
            }
            _ => true,
        };
        return Ok(if ok { 0 } else { 1 });
    }
}
