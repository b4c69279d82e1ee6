//! The service state machine: pure transitions, table-tested without processes.
//!
//! `Machine::step(input, ctx)` changes the state and returns the [`Action`]s the supervisor task
//! must perform (spawn, signal, kill, publish). Every state change goes through `set_state`, which
//! drops the old state's deadline and logs `from -> to`. "Want up" (the operator's intent) is kept
//! apart from the actual state, as in s6.

use crate::deadline::Later;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::restart::{StartLimit, backoff_delay};
use crate::config::{RestartConfig, RestartPolicy, StopConfig};
use crate::event::EventKind;

/// Service states (*contract*: the serialized names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Inactive,
    Starting,
    Running,
    Stopping,
    Backoff,
    Failed,
    Exited,
    BadSetting,
}

impl State {
    /// The contract name, as in `orchctl status`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Inactive => "inactive",
            State::Starting => "starting",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Backoff => "backoff",
            State::Failed => "failed",
            State::Exited => "exited",
            State::BadSetting => "bad-setting",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the service's dependencies allow it to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deps {
    /// Every `requires` is ready and no `after` is still starting.
    Ready,
    /// Some dependency is on its way; wait.
    Waiting(String),
    /// A required dependency is failed, bad or stopped: don't start.
    Blocked(String),
}

/// What the supervisor task feeds the machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Start,
    Stop,
    Restart,
    Reset,
    DepsChanged(Deps),
    Spawned {
        pid: i32,
    },
    SpawnFailed {
        error: String,
    },
    Exited {
        code: Option<i32>,
        signal: Option<Signal>,
    },
    /// The deadline returned by [`Machine::deadline`] passed.
    Deadline,
    /// After a stop: everything the instance started is gone (see [`Action::Clear`]).
    Cleared,
    /// Health checks declared the process dead (`on_unhealthy = "restart"`).
    Unhealthy,
}

/// What the supervisor task must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Spawn,
    /// Send the stop signal to the main instance's process group (and cgroup).
    Signal(Signal),
    /// SIGKILL everything the instance started.
    KillAll,
    /// The stopped instance's main process is gone: give the rest of what it started (its
    /// process group and cgroup, which got the stop signal too) until `grace_until` to exit,
    /// then SIGKILL whatever is left, sweep, and report [`Input::Cleared`].
    Clear {
        grace_until: Option<Instant>,
    },
    Emit(EventKind),
}

/// Time and randomness, passed in so `step` stays pure.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub now: Instant,
    /// Uniform in `[-1, 1]`, for backoff jitter.
    pub rand: f64,
}

/// Why the process is being stopped, which decides what happens when it has exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterStop {
    Stay,
    Start,
    /// Stopped for being unhealthy: goes through backoff like a crash.
    Backoff,
}

/// The state machine of one service.
#[derive(Debug, Clone)]
pub struct Machine {
    restart: RestartConfig,
    stop: StopConfig,
    state: State,
    want_up: bool,
    after_stop: AfterStop,
    deadline: Option<Instant>,
    deps: Deps,
    /// Restarts since the operator last started, restarted or reset the service.
    restarts: u32,
    /// Backoff exponent; reset after a run of `reset_after`.
    attempt: u32,
    limit: StartLimit,
    running_since: Option<Instant>,
    reason: Option<Reason>,
    killed: bool,
    /// Stopping, and the main process has exited: waiting for [`Input::Cleared`].
    clearing: bool,
}

/// Why the service is in its state: the words shown, and what kind of cause they name (rules
/// look at the kind, never at the words).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reason {
    kind: Cause,
    text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// Waiting for a dependency on its way up.
    Waiting,
    /// A required dependency is failed, invalid or stopped.
    Dependency,
    /// Anything else: an exit, a start that could not run, the start limit.
    Other,
}

impl Reason {
    fn new(kind: Cause, text: String) -> Reason {
        Reason { kind, text }
    }

    fn other(text: String) -> Reason {
        Reason::new(Cause::Other, text)
    }
}

