//! The control plane: wire protocol, authorization, request handling, socket server, D-Bus
//! adapter, client.
pub mod auth;
pub mod client;
pub mod dbus;
pub mod error;
pub mod handler;
pub mod limits;
pub mod lines;
pub mod proto;
pub mod socket;
