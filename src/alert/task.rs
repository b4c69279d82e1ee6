//! The Alerter task: subscribes to the event bus, runs the policy, builds alerts, holds them
//! back under silences, queues them in the outbox and spawns their deliveries; answers
//! `alert-test`, `silence`, `silences`, `unsilence` and reconfiguration from [`AlertHandle`]s.
//!
//! It never waits on a delivery: each runs in its own task. Its only waits are bounded asks
//! to the manager (status and log tail) while building an alert.
//!
//! [`AlertHandle`]: super::AlertHandle

use crate::deadline::Later;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::AlertError;
use super::message::{Alert, AlertEvent, Facts, OUTPUT_LINES};
use super::outbox::{self, Outbox, Pending};
use super::policy::{Notice, Policy, UnitInfo};
use super::silence::{self, Silences};
use super::{ChannelReport, Channels, Cmd, Stats};
use crate::config::{AlertsConfig, UnitEntry};
use crate::event::Event;
use crate::manager::ManagerHandle;

/// Bound on each question to the manager while building an alert.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on `alert-test` per channel.
const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the Alerter starts from.
pub struct AlerterSpec {
    pub host: String,
    pub state_dir: PathBuf,
    pub alerts: AlertsConfig,
    pub units: BTreeMap<String, UnitEntry>,
    pub manager: ManagerHandle,
    /// Subscribed before the services start, so no early event is missed.
    pub events: broadcast::Receiver<std::sync::Arc<Event>>,
}

struct Alerter {
    host: String,
    policy: Policy,
    silences: Silences,
    outbox: Outbox,
    /// Kept outside the task (with `units`): an alerter started again after a crash goes on
    /// with the configuration the last reload gave.
    channels: watch::Sender<Arc<Channels>>,
    units: watch::Sender<BTreeMap<String, UnitEntry>>,
    manager: ManagerHandle,
    stats: Arc<Stats>,
    cancel: CancellationToken,
    deliveries: TaskTracker,
}

/// Start the Alerter; it resends what the outbox holds, then follows the bus. A panic in it
/// is recorded in `parts` and it starts again from its files (silences, outbox) and the last
/// configuration, on the same command channel and event subscription.
pub fn spawn(
    spec: AlerterSpec,
    commands: mpsc::UnboundedReceiver<Cmd>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
    parts: crate::guard::Parts,
) -> Arc<Stats> {
    let stats = Arc::new(Stats::default());
    let channels = watch::channel(Arc::new(Channels::new(spec.alerts.clone()))).0;
    let units = watch::channel(spec.units).0;
    let mut receivers = (spec.events, commands);
    let (host, state_dir, manager) = (spec.host, spec.state_dir, spec.manager);
    let returned = stats.clone();
    let part_cancel = cancel.clone();
    tracker.spawn(async move {
        crate::guard::restarting(
            "alerter",
            parts,
            part_cancel,
            &mut receivers,
            |(events, commands)| {
                let repeat = channels.borrow().config.repeat_interval;
                let a = Alerter {
                    host: host.clone(),
                    policy: Policy::new(repeat),
                    silences: Silences::load(&state_dir),
                    outbox: Outbox::new(&state_dir),
                    channels: channels.clone(),
                    units: units.clone(),
                    manager: manager.clone(),
                    stats: stats.clone(),
                    cancel: cancel.clone(),
                    deliveries: TaskTracker::new(),
                };
                let pending = a.outbox.load();
                if !pending.is_empty() {
                    tracing::info!(count = pending.len(), "resending alerts left in the outbox");
                }
                for p in pending {
                    a.start_delivery(p);
                }
                // Borrowed per run: the receivers outlive a crashed run.
                Box::pin(a.run(events, commands))
            },
        )
        .await;
    });
    returned
}

fn until(t: SystemTime) -> Instant {
    Instant::now().later(t.duration_since(SystemTime::now()).unwrap_or_default())
}

