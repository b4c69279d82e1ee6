//! Who may hold how many of the socket's connections, and how many bytes of partial requests.
//!
//! The socket server asks [`Limits::admit`] for a [`Slot`] before it serves a connection and
//! holds it for the connection's life. Callers with full rights (root, orchd's own user,
//! `socket_group`: `Rights::All` in `auth.rs`) may use any of the [`MAX_CONNECTIONS`];
//! everyone else shares at most [`MAX_UNPRIVILEGED`] of them, [`PER_UID`] per user, so no
//! number of connections from other users can lock an administrator out. Partial request
//! lines of unprivileged callers share [`UNPRIVILEGED_BUFFER_BUDGET`]; over it, the largest
//! one is evicted (its connection is told and closed). One small table behind a `std` mutex:
//! it is held for a few map operations and never across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::auth::Caller;

/// Connections served at once, all callers together.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections kept for callers with full rights: unprivileged callers never take these.
pub const RESERVED_FOR_ADMINS: usize = 64;
/// Connections unprivileged callers may hold together.
pub const MAX_UNPRIVILEGED: usize = MAX_CONNECTIONS - RESERVED_FOR_ADMINS;
/// Connections one unprivileged uid may hold. `orchctl` uses one per command; a script
/// running a few commands in parallel, or a `logs -f` per service on a dashboard, fits.
pub const PER_UID: usize = 16;
/// Bytes of partial request lines all unprivileged connections may hold together: one user's
/// full share of connections, each with a line of the longest size.
pub const UNPRIVILEGED_BUFFER_BUDGET: usize = 16 * 1024 * 1024;

/// A refused connection: the message says which limit, and who holds the connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

/// The shared table of connections; cheap to clone.
#[derive(Clone, Default)]
pub struct Limits {
    table: Arc<Mutex<Table>>,
    trim: Arc<AtomicBool>,
}

#[derive(Default)]
struct Table {
    total: usize,
    unprivileged: usize,
    by_uid: HashMap<u32, Holder>,
    /// Partial-line bytes of unprivileged connections, by connection id.
    buffers: HashMap<u64, Buffered>,
    buffered: usize,
    next_id: u64,
}

#[derive(Default)]
struct Holder {
    user: String,
    conns: usize,
    /// Of `conns`, those without full rights (a user may be in `socket_group` in one process
    /// and not in another).
    unprivileged: usize,
    /// Connections by the pid that opened them.
    pids: BTreeMap<i32, usize>,
}

struct Buffered {
    bytes: usize,
    evict: CancellationToken,
}

/// One admitted connection; gives its place back when dropped.
pub struct Slot {
    limits: Limits,
    id: u64,
    uid: u32,
    pid: Option<i32>,
    privileged: bool,
    evicted: CancellationToken,
}

impl Limits {
    pub fn new() -> Limits {
        Limits::default()
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while the table is held leaves it consistent (each update is one step).
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admit `caller` (with full rights if `privileged`), or say which limit it hit.
    pub fn admit(&self, caller: &Caller, privileged: bool) -> Result<Slot, Refusal> {
        let mut t = self.lock();
        if t.total >= MAX_CONNECTIONS {
            return Err(Refusal(format!(
                "too many connections (limit {MAX_CONNECTIONS}, all callers together); held by {}; \
                 try again when some have closed",
                t.holders(false)
            )));
        }
        if !privileged {
            let own = t.by_uid.get(&caller.uid).map_or(0, |h| h.conns);
            if own >= PER_UID {
                let pids = t
                    .by_uid
                    .get(&caller.uid)
                    .map(Holder::pids)
                    .unwrap_or_default();
                return Err(Refusal(format!(
                    "too many connections from {} (limit {PER_UID} per user without full rights): \
                     {own} open, by pid {pids}; close some of them and try again",
                    describe(caller.uid, &caller.user)
                )));
            }
            if t.unprivileged >= MAX_UNPRIVILEGED {
                return Err(Refusal(format!(
                    "too many connections from users without full rights (limit {MAX_UNPRIVILEGED} \
                     together; {RESERVED_FOR_ADMINS} more are kept for root, orchd's user and \
                     socket_group); held by {}; try again when some have closed",
                    t.holders(true)
                )));
            }
            t.unprivileged += 1;
        }
        t.total += 1;
        let h = t.by_uid.entry(caller.uid).or_default();
        h.user.clone_from(&caller.user);
        h.conns += 1;
        h.unprivileged += usize::from(!privileged);
        *h.pids.entry(caller.pid.unwrap_or(0)).or_default() += 1;
        let id = t.next_id;
        t.next_id += 1;
        Ok(Slot {
            limits: self.clone(),
            id,
            uid: caller.uid,
            pid: caller.pid,
            privileged,
            evicted: CancellationToken::new(),
        })
    }

    /// Return freed heap memory to the kernel soon (at most once a second): glibc keeps freed
    /// chunks of large buffers in its arenas, where 200 slow 1 MiB lines left ~130 MB resident.
    pub fn trim_heap_soon(&self) {
        if self.trim.swap(true, Ordering::AcqRel) {
            return;
        }
        let pending = self.trim.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            pending.store(false, Ordering::Release);
            let _ = tokio::task::spawn_blocking(trim_heap).await;
        });
    }
}

