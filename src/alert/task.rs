//! The Alerter task: subscribes to the event bus, runs the policy, builds alerts, holds them
//! back under silences, queues them in the outbox and spawns their deliveries; answers
//! `alert-test`, `silence`, `silences`, `unsilence` and reconfiguration from [`AlertHandle`]s.
//!
//! It never waits on a delivery (each runs in its own task), nor on anyone while building an
//! alert: the event carries the service's facts as they were when it happened, and the last
//! output lines are read from the service's log while the loop goes on; built alerts come back
//! to the loop in the order of their events.
//!
//! [`AlertHandle`]: super::AlertHandle

use crate::deadline::Later;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
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
use crate::event::{self, Event};

/// Bound on reading a service's last output lines for an alert; without them in time, the
/// alert goes out without them.
const OUTPUT_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on `alert-test` per channel.
const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the Alerter starts from.
pub struct AlerterSpec {
    pub host: String,
    pub state_dir: PathBuf,
    pub alerts: AlertsConfig,
    pub units: BTreeMap<String, UnitEntry>,
    /// Subscribed before the services start, so no early event is missed.
    pub events: broadcast::Receiver<std::sync::Arc<Event>>,
    /// Writes `silences.json` off the async runtime, in order.
    pub writer: crate::files::Writer,
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
    /// Per service, the facts of its last event that had some: for alerts without an event of
    /// their own (a recovery by time) and events published without facts.
    facts: BTreeMap<String, Arc<event::Facts>>,
    /// Alerts waiting for their service's output lines, in the order of their events.
    building: FuturesOrdered<BoxFuture<'static, Alert>>,
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
    let stats = Arc::new(Stats::new());
    let channels = watch::channel(Arc::new(Channels::new(spec.alerts.clone()))).0;
    stats.know(&channels.borrow().names());
    let units = watch::channel(spec.units).0;
    let mut receivers = (spec.events, commands);
    let (host, state_dir, writer) = (spec.host, spec.state_dir, spec.writer);
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
                    silences: Silences::load(&state_dir).with_writer(writer.clone()),
                    outbox: Outbox::new(&state_dir),
                    channels: channels.clone(),
                    units: units.clone(),
                    facts: BTreeMap::new(),
                    building: FuturesOrdered::new(),
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
                    Ok(ev) => self.on_event(std::sync::Arc::unwrap_or_clone(ev)),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "alerter fell behind the event bus; some events were not considered");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.on_cmd(cmd),
                    None => break,
                },
                Some(alert) = self.building.next() => self.release(alert),
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    self.on_tick();
                }
            }
        }
        // Alerts still being built are sent (each waits for its output at most
        // OUTPUT_TIMEOUT); first attempts get a moment; whatever is left stays in the outbox
        // for next time.
        while let Ok(Some(alert)) = tokio::time::timeout(OUTPUT_TIMEOUT, self.building.next()).await
        {
            self.release(alert);
        }
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

    fn on_event(&mut self, ev: Event) {
        if let Some(facts) = &ev.facts {
            self.facts.insert(ev.service.clone(), facts.clone());
        }
        let info = self.unit_info(&ev.service);
        let notices = self
            .policy
            .on_event(&ev.service, &ev.kind, info, Instant::now());
        for n in notices {
            self.emit(n, &ev.time);
        }
    }

    fn on_tick(&mut self) {
        let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        for n in self.policy.tick(Instant::now()) {
            self.emit(n, &now);
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
                self.facts.retain(|s, _| units.contains_key(s));
                self.units.send_replace(units);
                let channels = Channels::new(alerts);
                self.stats.know(&channels.names());
                self.channels.send_replace(Arc::new(channels));
                tracing::info!("alert configuration applied");
            }
        }
    }

    /// Start building the alert for a notice: its facts are the event's (else the last known
    /// of the service); its output lines are read from the service's log beside the loop.
    fn emit(&mut self, n: Notice, time: &str) {
        let facts = self.facts.get(&n.service).cloned();
        let output = facts.as_ref().and_then(|f| f.output.clone());
        let (host, time) = (self.host.clone(), time.to_owned());
        self.building.push_back(Box::pin(async move {
            let output = match output {
                Some(log) => tokio::time::timeout(OUTPUT_TIMEOUT, log.last_lines(OUTPUT_LINES))
                    .await
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            build(&host, &n, facts.as_deref(), output, &time)
        }));
    }

    /// A built alert: hold it (silence) or queue it.
    fn release(&mut self, alert: Alert) {
        if let Some(id) = self.silences.hold(&alert, SystemTime::now()) {
            tracing::info!(service = %alert.service, silence = %id, "alert held back by a silence: {}", alert.summary);
            return;
        }
        let routes = self.routes(&alert.service);
        self.dispatch(alert, routes);
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
            let (outbox, copy) = (self.outbox.clone(), p.clone());
            let deliver = outbox::deliver(
                self.outbox.clone(),
                self.channels.subscribe(),
                p,
                self.stats.clone(),
                self.cancel.clone(),
            );
            // Into the outbox before the first attempt, with its fsync on a blocking thread
            // rather than on the Alerter's loop.
            self.deliveries.spawn(async move {
                let put = tokio::task::spawn_blocking(move || outbox.put(&copy)).await;
                if let Ok(Err(e)) = put {
                    tracing::error!(channel = %channel, error = %e, "cannot write the alert to the outbox; sending it without a durable copy");
                }
                deliver.await
            });
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

/// The alert for notice `n`: what the policy saw in the events, and the service's `facts`
/// where the notice has no figure of its own.
fn build(
    host: &str,
    n: &Notice,
    facts: Option<&event::Facts>,
    output: Vec<String>,
    time: &str,
) -> Alert {
    let probe = n.probe.clone().or_else(|| {
        facts
            .and_then(|f| f.last_probe.as_ref())
            .map(ToString::to_string)
    });
    let facts = Facts {
        exit_code: n.exit_code,
        signal: n.signal.clone(),
        restarts: n.restarts.or(facts.map(|f| f.restarts)).unwrap_or(0),
        backoff_ms: n.backoff_ms,
        reason: n.reason.clone(),
        last_probe: probe,
        release: facts.map(|f| f.release.clone()).filter(|r| !r.is_empty()),
        held_back: n.held_back,
        down: n.down,
        output,
    };
    Alert::new(host, &n.service, n.event, facts, time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventKind, OutputTail};

    /// A service's log: these lines, or (None) a log that never answers.
    #[derive(Debug)]
    struct Log(Option<Vec<&'static str>>);

    impl OutputTail for Log {
        fn last_lines(&self, n: usize) -> BoxFuture<'static, Vec<String>> {
            match &self.0 {
                Some(lines) => {
                    let skip = lines.len().saturating_sub(n);
                    let lines: Vec<String> = lines[skip..].iter().map(|l| l.to_string()).collect();
                    Box::pin(async move { lines })
                }
                None => Box::pin(futures::future::pending()),
            }
        }
    }

    fn facts(release: &str, restarts: u32, log: Log) -> Option<Arc<event::Facts>> {
        Some(Arc::new(event::Facts {
            release: release.into(),
            restarts,
            pid: None,
            last_probe: None,
            output: Some(Arc::new(log)),
        }))
    }

    fn event(service: &str, kind: EventKind, facts: Option<Arc<event::Facts>>) -> Event {
        Event {
            service: service.into(),
            time: "2026-11-22T08:00:00Z".into(),
            kind,
            facts,
        }
    }

    fn failed(service: &str, facts: Option<Arc<event::Facts>>) -> Event {
        let reason = "exited 1; gave up after 5 restarts (start limit)".into();
        event(service, EventKind::Failed { reason }, facts)
    }

    fn alerter(state_dir: &std::path::Path) -> Alerter {
        Alerter {
            host: "h".into(),
            policy: Policy::new(Duration::from_secs(3600)),
            silences: Silences::load(state_dir),
            outbox: Outbox::new(state_dir),
            channels: watch::channel(Arc::new(Channels::new(AlertsConfig::default()))).0,
            units: watch::channel(BTreeMap::new()).0,
            facts: BTreeMap::new(),
            building: FuturesOrdered::new(),
            stats: Arc::new(Stats::new()),
            cancel: CancellationToken::new(),
            deliveries: TaskTracker::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn alerts_are_built_from_the_facts_in_event_order_and_a_silent_log_costs_one_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = alerter(dir.path());
        let t0 = Instant::now();
        a.on_event(failed("stuck", facts("v1", 2, Log(None))));
        a.on_event(failed("api", facts("v7", 5, Log(Some(vec!["a", "b"])))));
        let first = a.building.next().await.unwrap();
        assert_eq!(t0.elapsed(), OUTPUT_TIMEOUT, "the log that never answers");
        assert_eq!(
            (
                first.service.as_str(),
                first.release.as_deref(),
                first.restarts
            ),
            ("stuck", Some("v1"), 2)
        );
        assert!(first.output.is_empty());
        let second = a.building.next().await.unwrap();
        assert_eq!(
            second.summary,
            "api FAILED: exited 1, gave up after 5 restarts"
        );
        assert_eq!(second.release.as_deref(), Some("v7"));
        assert_eq!(second.output, vec!["a", "b"]);
        assert_eq!(t0.elapsed(), OUTPUT_TIMEOUT);
    }

    #[tokio::test]
    async fn an_event_without_facts_takes_the_last_known_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = alerter(dir.path());
        let started = EventKind::Started {
            pid: 7,
            release: "v3".into(),
        };
        a.on_event(event("api", started, facts("v3", 0, Log(Some(vec!["up"])))));
        assert!(a.building.is_empty(), "a start is no alert");
        a.on_event(failed("api", None));
        let alert = a.building.next().await.unwrap();
        assert_eq!(alert.release.as_deref(), Some("v3"));
        assert_eq!(alert.output, vec!["up"]);
        // A service never seen: an alert with what the event says, and nothing more.
        a.on_event(failed("new", None));
        let alert = a.building.next().await.unwrap();
        assert_eq!(alert.summary, "new FAILED: exited 1, not restarting");
        assert_eq!((alert.release, alert.output.len()), (None, 0));
    }
}
