//! Events: past-tense facts about services, published on one broadcast bus.
//!
//! Supervisors and the manager publish; alerts, history, metrics and `orchctl events` subscribe.
//! A slow subscriber lags (and is told how many events it missed) but never blocks a publisher.
//!
//! A supervisor's events also carry [`Facts`]: the service as it was when the event happened
//! (release, restarts, last probe) and where its last output lines can be read. The Alerter
//! builds its alerts from them without asking the manager; they are not part of the JSON.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

use tokio::sync::broadcast;

/// What happened. Serialized with `"kind"` in snake_case for `orchctl events --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// A process of the service was spawned.
    Started { pid: i32, release: String },
    /// The service's main process ended.
    Exited {
        pid: i32,
        code: Option<i32>,
        signal: Option<String>,
    },
    /// Waiting `delay_ms` before restart number `restarts`.
    Backoff { delay_ms: u64, restarts: u32 },
    /// Gave up restarting (start limit hit, or a failure with `policy = "no"`).
    Failed { reason: String },
    /// The process could not be spawned at all.
    SpawnFailed { error: String },
    /// The service was stopped (by an operator, a reload or shutdown).
    Stopped,
    /// Health probes turned the service unhealthy; `probe` is the last result.
    Unhealthy { probe: crate::health::ProbeResult },
    /// The service is healthy (for the first time since it started, or again).
    Healthy { probe: crate::health::ProbeResult },
    /// A deploy began.
    DeployStarted {
        deploy_id: String,
        release: String,
        previous: String,
        who: String,
    },
    /// The proxy (or switch command) now sends traffic to `release`.
    Switched {
        deploy_id: String,
        release: String,
        port: Option<u16>,
    },
    /// The deploy finished: `release` is active and persisted.
    DeploySucceeded {
        deploy_id: String,
        release: String,
        previous: String,
        duration_ms: u64,
        who: String,
        rollback: bool,
    },
    /// The new release never became ready; nothing was switched (`previous` still serves).
    DeployFailed {
        deploy_id: String,
        release: String,
        previous: String,
        reason: String,
        duration_ms: u64,
        who: String,
    },
    /// The new release failed after the switch (or an operator asked): `to` serves again.
    RolledBack {
        deploy_id: String,
        release: String,
        to: String,
        reason: String,
        duration_ms: u64,
        who: String,
    },
}

/// One event on the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Service name.
    pub service: String,
    /// Wall-clock time, RFC 3339 UTC.
    pub time: String,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
    /// The service as it was then (set by its supervisor; `None` on events read back from
    /// JSON and on those published by others).
    #[serde(skip)]
    pub facts: Option<Arc<Facts>>,
}

/// What an alert about an event needs to know of the service, as it was when the event
/// happened: the status the supervisor published with it.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The active release.
    pub release: String,
    /// The service's restart counter.
    pub restarts: u32,
    /// The main process, while one runs.
    pub pid: Option<i32>,
    /// The last health-probe result.
    pub last_probe: Option<crate::health::ProbeResult>,
    /// Where the service's last lines of output are read (its log hub).
    pub output: Option<Arc<dyn OutputTail>>,
}

/// Equal when the status facts are; any two output sources count as the same.
impl PartialEq for Facts {
    fn eq(&self, other: &Facts) -> bool {
        (&self.release, self.restarts, self.pid, &self.last_probe)
            == (&other.release, other.restarts, other.pid, &other.last_probe)
            && self.output.is_some() == other.output.is_some()
    }
}

/// The last lines a service printed, oldest first. Implemented by the supervisor's log hub
/// (defined here so that the bus depends on nothing above it).
pub trait OutputTail: Send + Sync + std::fmt::Debug {
    /// At most `n` lines; empty when the log is gone. Never blocks its caller's task: the
    /// future asks the log's owner and waits for its answer.
    fn last_lines(&self, n: usize) -> futures::future::BoxFuture<'static, Vec<String>>;
}

impl Event {
    /// An event stamped with the current wall-clock time.
    pub fn now(service: &str, kind: EventKind) -> Self {
        Event {
            service: service.to_owned(),
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            kind,
            facts: None,
        }
    }
}

/// Cheap-clone publisher side of the bus.
#[derive(Debug, Clone)]
pub struct EventBus {
    /// `Arc`: the channel allocates all its slots up front, and each subscriber gets a clone.
    tx: broadcast::Sender<Arc<Event>>,
}

impl EventBus {
    /// A bus that buffers `capacity` events per subscriber before it lags.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        EventBus { tx }
    }

    /// Publish a fact; having no subscriber is fine.
    pub fn publish(&self, event: Event) {
        tracing::debug!(service = %event.service, event = ?event.kind, "event");
        let _ = self.tx.send(Arc::new(event));
    }

    /// A new subscriber, seeing events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }
}

/// Keeps the most recent events for `orchctl events` (without `-f`).
#[derive(Debug, Clone)]
pub struct EventLog {
    tx: tokio::sync::mpsc::Sender<TailQuery>,
}

/// "The last n events", and where to send them.
type TailQuery = (usize, tokio::sync::oneshot::Sender<Vec<Event>>);

async fn keep_events(
    events: &mut broadcast::Receiver<Arc<Event>>,
    rx: &mut tokio::sync::mpsc::Receiver<TailQuery>,
    capacity: usize,
) {
    // Grows with the events seen, up to `capacity`.
    let mut ring = std::collections::VecDeque::<Arc<Event>>::new();
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) => {
                    if ring.len() == capacity {
                        ring.pop_front();
                    }
                    // `orchctl events` prints no facts: the ring does not keep them alive.
                    let ev = match ev.facts {
                        Some(_) => Arc::new(Event { facts: None, ..Event::clone(&ev) }),
                        None => ev,
                    };
                    ring.push_back(ev);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            },
            q = rx.recv() => match q {
                Some((n, reply)) => {
                    let skip = ring.len().saturating_sub(n);
                    let _ = reply.send(ring.iter().skip(skip).map(|e| Event::clone(e)).collect());
                }
                None => break,
            },
        }
    }
}

impl EventLog {
    /// Subscribe to `bus` and keep the last `capacity` events. A panic in the task is
    /// recorded in `parts` and it runs again (with an empty ring).
    pub fn spawn(bus: &EventBus, capacity: usize, parts: crate::guard::Parts) -> EventLog {
        let (tx, rx) = tokio::sync::mpsc::channel::<TailQuery>(16);
        let mut state = (bus.subscribe(), rx);
        tokio::spawn(async move {
            let cancel = tokio_util::sync::CancellationToken::new();
            crate::guard::restarting("event log", parts, cancel, &mut state, |(events, rx)| {
                Box::pin(keep_events(events, rx, capacity))
            })
            .await;
        });
        EventLog { tx }
    }

    /// The last `n` events.
    pub async fn tail(&self, n: usize) -> Vec<Event> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        if self.tx.send((n, reply)).await.is_err() {
            return vec![];
        }
        rx.await.unwrap_or_default()
    }
}
