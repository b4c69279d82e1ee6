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
//!        │                          process::Spawner thread (clone3 into the cgroup, PDEATHSIG)
//!        │                          reaper thread (SIGCHLD, waitpid(-1)), cgroups
//!        └──────── events (event::EventBus broadcast) <───────┘
//!                               │
//!                 alert task (policy, silences, outbox) ──> email (lettre), webhook (reqwest)
//! ```
//!
//! Modules, each a stage of that flow. `use` only points down this list (a DAG; the picture
//! is in docs/design-notes.md, "Module layout"):
//!
//! - [`files`], [`deadline`], [`guard`], [`memory`]: leaves — bounded reads and private atomic
//!   writes (and the state-writer thread); saturating deadline arithmetic; catching panics in
//!   orchd's tasks, restarting them and recording them for `status`; giving back the binary
//!   pages and heap only start-up used.
//! - [`process`]: the spawner (a vfork-style clone into the instance cgroup), the one reaper,
//!   cgroups, process groups.
//! - [`config`]: the serde mirror of orchd.toml and units, validation into typed units, the
//!   bounds of every value, the release-name rule.
//! - [`state`]: persisted per-service state (`state.json`).
//! - [`health`]: probes (http, tcp, exec) on orchd's schedule and the pure health tracker.
//! - [`event`]: facts on one broadcast bus, and the recent-events log.
//! - [`proxy`]: the reverse proxy that holds a deployed service's public port (http per
//!   request, tcp per connection), split by the phases of a request; its own HTTP/1 client.
//! - [`supervisor`]: one task per service; [`supervisor::state`] is the pure state machine,
//!   [`supervisor::deploy`] the pure deploy machine and its driver.
//! - [`alert`]: the Alerter: dedup, recoveries, silences, durable outbox, email and webhooks.
//! - [`manager`]: the registry; routes requests; dependency order; reload diff; records
//!   finished deploys and keeps the release history.
//! - [`api`]: the typed wire protocol ([`api::proto`]), authorization by peer credentials,
//!   socket server, D-Bus adapter, client; domain errors become wire errors here only.
//! - [`metrics`]: the Prometheus endpoint (`[metrics] listen`).
//! - [`ctl`], [`manpage`]: `orchctl`'s human and JSON output; `orchd(8)` and `orchctl(1)`.
//! - [`daemon`]: start-up, signals, readiness, watchdog, shutdown.

pub mod alert;
pub mod api;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod deadline;
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
