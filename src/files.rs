//! The file helpers every file orchd reads or writes goes through: [`write_atomic`] (a fresh
//! `O_EXCL` temp file, mode 0600, in a 0700 directory: no symlink is followed and no other user
//! reads alert bodies or releases), the [`Writer`] thread that does those writes off the async
//! runtime, [`read_bounded`] (regular files only, with a size cap: a unit or state file that is
//! a FIFO or `/dev/zero` is an error, not a hang) and [`check_private_dir`]. Uses nothing else
//! of orch: configuration loading and state both stand on it.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Errors reading or writing state files.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("writing {path}: {source}; check that state_dir exists and is writable by orchd")]
    Write { path: PathBuf, source: io::Error },
    #[error("encoding state: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The one thread that writes state files, in the order asked, so that fsyncs never hold an
/// async worker (the manager's loop asks and goes on). A job may carry an acknowledgement,
/// sent once it (and every job asked before it) is written.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: std::sync::mpsc::Sender<WriteJob>,
}

/// The result a write is acknowledged with: its error in words.
pub type WriteAck = tokio::sync::oneshot::Sender<Result<(), String>>;

#[derive(Debug)]
struct WriteJob {
    /// None: a barrier, acknowledged once every write before it is done.
    path: Option<PathBuf>,
    bytes: Vec<u8>,
    ack: Option<WriteAck>,
}

impl Writer {
    /// Start the writer thread.
    pub fn start() -> io::Result<Writer> {
        let (tx, rx) = std::sync::mpsc::channel::<WriteJob>();
        std::thread::Builder::new()
            .name("orch-state".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    let result = match &job.path {
                        Some(path) => write_atomic(path, &job.bytes),
                        None => Ok(()),
                    };
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "cannot write a state file");
                    }
                    if let Some(ack) = job.ack {
                        let _ = ack.send(result.map_err(|e| e.to_string()));
                    }
                }
            })?;
        Ok(Writer { tx })
    }

    /// Write `bytes` to `path` atomically, after what was asked before; `ack` hears when.
    pub fn write(&self, path: PathBuf, bytes: Vec<u8>, ack: Option<WriteAck>) {
        self.send(Some(path), bytes, ack);
    }

    /// Wait (at most `bound`) until everything asked so far is written: before orchd exits.
    pub async fn flush(&self, bound: std::time::Duration) {
        let (ack, done) = tokio::sync::oneshot::channel();
        self.send(None, Vec::new(), Some(ack));
        if tokio::time::timeout(bound, done).await.is_err() {
            tracing::warn!("state files were still being written when orchd stopped");
        }
    }

    fn send(&self, path: Option<PathBuf>, bytes: Vec<u8>, ack: Option<WriteAck>) {
        if let Err(std::sync::mpsc::SendError(job)) = self.tx.send(WriteJob { path, bytes, ack }) {
            tracing::error!(path = ?job.path, "the state writer is gone; not written");
            if let Some(ack) = job.ack {
                let _ = ack.send(Err("the state writer is gone".into()));
            }
        }
    }
}

/// Largest state, history, silences or outbox file read back.
pub const MAX_STATE_FILE: u64 = 16 * 1024 * 1024;

/// Write `bytes` to `path` so that a crash leaves either the old or the new content.
///
/// The temp file is created next to `path` with `O_CREAT | O_EXCL` and a random name (the
/// `tempfile` crate), so a symlink planted there is never followed, mode 0600; the rename
/// replaces `path` itself, never a file a symlink at `path` points to. Missing directories
/// are created 0700.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir).map_err(err)?;
    let mut f = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.as_file().sync_all().map_err(err)?;
    f.persist(path).map_err(|e| err(e.error))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(())
}

/// `mkdir -p`, the last directory with mode 0700, the parents it creates 0755 (never group-
/// or world-writable, whatever the umask: one may be the API socket's directory).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        other => other,
    }
}

