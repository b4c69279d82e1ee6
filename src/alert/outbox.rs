//! The durable outbox: one JSON file per pending delivery (alert × channel) in
//! `state_dir/outbox/`, written atomically before the first attempt and removed on delivery.
//!
//! Each pending delivery has its own task ([`deliver`]) that retries with exponential backoff
//! (1 s, 2 s, 4 s, … capped at 1 h) for up to 24 h, then drops it with an error. A permanent
//! error (a 4xx other than 429) drops it at once. Pending files are resent when orchd starts.
//! Owned by the Alerter task; a delivery never blocks it or supervision. Deliveries count what
//! becomes of them per channel in [`Stats`], which the metrics endpoint reads.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Channels;
use super::message::Alert;
use crate::state::{StateError, write_atomic};

/// Directory inside `state_dir`.
pub const OUTBOX_DIR: &str = "outbox";
/// How long a delivery is retried before it is dropped.
pub const KEEP_FOR: Duration = Duration::from_secs(24 * 3600);
/// Longest pause between two attempts.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);
/// One attempt may take this long (SMTP dialogue or HTTP request).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// What became of one channel's deliveries since orchd started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChannelStats {
    /// Alerts delivered.
    pub delivered: u64,
    /// Attempts that failed (each retry counts).
    pub failed_attempts: u64,
    /// Alerts given up: a permanent error, or retried for [`KEEP_FOR`].
    pub dropped: u64,
    /// Deliveries under way: being attempted or waiting to retry (their files are in the outbox).
    pub pending: u64,
}

/// Every channel's [`ChannelStats`], by channel name.
pub type DeliveryStats = BTreeMap<String, ChannelStats>;

/// The delivery counters: written by the deliveries, read (as a `watch`) by the metrics
/// endpoint. Outlives restarts of the Alerter.
#[derive(Debug)]
pub struct Stats {
    tx: watch::Sender<DeliveryStats>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            tx: watch::channel(DeliveryStats::new()).0,
        }
    }

    /// The counters now and as they change.
    pub fn subscribe(&self) -> watch::Receiver<DeliveryStats> {
        self.tx.subscribe()
    }

    /// Let configured channels show (at zero) before their first alert.
    pub fn know(&self, channels: &[String]) {
        self.tx.send_if_modified(|all| {
            let before = all.len();
            for c in channels {
                all.entry(c.clone()).or_default();
            }
            all.len() != before
        });
    }

    fn update(&self, channel: &str, change: impl FnOnce(&mut ChannelStats)) {
        self.tx.send_modify(|all| match all.get_mut(channel) {
            Some(c) => change(c),
            None => change(all.entry(channel.to_owned()).or_default()),
        });
    }

    /// Count a delivery under way until the returned guard is dropped.
    fn pending(self: &Arc<Self>, channel: &str) -> PendingGuard {
        self.update(channel, |c| c.pending += 1);
        PendingGuard {
            stats: self.clone(),
            channel: channel.to_owned(),
        }
    }
}

/// A delivery under way; it ends (in the counters) however the delivery task ends.
struct PendingGuard {
    stats: Arc<Stats>,
    channel: String,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.stats
            .update(&self.channel, |c| c.pending = c.pending.saturating_sub(1));
    }
}

/// One alert to deliver to one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// File stem: the alert id and the channel.
    pub id: String,
    pub channel: String,
    /// Unix seconds when it was queued.
    pub created: u64,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub alert: Alert,
}

impl Pending {
    pub fn new(alert: Alert, channel: &str) -> Pending {
        let safe: String = channel
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Pending {
            id: format!("{}-{safe}", alert.id),
            channel: channel.to_owned(),
            created: unix_now(),
            attempts: 0,
            last_error: None,
            alert,
        }
    }
}

/// The outbox directory.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    pub fn new(state_dir: &Path) -> Outbox {
        Outbox {
            dir: state_dir.join(OUTBOX_DIR),
        }
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Write (or rewrite) a pending delivery, atomically.
    pub fn put(&self, p: &Pending) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(p)?;
        write_atomic(&self.path(&p.id), &bytes)
    }

    /// Forget a delivered (or dropped) one.
    pub fn remove(&self, id: &str) {
        if let Err(e) = fs::remove_file(self.path(id)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(file = %self.path(id).display(), error = %e, "cannot remove delivered alert from the outbox");
            }
        }
    }

    /// Every pending delivery, oldest first. A file that does not parse is moved aside.
    pub fn load(&self) -> Vec<Pending> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<Pending> = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let parsed = crate::state::read_bounded(&path, crate::state::MAX_STATE_FILE)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Pending>(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(p) => out.push(p),
                Err(e) => {
                    let aside = path.with_extension("corrupt");
                    let moved = fs::rename(&path, &aside).is_ok();
                    tracing::warn!(file = %path.display(), error = %e, moved_aside = moved, "unreadable outbox entry");
                }
            }
        }
        out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        out
    }
}

