//! Keeping orchd's parts alive: a panic in a task is caught, logged, recorded for `status`,
//! and the part is started again (with a growing pause), so no subsystem dies silently.
//!
//! [`Parts`] is the record `orchctl status` reads ("the alerter crashed and was restarted");
//! [`restarting`] runs a part in a loop; [`catch`] is the one place a panic is caught.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What happened to one part of orchd that crashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartTrouble {
    /// `alerter`, `api socket`, `d-bus`, `metrics`, or `supervisor of SVC`.
    pub part: String,
    /// Running again (restarted) or not.
    pub running: bool,
    /// How many times it crashed since orchd started.
    pub crashes: u32,
    /// The last panic's message.
    pub last_panic: String,
    /// When it last crashed, RFC 3339 UTC.
    pub since: String,
}

impl std::fmt::Display for PartTrouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let times = if self.crashes == 1 {
            "once".to_owned()
        } else {
            format!("{} times", self.crashes)
        };
        let now = if self.running {
            "restarted"
        } else {
            "NOT RUNNING"
        };
        write!(
            f,
            "{} crashed {times} (last at {}: {}); {now}",
            self.part, self.since, self.last_panic
        )
    }
}

/// Cheap-clone record of parts that crashed (empty while all is well).
#[derive(Debug, Clone)]
pub struct Parts {
    tx: watch::Sender<BTreeMap<String, PartTrouble>>,
}

impl Default for Parts {
    fn default() -> Self {
        Parts {
            tx: watch::channel(BTreeMap::new()).0,
        }
    }
}

impl Parts {
    /// Record a crash of `part`; `running` says whether it is being started again.
    pub fn crashed(&self, part: &str, message: &str, running: bool) {
        let since = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        self.tx.send_modify(|m| {
            let e = m.entry(part.to_owned()).or_insert_with(|| PartTrouble {
                part: part.to_owned(),
                running,
                crashes: 0,
                last_panic: String::new(),
                since: since.clone(),
            });
            e.crashes = e.crashes.saturating_add(1);
            e.running = running;
            e.last_panic = message.chars().take(500).collect();
            e.since = since;
        });
    }

    /// `part` runs again (a supervisor restarted by an operator).
    pub fn recovered(&self, part: &str) {
        self.tx.send_if_modified(|m| match m.get_mut(part) {
            Some(e) if !e.running => {
                e.running = true;
                true
            }
            _ => false,
        });
    }

    /// Every part that crashed, in name order.
    pub fn troubles(&self) -> Vec<PartTrouble> {
        self.tx.borrow().values().cloned().collect()
    }
}

/// The text of a panic's payload.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Run `f`; a panic inside it comes back as its message.
pub async fn catch<F: Future>(f: F) -> Result<F::Output, String> {
    AssertUnwindSafe(f)
        .catch_unwind()
        .await
        .map_err(|p| panic_message(p.as_ref()))
}

/// First pause before a crashed part starts again; doubles per crash up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// Run the part `run` builds until it returns or `cancel`; after a panic, record it in `parts`
/// and run it again. Each run borrows `state`: what must outlive a crashed run (such as the
/// receivers of its channels).
pub async fn restarting<S, F>(
    part: &str,
    parts: Parts,
    cancel: CancellationToken,
    state: &mut S,
    mut run: F,
) where
    F: for<'a> FnMut(&'a mut S) -> BoxFuture<'a, ()>,
{
    let mut pause = FIRST_PAUSE;
    loop {
        match catch(run(state)).await {
            Ok(()) => return,
            Err(message) => {
                let again = !cancel.is_cancelled();
                tracing::error!(part, panic = %message, restarting = again, "a part of orchd crashed");
                parts.crashed(part, &message, again);
                if !again {
                    return;
                }
                if cancel
                    .run_until_cancelled(tokio::time::sleep(pause))
                    .await
                    .is_none()
                {
                    return;
                }
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}

/// A debug-build-only fault hook for the tests of this module's callers: true when
/// `ORCHD_TEST_PANIC` names `point` (e.g. `alerter`, `supervisor:api`). Release builds never
/// panic on purpose.
pub fn test_panic_requested(point: &str) -> bool {
    cfg!(debug_assertions)
        && std::env::var("ORCHD_TEST_PANIC").is_ok_and(|v| v.split(',').any(|p| p.trim() == point))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_part_is_recorded_and_started_again() {
        let parts = Parts::default();
        let mut runs = 0;
        tokio::time::pause();
        restarting(
            "thing",
            parts.clone(),
            CancellationToken::new(),
            &mut runs,
            |runs| {
                Box::pin(async move {
                    *runs += 1;
                    if *runs < 3 {
                        panic!("boom {runs}");
                    }
                })
            },
        )
        .await;
        assert_eq!(runs, 3);
        let t = parts.troubles();
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].crashes, t[0].running), (2, true));
        assert_eq!(t[0].last_panic, "boom 2");
        assert!(
            t[0].to_string()
                .starts_with("thing crashed 2 times (last at ")
        );
    }

    #[tokio::test]
    async fn catch_returns_the_message() {
        assert_eq!(catch(async { 7 }).await, Ok(7));
        let e = catch(async { panic!("{}", String::from("owned")) }).await;
        assert_eq!(e, Err("owned".to_owned()));
    }
}
