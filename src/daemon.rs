//! orchd's life: start-up, signals, readiness and watchdog notification, shutdown.
//!
//! Start: become a child subreaper, take the socket (refusing if another orchd has it), kill
//! whatever a previous orchd with this state dir left behind, start the manager (which starts
//! the services), serve the API on the socket and (unless `dbus = "off"`) on D-Bus, notify
//! `READY=1`. SIGHUP reloads. SIGTERM/SIGINT stop services in reverse
//! dependency order and exit; a second one skips the graceful wait.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alert::{self, AlerterSpec};
use crate::api::handler::Context;
use crate::api::{dbus, socket};
use crate::config::{Config, DbusMode};
use crate::event::{EventBus, EventLog};
use crate::health::ProbeClients;
use crate::manager::{Manager, ManagerHandle};
use crate::process::Spawner;
use crate::process::cgroup::{self, CgroupRoot};
use crate::supervisor::logs::Journal;
use crate::supervisor::spec::ServiceEnv;
use crate::supervisor::{ServiceStatus, Shared, State};

/// How long start-up waits for services to settle before `READY=1` anyway.
const READY_WAIT: Duration = Duration::from_secs(60);
/// After the graceful stop, how long tasks get to finish.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Errors that stop orchd from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Socket(#[from] socket::SocketError),
    #[error("cannot create state_dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    UnsafeDir(#[from] crate::state::DirError),
    #[error("orchd's manager crashed ({0}); every service was stopped")]
    ManagerCrashed(String),
    #[error("cannot start the spawner/reaper threads: {0}")]
    Threads(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// A short stable id for this orchd's state dir, used to mark and find its processes.
pub fn daemon_id(state_dir: &std::path::Path) -> String {
    let canonical = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_owned());
    // FNV-1a: stable across builds and versions, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canonical.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:012x}", h & 0xffff_ffff_ffff)
}