impl Machine {
    pub fn new(restart: RestartConfig, stop: StopConfig) -> Self {
        Machine {
            restart,
            stop,
            state: State::Inactive,
            want_up: false,
            after_stop: AfterStop::Stay,
            deadline: None,
            deps: Deps::Ready,
            restarts: 0,
            attempt: 0,
            limit: StartLimit::default(),
            running_since: None,
            reason: None,
            killed: false,
            clearing: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }
    pub fn want_up(&self) -> bool {
        self.want_up
    }
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
    pub fn restarts(&self) -> u32 {
        self.restarts
    }
    /// Why the service is in its state (waiting for a dependency, gave up, …), if there is a reason.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_ref().map(|r| r.text.as_str())
    }
    /// Use new restart/stop settings from a reload (no state change).
    pub fn reconfigure(&mut self, restart: RestartConfig, stop: StopConfig) {
        self.restart = restart;
        self.stop = stop;
    }

    /// Feed one input; returns the actions to perform, in order.
    pub fn step(&mut self, input: Input, ctx: Ctx) -> Vec<Action> {
        match input {
            Input::Start => self.on_start(ctx),
            Input::Stop => self.on_stop(ctx),
            Input::Restart => self.on_restart(ctx),
            Input::Reset => self.on_reset(ctx),
            Input::DepsChanged(deps) => self.on_deps(deps, ctx),
            Input::Spawned { pid } => self.on_spawned(pid, ctx),
            Input::SpawnFailed { error } => self.on_spawn_failed(error, ctx),
            Input::Exited { code, signal } => self.on_exited(code, signal, ctx),
            Input::Deadline => self.on_deadline(ctx),
            Input::Cleared => self.on_cleared(ctx),
            Input::Unhealthy => self.on_unhealthy(ctx),
        }
    }

    fn set_state(&mut self, to: State) {
        if self.state != to {
            tracing::debug!(from = %self.state, to = %to, "state");
        }
        self.state = to;
        self.deadline = None;
    }

    fn has_process(&self) -> bool {
        matches!(self.state, State::Running | State::Stopping)
    }

    fn clear_counters(&mut self) {
        self.restarts = 0;
        self.attempt = 0;
        self.limit.clear();
    }

    fn on_start(&mut self, ctx: Ctx) -> Vec<Action> {
        self.want_up = true;
        match self.state {
            State::Running | State::Starting => vec![],
            State::Stopping => {
                self.after_stop = AfterStop::Start;
                vec![]
            }
            State::Failed => {
                self.clear_counters();
                self.enter_starting(ctx)
            }
            State::Inactive | State::Exited | State::Backoff | State::BadSetting => {
                if self.state != State::Backoff {
                    self.clear_counters();
                }
                self.enter_starting(ctx)
            }
        }
    }

    fn on_stop(&mut self, ctx: Ctx) -> Vec<Action> {
        self.want_up = false;
        self.after_stop = AfterStop::Stay;
        if self.has_process() {
            return self.enter_stopping(ctx);
        }
        self.reason = None;
        self.set_state(State::Inactive);
        vec![]
    }

    fn on_restart(&mut self, ctx: Ctx) -> Vec<Action> {
        self.want_up = true;
        self.clear_counters();
        if self.has_process() {
            let mut actions = self.enter_stopping(ctx);
            self.after_stop = AfterStop::Start;
            actions.retain(|a| !matches!(a, Action::Emit(EventKind::Stopped)));
            return actions;
        }
        self.enter_starting(ctx)
    }

    fn on_reset(&mut self, ctx: Ctx) -> Vec<Action> {
        self.clear_counters();
        match self.state {
            State::Failed | State::Backoff if self.want_up => self.enter_starting(ctx),
            State::Failed => {
                self.reason = None;
                self.set_state(State::Inactive);
                vec![]
            }
            _ => vec![],
        }
    }