impl Alerter {
    async fn run(
        mut self,
        events: &mut broadcast::Receiver<std::sync::Arc<Event>>,
        rx: &mut mpsc::UnboundedReceiver<Cmd>,
    ) {
        loop {
            let next = [
                self.policy.next_deadline(),
                self.silences.next_expiry().map(until),
            ]
            .into_iter()
            .flatten()
            .min();
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                ev = events.recv() => match ev {
                    Ok(ev) => self.on_event(std::sync::Arc::unwrap_or_clone(ev)).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "alerter fell behind the event bus; some events were not considered");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.on_cmd(cmd),
                    None => break,
                },
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    self.on_tick().await;
                }
            }
        }
        // Give first attempts a moment; whatever is left stays in the outbox for next time.
        self.deliveries.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.deliveries.wait()).await;
    }

    fn unit_info(&self, service: &str) -> UnitInfo {
        match self.units.borrow().get(service) {
            Some(UnitEntry::Ok(u)) => UnitInfo {
                has_health: u.health.is_some(),
                stable: u.restart.reset_after,
            },
            _ => UnitInfo::default(),
        }
    }

    async fn on_event(&mut self, ev: Event) {
        let info = self.unit_info(&ev.service);
        let notices = self
            .policy
            .on_event(&ev.service, &ev.kind, info, Instant::now());
        for n in notices {
            self.emit(n, &ev.time).await;
        }
    }

    async fn on_tick(&mut self) {
        let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        for n in self.policy.tick(Instant::now()) {
            self.emit(n, &now).await;
        }
        for s in self.silences.expire(SystemTime::now()) {
            self.silence_ended(s);
        }
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Test { channel, reply } => self.test(channel, reply),
            Cmd::Silence {
                target,
                duration,
                reason,
                reply,
            } => {
                if self.silences.full() {
                    let _ = reply.send(Err(AlertError::TooManySilences {
                        max: silence::MAX_SILENCES,
                    }));
                    return;
                }
                let s = self
                    .silences
                    .add(&target, duration, reason, SystemTime::now());
                tracing::info!(silence = %s.id, target = %s.target, until = %s.until, "alerts silenced");
                let _ = reply.send(Ok(s));
            }
            Cmd::Silences { reply } => {
                let _ = reply.send(self.silences.list());
            }
            Cmd::Unsilence { id, reply } => {
                let result = match self.silences.remove(&id) {
                    Some(s) => {
                        tracing::info!(silence = %s.id, "silence ended by the operator");
                        self.silence_ended(s.clone());
                        Ok(s)
                    }
                    None => Err(AlertError::NoSuchSilence { id }),
                };
                let _ = reply.send(result);
            }
            Cmd::Reconfigure { alerts, units } => {
                self.policy.set_repeat(alerts.repeat_interval);
                self.policy.retain(|s| units.contains_key(s));
                self.units.send_replace(units);
                self.channels.send_replace(Arc::new(Channels::new(alerts)));
                tracing::info!("alert configuration applied");
            }
        }
    }

    /// Build the alert for a notice, then hold it (silence) or queue it.
    async fn emit(&mut self, n: Notice, time: &str) {
        let alert = self.build(&n, time).await;
        if let Some(id) = self.silences.hold(&alert, SystemTime::now()) {
            tracing::info!(service = %alert.service, silence = %id, "alert held back by a silence: {}", alert.summary);
            return;
        }
        let routes = self.routes(&alert.service);
        self.dispatch(alert, routes);
    }

    async fn build(&self, n: &Notice, time: &str) -> Alert {
        let status =
            tokio::time::timeout(ASK_TIMEOUT, self.manager.status(vec![n.service.clone()]))
                .await
                .ok()
                .and_then(Result::ok)
                .and_then(|mut v| v.pop());
        let output =
            match tokio::time::timeout(ASK_TIMEOUT, self.manager.logs(n.service.clone())).await {
                Ok(Ok(hub)) => tokio::time::timeout(ASK_TIMEOUT, hub.tail(OUTPUT_LINES))
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .map(|l| l.line)
                    .collect(),
                _ => Vec::new(),
            };
        let probe = n.probe.clone().or_else(|| {
            status
                .as_ref()
                .and_then(|s| s.last_probe.as_ref())
                .map(ToString::to_string)
        });
        let facts = Facts {
            exit_code: n.exit_code,
            signal: n.signal.clone(),
            restarts: n
                .restarts
                .or(status.as_ref().map(|s| s.restarts))
                .unwrap_or(0),
            backoff_ms: n.backoff_ms,
            reason: n.reason.clone(),
            last_probe: probe,
            release: status.map(|s| s.release).filter(|r| !r.is_empty()),
            held_back: n.held_back,
            down: n.down,
            output,
        };
        Alert::new(&self.host, &n.service, n.event, facts, time)
    }

    /// The channels a service's alerts go to: its `alert` list, or all.
    fn routes(&self, service: &str) -> Vec<String> {
        let all = self.channels.borrow().names();
        match self.units.borrow().get(service) {
            Some(UnitEntry::Ok(u)) => match &u.alert {
                Some(list) => list.iter().filter(|c| all.contains(c)).cloned().collect(),
                None => all,
            },
            _ => all,
        }
    }

    /// Queue one delivery per channel: written to the outbox first, then attempted.
    fn dispatch(&mut self, alert: Alert, routes: Vec<String>) {
        tracing::info!(service = %alert.service, event = ?alert.event, channels = ?routes, alert = %alert.id, "alert: {}", alert.subject);
        for channel in routes {
            let p = Pending::new(alert.clone(), &channel);
            if let Err(e) = self.outbox.put(&p) {
                tracing::error!(channel = %channel, error = %e, "cannot write the alert to the outbox; sending it without a durable copy");
            }
            self.start_delivery(p);
        }
    }

    fn start_delivery(&self, p: Pending) {
        self.deliveries.spawn(outbox::deliver(
            self.outbox.clone(),
            self.channels.subscribe(),
            p,
            self.stats.clone(),
            self.cancel.clone(),
        ));
    }

    fn silence_ended(&mut self, s: silence::Silence) {
        tracing::info!(silence = %s.id, target = %s.target, held = s.held.len(), "silence ended");
        if s.held.is_empty() {
            return;
        }
        let facts = Facts {
            held_back: s.held.len() as u32,
            reason: Some(silence::summary(&s)),
            ..Facts::default()
        };
        let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let alert = Alert::new(&self.host, &s.target, AlertEvent::SilenceEnded, facts, &now);
        let routes = self.routes(&s.target);
        self.dispatch(alert, routes);
    }

    /// Send a test alert to each channel (or one) in a separate task; reply per channel.
    fn test(
        &self,
        channel: Option<String>,
        reply: tokio::sync::oneshot::Sender<Result<Vec<ChannelReport>, AlertError>>,
    ) {
        if crate::guard::test_panic_requested("alerter") {
            panic!("test panic requested by ORCHD_TEST_PANIC");
        }
        let chans = self.channels.borrow().clone();
        let names = chans.names();
        let targets = match channel {
            Some(c) if !names.contains(&c) => {
                let known = if names.is_empty() {
                    "none configured".to_owned()
                } else {
                    names.join(", ")
                };
                let _ = reply.send(Err(AlertError::NoSuchChannel { channel: c, known }));
                return;
            }
            Some(c) => vec![c],
            None if names.is_empty() => {
                let _ = reply.send(Err(AlertError::NoChannels));
                return;
            }
            None => names,
        };
        let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let alert = Alert::new(
            &self.host,
            "orchd",
            AlertEvent::Test,
            Facts::default(),
            &now,
        );
        tokio::spawn(async move {
            let sends = targets.iter().map(|name| {
                let (chans, alert) = (chans.clone(), alert.clone());
                async move {
                    let r = tokio::time::timeout(TEST_TIMEOUT, chans.send(name, &alert)).await;
                    let error = match r {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(e.message),
                        Err(_) => Some(format!("no answer within {}s", TEST_TIMEOUT.as_secs())),
                    };
                    match &error {
                        None => tracing::info!(channel = %name, "test alert delivered"),
                        Some(e) => tracing::warn!(channel = %name, error = %e, "test alert failed"),
                    }
                    ChannelReport {
                        channel: name.clone(),
                        delivered: error.is_none(),
                        error,
                    }
                }
            });
            let _ = reply.send(Ok(futures::future::join_all(sends).await));
        });
    }
}