/// Run orchd until it is told to stop.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes plain integers and affects only this process.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot become a child subreaper; orphans of services will go to init");
    }
    let state_dir = config.daemon.state_dir.clone();
    crate::state::create_private_dir(&state_dir).map_err(|source| DaemonError::StateDir {
        path: state_dir.clone(),
        source,
    })?;
    crate::state::check_private_dir(&state_dir, "state_dir")?;
    crate::state::tighten_modes(&state_dir);
    let socket_path = config.daemon.api.socket.clone();
    // Handlers first: a SIGTERM while services start must stop them gracefully, not kill orchd.
    let mut signals =
        signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(DaemonError::Signals)?;
    let listener = socket::bind(&socket_path).await?;
    if let Some(dir) = socket_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Err(e) = crate::state::check_private_dir(dir, "the socket's directory") {
            let _ = std::fs::remove_file(&socket_path);
            return Err(e.into());
        }
    }

    let id = daemon_id(&state_dir);
    let cgroups = CgroupRoot::detect(&id);
    sweep_leftovers(&id, cgroups.as_ref());

    let spawner = Spawner::start().map_err(DaemonError::Threads)?;
    let bus = EventBus::new(1024);
    let parts = crate::guard::Parts::default();
    let (recorder, records) = tokio::sync::mpsc::unbounded_channel();
    let events = EventLog::spawn(&bus, 1000, parts.clone());
    let shared = Shared {
        probes: ProbeClients::new(spawner.clone(), parts.clone()),
        spawner,
        cgroups: cgroups.clone(),
        bus: bus.clone(),
        daemon_id: id,
        journal: Journal::detect(),
        env: ServiceEnv::new(&config.daemon.secret_env_names()),
        parts: parts.clone(),
        recorder,
    };
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let api = Arc::new(config.daemon.api.clone());
    let (alerts, alert_commands) = alert::channel();
    // Subscribed before any service starts, so the first crash is seen.
    let alert_events = bus.subscribe();
    let metrics = config.daemon.metrics.clone().map(|m| {
        (
            m.listen,
            crate::metrics::spawn_counters(&bus, cancel.child_token(), parts.clone()),
        )
    });
    let (alerts_config, units) = (config.daemon.alerts.clone(), config.units.clone());
    let writer = crate::state::Writer::start().map_err(DaemonError::Threads)?;
    let (manager, manager_task) = Manager::start(
        config,
        shared,
        records,
        writer.clone(),
        cancel.child_token(),
        tracker.clone(),
        Some(alerts.clone()),
    );
    let alert_stats = alert::spawn(
        AlerterSpec {
            host: host_name(),
            state_dir: state_dir.clone(),
            alerts: alerts_config,
            units,
            events: alert_events,
            writer: writer.clone(),
        },
        alert_commands,
        cancel.child_token(),
        &tracker,
        parts.clone(),
    );

    let ctx = Context {
        manager: manager.clone(),
        bus,
        events,
        alerts,
        parts: parts.clone(),
    };
    if api.dbus != DbusMode::Off {
        let (api, ctx, parts, cancel) = (
            api.clone(),
            ctx.clone(),
            parts.clone(),
            cancel.child_token(),
        );
        tracker.spawn(async move {
            crate::guard::restarting("d-bus", parts, cancel.clone(), &mut (), |_| {
                Box::pin(dbus::serve(api.clone(), ctx.clone(), cancel.clone()))
            })
            .await;
        });
    }
    if let Some((listen, counters)) = metrics {
        let sources = crate::metrics::Sources {
            manager: manager.clone(),
            counters,
            alerts: alert_stats.subscribe(),
        };
        serve_metrics(
            listen,
            sources,
            cancel.child_token(),
            &tracker,
            parts.clone(),
        )
        .await;
    }
    let server_cancel = cancel.child_token();
    let socket_parts = parts.clone();
    tracker.spawn(async move {
        let mut listener = listener;
        crate::guard::restarting(
            "api socket",
            socket_parts,
            server_cancel.clone(),
            &mut listener,
            |l| {
                let (p, a, c, k) = (
                    socket_path.clone(),
                    api.clone(),
                    ctx.clone(),
                    server_cancel.clone(),
                );
                Box::pin(async move { socket::serve(l, p, a, c, k).await })
            },
        )
        .await;
    });

    tokio::spawn(notify_ready(manager.clone()));
    if let Some(period) = watchdog_period() {
        tokio::spawn(watchdog(manager.clone(), period));
    }

    let mut manager_task = manager_task;
    loop {
        tokio::select! {
            sig = signals.next() => match sig {
                Some(SIGHUP) => reload(&manager).await,
                _ => break,
            },
            // The manager owns the registry: without it nothing can be supervised or asked.
            // Exit (non-zero: systemd starts orchd again); the services end with orchd and the
            // next one starts them, rather than run on unsupervised.
            ended = &mut manager_task => {
                let why = match ended {
                    Err(e) if e.is_panic() => crate::guard::panic_message(e.into_panic().as_ref()),
                    Err(e) => e.to_string(),
                    Ok(()) => "it ended".to_owned(),
                };
                tracing::error!(panic = %why, "orchd's manager crashed; stopping every service and exiting so that orchd is started again");
                parts.crashed("manager", &why, false);
                cancel.cancel();
                tracker.close();
                let _ = tokio::time::timeout(EXIT_GRACE, tracker.wait()).await;
                return Err(DaemonError::ManagerCrashed(why));
            }
        }
    }
    tracing::info!("shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let graceful = manager.shutdown();
    tokio::pin!(graceful);
    tokio::select! {
        _ = &mut graceful => {}
        Some(_) = signals.next() => tracing::warn!("second signal: skipping the graceful stop"),
    }
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(EXIT_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not finish in time");
    }
    manager_task.abort();
    writer.flush(EXIT_GRACE).await;
    if let Some(root) = cgroups {
        let _ = tokio::task::spawn_blocking(move || root.remove_all()).await;
    }
    tracing::info!("orchd stopped");
    Ok(())
}

