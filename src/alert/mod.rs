//! Alerts to the on-call by email and webhook (DESIGN §1, issue 5).
//!
//! The Alerter task (`task.rs`) subscribes to the event bus and owns the policy (`policy.rs`:
//! dedup, reminders, incidents, recoveries), the silences (`silence.rs`) and the durable outbox
//! (`outbox.rs`). It builds each alert's content (`message.rs`) from the event and the facts it
//! carries (the service's status then, and its last output lines), then queues one delivery per
//! routed channel (`email.rs`, `webhook.rs`). The API talks to it through an [`AlertHandle`];
//! the manager's reload sends it the new `[alerts]` and units. Delivery never blocks supervision
//! and never crashes anything: failures are logged and counted per channel in [`Stats`], which
//! the metrics endpoint shows.

pub mod email;
mod error;
pub mod message;
pub mod outbox;
pub mod policy;
pub mod silence;
mod task;
pub mod webhook;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use error::AlertError;
pub use message::{Alert, AlertEvent};
pub use outbox::{ChannelStats, DeliveryStats, Stats};
pub use silence::Silence;
pub use task::{AlerterSpec, spawn};

use crate::config::{AlertsConfig, UnitEntry};

/// A failed delivery attempt. `message` never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    /// Retrying cannot help (a 4xx other than 429, a malformed address): drop it.
    pub permanent: bool,
    pub message: String,
}

impl DeliveryError {
    pub fn retry(message: impl Into<String>) -> Self {
        DeliveryError {
            permanent: false,
            message: message.into(),
        }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        DeliveryError {
            permanent: true,
            message: message.into(),
        }
    }
}

/// The configured channels and the shared HTTP client.
#[derive(Debug)]
pub struct Channels {
    pub config: AlertsConfig,
    /// Built at the first webhook delivery: a daemon without webhooks never loads the TLS
    /// roots (memory, docs/BENCHMARKS.md issue 2).
    http: std::sync::OnceLock<Result<reqwest::Client, String>>,
}

impl Channels {
    pub fn new(config: AlertsConfig) -> Channels {
        Channels {
            config,
            http: std::sync::OnceLock::new(),
        }
    }

    fn http(&self) -> &Result<reqwest::Client, String> {
        self.http.get_or_init(|| {
            let http = webhook::client().map_err(|e| email::chain(&e));
            if let Err(e) = &http {
                tracing::error!(error = %e, "cannot build the HTTP client; webhooks will fail");
            }
            http
        })
    }

    /// Every channel name, email then webhook.
    pub fn names(&self) -> Vec<String> {
        self.config.channel_names().map(str::to_owned).collect()
    }

    /// Deliver one alert to one channel.
    pub async fn send(&self, name: &str, alert: &Alert) -> Result<(), DeliveryError> {
        if let Some(ch) = self.config.email.iter().find(|c| c.name == name) {
            return email::send(ch, alert).await;
        }
        if let Some(ch) = self.config.webhook.iter().find(|c| c.name == name) {
            let client = self
                .http()
                .as_ref()
                .map_err(|e| DeliveryError::retry(format!("no HTTP client: {e}")))?;
            return webhook::send(client, ch, alert).await;
        }
        Err(DeliveryError::permanent(format!(
            "channel {name:?} is no longer configured"
        )))
    }
}

/// One channel's result of `orchctl alert-test`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelReport {
    pub channel: String,
    pub delivered: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Requests to the Alerter task.
#[derive(Debug)]
pub enum Cmd {
    Test {
        channel: Option<String>,
        reply: oneshot::Sender<Result<Vec<ChannelReport>, AlertError>>,
    },
    Silence {
        target: String,
        duration: Duration,
        reason: Option<String>,
        reply: oneshot::Sender<Result<Silence, AlertError>>,
    },
    Silences {
        reply: oneshot::Sender<Vec<Silence>>,
    },
    Unsilence {
        id: String,
        reply: oneshot::Sender<Result<Silence, AlertError>>,
    },
    /// A reload: new channels, repeat interval and units (routing, health, `reset_after`).
    Reconfigure {
        alerts: AlertsConfig,
        units: BTreeMap<String, UnitEntry>,
    },
}

/// Cheap-clone handle to the Alerter task.
#[derive(Debug, Clone)]
pub struct AlertHandle {
    tx: mpsc::UnboundedSender<Cmd>,
}

/// A handle and the receiver to give [`spawn`] (split so the manager can hold the handle
/// before the Alerter, which needs the manager's handle, exists).
pub fn channel() -> (AlertHandle, mpsc::UnboundedReceiver<Cmd>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (AlertHandle { tx }, rx)
}

fn gone() -> AlertError {
    AlertError::Gone
}

impl AlertHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, AlertError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    /// Send a test alert through every channel, or one; reports per channel.
    pub async fn test(&self, channel: Option<String>) -> Result<Vec<ChannelReport>, AlertError> {
        self.ask(|reply| Cmd::Test { channel, reply }).await?
    }

    pub async fn silence(
        &self,
        target: String,
        duration: Duration,
        reason: Option<String>,
    ) -> Result<Silence, AlertError> {
        self.ask(|reply| Cmd::Silence {
            target,
            duration,
            reason,
            reply,
        })
        .await?
    }

    pub async fn silences(&self) -> Result<Vec<Silence>, AlertError> {
        self.ask(|reply| Cmd::Silences { reply }).await
    }

    pub async fn unsilence(&self, id: String) -> Result<Silence, AlertError> {
        self.ask(|reply| Cmd::Unsilence { id, reply }).await?
    }

    /// Apply a reloaded configuration. Never waits: the manager calls this.
    pub fn reconfigure(&self, alerts: AlertsConfig, units: BTreeMap<String, UnitEntry>) {
        let _ = self.tx.send(Cmd::Reconfigure { alerts, units });
    }
}