#[cfg(target_env = "gnu")]
fn trim_heap() {
    // SAFETY: malloc_trim only returns free memory of glibc's arenas to the kernel.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(target_env = "gnu"))]
fn trim_heap() {}

impl Table {
    /// "uid 65534 (nobody) 16, uid 1000 (ann) 3": the biggest holders first, of all
    /// connections or of those without full rights only.
    fn holders(&self, unprivileged_only: bool) -> String {
        let count = |h: &Holder| {
            if unprivileged_only {
                h.unprivileged
            } else {
                h.conns
            }
        };
        let mut list: Vec<(u32, &Holder, usize)> = self
            .by_uid
            .iter()
            .map(|(uid, h)| (*uid, h, count(h)))
            .filter(|(_, _, n)| *n > 0)
            .collect();
        list.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
        let shown: Vec<String> = list
            .iter()
            .take(5)
            .map(|(uid, h, n)| format!("{} {n}", describe(*uid, &h.user)))
            .collect();
        let more = list.len().saturating_sub(shown.len());
        if more > 0 {
            format!("{} and {more} more users", shown.join(", "))
        } else {
            shown.join(", ")
        }
    }

    /// Take `id`'s bytes out of the budget and tell its connection to drop its line.
    fn evict(&mut self, id: u64) {
        if let Some(b) = self.buffers.remove(&id) {
            self.buffered -= b.bytes;
            b.evict.cancel();
        }
    }
}

fn describe(uid: u32, user: &str) -> String {
    if user == uid.to_string() {
        format!("uid {uid}")
    } else {
        format!("uid {uid} ({user})")
    }
}

impl Holder {
    /// "123 ×10, 456 ×6"
    fn pids(&self) -> String {
        let mut list: Vec<(&i32, &usize)> = self.pids.iter().collect();
        list.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let shown: Vec<String> = list
            .iter()
            .take(8)
            .map(|(pid, n)| {
                let pid = if **pid == 0 {
                    "?".to_owned()
                } else {
                    pid.to_string()
                };
                if **n == 1 {
                    pid
                } else {
                    format!("{pid} ×{n}")
                }
            })
            .collect();
        let more = list.len().saturating_sub(shown.len());
        if more > 0 {
            format!("{} and {more} more", shown.join(", "))
        } else {
            shown.join(", ")
        }
    }
}

impl Slot {
    pub fn privileged(&self) -> bool {
        self.privileged
    }

    /// Cancelled when this connection's partial line was evicted to keep within the budget.
    pub fn evicted(&self) -> &CancellationToken {
        &self.evicted
    }

    /// Ask for freed heap memory to go back to the kernel (after a large buffer is dropped).
    pub fn trim_heap_soon(&self) {
        self.limits.trim_heap_soon();
    }

    /// This connection now holds `bytes` of buffer. Over the unprivileged budget, the largest
    /// holder (maybe this one) is evicted. Privileged connections are not counted.
    pub fn hold(&self, bytes: usize) {
        if self.privileged || self.evicted.is_cancelled() {
            return;
        }
        let mut guard = self.limits.lock();
        let t = &mut *guard;
        match t.buffers.get_mut(&self.id) {
            Some(b) => {
                t.buffered = t.buffered - b.bytes + bytes;
                b.bytes = bytes;
            }
            None => {
                t.buffered += bytes;
                t.buffers.insert(
                    self.id,
                    Buffered {
                        bytes,
                        evict: self.evicted.clone(),
                    },
                );
            }
        }
        while t.buffered > UNPRIVILEGED_BUFFER_BUDGET {
            let largest = t
                .buffers
                .iter()
                .max_by_key(|(id, b)| (b.bytes, std::cmp::Reverse(**id)))
                .map(|(id, _)| *id);
            match largest {
                Some(id) => t.evict(id),
                None => break,
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.limits.lock();
        t.total -= 1;
        if !self.privileged {
            t.unprivileged -= 1;
        }
        if let Some(b) = t.buffers.remove(&self.id) {
            t.buffered -= b.bytes;
        }
        let pid = self.pid.unwrap_or(0);
        if let Some(h) = t.by_uid.get_mut(&self.uid) {
            h.conns -= 1;
            h.unprivileged -= usize::from(!self.privileged);
            if let Some(n) = h.pids.get_mut(&pid) {
                *n -= 1;
                if *n == 0 {
                    h.pids.remove(&pid);
                }
            }
            if h.conns == 0 {
                t.by_uid.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn caller(uid: u32, pid: i32, user: &str) -> Caller {
        Caller {
            uid,
            gid: uid,
            groups: BTreeSet::new(),
            pid: Some(pid),
            user: user.into(),
        }
    }

    #[test]
    fn one_user_gets_its_share_and_a_message_naming_the_limit_and_the_pids() {
        let l = Limits::new();
        let nobody = caller(65534, 77, "nobody");
        let held: Vec<Slot> = (0..PER_UID)
            .map(|_| l.admit(&nobody, false).expect("within the share"))
            .collect();
        let e = l.admit(&nobody, false).err().expect("over the share");
        assert_eq!(
            e.0,
            "too many connections from uid 65534 (nobody) (limit 16 per user without full \
             rights): 16 open, by pid 77 ×16; close some of them and try again"
        );
        // Another user, and root, still get in.
        assert!(l.admit(&caller(1000, 5, "ann"), false).is_ok());
        assert!(l.admit(&caller(0, 6, "root"), true).is_ok());
        drop(held);
        assert!(l.admit(&nobody, false).is_ok());
    }

    #[test]
    fn unprivileged_users_together_never_take_the_admins_share() {
        let l = Limits::new();
        let mut held = Vec::new();
        for uid in 0..(MAX_UNPRIVILEGED / PER_UID) as u32 {
            for _ in 0..PER_UID {
                held.push(
                    l.admit(&caller(2000 + uid, 1, "u"), false)
                        .expect("admitted"),
                );
            }
        }
        let e = l
            .admit(&caller(9999, 2, "late"), false)
            .err()
            .expect("refused");
        assert!(
            e.0.starts_with("too many connections from users without full rights (limit 192"),
            "{}",
            e.0
        );
        assert!(e.0.contains("and 7 more users"), "{}", e.0);
        for _ in 0..RESERVED_FOR_ADMINS {
            held.push(l.admit(&caller(0, 3, "root"), true).expect("admin share"));
        }
        let e = l
            .admit(&caller(0, 3, "root"), true)
            .err()
            .expect("all taken");
        assert!(
            e.0.starts_with("too many connections (limit 256"),
            "{}",
            e.0
        );
        assert!(e.0.contains("uid 0 (root) 64"), "{}", e.0);
    }

    #[test]
    fn over_the_budget_the_largest_line_is_evicted() {
        let l = Limits::new();
        let a = l.admit(&caller(1, 1, "a"), false).expect("a");
        let b = l.admit(&caller(2, 2, "b"), false).expect("b");
        let root = l.admit(&caller(0, 3, "root"), true).expect("root");
        root.hold(UNPRIVILEGED_BUFFER_BUDGET * 4); // not counted
        a.hold(UNPRIVILEGED_BUFFER_BUDGET / 2 + 10);
        b.hold(UNPRIVILEGED_BUFFER_BUDGET / 2 - 100);
        assert!(!a.evicted().is_cancelled() && !b.evicted().is_cancelled());
        b.hold(UNPRIVILEGED_BUFFER_BUDGET / 2);
        assert!(a.evicted().is_cancelled());
        assert!(!b.evicted().is_cancelled());
        assert_eq!(l.lock().buffered, UNPRIVILEGED_BUFFER_BUDGET / 2);
        drop(b);
        assert_eq!(l.lock().buffered, 0);
        drop(a);
        drop(root);
        let t = l.lock();
        assert_eq!((t.total, t.unprivileged, t.by_uid.len()), (0, 0, 0));
    }
}
