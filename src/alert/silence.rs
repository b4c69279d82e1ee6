//! Silences: `orchctl silence SVC|all --for DUR`. While one covers a service, its alerts are
//! held back (recorded, not sent); when the silence ends (it expires by itself, or
//! `unsilence`) what it held is summarised in one message. Persisted in
//! `state_dir/silences.json` (atomic writes) so a restart of orchd keeps them.
//! Owned by the Alerter task.

use crate::deadline::Later;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::message::Alert;
use crate::state::write_atomic;

/// File name inside `state_dir`.
pub const SILENCES_FILE: &str = "silences.json";

/// An alert a silence held back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    pub time: String,
    pub service: String,
    pub summary: String,
}

/// One silence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    /// A service name or `all`.
    pub target: String,
    /// RFC 3339 UTC.
    pub created: String,
    /// RFC 3339 UTC.
    pub until: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub held: Vec<Held>,
    /// Alerts held beyond the [`MAX_HELD`] listed in `held`: only counted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held_more: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Alerts a silence lists; more are only counted (a year-long silence of a flapping service
/// must not grow `silences.json` without end).
pub const MAX_HELD: usize = 100;
/// Silences active at once.
pub const MAX_SILENCES: usize = 1000;

impl Silence {
    fn until_time(&self) -> SystemTime {
        humantime::parse_rfc3339_weak(&self.until).unwrap_or(SystemTime::UNIX_EPOCH)
    }

    fn covers(&self, service: &str) -> bool {
        self.target == "all" || self.target == service
    }
}

/// All silences, persisted.
#[derive(Debug)]
pub struct Silences {
    path: PathBuf,
    list: Vec<Silence>,
    /// Writes the file in order, off the async runtime (None: write here and now, for tests).
    writer: Option<crate::files::Writer>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Silences {
    /// Load `state_dir/silences.json`; missing or unreadable → none (with a warning).
    pub fn load(state_dir: &Path) -> Silences {
        let path = state_dir.join(SILENCES_FILE);
        let list = match crate::state::read_bounded(&path, crate::state::MAX_STATE_FILE) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), error = %e, "silences file is corrupt; starting without silences");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        };
        Silences {
            path,
            list,
            writer: None,
        }
    }

    /// Write the file through `writer` (one thread, in order) from now on.
    pub fn with_writer(mut self, writer: crate::files::Writer) -> Silences {
        self.writer = Some(writer);
        self
    }

    fn save(&self) {
        let bytes = match serde_json::to_vec_pretty(&self.list) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode silences");
                return;
            }
        };
        match &self.writer {
            Some(w) => w.write(self.path.clone(), bytes, None),
            None => {
                if let Err(e) = write_atomic(&self.path, &bytes) {
                    tracing::error!(error = %e, "cannot persist silences");
                }
            }
        }
    }

    /// Start a silence.
    pub fn add(
        &mut self,
        target: &str,
        duration: Duration,
        reason: Option<String>,
        now: SystemTime,
    ) -> Silence {
        let s = Silence {
            id: format!("s{:06x}", rand::random::<u32>() & 0xff_ffff),
            target: target.to_owned(),
            created: rfc3339(now),
            until: rfc3339(now.later(duration)),
            reason,
            held: Vec::new(),
            held_more: 0,
        };
        self.list.push(s.clone());
        self.save();
        s
    }

    /// Whether another silence may be added.
    pub fn full(&self) -> bool {
        self.list.len() >= MAX_SILENCES
    }

    /// End a silence early.
    pub fn remove(&mut self, id: &str) -> Option<Silence> {
        let i = self.list.iter().position(|s| s.id == id)?;
        let s = self.list.remove(i);
        self.save();
        Some(s)
    }

    /// If an active silence covers the alert's service, record the alert in it and say so.
    pub fn hold(&mut self, alert: &Alert, now: SystemTime) -> Option<String> {
        let s = self
            .list
            .iter_mut()
            .find(|s| s.covers(&alert.service) && s.until_time() > now)?;
        if s.held.len() < MAX_HELD {
            s.held.push(Held {
                time: alert.time.clone(),
                service: alert.service.clone(),
                summary: alert.summary.clone(),
            });
        } else {
            s.held_more = s.held_more.saturating_add(1);
        }
        let id = s.id.clone();
        self.save();
        Some(id)
    }

    /// Remove and return the silences that have ended by `now`.
    pub fn expire(&mut self, now: SystemTime) -> Vec<Silence> {
        let (ended, active): (Vec<Silence>, Vec<Silence>) = std::mem::take(&mut self.list)
            .into_iter()
            .partition(|s| s.until_time() <= now);
        self.list = active;
        if !ended.is_empty() {
            self.save();
        }
        ended
    }

    /// When the next silence ends.
    pub fn next_expiry(&self) -> Option<SystemTime> {
        self.list.iter().map(Silence::until_time).min()
    }

    pub fn list(&self) -> Vec<Silence> {
        self.list.clone()
    }
}