/// The pause after `attempts` failed attempts.
pub fn retry_delay(attempts: u32) -> Duration {
    let secs = 1u64 << attempts.saturating_sub(1).min(20);
    Duration::from_secs(secs).min(MAX_RETRY_DELAY)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Deliver `p` until it is delivered, permanently refused, too old, or orchd stops (then it
/// stays in the outbox for the next start).
pub async fn deliver(
    outbox: Outbox,
    channels: watch::Receiver<Arc<Channels>>,
    mut p: Pending,
    stats: Arc<Stats>,
    cancel: CancellationToken,
) {
    let _pending = stats.pending(&p.channel);
    loop {
        let chans = channels.borrow().clone();
        let result =
            match tokio::time::timeout(ATTEMPT_TIMEOUT, chans.send(&p.channel, &p.alert)).await {
                Ok(r) => r,
                Err(_) => Err(super::DeliveryError::retry(format!(
                    "no answer within {}s",
                    ATTEMPT_TIMEOUT.as_secs()
                ))),
            };
        let (channel, alert) = (&p.channel, &p.alert.id);
        let e = match result {
            Ok(()) => {
                outbox.remove(&p.id);
                stats.update(channel, |c| c.delivered += 1);
                tracing::info!(channel = %channel, alert = %alert, service = %p.alert.service, attempts = p.attempts + 1, "alert delivered");
                return;
            }
            Err(e) => e,
        };
        stats.update(channel, |c| c.failed_attempts += 1);
        p.attempts += 1;
        let age = unix_now().saturating_sub(p.created);
        if e.permanent || age >= KEEP_FOR.as_secs() {
            outbox.remove(&p.id);
            stats.update(channel, |c| c.dropped += 1);
            let why = if e.permanent {
                "permanent error"
            } else {
                "retried for 24 h"
            };
            tracing::error!(channel = %channel, alert = %alert, attempts = p.attempts, error = %e.message, "alert dropped ({why})");
            return;
        }
        let delay = retry_delay(p.attempts);
        tracing::warn!(channel = %channel, alert = %alert, attempts = p.attempts, retry_in_s = delay.as_secs(), error = %e.message, "alert delivery failed; kept in the outbox");
        p.last_error = Some(e.message);
        if let Err(e) = outbox.put(&p) {
            tracing::error!(error = %e, "cannot update the outbox");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::message::{AlertEvent, Facts};

    #[test]
    fn delays_double_up_to_an_hour() {
        let d: Vec<u64> = [1, 2, 3, 4, 12, 13, 40]
            .iter()
            .map(|&n| retry_delay(n).as_secs())
            .collect();
        assert_eq!(d, vec![1, 2, 4, 8, 2048, 3600, 3600]);
    }

    #[tokio::test]
    async fn a_refused_delivery_is_counted_failed_and_dropped_and_no_longer_pending() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::new(dir.path());
        let stats = Arc::new(Stats::new());
        stats.know(&["oncall".to_owned()]);
        let alert = Alert::new(
            "h",
            "api",
            AlertEvent::Test,
            Facts::default(),
            "2026-01-01T00:00:00Z",
        );
        let p = Pending::new(alert, "gone");
        outbox.put(&p).unwrap();
        // A channel no longer configured: a permanent error, dropped at the first attempt.
        let channels = watch::channel(Arc::new(Channels::new(Default::default()))).1;
        let delivery = tokio::spawn(deliver(
            outbox.clone(),
            channels,
            p,
            stats.clone(),
            CancellationToken::new(),
        ));
        delivery.await.unwrap();
        let gone = ChannelStats {
            failed_attempts: 1,
            dropped: 1,
            ..ChannelStats::default()
        };
        let all = stats.subscribe().borrow().clone();
        assert_eq!(
            all,
            DeliveryStats::from([
                ("gone".to_owned(), gone),
                ("oncall".to_owned(), ChannelStats::default())
            ])
        );
        assert!(outbox.load().is_empty());
    }

    #[test]
    fn entries_round_trip_and_corrupt_ones_move_aside() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::new(dir.path());
        let a = Alert::new(
            "h",
            "api",
            AlertEvent::Test,
            Facts::default(),
            "2026-01-01T00:00:00Z",
        );
        let p = Pending::new(a, "on/call");
        assert!(p.id.ends_with("-on_call"), "{}", p.id);
        o.put(&p).unwrap();
        fs::write(dir.path().join("outbox/x.json"), b"{").unwrap();
        assert_eq!(o.load(), vec![p.clone()]);
        assert!(dir.path().join("outbox/x.corrupt").exists());
        o.remove(&p.id);
        assert!(o.load().is_empty());
    }
}
