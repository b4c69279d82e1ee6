//! Executes one authorized [`Command`] against the manager. Shared by every front end.
//!
//! Plain commands return one [`Reply`]; streaming ones (`logs -f`, `events -f`, deploys) send
//! [`Partial`] results on a channel until the client goes away (the caller drops the future).
//! Deploys: the supervisor's domain values (`DeployProgress`, `DeployReport`) become the wire
//! types here.

use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use super::auth::{Caller, Rights};
use super::proto::{
    AlertTestReply, ApiError, Command, DeployDetached, DeployReply, DeployStep, ErrorCode,
    EventsReply, HistoryReply, LogsReply, Partial, Reply, ServicesReply, SilenceReply,
    SilencesReply, StatusReply, StreamEnd, StreamItem,
};
use crate::alert::AlertHandle;
use crate::config::{bounds, check_release};
use crate::event::{EventBus, EventLog};
use crate::manager::{ManagerHandle, Op, is_down, is_settled};
use crate::supervisor::deploy::DeployRefused;
use crate::supervisor::{Command as SupCommand, DeployMsg, DeployRequest};
use crate::supervisor::{ServiceStatus, State};

/// Longest `silence --reason`, in bytes (it is kept in a file and quoted in alerts).
pub const MAX_REASON: usize = 1024;

/// How long `start`/`restart` wait for services to become ready before reporting.
pub const START_WAIT: Duration = Duration::from_secs(30);

/// What a handler needs from the daemon.
#[derive(Clone)]
pub struct Context {
    pub manager: ManagerHandle,
    pub bus: EventBus,
    pub events: EventLog,
    pub alerts: AlertHandle,
    /// Parts of orchd that crashed (`status` reports them).
    pub parts: crate::guard::Parts,
}

/// Does this command stream partial results?
pub fn is_streaming(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Logs { follow: true, .. }
            | Command::Events { follow: true, .. }
            | Command::Deploy { detach: false, .. }
            | Command::Rollback { .. }
    )
}

/// Run `cmd`; partial results of streaming commands go to `partial`.
pub async fn execute(
    ctx: &Context,
    rights: &Rights,
    caller: &Caller,
    cmd: Command,
    partial: mpsc::Sender<Partial>,
) -> Result<Reply, ApiError> {
    match cmd {
        Command::Status { mut services } => {
            if services.is_empty() {
                if let Some(visible) = rights.visible_services() {
                    services = visible;
                }
            }
            let services = ctx.manager.status(services).await?;
            // Listed only when a part of orchd crashed: a part that is not running must be seen.
            let orchd_troubles = ctx.parts.troubles();
            Ok(Reply::Status(StatusReply {
                services,
                orchd_troubles,
            }))
        }
        Command::Start { services } => control(ctx, Op::Start, services).await,
        Command::Stop { services } => control(ctx, Op::Stop, services).await,
        Command::Restart { services } => control(ctx, Op::Restart, services).await,
        Command::Reset { services } => control(ctx, Op::Reset, services).await,
        Command::Logs { service, n, follow } => logs(ctx, service, n, follow, partial).await,
        Command::Events { follow, n } => events(ctx, follow, n, partial).await,
        Command::Reload { dry_run } => Ok(Reply::Reload(ctx.manager.reload(dry_run).await?)),
        Command::AlertTest { channel } => alert_test(ctx, channel).await,
        Command::Silence {
            target,
            duration,
            reason,
        } => silence(ctx, target, &duration, reason).await,
        Command::Silences {} => Ok(Reply::Silences(SilencesReply {
            silences: ctx.alerts.silences().await?,
        })),
        Command::Unsilence { id } => Ok(Reply::Silence(SilenceReply {
            silence: ctx.alerts.unsilence(id).await?,
        })),
        Command::Deploy {
            service,
            release,
            timeout,
            detach,
        } => {
            release_arg(&release)?;
            let timeout =
                match timeout {
                    Some(t) => Some(bounds::parse_duration(&t, bounds::DEPLOY_PHASE).map_err(
                        |e| ApiError::new(ErrorCode::BadRequest, format!("bad --timeout: {e}")),
                    )?),
                    None => None,
                };
            let req = DeployRequest {
                release,
                timeout,
                who: caller.describe(),
                rollback: false,
            };
            deploy(ctx, service, req, detach, &partial).await
        }
        Command::Rollback { service, to } => {
            if let Some(to) = &to {
                release_arg(to)?;
            }
            rollback(ctx, caller, service, to, &partial).await
        }
        Command::History { service } => {
            let (history, rollback_to) = ctx.manager.history(service).await?;
            Ok(Reply::History(HistoryReply {
                history,
                rollback_to,
            }))
        }
    }
}