/// Listen on `[metrics] listen` and serve there. A port that cannot be had is an error in the
/// log, not a reason to leave the services unsupervised: orchd runs on without metrics.
async fn serve_metrics(
    listen: std::net::SocketAddr,
    sources: crate::metrics::Sources,
    cancel: CancellationToken,
    tracker: &TaskTracker,
    parts: crate::guard::Parts,
) {
    match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => {
            tracing::info!(%listen, "serving metrics on http://{listen}/metrics");
            tracker.spawn(async move {
                let mut listener = listener;
                crate::guard::restarting("metrics", parts, cancel.clone(), &mut listener, |l| {
                    let (s, k) = (sources.clone(), cancel.clone());
                    Box::pin(async move { crate::metrics::serve(l, s, k).await })
                })
                .await;
            });
        }
        Err(e) => tracing::error!(
            "cannot listen for metrics on {listen}: {e}; orchd runs on without them (free the \
             port or change [metrics] listen, then restart orchd)"
        ),
    }
}

async fn reload(manager: &ManagerHandle) {
    match manager.reload(false).await {
        Ok(r) => {
            tracing::info!(added = ?r.added, removed = ?r.removed, restarted = ?r.restarted, updated = ?r.updated, "reloaded")
        }
        Err(e) => tracing::error!("reload refused: {e}"),
    }
}

/// This machine's name, for alert subjects.
fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn sweep_leftovers(id: &str, cgroups: Option<&CgroupRoot>) {
    let mut killed = cgroups.map(CgroupRoot::sweep).unwrap_or(0);
    killed += cgroup::kill_marked(&format!("ORCH_INSTANCE={id}/"));
    if killed > 0 {
        tracing::warn!(
            count = killed,
            "killed processes a previous orchd left behind"
        );
    }
}

/// Notify `READY=1` once every service wanted up has settled (or after [`READY_WAIT`]).
async fn notify_ready(manager: ManagerHandle) {
    match tokio::time::timeout(READY_WAIT, until_settled(&manager)).await {
        Ok(Settled::Yes) => {}
        Ok(Settled::ManagerGone) => return,
        Err(_) => tracing::warn!(
            "services still on their way to ready after {}s; notifying READY=1 anyway",
            READY_WAIT.as_secs()
        ),
    }
    tracing::info!("ready");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    // On a thread of its own that ends right after (a blocking-pool thread would linger idle
    // for 10 s): it reads /proc/self/smaps, a few milliseconds.
    let _ = std::thread::Builder::new()
        .name("orch-shed".into())
        .spawn(|| {
            let shed = crate::memory::shed_startup();
            tracing::debug!(
                binary_kib = shed.binary_kib,
                "unmapped the binary pages start-up used"
            );
        });
}

/// How [`until_settled`] ended.
#[derive(Debug, PartialEq, Eq)]
enum Settled {
    Yes,
    /// The manager is gone (orchd is stopping): nothing to notify.
    ManagerGone,
}

/// Wait until no service wanted up is on its way to ready, woken by each change of a status.
async fn until_settled(manager: &ManagerHandle) -> Settled {
    loop {
        let Ok(watches) = manager.watch(vec![]).await else {
            return Settled::ManagerGone;
        };
        if watch_until_settled(watches).await {
            return Settled::Yes;
        }
        // A service was removed (a reload during start-up): follow the new set.
    }
}

/// Wait on `watches` until no service is on its way to ready (true), or until one of them
/// closes (false).
async fn watch_until_settled(mut watches: Vec<watch::Receiver<ServiceStatus>>) -> bool {
    loop {
        let all: Vec<ServiceStatus> = watches
            .iter_mut()
            .map(|w| w.borrow_and_update().clone())
            .collect();
        if !starting_up(&all) {
            return true;
        }
        // Not empty: with no service, nothing is starting up.
        let changes = watches.iter_mut().map(|w| Box::pin(w.changed()));
        if futures::future::select_all(changes).await.0.is_err() {
            return false;
        }
    }
}