    fn on_deps(&mut self, deps: Deps, ctx: Ctx) -> Vec<Action> {
        self.deps = deps;
        if self.state == State::Starting {
            return self.try_spawn(ctx);
        }
        // Failed because of a dependency: start again only once it is ready (not on every
        // change of it, which would flap between starting and failed).
        let blocked_failed = self.state == State::Failed && self.want_up && self.reason_is_deps();
        if blocked_failed && self.deps == Deps::Ready {
            return self.try_spawn(ctx);
        }
        vec![]
    }

    fn reason_is_deps(&self) -> bool {
        self.reason
            .as_ref()
            .is_some_and(|r| r.kind == Cause::Dependency)
    }

    fn enter_starting(&mut self, ctx: Ctx) -> Vec<Action> {
        self.set_state(State::Starting);
        self.try_spawn(ctx)
    }

    /// In `starting` (or failed for a dependency): spawn if dependencies allow.
    fn try_spawn(&mut self, _ctx: Ctx) -> Vec<Action> {
        match self.deps.clone() {
            Deps::Ready => {
                self.set_state(State::Starting);
                self.reason = None;
                vec![Action::Spawn]
            }
            Deps::Waiting(why) => {
                self.set_state(State::Starting);
                self.reason = Some(Reason::new(Cause::Waiting, format!("waiting for {why}")));
                vec![]
            }
            Deps::Blocked(why) => {
                let reason = format!("dependency {why}");
                let newly = self.state != State::Failed || self.reason() != Some(reason.as_str());
                self.set_state(State::Failed);
                self.reason = Some(Reason::new(Cause::Dependency, reason.clone()));
                if newly {
                    vec![Action::Emit(EventKind::Failed { reason })]
                } else {
                    vec![]
                }
            }
        }
    }

    fn on_spawned(&mut self, _pid: i32, ctx: Ctx) -> Vec<Action> {
        self.limit.record(ctx.now);
        self.running_since = Some(ctx.now);
        self.killed = false;
        self.set_state(State::Running);
        self.reason = None;
        if !self.want_up {
            // A stop arrived while the spawn was in flight.
            return self.enter_stopping(ctx);
        }
        vec![]
    }

    fn on_spawn_failed(&mut self, error: String, ctx: Ctx) -> Vec<Action> {
        self.limit.record(ctx.now);
        let mut actions = vec![Action::Emit(EventKind::SpawnFailed {
            error: error.clone(),
        })];
        if self.restart.policy == RestartPolicy::No || !self.want_up {
            let reason = format!("could not start: {error}");
            self.set_state(State::Failed);
            self.reason = Some(Reason::other(reason.clone()));
            if self.want_up {
                // Given up on, as after an exit with policy "no": the on-call hears of it.
                actions.push(Action::Emit(EventKind::Failed { reason }));
            }
            return actions;
        }
        actions.extend(self.schedule_restart(ctx, format!("could not start: {error}")));
        actions
    }

    fn enter_stopping(&mut self, ctx: Ctx) -> Vec<Action> {
        if self.state == State::Stopping {
            return vec![];
        }
        self.set_state(State::Stopping);
        self.clearing = false;
        self.deadline = Some(ctx.now.later(self.stop.timeout));
        vec![
            Action::Signal(self.stop.signal),
            Action::Emit(EventKind::Stopped),
        ]
    }

    fn on_exited(&mut self, code: Option<i32>, signal: Option<Signal>, ctx: Ctx) -> Vec<Action> {
        let ran = self
            .running_since
            .take()
            .map(|t| ctx.now.duration_since(t))
            .unwrap_or_default();
        match self.state {
            State::Stopping => self.exited_while_stopping(),
            State::Running => self.exited_unexpectedly(code, signal, ran, ctx),
            _ => vec![],
        }
    }

    /// The main process ended after the stop signal. The stop is done when nothing the
    /// instance started is left: until then the service stays `stopping`.
    fn exited_while_stopping(&mut self) -> Vec<Action> {
        let grace_until = if self.killed { None } else { self.deadline };
        self.clearing = true;
        // The grace period is the clearing job's to keep now.
        self.deadline = None;
        vec![Action::Clear { grace_until }]
    }

