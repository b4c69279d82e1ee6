//! The D-Bus front end (DESIGN §5): name `io.orchd.Manager1`, object `/io/orchd/Manager1`.
//!
//! A thin adapter over [`handler::execute`]: every method builds a typed [`Command`],
//! authorizes the caller by the uid and pid the bus daemon vouches for, under the same rules as
//! the socket (`auth.rs`), runs it, and maps the typed [`Reply`] to the D-Bus structs of
//! `dbus/types.rs`. It holds no daemon state. `ServiceChanged` follows the
//! services' status watches. The daemon spawns [`serve`]; a bus that can't be reached is a
//! warning, never fatal: the socket API does not depend on D-Bus.

use std::collections::HashSet;
use std::sync::Arc;

mod types;

use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use zbus::fdo::DBusProxy;
use zbus::interface;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::proxy::CacheProperties;

use super::auth::{self, Caller};
use super::handler::{self, Context};
use super::proto::{Command, READ_ONLY, Reply as ApiReply};
use crate::config::{ApiConfig, DbusMode};
use crate::supervisor::{Health, ServiceStatus, State};

pub use types::{DeployInfo, HistoryInfo, Manager1Error, ReloadInfo, ServiceInfo};

/// The well-known bus name orchd owns.
pub const BUS_NAME: &str = "io.orchd.Manager1";
/// The one object orchd serves.
pub const OBJECT_PATH: &str = "/io/orchd/Manager1";
/// The interface of that object.
pub const INTERFACE: &str = "io.orchd.Manager1";

/// How long shutdown waits for the bus to take the name back.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Errors that keep the D-Bus API from coming up (orchd runs on without it).
#[derive(Debug, thiserror::Error)]
pub enum DbusError {
    #[error("cannot connect to the {bus} bus: {source}")]
    Connect {
        bus: &'static str,
        source: zbus::Error,
    },
    #[error("cannot serve {OBJECT_PATH} on the {bus} bus: {source}")]
    Serve {
        bus: &'static str,
        source: zbus::Error,
    },
    #[error(
        "cannot own the name {BUS_NAME} on the {bus} bus (another orchd has it, or the bus policy \
         forbids it: install packaging/io.orchd.Manager1.conf): {source}"
    )]
    Name {
        bus: &'static str,
        source: zbus::Error,
    },
}

/// What the adapter's helpers return. (The `interface` methods spell out `Result`: the macro
/// recognizes fallible methods by that name.)
type Reply<T> = Result<T, Manager1Error>;

/// The object at [`OBJECT_PATH`]: the handler's context, the `[api]` rules, and a proxy to the
/// bus daemon to learn who is calling.
pub struct Manager1 {
    ctx: Context,
    api: Arc<ApiConfig>,
    bus: DBusProxy<'static>,
}

impl Manager1 {
    /// The caller's credentials, as the bus daemon knows them; unknown callers are refused.
    async fn caller(&self, hdr: &Header<'_>) -> Reply<Caller> {
        let denied = |why: String| {
            Manager1Error::PermissionDenied(format!(
                "permission denied: cannot identify the caller: {why}"
            ))
        };
        let sender = hdr
            .sender()
            .ok_or_else(|| denied("the message has no sender".into()))?;
        let (uid, pid) = tokio::join!(
            self.bus.get_connection_unix_user(sender.into()),
            self.bus.get_connection_unix_process_id(sender.into()),
        );
        let uid = uid.map_err(|e| denied(format!("GetConnectionUnixUser({sender}): {e}")))?;
        // Without a pid, groups come from the user database instead of the process.
        let pid = pid.ok().and_then(|p| i32::try_from(p).ok());
        let gid = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or(uid, |u| u.gid.as_raw());
        Ok(Caller::from_peer(uid, gid, pid))
    }