/// Is any service wanted up still on its way to ready?
///
/// A service waiting for its dependencies counts while one of them is ready (and about to
/// release it) or itself on its way; one stuck behind a dependency that is backing off or
/// failed doesn't hold `READY=1` back.
fn starting_up(all: &[ServiceStatus]) -> bool {
    let by_name: HashMap<&str, &ServiceStatus> = all.iter().map(|s| (s.name.as_str(), s)).collect();
    all.iter().any(|s| on_its_way(s, &by_name, 0))
}

fn on_its_way(s: &ServiceStatus, by_name: &HashMap<&str, &ServiceStatus>, depth: usize) -> bool {
    if !s.want_up
        || s.ready
        || !matches!(s.state, State::Inactive | State::Starting | State::Running)
    {
        return false;
    }
    if s.waiting_on.is_empty() {
        return true;
    }
    // Validation rejects dependency cycles; the guard only keeps a bug from recursing forever.
    depth <= by_name.len()
        && s.waiting_on.iter().any(|d| {
            by_name
                .get(d.as_str())
                .is_some_and(|dep| dep.ready || on_its_way(dep, by_name, depth + 1))
        })
}

fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        if pid != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(10)))
}

/// Feed the systemd watchdog while the manager answers: a hung manager stops the pings.
async fn watchdog(manager: ManagerHandle, period: Duration) {
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        if tokio::time::timeout(period, manager.ping())
            .await
            .unwrap_or(false)
        {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, state: State, ready: bool, waiting_on: &[&str]) -> ServiceStatus {
        ServiceStatus {
            state,
            ready,
            want_up: true,
            waiting_on: waiting_on.iter().map(|s| s.to_string()).collect(),
            ..ServiceStatus::new(name, "current")
        }
    }

    #[test]
    fn a_dependent_of_a_ready_service_is_still_starting() {
        // db just became ready; api hasn't reacted yet, web waits for api.
        let all = [
            svc("db", State::Running, true, &[]),
            svc("api", State::Starting, false, &["db"]),
            svc("web", State::Starting, false, &["api"]),
        ];
        assert!(starting_up(&all));
    }

    #[test]
    fn a_dependent_stuck_behind_backoff_does_not_hold_ready() {
        let all = [
            svc("db", State::Backoff, false, &[]),
            svc("api", State::Starting, false, &["db"]),
            svc("web", State::Starting, false, &["api"]),
        ];
        assert!(!starting_up(&all));
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_waits_on_status_changes_not_on_a_clock() {
        let (db, db_rx) = watch::channel(svc("db", State::Starting, false, &[]));
        let (api, api_rx) = watch::channel(svc("api", State::Starting, false, &["db"]));
        let waiting = tokio::spawn(watch_until_settled(vec![db_rx, api_rx]));
        // Paused time: the wait must end on the changes alone, however long nothing happens.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!waiting.is_finished());
        db.send_modify(|s| (s.state, s.ready) = (State::Running, true));
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!waiting.is_finished(), "api is still on its way");
        api.send_modify(|s| (s.state, s.ready) = (State::Running, true));
        assert!(waiting.await.unwrap());
    }

    #[tokio::test]
    async fn a_removed_service_ends_the_wait_to_look_again() {
        let (db, db_rx) = watch::channel(svc("db", State::Starting, false, &[]));
        let waiting = tokio::spawn(watch_until_settled(vec![db_rx]));
        drop(db);
        assert!(!waiting.await.unwrap());
        assert!(watch_until_settled(vec![]).await, "no service: settled");
    }

    #[test]
    fn all_ready_or_settled_is_not_starting() {
        let all = [
            svc("db", State::Running, true, &[]),
            svc("job", State::Exited, false, &[]),
            ServiceStatus::new("off", "current"),
        ];
        assert!(!starting_up(&all));
        assert!(starting_up(&[svc("x", State::Inactive, false, &[])]));
    }
}
