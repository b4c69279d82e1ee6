//! The D-Bus front end (DESIGN §5): name `io.orchd.Manager1`, object `/io/orchd/Manager1`.
//!
//! A thin adapter over [`handler::execute`]: every method builds a typed [`Command`],
//! authorizes the caller by the uid and pid the bus daemon vouches for, under the same rules as
//! the socket (`auth.rs`), and runs it. It holds no daemon state. `ServiceChanged` follows the
//! services' status watches. The daemon spawns [`serve`]; a bus that can't be reached is a
//! warning, never fatal: the socket API does not depend on D-Bus.

use std::collections::HashSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use zbus::fdo::DBusProxy;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::proxy::CacheProperties;
use zbus::{DBusError, Type, interface};

use super::auth::{self, Caller};
use super::handler::{self, Context};
use super::proto::{ApiError, Command, ErrorCode, READ_ONLY};
use crate::config::{ApiConfig, DbusMode};
use crate::supervisor::{Health, ServiceStatus, State};

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

/// One service as D-Bus returns it: `(sssisus)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ServiceInfo {
    pub name: String,
    /// A state name of DESIGN §2 (`running`, `backoff`, `bad-setting`, …).
    pub state: String,
    /// `none`, `starting`, `healthy` or `unhealthy`.
    pub health: String,
    /// The main process, 0 when there is none.
    pub pid: i32,
    pub release: String,
    pub restarts: u32,
    /// When the service entered its current state, RFC 3339 UTC.
    pub since: String,
}

impl From<&ServiceStatus> for ServiceInfo {
    fn from(s: &ServiceStatus) -> Self {
        ServiceInfo {
            name: s.name.clone(),
            state: s.state.as_str().to_owned(),
            health: s.health.as_str().to_owned(),
            pid: s.pid.unwrap_or(0),
            release: s.release.clone(),
            restarts: s.restarts,
            since: s.since.clone(),
        }
    }
}

/// The error replies of `io.orchd.Manager1`: `io.orchd.Manager1.Error.<Code>` with the
/// handler's message; one variant per [`ErrorCode`].
#[derive(Debug, DBusError)]
#[zbus(prefix = "io.orchd.Manager1.Error")]
pub enum Manager1Error {
    #[zbus(error)]
    ZBus(zbus::Error),
    BadRequest(String),
    UnknownCommand(String),
    NotFound(String),
    Invalid(String),
    PermissionDenied(String),
    Failed(String),
    NotSupported(String),
    Busy(String),
    Unavailable(String),
}

impl From<ApiError> for Manager1Error {
    fn from(e: ApiError) -> Self {
        let m = e.message;
        match e.code {
            ErrorCode::BadRequest => Manager1Error::BadRequest(m),
            ErrorCode::UnknownCommand => Manager1Error::UnknownCommand(m),
            ErrorCode::NotFound => Manager1Error::NotFound(m),
            ErrorCode::Invalid => Manager1Error::Invalid(m),
            ErrorCode::PermissionDenied => Manager1Error::PermissionDenied(m),
            ErrorCode::Failed => Manager1Error::Failed(m),
            ErrorCode::NotSupported => Manager1Error::NotSupported(m),
            ErrorCode::Busy => Manager1Error::Busy(m),
            ErrorCode::Unavailable => Manager1Error::Unavailable(m),
        }
    }
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
    async fn run(&self, hdr: &Header<'_>, cmd: Command) -> Reply<Value> {
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
        let result = self.run(hdr, cmd).await?;
        services_of(result)
    }

    async fn json(&self, hdr: &Header<'_>, cmd: Command) -> Reply<String> {
        let result = self.run(hdr, cmd).await?;
        Ok(result.to_string())
    }
}

/// The `services` list of a status or control result, typed.
fn services_of(mut result: Value) -> Reply<Vec<ServiceInfo>> {
    let list: Vec<ServiceStatus> = serde_json::from_value(result["services"].take())
        .map_err(|e| Manager1Error::Failed(format!("unexpected result from orchd: {e}")))?;
    Ok(list.iter().map(ServiceInfo::from).collect())
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

    /// Re-read the configuration; the reload report as JSON.
    async fn reload(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        dry_run: bool,
    ) -> Result<String, Manager1Error> {
        self.json(&hdr, Command::Reload { dry_run }).await
    }

    /// Deploy `release` of a service; the deploy result as JSON.
    async fn deploy(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
        release: String,
    ) -> Result<String, Manager1Error> {
        let cmd = Command::Deploy {
            service: name,
            release,
            timeout: None,
            detach: false,
        };
        self.json(&hdr, cmd).await
    }

    /// Roll a service back to release `to` ("" = the previous one); the result as JSON.
    async fn rollback(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
        to: String,
    ) -> Result<String, Manager1Error> {
        let to = (!to.is_empty()).then_some(to);
        let cmd = Command::Rollback { service: name, to };
        self.json(&hdr, cmd).await
    }

    /// A service's deploy history as JSON.
    async fn history(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
    ) -> Result<String, Manager1Error> {
        self.json(&hdr, Command::History { service: name }).await
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

    #[test]
    fn service_info_is_a_flat_struct() {
        assert_eq!(ServiceInfo::SIGNATURE, "(sssisus)");
        let mut s = ServiceStatus::new("api", "current");
        let info = ServiceInfo::from(&s);
        assert_eq!(
            (info.state.as_str(), info.health.as_str(), info.pid),
            ("inactive", "none", 0)
        );
        s.pid = Some(42);
        s.state = State::BadSetting;
        let info = ServiceInfo::from(&s);
        assert_eq!((info.state.as_str(), info.pid), ("bad-setting", 42));
    }

    #[test]
    fn api_errors_become_named_dbus_errors() {
        let cases = [
            (ErrorCode::PermissionDenied, "PermissionDenied"),
            (ErrorCode::NotFound, "NotFound"),
            (ErrorCode::NotSupported, "NotSupported"),
            (ErrorCode::Failed, "Failed"),
            (ErrorCode::BadRequest, "BadRequest"),
            (ErrorCode::UnknownCommand, "UnknownCommand"),
            (ErrorCode::Invalid, "Invalid"),
            (ErrorCode::Busy, "Busy"),
            (ErrorCode::Unavailable, "Unavailable"),
        ];
        for (code, name) in cases {
            let e = Manager1Error::from(ApiError::new(code, "why"));
            assert_eq!(
                zbus::DBusError::name(&e).as_str(),
                format!("io.orchd.Manager1.Error.{name}")
            );
            assert_eq!(zbus::DBusError::description(&e), Some("why"));
        }
    }

    #[test]
    fn control_results_are_typed() {
        let mut s = ServiceStatus::new("web", "r1");
        s.state = State::Running;
        s.pid = Some(7);
        let v = serde_json::json!({ "services": [s] });
        let list = services_of(v).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0].name.as_str(), list[0].state.as_str(), list[0].pid),
            ("web", "running", 7)
        );
        assert!(matches!(
            services_of(serde_json::json!({})),
            Err(Manager1Error::Failed(_))
        ));
    }
}
