//! orch — a process supervisor for one production Linux VM.
pub mod api;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod event;
pub mod manager;
pub mod state;
pub mod supervisor;

/// Version with the git commit it was built from, e.g. `0.1.0 (abc1234)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("ORCH_GIT_COMMIT"),
    ")"
);
