//! Release history per service in `state_dir/history/<service>.json`: what was deployed, when,
//! by whom, with what result. Bounded by the unit's `keep_releases`. Owned by the manager (written through the state writer).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::StateError;

/// One deploy (or rollback) of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub deploy_id: String,
    pub release: String,
    pub previous: String,
    /// `succeeded | failed | rolled_back`.
    pub result: String,
    /// RFC 3339 UTC.
    pub started: String,
    pub finished: String,
    pub duration_ms: u64,
    /// "uid 1001 (ci), pid 4242".
    pub who: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Asked for as a rollback.
    #[serde(default)]
    pub rollback: bool,
}

/// All services' histories.
#[derive(Debug, Default)]
pub struct History {
    dir: PathBuf,
    entries: BTreeMap<String, Vec<HistoryEntry>>,
}

impl History {
    /// Load every `state_dir/history/*.json`; an unreadable file is moved aside with a warning.
    pub fn load(state_dir: &Path) -> History {
        let dir = state_dir.join("history");
        let mut entries = BTreeMap::new();
        if let Ok(files) = std::fs::read_dir(&dir) {
            for f in files.flatten() {
                let path = f.path();
                let Some(name) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".json"))
                else {
                    continue;
                };
                match crate::state::read_bounded(&path, crate::state::MAX_STATE_FILE)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Vec<HistoryEntry>>(&b).ok())
                {
                    Some(list) => {
                        entries.insert(name.to_owned(), list);
                    }
                    None => {
                        let aside = path.with_extension("json.corrupt");
                        let _ = std::fs::rename(&path, &aside);
                        tracing::warn!(path = %path.display(), moved_to = %aside.display(), "deploy history is corrupt; moved aside");
                    }
                }
            }
        }
        History { dir, entries }
    }

    /// Newest last.
    pub fn of(&self, service: &str) -> &[HistoryEntry] {
        self.entries
            .get(service)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Record a finished deploy, keeping the last `keep` entries, and write the file here
    /// and now (orchd itself writes what [`Self::record`] returns through the state writer).
    #[cfg(test)]
    pub fn append(
        &mut self,
        service: &str,
        entry: HistoryEntry,
        keep: usize,
    ) -> Result<(), StateError> {
        let (path, bytes) = self.record(service, entry, keep)?;
        crate::state::write_atomic(&path, &bytes)
    }

    /// Record a finished deploy in memory, keeping the last `keep` entries; returns the file
    /// to write and its new content (for a writer off the async runtime).
    pub fn record(
        &mut self,
        service: &str,
        entry: HistoryEntry,
        keep: usize,
    ) -> Result<(PathBuf, Vec<u8>), StateError> {
        let list = self.entries.entry(service.to_owned()).or_default();
        list.push(entry);
        // Oldest first, but never the last succeeded deploy: a run of failed deploys must not
        // push out what `orchctl rollback` goes back to.
        while list.len() > keep.max(1) {
            let last_good = list.iter().rposition(|e| e.result == "succeeded");
            list.remove(if last_good == Some(0) { 1 } else { 0 });
        }
        let bytes = serde_json::to_vec_pretty(list)?;
        Ok((self.dir.join(format!("{service}.json")), bytes))
    }

    /// The release to go back to from `current`: what the deploy that made `current` active
    /// replaced; else the newest other release that once succeeded.
    pub fn previous_release(&self, service: &str, current: &str) -> Option<String> {
        let list = self.of(service);
        let made_current = list
            .iter()
            .rev()
            .find(|e| e.result == "succeeded" && e.release == current);
        if let Some(e) = made_current {
            if e.previous != current {
                return Some(e.previous.clone());
            }
        }
        list.iter()
            .rev()
            .find(|e| e.result == "succeeded" && e.release != current)
            .map(|e| e.release.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(release: &str, previous: &str, result: &str) -> HistoryEntry {
        HistoryEntry {
            deploy_id: format!("api-{release}"),
            release: release.into(),
            previous: previous.into(),
            result: result.into(),
            started: String::new(),
            finished: String::new(),
            duration_ms: 1,
            who: "root".into(),
            reason: None,
            rollback: false,
        }
    }

    #[test]
    fn keeps_the_last_entries_and_persists_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = History::load(dir.path());
        for i in 1..=7 {
            h.append(
                "api",
                entry(&format!("v{i}"), &format!("v{}", i - 1), "succeeded"),
                5,
            )
            .unwrap();
        }
        assert_eq!(h.of("api").len(), 5);
        assert_eq!(h.of("api")[0].release, "v3");
        let again = History::load(dir.path());
        assert_eq!(again.of("api"), h.of("api"));
    }

    #[test]
    fn failed_deploys_never_push_out_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = History::load(dir.path());
        h.append("api", entry("v2", "v1", "succeeded"), 3).unwrap();
        for _ in 0..5 {
            h.append("api", entry("v3", "v2", "failed"), 3).unwrap();
        }
        let results: Vec<&str> = h.of("api").iter().map(|e| e.result.as_str()).collect();
        assert_eq!(results, ["succeeded", "failed", "failed"]);
        assert_eq!(h.previous_release("api", "v2").as_deref(), Some("v1"));
    }

    #[test]
    fn previous_release_follows_what_was_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = History::load(dir.path());
        h.append("api", entry("v2", "v1", "succeeded"), 5).unwrap();
        h.append("api", entry("v3", "v2", "failed"), 5).unwrap();
        assert_eq!(h.previous_release("api", "v2").as_deref(), Some("v1"));
        h.append("api", entry("v3", "v2", "succeeded"), 5).unwrap();
        assert_eq!(h.previous_release("api", "v3").as_deref(), Some("v2"));
        assert_eq!(h.previous_release("web", "v1"), None);
    }

    #[test]
    fn corrupt_history_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("history")).unwrap();
        std::fs::write(dir.path().join("history/api.json"), b"[{oops").unwrap();
        let h = History::load(dir.path());
        assert!(h.of("api").is_empty());
        assert!(dir.path().join("history/api.json.corrupt").exists());
    }
}