    /// Authorize `cmd` for the sender of `hdr` and run it; the handler's result.
    async fn run(&self, hdr: &Header<'_>, cmd: Command) -> Reply<ApiReply> {
        let caller = self.caller(hdr).await?;
        let rights = auth::rights(&self.api, &caller);
        if let Err(e) = rights.check(&cmd, &caller) {
            tracing::warn!(via = "dbus", uid = caller.uid, user = %caller.user, pid = ?caller.pid, cmd = cmd.name(), "permission denied");
            return Err(e.into());
        }
        if !READ_ONLY.contains(&cmd.name()) {
            tracing::info!(via = "dbus", uid = caller.uid, user = %caller.user, pid = ?caller.pid, cmd = cmd.name(), services = ?cmd.services(), "request");
        }
        // Partial results (progress) have no place in a D-Bus reply: drain them so the handler
        // never waits on a full channel; the channel closes when the handler is done.
        let (tx, mut rx) = mpsc::channel(64);
        let drain = async { while rx.recv().await.is_some() {} };
        let (result, ()) = tokio::join!(
            handler::execute(&self.ctx, &rights, &caller, cmd, tx),
            drain
        );
        Ok(result?)
    }

    async fn services(&self, hdr: &Header<'_>, cmd: Command) -> Reply<Vec<ServiceInfo>> {
        match self.run(hdr, cmd).await? {
            ApiReply::Status(r) => Ok(r.services.iter().map(ServiceInfo::from).collect()),
            ApiReply::Services(r) => Ok(r.services.iter().map(ServiceInfo::from).collect()),
            other => Err(unexpected(&other)),
        }
    }

    async fn deploy_info(&self, hdr: &Header<'_>, cmd: Command) -> Reply<DeployInfo> {
        match self.run(hdr, cmd).await? {
            ApiReply::Deploy(r) => Ok(DeployInfo::from(r)),
            other => Err(unexpected(&other)),
        }
    }
}

/// A reply of another command than the one asked: a bug, said as such.
fn unexpected(reply: &ApiReply) -> Manager1Error {
    Manager1Error::Failed(format!(
        "orchd answered with an unexpected result ({reply:?}); this is a bug, please report it"
    ))
}

