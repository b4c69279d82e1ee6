//! Persisted daemon state in `state_dir`: per-service active release and operator intent.
//!
//! Written atomically (temp file, fsync, rename, fsync of the directory). A file that cannot be
//! parsed is moved aside with a warning and orchd starts from defaults: never a crash.
//! Owned by the manager task; nothing else writes it.
//! The file helpers it uses live in [`crate::files`] (re-exported here for the other state
//! files: history, silences, outbox).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

pub use crate::files::{
    DirError, MAX_STATE_FILE, StateError, WriteAck, Writer, check_private_dir, create_private_dir,
    read_bounded, read_bounded_string, tighten_modes, write_atomic,
};

use serde::{Deserialize, Serialize};

/// File name inside `state_dir`.
pub const STATE_FILE: &str = "state.json";

/// What orchd remembers about one service across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ServiceState {
    /// Active release; `None` until the first deploy (the unit's `release` applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// The operator stopped it: don't start it at boot.
    #[serde(default)]
    pub stopped: bool,
}

/// The whole persisted state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PersistedState {
    #[serde(default)]
    pub services: BTreeMap<String, ServiceState>,
}

impl PersistedState {
    /// Load `dir/state.json`. Missing → default. Corrupt → moved aside to
    /// `state.json.corrupt-<unix time>` with a warning, and default.
    pub fn load(dir: &Path) -> PersistedState {
        let path = dir.join(STATE_FILE);
        let text = match read_bounded(&path, MAX_STATE_FILE) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return PersistedState::default(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read state; starting from defaults");
                return PersistedState::default();
            }
        };
        match serde_json::from_slice::<PersistedState>(&text) {
            Ok(mut state) => {
                for (name, s) in &mut state.services {
                    if let Some(r) = &s.release {
                        if let Err(e) = crate::config::check_release(r) {
                            tracing::warn!(service = %name, path = %path.display(), error = %e, "ignoring the release in the state file; the unit's release applies");
                            s.release = None;
                        }
                    }
                }
                state
            }
            Err(e) => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let aside = dir.join(format!("{STATE_FILE}.corrupt-{secs}"));
                let moved = fs::rename(&path, &aside);
                tracing::warn!(path = %path.display(), error = %e, moved_to = %aside.display(), moved_ok = moved.is_ok(), "state file is corrupt; moved aside, starting from defaults");
                PersistedState::default()
            }
        }
    }

    /// Write `dir/state.json` atomically, here and now (orchd itself writes through
    /// [`Self::save_with`]).
    #[cfg(test)]
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(self)?;
        write_atomic(&dir.join(STATE_FILE), &bytes)
    }

    /// Write `dir/state.json` on `writer`'s thread; `ack` hears when it is written.
    pub fn save_with(&self, dir: &Path, writer: &Writer, ack: Option<WriteAck>) {
        match serde_json::to_vec_pretty(self) {
            Ok(bytes) => writer.write(dir.join(STATE_FILE), bytes, ack),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the state");
                if let Some(ack) = ack {
                    let _ = ack.send(Err(e.to_string()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = PersistedState::default();
        s.services.insert(
            "api".into(),
            ServiceState {
                release: Some("v2".into()),
                stopped: true,
            },
        );
        s.save(dir.path()).unwrap();
        assert_eq!(PersistedState::load(dir.path()), s);
    }

    #[test]
    fn corrupt_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(STATE_FILE), b"{not json").unwrap();
        assert_eq!(PersistedState::load(dir.path()), PersistedState::default());
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1);
        assert!(names[0].starts_with("state.json.corrupt-"), "{names:?}");
    }

    #[test]
    fn invalid_releases_in_state_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(STATE_FILE),
            br#"{"services":{"api":{"release":"../../x"},"web":{"release":"v2"}}}"#,
        )
        .unwrap();
        let s = PersistedState::load(dir.path());
        assert_eq!(s.services["api"].release, None);
        assert_eq!(s.services["web"].release.as_deref(), Some("v2"));
    }

    #[test]
    fn missing_file_is_default() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(PersistedState::load(dir.path()), PersistedState::default());
    }
}