/// A deploy the supervisor did not accept, as an API error.
fn refused(e: DeployRefused) -> ApiError {
    let code = match e {
        DeployRefused::Busy { .. } => ErrorCode::Busy,
        DeployRefused::Release(_) | DeployRefused::MonitorOnly(_) => ErrorCode::BadRequest,
    };
    ApiError::new(code, e.to_string())
}

/// A release named by a request: the same rule as the unit's `release` key (a usage error).
fn release_arg(release: &str) -> Result<(), ApiError> {
    check_release(release).map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))
}

/// Start a deploy on the service's supervisor and relay its steps; the final object carries
/// `result` (`succeeded | failed | rolled_back`). If the client goes away the deploy goes on.
async fn deploy(
    ctx: &Context,
    service: String,
    req: DeployRequest,
    detach: bool,
    partial: &mpsc::Sender<Partial>,
) -> Result<Reply, ApiError> {
    let sup = ctx.manager.supervisor(service).await?;
    let (progress, mut rx) = mpsc::unbounded_channel();
    let (reply, accepted) = tokio::sync::oneshot::channel();
    let release = req.release.clone();
    if !sup.send(SupCommand::Deploy {
        request: Box::new(req),
        progress,
        reply,
    }) {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "the service's supervisor is gone",
        ));
    }
    let id = accepted
        .await
        .map_err(|_| ApiError::new(ErrorCode::Unavailable, "the service's supervisor is gone"))?
        .map_err(refused)?;
    if detach {
        return Ok(Reply::Deploy(DeployReply::Detached(DeployDetached {
            deploy_id: id,
            release,
            detached: true,
        })));
    }
    while let Some(msg) = rx.recv().await {
        match msg {
            DeployMsg::Step(step) => {
                // A client that stopped reading doesn't stop the deploy.
                let _ = partial.send(Partial::Step(DeployStep::from(step))).await;
            }
            DeployMsg::Done(report) => {
                return Ok(Reply::Deploy(DeployReply::Finished(report.into())));
            }
        }
    }
    Err(ApiError::new(
        ErrorCode::Unavailable,
        "the deploy ended without a result (orchd is stopping?)",
    ))
}

/// While the previous release still runs: a switch. Later: a deploy of the previous (or named)
/// release.
async fn rollback(
    ctx: &Context,
    caller: &Caller,
    service: String,
    to: Option<String>,
    partial: &mpsc::Sender<Partial>,
) -> Result<Reply, ApiError> {
    let sup = ctx.manager.supervisor(service.clone()).await?;
    if to.is_none() {
        let (reply, rx) = tokio::sync::oneshot::channel();
        if sup.send(SupCommand::Rollback { reply }) {
            if let Ok(Some(done)) = rx.await {
                return Ok(Reply::Deploy(DeployReply::Finished(done.into())));
            }
        }
    }
    let target = match to {
        Some(t) => t,
        None => ctx.manager.history(service.clone()).await?.1.ok_or_else(|| {
            ApiError::new(
                ErrorCode::Failed,
                format!("no previous release of {service} is known (see `orchctl history {service}`); name one with --to"),
            )
        })?,
    };
    let req = DeployRequest {
        release: target,
        timeout: None,
        who: caller.describe(),
        rollback: true,
    };
    deploy(ctx, service, req, false, partial).await
}

/// Every channel's result; an error (exit 1) when any failed, with the reports as detail.
async fn alert_test(ctx: &Context, channel: Option<String>) -> Result<Reply, ApiError> {
    let result = AlertTestReply {
        channels: ctx.alerts.test(channel).await?,
    };
    let failed: Vec<String> = result
        .channels
        .iter()
        .filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.channel)))
        .collect();
    if failed.is_empty() {
        return Ok(Reply::AlertTest(result));
    }
    let mut e = ApiError::new(
        ErrorCode::Failed,
        format!("test alert not delivered:\n{}", failed.join("\n")),
    );
    e.detail = serde_json::to_value(result).ok();
    Err(e)
}