#[interface(name = "io.orchd.Manager1")]
impl Manager1 {
    /// Every service this caller may see: `a(sssisus)`.
    async fn list_services(
        &self,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<Vec<ServiceInfo>, Manager1Error> {
        let cmd = Command::Status { services: vec![] };
        self.services(&hdr, cmd).await
    }

    /// One service.
    async fn get_service(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
    ) -> Result<(ServiceInfo,), Manager1Error> {
        let cmd = Command::Status {
            services: vec![name.clone()],
        };
        let mut list = self.services(&hdr, cmd).await?;
        match list.pop() {
            Some(s) => Ok((s,)),
            None => Err(Manager1Error::NotFound(format!("no such service: {name}"))),
        }
    }

    /// Start services; waits until they are ready (bounded) and returns their status.
    async fn start(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        names: Vec<String>,
    ) -> Result<Vec<ServiceInfo>, Manager1Error> {
        let cmd = Command::Start { services: names };
        self.services(&hdr, cmd).await
    }

    /// Stop services; waits until they are down and returns their status.
    async fn stop(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        names: Vec<String>,
    ) -> Result<Vec<ServiceInfo>, Manager1Error> {
        let cmd = Command::Stop { services: names };
        self.services(&hdr, cmd).await
    }

    /// Restart services; waits until they are ready (bounded) and returns their status.
    async fn restart(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        names: Vec<String>,
    ) -> Result<Vec<ServiceInfo>, Manager1Error> {
        let cmd = Command::Restart { services: names };
        self.services(&hdr, cmd).await
    }

    /// Clear `failed` and backoff.
    async fn reset(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        names: Vec<String>,
    ) -> Result<Vec<ServiceInfo>, Manager1Error> {
        let cmd = Command::Reset { services: names };
        self.services(&hdr, cmd).await
    }

    /// Re-read the configuration; what changed (or, with `dry_run`, would change).
    async fn reload(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        dry_run: bool,
    ) -> Result<(ReloadInfo,), Manager1Error> {
        match self.run(&hdr, Command::Reload { dry_run }).await? {
            ApiReply::Reload(r) => Ok((ReloadInfo::from(r),)),
            other => Err(unexpected(&other)),
        }
    }

    /// Deploy `release` of a service; `timeout` ("" = the unit's) overrides `[deploy]
    /// timeout`; with `detach` the answer comes once the deploy is accepted.
    async fn deploy(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
        release: String,
        timeout: String,
        detach: bool,
    ) -> Result<(DeployInfo,), Manager1Error> {
        let cmd = Command::Deploy {
            service: name,
            release,
            timeout: (!timeout.is_empty()).then_some(timeout),
            detach,
        };
        Ok((self.deploy_info(&hdr, cmd).await?,))
    }

    /// Roll a service back to release `to` ("" = the previous one).
    async fn rollback(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
        to: String,
    ) -> Result<(DeployInfo,), Manager1Error> {
        let to = (!to.is_empty()).then_some(to);
        let cmd = Command::Rollback { service: name, to };
        Ok((self.deploy_info(&hdr, cmd).await?,))
    }

    /// A service's deploy history (oldest first) and the release a rollback would go back to
    /// ("" when none is known).
    async fn history(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
    ) -> Result<(Vec<HistoryInfo>, String), Manager1Error> {
        match self.run(&hdr, Command::History { service: name }).await? {
            ApiReply::History(h) => Ok((
                h.history.into_iter().map(HistoryInfo::from).collect(),
                h.rollback_to.unwrap_or_default(),
            )),
            other => Err(unexpected(&other)),
        }
    }

    /// orchd's version, e.g. `0.1.0 (abc1234)`.
    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> String {
        crate::VERSION.to_owned()
    }

    /// A service's state or health changed. Fast transitions may coalesce: the values are
    /// always the latest ones.
    #[zbus(signal)]
    async fn service_changed(
        emitter: &SignalEmitter<'_>,
        name: &str,
        state: &str,
        health: &str,
    ) -> zbus::Result<()>;

    /// A deploy or rollback ended; `result` is `succeeded`, `failed` or `rolled_back`.
    #[zbus(signal)]
    async fn deploy_finished(
        emitter: &SignalEmitter<'_>,
        name: &str,
        release: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

fn bus_label(mode: DbusMode) -> &'static str {
    match mode {
        DbusMode::System => "system",
        DbusMode::Session => "session",
        DbusMode::Off => "off",
    }
}

/// Serve the API on the bus `api.dbus` names until `cancel`. Logs and returns when the bus
/// can't be used.
pub async fn serve(api: Arc<ApiConfig>, ctx: Context, cancel: CancellationToken) {
    let mode = api.dbus;
    if mode == DbusMode::Off {
        return;
    }
    let conn = tokio::select! {
        _ = cancel.cancelled() => return,
        conn = connect(mode, api, ctx.clone()) => conn,
    };
    let conn = match conn {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(error = %e, "D-Bus API unavailable; orchd runs on without it");
            return;
        }
    };
    tracing::info!(
        bus = bus_label(mode),
        name = BUS_NAME,
        path = OBJECT_PATH,
        "D-Bus API ready"
    );
    let emitter = SignalEmitter::from_parts(
        conn.clone(),
        zbus::ObjectPath::from_static_str_unchecked(OBJECT_PATH),
    );
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = follow_services(ctx, emitter) => {}
    }
    // Hand the name back promptly so a restarted orchd can take it; a stuck bus must not hold
    // up the shutdown.
    let release = conn.release_name(BUS_NAME);
    let _ = tokio::time::timeout(RELEASE_WAIT, release).await;
}

