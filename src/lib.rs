//! orch — a process supervisor for one production Linux VM.
//!
//! Two binaries share this library: `orchd` (the daemon) and `orchctl` (its CLI).
//!
//! ```text
//! unit files + orchd.toml ──> config (parse, validate: FILE:LINE:COL errors)
//!                                   │
//!  api::socket ──Command──> api::handler ──> manager (registry, order, reload, state.json)
//!        ▲                                      │ commands (mpsc)     ▲ status (watch)
//!        │                                      ▼                     │
//!        │                          supervisor task per service ──────┘
//!        │                          (state::Machine, instance, logs::LogHub)
//!        │                                      │ spawn / exits
//!        │                          process::Spawner thread (fork+exec, PDEATHSIG)
//!        │                          reaper thread (SIGCHLD, waitpid(-1)), cgroups
//!        └──────── events (event::EventBus broadcast) <───────┘
//!                               │
//!                 alert task (policy, silences, outbox) ──> email (lettre), webhook (reqwest)
//! ```
//!
//! - [`config`]: the serde mirror of orchd.toml and units, validation into typed units.
//! - [`supervisor`]: one task per service; [`supervisor::state`] is the pure state machine.
//! - [`manager`]: the registry; routes requests; dependency order; reload diff.
//! - [`api`]: wire protocol, authorization by peer credentials, socket server, client.
//! - [`alert`]: the Alerter: dedup, recoveries, silences, durable outbox, email and webhooks.
//! - [`proxy`]: a deployed service's public port: the switchable http/tcp reverse proxy, its
//!   worker threads, the request rewrite, forwarding and retries, and orchd's own HTTP/1 client.
//! - [`deploy`]: the release history of deploys and rollbacks.
//! - [`guard`]: catching panics in orchd's tasks, restarting them, recording them for status.
//! - [`event`]: facts on one broadcast bus, and the recent-events log.
//! - [`files`]: bounded reads, private atomic writes, the state-writer thread.
//! - [`state`]: persisted per-service state, written atomically.
//! - [`daemon`]: start-up, signals, readiness, watchdog, shutdown.
//! - [`deadline`]: saturating deadline arithmetic.
//! - [`memory`]: giving back the binary pages and heap only start-up used.
//! - [`metrics`]: the Prometheus endpoint (`[metrics] listen`).
//! - [`ctl`]: `orchctl`'s human and JSON output.
//! - [`manpage`]: `orchd(8)` and `orchctl(1)` from the clap definitions.

pub mod alert;
pub mod api;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod deadline;
pub mod deploy;
pub mod event;
pub mod files;
pub mod guard;
pub mod health;
pub mod manager;
pub mod manpage;
pub mod memory;
pub mod metrics;
pub mod process;
pub mod proxy;
pub mod state;
pub mod supervisor;

/// Version with the git commit it was built from, e.g. `0.1.0 (abc1234)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("ORCH_GIT_COMMIT"),
    ")"
);
