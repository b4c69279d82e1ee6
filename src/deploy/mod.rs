//! Zero-downtime deploys: the switchable proxy, the deploy procedure, release history.
pub mod proxy;
