//! Zero-downtime deploys: the release history. The procedure itself runs in the supervisor
//! task that owns both slots (`supervisor/deploy/`); the switchable front is [`crate::proxy`].
pub mod history;