/// Make `state_dir`, the directories orchd keeps in it and their files private (0700 and
/// 0600): state written by an older orchd, or a package that made `state_dir` 0750, keeps no
/// alert body or release readable by other users. Symlinks are left alone.
pub fn tighten_modes(state_dir: &Path) {
    let set = |path: &Path, mode: u32| {
        if let Ok(meta) = fs::symlink_metadata(path) {
            if !meta.file_type().is_symlink() && meta.mode() & 0o777 != mode {
                if let Err(e) = fs::set_permissions(path, fs::Permissions::from_mode(mode)) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot make a state file private");
                }
            }
        }
    };
    set(state_dir, 0o700);
    let Ok(entries) = fs::read_dir(state_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => {
                set(&path, 0o700);
                for inner in fs::read_dir(&path).into_iter().flatten().flatten() {
                    if inner.file_type().is_ok_and(|t| t.is_file()) {
                        set(&inner.path(), 0o600);
                    }
                }
            }
            Ok(t) if t.is_file() => set(&path, 0o600),
            _ => {}
        }
    }
}

/// Read a regular file of at most `max` bytes. Anything else (a FIFO, a device, a directory,
/// a dangling or looping symlink) or a larger file is an error that says so.
pub fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {max} bytes ({} bytes)", meta.len()),
        ));
    }
    let mut buf = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    f.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(buf)
}

/// [`read_bounded`] as UTF-8 text.
pub fn read_bounded_string(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read_bounded(path, max)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not valid UTF-8"))
}

/// Why a directory orchd keeps its state or socket in is unsafe.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("cannot use {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "refusing to use {what} {path}: it is owned by uid {owner}, not by orchd's user (uid {me}); \
         `chown {me} {path}` or choose another directory"
    )]
    Owner {
        what: &'static str,
        path: PathBuf,
        owner: u32,
        me: u32,
    },
    #[error(
        "refusing to use {what} {path}: it is writable by other users (mode {mode:04o}); \
         `chmod go-w {path}` or choose another directory"
    )]
    Writable {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
}

/// Refuse a directory that anyone but orchd's own user could write to: whoever can write
/// there can replace state files or the API socket.
pub fn check_private_dir(dir: &Path, what: &'static str) -> Result<(), DirError> {
    let meta = fs::metadata(dir).map_err(|source| DirError::Io {
        what,
        path: dir.to_owned(),
        source,
    })?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(DirError::Owner {
            what,
            path: dir.to_owned(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(DirError::Writable {
            what,
            path: dir.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn files_are_private_and_symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("history");
        let target = dir.path().join("victim");
        fs::write(&target, b"keep").unwrap();
        create_private_dir(&sub).unwrap();
        // A symlink where the state file goes: replaced, its target untouched.
        std::os::unix::fs::symlink(&target, sub.join("api.json")).unwrap();
        write_atomic(&sub.join("api.json"), b"[]").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        let meta = fs::symlink_metadata(sub.join("api.json")).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&sub).unwrap().mode() & 0o777, 0o700);
        // No temp file left behind.
        assert_eq!(fs::read_dir(&sub).unwrap().count(), 1);
    }

    #[test]
    fn bounded_reads_refuse_what_is_not_a_small_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        fs::write(&big, vec![b'x'; 11]).unwrap();
        assert_eq!(read_bounded(&big, 11).unwrap().len(), 11);
        assert_eq!(
            read_bounded(&big, 10).unwrap_err().to_string(),
            "larger than 10 bytes (11 bytes)"
        );
        assert_eq!(
            read_bounded(Path::new("/dev/zero"), 10)
                .unwrap_err()
                .to_string(),
            "not a regular file"
        );
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(
            read_bounded(&fifo, 10).unwrap_err().to_string(),
            "not a regular file"
        );
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert_eq!(
            read_bounded(&dangling, 10).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn private_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("state");
        create_private_dir(&d).unwrap();
        check_private_dir(&d, "state_dir").unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o775)).unwrap();
        assert_eq!(
            check_private_dir(&d, "state_dir").unwrap_err().to_string(),
            format!(
                "refusing to use state_dir {}: it is writable by other users (mode 0775); \
                 `chmod go-w {}` or choose another directory",
                d.display(),
                d.display()
            )
        );
    }
}
