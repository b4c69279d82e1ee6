//! Per-slot counts of open connections (tcp) and in-flight requests (http), which the
//! supervisor's draining reads through [`SlotStats`]; connections and requests hold an
//! [`OpenGuard`] while they use a slot. Also the deploy's guarded flag and the per-slot tokens
//! that cut a drained slot's remaining tcp connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_util::sync::CancellationToken;

use super::http_conn::ClientConn;
use super::workers::MAX_WORKERS;

/// Open connections (tcp) and in-flight requests (http) per slot.
#[derive(Debug, Default)]
pub struct SlotStats {
    /// Per worker thread (and one for any other thread), each on its own cache line: a count
    /// every worker updated for every request would bounce between the CPUs.
    open: [PerWorker; MAX_WORKERS + 1],
    /// A deploy is under way: read small responses whole before passing them on.
    pub(super) guarded: std::sync::atomic::AtomicBool,
    /// Cancelled to cut a slot's remaining tcp connections after its drain time.
    cut: [std::sync::Mutex<CancellationToken>; 2],
}

impl SlotStats {
    /// While a deploy runs, a backend that dies mid-response (a crash during the watch) must
    /// not hand clients a truncated body: small responses are read whole first and retried on
    /// failure. Outside deploys they stream (that copy costs a quarter of the throughput).
    pub fn set_guarded(&self, on: bool) {
        self.guarded.store(on, Ordering::SeqCst);
    }

    /// Connections or requests still using `slot`.
    pub fn open(&self, slot: usize) -> usize {
        self.open
            .iter()
            .map(|w| w.0[slot].load(Ordering::SeqCst))
            .sum()
    }

    pub(super) fn cut_token(&self, slot: usize) -> CancellationToken {
        // The lock guards only the token swap; poisoning cannot leave it inconsistent.
        self.cut[slot]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// End every connection still open on `slot` (its drain time is over).
    pub fn cut(&self, slot: usize) {
        let mut guard = self.cut[slot].lock().unwrap_or_else(|p| p.into_inner());
        guard.cancel();
        *guard = CancellationToken::new();
    }
}

#[derive(Debug, Default)]
#[repr(align(64))]
struct PerWorker([AtomicUsize; 2]);

thread_local! {
    /// This thread's index into [`SlotStats::open`]: a worker's own, else the shared last one.
    pub(super) static WORKER_INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(MAX_WORKERS) };
}

/// Counts one connection or request on a slot until dropped (on whatever thread).
pub(super) struct OpenGuard {
    owner: GuardOwner,
    slot: usize,
    counter: usize,
}

/// What keeps the counts alive: a request holds its client connection (whose reference count
/// only its own worker touches), not the proxy-wide stats every worker would bounce.
pub(super) enum GuardOwner {
    Stats(Arc<SlotStats>),
    Conn(Arc<ClientConn>),
}

impl GuardOwner {
    fn stats(&self) -> &SlotStats {
        match self {
            GuardOwner::Stats(s) => s,
            GuardOwner::Conn(c) => &c.ctx.stats,
        }
    }
}

impl OpenGuard {
    pub(super) fn new(owner: GuardOwner, slot: usize) -> OpenGuard {
        let counter = WORKER_INDEX.get();
        owner.stats().open[counter].0[slot].fetch_add(1, Ordering::SeqCst);
        if let GuardOwner::Conn(c) = &owner {
            c.active.fetch_add(1, Ordering::Relaxed);
        }
        OpenGuard {
            owner,
            slot,
            counter,
        }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.owner.stats().open[self.counter].0[self.slot].fetch_sub(1, Ordering::SeqCst);
        if let GuardOwner::Conn(c) = &self.owner {
            c.active.fetch_sub(1, Ordering::Relaxed);
            c.activity.fetch_add(1, Ordering::Relaxed);
        }
    }
}
