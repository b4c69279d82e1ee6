//! Integration tests: the real orchd and orchctl binaries, real processes, bounded waits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

mod api;
mod core;
mod docs;
mod health;
mod packaging;
mod stub;
