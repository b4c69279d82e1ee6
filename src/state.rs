//! Persisted daemon state in `state_dir`: per-service active release and operator intent.
//!
//! Written atomically (temp file, fsync, rename, fsync of the directory). A file that cannot be
//! parsed is moved aside with a warning and orchd starts from defaults: never a crash.
//! Owned by the manager task; nothing else writes it.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

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

/// Errors reading or writing state files.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("writing {path}: {source}; check that state_dir exists and is writable by orchd")]
    Write { path: PathBuf, source: io::Error },
    #[error("encoding state: {0}")]
    Encode(#[from] serde_json::Error),
}

impl PersistedState {
    /// Load `dir/state.json`. Missing → default. Corrupt → moved aside to
    /// `state.json.corrupt-<unix time>` with a warning, and default.
    pub fn load(dir: &Path) -> PersistedState {
        let path = dir.join(STATE_FILE);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return PersistedState::default(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read state; starting from defaults");
                return PersistedState::default();
            }
        };
        match serde_json::from_slice(&text) {
            Ok(state) => state,
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

    /// Write `dir/state.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(self)?;
        write_atomic(&dir.join(STATE_FILE), &bytes)
    }
}

/// Write `bytes` to `path` so that a crash leaves either the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(err)?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = fs::File::create(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    fs::rename(&tmp, path).map_err(err)?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(())
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
    fn missing_file_is_default() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(PersistedState::load(dir.path()), PersistedState::default());
    }
}
