//! The control plane: wire protocol, authorization, request handling, socket server, client.
pub mod auth;
pub mod client;
pub mod handler;
pub mod proto;
pub mod socket;
