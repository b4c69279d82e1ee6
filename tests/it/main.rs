//! Integration tests: the real orchd and orchctl binaries, real processes, bounded waits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

mod alerts;
mod api;
mod core;
mod core_deps;
mod core_lifecycle;
mod core_process;
mod core_restart;
mod dbus;
mod deploy;
mod docs;
mod escape;
mod hardening;
mod health;
mod load;
mod metrics;
mod packaging;
mod proxy;
mod receiver;
mod smuggling;
mod socket_hardening;
mod stub;
mod unit_fuzz;