async fn silence(
    ctx: &Context,
    target: String,
    duration: &str,
    reason: Option<String>,
) -> Result<Reply, ApiError> {
    let d = bounds::parse_duration(duration, bounds::SILENCE).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("bad --for: {e} (e.g. \"30m\", \"2h\")"),
        )
    })?;
    if d.is_zero() {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "--for must be longer than 0s",
        ));
    }
    if reason.as_ref().is_some_and(|r| r.len() > MAX_REASON) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("--reason is longer than {MAX_REASON} bytes; shorten it"),
        ));
    }
    if target != "all" {
        // Errors with the list of known services when there is no such one.
        ctx.manager.status(vec![target.clone()]).await?;
    }
    let silence = ctx.alerts.silence(target, d, reason).await?;
    Ok(Reply::Silence(SilenceReply { silence }))
}

async fn control(ctx: &Context, op: Op, services: Vec<String>) -> Result<Reply, ApiError> {
    let targets = ctx.manager.control(op, services).await?;
    let mut out = Vec::new();
    for (rx, ack) in targets {
        let _ = ack.await;
        out.push(settle(op, rx).await);
    }
    let failed: Vec<String> = out
        .iter()
        .filter(|s| !succeeded(op, s))
        .map(|s| match &s.reason {
            Some(r) => format!("{} is {}: {r}", s.name, s.state),
            None => format!("{} is {}", s.name, s.state),
        })
        .collect();
    if !failed.is_empty() {
        let mut e = ApiError::new(ErrorCode::Failed, failed.join("\n"));
        e.detail = serde_json::to_value(ServicesReply { services: out }).ok();
        return Err(e);
    }
    Ok(Reply::Services(ServicesReply { services: out }))
}

/// Wait (bounded) until the service has reached where `op` leads.
async fn settle(op: Op, mut rx: tokio::sync::watch::Receiver<ServiceStatus>) -> ServiceStatus {
    let deadline = Instant::now() + START_WAIT;
    let done = |s: &ServiceStatus| match op {
        Op::Stop => is_down(s.state),
        Op::Start | Op::Restart => is_settled(s) || s.state == State::Failed,
        Op::Reset => s.state != State::Starting || is_settled(s),
    };
    let _ = tokio::time::timeout_at(deadline, rx.wait_for(done)).await;
    rx.borrow().clone()
}

fn succeeded(op: Op, s: &ServiceStatus) -> bool {
    match op {
        Op::Stop => is_down(s.state),
        Op::Start | Op::Restart => s.ready || s.state == State::Exited,
        Op::Reset => !matches!(s.state, State::Failed | State::BadSetting),
    }
}

async fn logs(
    ctx: &Context,
    service: String,
    n: usize,
    follow: bool,
    partial: mpsc::Sender<Partial>,
) -> Result<Reply, ApiError> {
    let hub = ctx.manager.logs(service).await?;
    let mut live = if follow { hub.follow().await } else { None };
    let lines = hub.tail(n).await;
    let Some(live) = live.as_mut() else {
        return Ok(Reply::Logs(LogsReply { lines }));
    };
    let mut last = 0;
    for line in lines {
        last = line.seq;
        if partial
            .send(Partial::Item(StreamItem::Line(line)))
            .await
            .is_err()
        {
            return Ok(Reply::Nothing);
        }
    }
    loop {
        let item = match live.recv().await {
            // Lines that arrived between subscribing and reading the tail: already printed.
            Ok(line) if line.seq <= last => continue,
            Ok(line) => StreamItem::Line(line),
            Err(broadcast::error::RecvError::Lagged(n)) => StreamItem::Skipped(n),
            Err(broadcast::error::RecvError::Closed) => {
                return Ok(end("service removed"));
            }
        };
        if partial.send(Partial::Item(item)).await.is_err() {
            return Ok(Reply::Nothing);
        }
    }
}

/// The last line of a stream that orchd ended.
fn end(why: &str) -> Reply {
    Reply::End(StreamEnd { end: why.into() })
}

async fn events(
    ctx: &Context,
    follow: bool,
    n: usize,
    partial: mpsc::Sender<Partial>,
) -> Result<Reply, ApiError> {
    if !follow {
        let events = ctx.events.tail(n).await;
        return Ok(Reply::Events(EventsReply { events }));
    }
    let mut live = ctx.bus.subscribe();
    loop {
        let item = match live.recv().await {
            Ok(ev) => StreamItem::Event(ev.as_ref().clone()),
            Err(broadcast::error::RecvError::Lagged(n)) => StreamItem::Skipped(n),
            Err(broadcast::error::RecvError::Closed) => {
                return Ok(end("orchd is stopping"));
            }
        };
        if partial.send(Partial::Item(item)).await.is_err() {
            return Ok(Reply::Nothing);
        }
    }
}
