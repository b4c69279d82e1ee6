//! Zero-downtime deploys: the switchable proxy and the release history. The procedure itself
//! runs in the supervisor task that owns both slots (`supervisor/deploy/`).
pub mod history;
pub mod proxy;
mod upstream;
