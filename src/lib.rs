//! orch — a process supervisor for one production Linux VM.
pub mod config;
