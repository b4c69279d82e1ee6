//! Integration tests: the real orchd and orchctl binaries, real processes, bounded waits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

mod alerts;

mod api;
mod core;
mod dbus;
mod health;
mod receiver;
mod stub;
