//! The control plane: wire protocol (`proto`: every request and reply type, shared with
//! `orchctl`), authorization, request handling, socket server, D-Bus adapter, client. The
//! errors of the modules below become wire errors and exit codes here only (`error`).
pub mod auth;
pub mod client;
pub mod dbus;
pub mod error;
pub mod handler;
pub mod limits;
pub mod lines;
pub mod proto;
pub mod socket;