/// Connect, serve the object, then take the name (so no call arrives before the object exists).
async fn connect(
    mode: DbusMode,
    api: Arc<ApiConfig>,
    ctx: Context,
) -> Result<zbus::Connection, DbusError> {
    let bus = bus_label(mode);
    let builder = match mode {
        DbusMode::Session => zbus::connection::Builder::session(),
        _ => zbus::connection::Builder::system(),
    };
    let conn = builder
        .build()
        .await
        .map_err(|source| DbusError::Connect { bus, source })?;
    let proxy = DBusProxy::builder(&conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(|source| DbusError::Connect { bus, source })?;
    let object = Manager1 {
        ctx,
        api,
        bus: proxy,
    };
    conn.object_server()
        .at(OBJECT_PATH, object)
        .await
        .map_err(|source| DbusError::Serve { bus, source })?;
    conn.request_name(BUS_NAME)
        .await
        .map_err(|source| DbusError::Name { bus, source })?;
    Ok(conn)
}

/// Emit `ServiceChanged` whenever a service's (state, health) changes: one follower task per
/// service on its status watch. New services (reload) are picked up on their first event.
async fn follow_services(ctx: Context, emitter: SignalEmitter<'static>) {
    let mut events = ctx.bus.subscribe();
    let mut followed = HashSet::new();
    let mut followers = JoinSet::new();
    discover(&ctx, &emitter, &mut followed, &mut followers, false).await;
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) if deploy_finished(&emitter, &ev).await => {}
                Ok(ev) if followed.contains(&ev.service) => {}
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    discover(&ctx, &emitter, &mut followed, &mut followers, true).await;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            Some(done) = followers.join_next() => {
                // Removed, or replaced by a reload: follow whatever now has that name.
                if let Ok(name) = done {
                    followed.remove(&name);
                }
                discover(&ctx, &emitter, &mut followed, &mut followers, true).await;
            }
        }
    }
}

/// Emit `DeployFinished` for the end of a deploy; true when `ev` was one.
async fn deploy_finished(emitter: &SignalEmitter<'static>, ev: &crate::event::Event) -> bool {
    use crate::event::EventKind;
    let (release, result) = match &ev.kind {
        EventKind::DeploySucceeded { release, .. } => (release, "succeeded"),
        EventKind::DeployFailed { release, .. } => (release, "failed"),
        EventKind::RolledBack { release, .. } => (release, "rolled_back"),
        _ => return false,
    };
    if let Err(e) = Manager1::deploy_finished(emitter, &ev.service, release, result).await {
        tracing::debug!(service = %ev.service, error = %e, "cannot emit DeployFinished");
    }
    true
}

/// Start a follower for every service not followed yet; `announce` emits its current state.
async fn discover(
    ctx: &Context,
    emitter: &SignalEmitter<'static>,
    followed: &mut HashSet<String>,
    followers: &mut JoinSet<String>,
    announce: bool,
) {
    let Ok(watches) = ctx.manager.watch(vec![]).await else {
        return;
    };
    for rx in watches {
        let name = rx.borrow().name.clone();
        if followed.insert(name) {
            followers.spawn(follow(rx, emitter.clone(), announce));
        }
    }
}

/// Emit `ServiceChanged` for each change of one service; returns its name when it is removed.
async fn follow(
    mut rx: watch::Receiver<ServiceStatus>,
    emitter: SignalEmitter<'static>,
    announce: bool,
) -> String {
    let name = rx.borrow().name.clone();
    let mut last: Option<(State, Health)> = {
        let s = rx.borrow_and_update();
        (!announce).then_some((s.state, s.health))
    };
    loop {
        let now = {
            let s = rx.borrow_and_update();
            (s.state, s.health)
        };
        if last != Some(now) {
            last = Some(now);
            let (state, health) = (now.0.as_str(), now.1.as_str());
            if let Err(e) = Manager1::service_changed(&emitter, &name, state, health).await {
                tracing::debug!(service = %name, error = %e, "cannot emit ServiceChanged");
            }
        }
        if rx.changed().await.is_err() {
            return name;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::proto::{ServicesReply, StatusReply};

    #[test]
    fn unexpected_replies_are_failures() {
        let r = ApiReply::Services(ServicesReply { services: vec![] });
        assert!(matches!(unexpected(&r), Manager1Error::Failed(m) if m.contains("this is a bug")));
        let r = ApiReply::Status(StatusReply {
            services: vec![ServiceStatus::new("web", "r1")],
            orchd_troubles: vec![],
        });
        assert!(matches!(unexpected(&r), Manager1Error::Failed(_)));
    }
}