    fn on_cleared(&mut self, ctx: Ctx) -> Vec<Action> {
        if self.state != State::Stopping || !self.clearing {
            return vec![];
        }
        self.clearing = false;
        let mut actions = vec![];
        match std::mem::replace(&mut self.after_stop, AfterStop::Stay) {
            AfterStop::Start if self.want_up => actions.extend(self.enter_starting(ctx)),
            AfterStop::Backoff if self.want_up => {
                actions.extend(self.schedule_restart(ctx, "unhealthy".into()))
            }
            _ => {
                self.reason = None;
                self.set_state(State::Inactive);
            }
        }
        actions
    }

    fn exited_unexpectedly(
        &mut self,
        code: Option<i32>,
        signal: Option<Signal>,
        ran: Duration,
        ctx: Ctx,
    ) -> Vec<Action> {
        let clean = code == Some(0) && signal.is_none();
        let what = describe_exit(code, signal);
        let mut actions = vec![Action::KillAll];
        if ran >= self.restart.reset_after {
            self.attempt = 0;
        }
        let restart = match self.restart.policy {
            RestartPolicy::No => false,
            RestartPolicy::OnFailure => !clean,
            RestartPolicy::Always => true,
        };
        if !restart {
            if clean {
                self.set_state(State::Exited);
                self.reason = None;
            } else {
                self.set_state(State::Failed);
                self.reason = Some(Reason::other(format!("{what}; restart policy is \"no\"")));
                actions.push(Action::Emit(EventKind::Failed { reason: what }));
            }
            return actions;
        }
        actions.extend(self.schedule_restart(ctx, what));
        actions
    }

    /// Go to backoff (or straight to starting when the delay is zero), or give up at the start limit.
    fn schedule_restart(&mut self, ctx: Ctx, what: String) -> Vec<Action> {
        if self.limit.exceeded(&self.restart, ctx.now) {
            let reason = format!(
                "{what}; gave up after {} restarts (start limit: {} starts within {})",
                self.restarts,
                self.restart.burst,
                humantime::format_duration(self.restart.interval)
            );
            self.set_state(State::Failed);
            self.reason = Some(Reason::other(reason.clone()));
            return vec![Action::Emit(EventKind::Failed { reason })];
        }
        let delay = backoff_delay(&self.restart, self.attempt, ctx.rand);
        self.attempt = self.attempt.saturating_add(1);
        self.restarts = self.restarts.saturating_add(1);
        let mut actions = vec![Action::Emit(EventKind::Backoff {
            delay_ms: delay.as_millis() as u64,
            restarts: self.restarts,
        })];
        if delay.is_zero() {
            actions.extend(self.enter_starting(ctx));
            return actions;
        }
        self.set_state(State::Backoff);
        self.reason = Some(Reason::other(what));
        self.deadline = Some(ctx.now.later(delay));
        actions
    }

    fn on_deadline(&mut self, ctx: Ctx) -> Vec<Action> {
        match self.state {
            State::Backoff if self.deadline.is_some_and(|d| d <= ctx.now) => {
                self.enter_starting(ctx)
            }
            State::Stopping if !self.killed && self.deadline.is_some_and(|d| d <= ctx.now) => {
                self.killed = true;
                self.deadline = None;
                vec![Action::KillAll]
            }
            _ => vec![],
        }
    }

    fn on_unhealthy(&mut self, ctx: Ctx) -> Vec<Action> {
        if self.state != State::Running {
            return vec![];
        }
        let actions = self.enter_stopping(ctx);
        self.after_stop = AfterStop::Backoff;
        actions
            .into_iter()
            .filter(|a| !matches!(a, Action::Emit(EventKind::Stopped)))
            .collect()
    }
}

/// "exited with status 1", "killed by SIGKILL".
pub fn describe_exit(code: Option<i32>, signal: Option<Signal>) -> String {
    match (code, signal) {
        (_, Some(sig)) => format!("killed by {}", sig.as_str()),
        (Some(c), None) => format!("exited with status {c}"),
        (None, None) => "exited".to_string(),
    }
}

#[cfg(test)]
mod tests;