/// The summary text for an ended silence (the `reason` of its `silence_ended` alert).
pub fn summary(s: &Silence) -> String {
    let mut out = format!(
        "silence {} on {} ({} to {}{}) held back {} alert(s):",
        s.id,
        s.target,
        s.created,
        s.until,
        s.reason
            .as_deref()
            .map(|r| format!(", reason: {r}"))
            .unwrap_or_default(),
        s.held.len() as u64 + s.held_more
    );
    for h in &s.held {
        out.push_str(&format!("\n  {} {}", h.time, h.summary));
    }
    if s.held_more > 0 {
        out.push_str(&format!("\n  … and {} more", s.held_more));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::message::{AlertEvent, Facts};

    #[test]
    fn holds_persists_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut s = Silences::load(dir.path());
        let sil = s.add(
            "api",
            Duration::from_secs(60),
            Some("db migration".into()),
            t0,
        );
        let a = Alert::new(
            "h",
            "api",
            AlertEvent::Crashed,
            Facts::default(),
            "2027-01-15T08:00:00Z",
        );
        let other = Alert::new(
            "h",
            "web",
            AlertEvent::Crashed,
            Facts::default(),
            "2027-01-15T08:00:00Z",
        );
        assert_eq!(
            s.hold(&a, t0 + Duration::from_secs(1)),
            Some(sil.id.clone())
        );
        assert_eq!(s.hold(&other, t0), None);
        let reloaded = Silences::load(dir.path());
        assert_eq!(reloaded.list().len(), 1);
        assert_eq!(reloaded.list()[0].held.len(), 1);
        assert_eq!(s.next_expiry(), Some(t0 + Duration::from_secs(60)));
        assert!(s.expire(t0 + Duration::from_secs(59)).is_empty());
        let ended = s.expire(t0 + Duration::from_secs(60));
        assert_eq!(ended.len(), 1);
        assert!(
            summary(&ended[0]).contains(
                "reason: db migration) held back 1 alert(s):\n  2027-01-15T08:00:00Z api FAILED"
            ),
            "{}",
            summary(&ended[0])
        );
        assert!(Silences::load(dir.path()).list().is_empty());
    }

    #[test]
    fn what_a_silence_holds_and_how_many_there_are_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut s = Silences::load(dir.path());
        s.add("all", Duration::from_secs(60), None, t0);
        let a = Alert::new("h", "api", AlertEvent::Crashed, Facts::default(), "t");
        for _ in 0..MAX_HELD + 50 {
            s.hold(&a, t0);
        }
        let ended = s.expire(t0 + Duration::from_secs(60));
        assert_eq!(ended[0].held.len(), MAX_HELD);
        assert_eq!(ended[0].held_more, 50);
        let text = summary(&ended[0]);
        assert!(text.contains("held back 150 alert(s)"), "{text}");
        assert!(text.ends_with("\n  … and 50 more"), "{text}");
        let one = s.add("all", Duration::from_secs(60), None, t0);
        assert!(!s.full());
        s.list = vec![one; MAX_SILENCES];
        assert!(s.full());
    }
}
