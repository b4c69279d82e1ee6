//! Table tests of the deploy machine: every path of DESIGN §4 and of the restart strategy,
//! each failure a row, without processes. A row is a list of (input, the actions it must
//! produce, in the short form of `show`).

use std::time::Duration;

use tokio::time::Instant;

use super::machine::{Action, Deploy, Input, Plan, RollbackAnswer, SlotView, View};
use super::{Outcome, Step, Strategy};
use crate::event::EventKind;
use crate::supervisor::Health;
use crate::supervisor::state::State;

const TIMEOUT: Duration = Duration::from_secs(10);
const WATCH: Duration = Duration::from_secs(5);
const DRAIN: Duration = Duration::from_secs(3);

fn plan(strategy: Strategy, has_health: bool) -> Plan {
    Plan {
        id: "api-1".into(),
        release: "v2".into(),
        previous: "v1".into(),
        cand: 1,
        old: 0,
        strategy,
        timeout: TIMEOUT,
        watch: WATCH,
        drain: DRAIN,
        has_health,
        rollback: false,
        who: "uid 0 (root)".into(),
    }
}

fn slot(state: State, health: Health, pid: Option<i32>) -> SlotView {
    SlotView {
        state,
        health,
        ready: state == State::Running && matches!(health, Health::None | Health::Healthy),
        pid,
        port: Some(9001),
        trouble: String::new(),
        last_failure: None,
    }
}

fn down() -> SlotView {
    SlotView::down()
}
fn starting() -> SlotView {
    slot(State::Running, Health::Starting, Some(11))
}
fn healthy() -> SlotView {
    slot(State::Running, Health::Healthy, Some(11))
}
fn old_running() -> SlotView {
    slot(State::Running, Health::Healthy, Some(10))
}
fn stopping() -> SlotView {
    slot(State::Stopping, Health::None, Some(10))
}
fn crashed(state: State, why: &str) -> SlotView {
    SlotView {
        trouble: why.into(),
        ..slot(state, Health::None, None)
    }
}
fn unhealthy() -> SlotView {
    SlotView {
        last_failure: Some("HTTP 500 after 3 ms".into()),
        ..slot(State::Running, Health::Unhealthy, Some(11))
    }
}

fn view(cand: SlotView, old: SlotView) -> View {
    View {
        cand,
        old,
        old_open: 0,
    }
}

/// An action in a few words, for the tables.
fn show(a: &Action) -> String {
    match a {
        Action::Prepare => "prepare".into(),
        Action::Start(s) => format!("start {s}"),
        Action::Stop(s) => format!("stop {s}"),
        Action::Switch(s) => format!("switch {s}"),
        Action::SetActive(s) => format!("active {s}"),
        Action::Adopt => "adopt".into(),
        Action::CutOld => "cut old".into(),
        Action::Progress(p) => match &p.step {
            Step::Deploying { .. } => "step deploying".into(),
            Step::Started { pid, .. } => format!("step started {pid}"),
            Step::Healthy { .. } => "step healthy".into(),
            Step::Switched { .. } => "step switched".into(),
            Step::Watching { .. } => "step watching".into(),
            Step::OldStopped { .. } => "step old_stopped".into(),
        },
        Action::Emit(EventKind::DeployStarted { .. }) => "event deploy_started".into(),
        Action::Emit(EventKind::Switched { .. }) => "event switched".into(),
        Action::Emit(e) => format!("event {e:?}"),
        Action::Record { report, activate } => format!(
            "record {}{}: {}",
            report.result.as_str(),
            if *activate { " (activate)" } else { "" },
            report.reason.as_deref().unwrap_or("-")
        ),
        Action::Finish(r) => format!(
            "finish {}: {}",
            r.result.as_str(),
            r.reason.as_deref().unwrap_or("-")
        ),
    }
}

/// A deploy and a clock.
struct Run {
    d: Deploy,
    now: Instant,
}

impl Run {
    fn start(plan: Plan, v: View, expect: &[&str]) -> Run {
        let now = Instant::now();
        let (d, out) = Deploy::start(plan, v, now);
        assert_eq!(out.iter().map(show).collect::<Vec<_>>(), expect, "start");
        Run { d, now }
    }

    fn at(&mut self, after: Duration) -> &mut Run {
        self.now += after;
        self
    }

    fn step(&mut self, input: Input, expect: &[&str]) -> &mut Run {
        let what = format!("{input:?}");
        let out = self.d.step(input, self.now);
        assert_eq!(
            out.iter().map(show).collect::<Vec<_>>(),
            expect,
            "after {what}"
        );
        self
    }

    fn slots(&mut self, v: View, expect: &[&str]) -> &mut Run {
        self.step(Input::Slots(v), expect)
    }
}

const ACCEPTED: [&str; 2] = ["step deploying", "event deploy_started"];

fn accepted_and(more: &[&'static str]) -> Vec<&'static str> {
    ACCEPTED
        .iter()
        .copied()
        .chain(more.iter().copied())
        .collect()
}

/// Port swap to a healthy new release, from the start to the point it is watched.
fn switched(has_health: bool) -> Run {
    let mut r = Run::start(
        plan(Strategy::PortSwap, has_health),
        view(down(), old_running()),
        &accepted_and(&["prepare", "start 1"]),
    );
    r.slots(view(starting(), old_running()), &["step started 11"]);
    r.slots(
        view(healthy(), old_running()),
        &["step healthy", "switch 1"],
    );
    r.step(
        Input::Switched(Ok(())),
        &[
            "active 1",
            "step switched",
            "step watching",
            "event switched",
        ],
    );
    r
}

#[test]
fn port_swap_succeeds_and_is_recorded_before_it_is_reported() {
    let mut r = switched(true);
    assert_eq!(r.d.deadline(), Some(r.now + WATCH));
    r.slots(view(healthy(), old_running()), &[]);
    // The watch ends; no connections are open on the old release: stop it at once.
    r.at(WATCH)
        .step(Input::Deadline, &["stop 0"])
        .slots(view(healthy(), stopping()), &[])
        .slots(
            view(healthy(), down()),
            &[
                "step old_stopped",
                "adopt",
                "record succeeded (activate): -",
            ],
        );
    // Nothing is reported until the record is written: no other input finishes it.
    r.slots(view(healthy(), down()), &[]);
    r.step(Input::Deadline, &[]);
    assert!(!r.d.is_done());
    r.step(Input::Recorded(Ok(())), &["finish succeeded: -"]);
    assert!(r.d.is_done());
}

#[test]
fn a_success_that_cannot_be_recorded_says_so() {
    let mut r = switched(true);
    r.at(WATCH).step(Input::Deadline, &["stop 0"]).slots(
        view(healthy(), down()),
        &[
            "step old_stopped",
            "adopt",
            "record succeeded (activate): -",
        ],
    );
    r.step(
        Input::Recorded(Err("No space left on device".into())),
        &[
            "finish succeeded: the new active release could not be recorded (No space left on \
           device): a restart of orchd would start v1 again; fix state_dir and deploy again",
        ],
    );
}

#[test]
fn the_idle_slot_is_waited_for() {
    let mut r = Run::start(
        plan(Strategy::PortSwap, true),
        view(stopping(), old_running()),
        &ACCEPTED,
    );
    r.slots(view(stopping(), old_running()), &[])
        .slots(view(down(), old_running()), &["prepare", "start 1"]);
}

#[test]
fn start_failures() {
    // Never ready within the timeout.
    let mut r = Run::start(
        plan(Strategy::PortSwap, true),
        view(down(), old_running()),
        &accepted_and(&["prepare", "start 1"]),
    );
    let mut waiting = starting();
    waiting.last_failure = Some("HTTP 503 after 2 ms".into());
    r.slots(view(waiting.clone(), old_running()), &["step started 11"]);
    r.at(TIMEOUT - Duration::from_millis(1))
        .step(Input::Deadline, &[]);
    r.at(Duration::from_millis(1)).step(
        Input::Deadline,
        &[
            "stop 1",
            "record failed: release v2 was not ready within 10s (health starting); last probe: \
             HTTP 503 after 2 ms",
        ],
    );
    r.step(
        Input::Recorded(Ok(())),
        &[
            "finish failed: release v2 was not ready within 10s (health starting); last probe: \
           HTTP 503 after 2 ms",
        ],
    );

    // Exits before it is ready.
    let mut r = Run::start(
        plan(Strategy::PortSwap, true),
        view(down(), old_running()),
        &accepted_and(&["prepare", "start 1"]),
    );
    r.slots(view(starting(), old_running()), &["step started 11"]);
    r.slots(
        view(
            crashed(State::Failed, "exited with status 3"),
            old_running(),
        ),
        &[
            "stop 1",
            "record failed: release v2 stopped before it became ready: exited with status 3",
        ],
    );

    // Cannot even be spawned (failed before it had a pid).
    let mut r = Run::start(
        plan(Strategy::PortSwap, true),
        view(down(), old_running()),
        &accepted_and(&["prepare", "start 1"]),
    );
    r.slots(
        view(
            crashed(State::Failed, "cannot run /x: not found"),
            old_running(),
        ),
        &[
            "stop 1",
            "record failed: release v2 stopped before it became ready: cannot run /x: not found",
        ],
    );
}

#[test]
fn without_a_health_check_the_release_must_run_a_settle_time() {
    let mut r = Run::start(
        plan(Strategy::PortSwap, false),
        view(down(), old_running()),
        &accepted_and(&["prepare", "start 1"]),
    );
    let running = slot(State::Running, Health::None, Some(11));
    r.slots(view(running.clone(), old_running()), &["step started 11"]);
    r.slots(view(running.clone(), old_running()), &[]);
    assert_eq!(r.d.deadline(), Some(r.now + super::machine::SETTLE));
    r.at(super::machine::SETTLE)
        .step(Input::Deadline, &["step healthy", "switch 1"]);
}

#[test]
fn a_failed_switch_switches_nothing() {
    let mut r = Run::start(
        plan(Strategy::PortSwap, true),
        view(down(), old_running()),
        &accepted_and(&["prepare", "start 1"]),
    );
    r.slots(view(starting(), old_running()), &["step started 11"]);
    r.slots(
        view(healthy(), old_running()),
        &["step healthy", "switch 1"],
    );
    // The release crashing while the switch runs changes nothing until it is done.
    r.slots(view(crashed(State::Failed, "x"), old_running()), &[]);
    r.step(
        Input::Switched(Err("/usr/local/bin/point exited with status 1".into())),
        &[
            "stop 1",
            "record failed: switching to the new release failed: /usr/local/bin/point exited \
             with status 1; nothing was switched",
        ],
    );
}

#[test]
fn watch_failures_roll_back() {
    // Exits during the watch: switch back, stop it.
    let mut r = switched(true);
    r.slots(
        view(crashed(State::Failed, "killed by SIGKILL"), old_running()),
        &["switch 0"],
    );
    r.step(
        Input::Switched(Ok(())),
        &[
            "active 0",
            "stop 1",
            "record rolled_back: release v2 stopped during the watch: killed by SIGKILL",
        ],
    );
    r.step(
        Input::Recorded(Ok(())),
        &["finish rolled_back: release v2 stopped during the watch: killed by SIGKILL"],
    );

    // Turns unhealthy during the watch.
    let mut r = switched(true);
    r.slots(view(unhealthy(), old_running()), &["switch 0"]);
    r.step(
        Input::Switched(Ok(())),
        &[
            "active 0",
            "stop 1",
            "record rolled_back: release v2 turned unhealthy during the watch: HTTP 500 after 3 ms",
        ],
    );

    // The old release is gone too: nothing to roll back to.
    let mut r = switched(true);
    r.slots(
        view(crashed(State::Failed, "killed by SIGKILL"), down()),
        &[
            "stop 1",
            "record failed: release v2 stopped during the watch: killed by SIGKILL; the previous \
             release is not running, nothing to roll back to",
        ],
    );

    // Switching back fails: the new release still serves, and the report says so.
    let mut r = switched(true);
    r.slots(view(unhealthy(), old_running()), &["switch 0"]);
    r.step(
        Input::Switched(Err("timed out".into())),
        &[
            "record failed: release v2 turned unhealthy during the watch: HTTP 500 after 3 ms; \
           switching back failed: timed out; the new release still serves",
        ],
    );
}

#[test]
fn the_drain_waits_for_open_connections_then_cuts_them() {
    let mut r = switched(true);
    let busy = View {
        old_open: 2,
        ..view(healthy(), old_running())
    };
    r.slots(busy.clone(), &[]);
    r.at(WATCH).step(Input::Deadline, &[]);
    assert_eq!(r.d.deadline(), Some(r.now + DRAIN));
    r.slots(busy, &[]);
    r.at(DRAIN).step(Input::Deadline, &["cut old", "stop 0"]);
    // Or the last connection closes first.
    let mut r = switched(true);
    r.slots(
        View {
            old_open: 1,
            ..view(healthy(), old_running())
        },
        &[],
    );
    r.at(WATCH).step(Input::Deadline, &[]);
    r.slots(view(healthy(), old_running()), &["stop 0"]);
}

#[test]
fn operator_rollbacks() {
    // During the watch: an instant switch back.
    let mut r = switched(true);
    let (answer, out) = r.d.rollback(r.now);
    assert_eq!(answer, RollbackAnswer::Now);
    assert_eq!(out.iter().map(show).collect::<Vec<_>>(), ["switch 0"]);
    r.step(
        Input::Switched(Ok(())),
        &[
            "active 0",
            "stop 1",
            "record rolled_back: rolled back by an operator",
        ],
    );

    // While the new release starts: cancelled, the old one serves on.
    let mut r = Run::start(
        plan(Strategy::PortSwap, true),
        view(down(), old_running()),
        &accepted_and(&["prepare", "start 1"]),
    );
    r.slots(view(starting(), old_running()), &["step started 11"]);
    let (answer, out) = r.d.rollback(r.now);
    assert_eq!(answer, RollbackAnswer::Now);
    assert_eq!(
        out.iter().map(show).collect::<Vec<_>>(),
        [
            "active 0",
            "stop 1",
            "record rolled_back: cancelled by an operator's rollback"
        ]
    );

    // While the forward switch runs: back as soon as it is done.
    let mut r = Run::start(
        plan(Strategy::PortSwap, true),
        view(down(), old_running()),
        &accepted_and(&["prepare", "start 1"]),
    );
    r.slots(view(starting(), old_running()), &["step started 11"]);
    r.slots(
        view(healthy(), old_running()),
        &["step healthy", "switch 1"],
    );
    assert_eq!(r.d.rollback(r.now), (RollbackAnswer::Now, vec![]));
    r.step(
        Input::Switched(Ok(())),
        &[
            "active 1",
            "step switched",
            "step watching",
            "event switched",
            "switch 0",
        ],
    );

    // Once the old release is being stopped: after this deploy, a deploy of the previous one
    // (it used to be refused as busy, sending the operator round in a loop).
    let mut r = switched(true);
    r.at(WATCH).step(Input::Deadline, &["stop 0"]);
    let (answer, out) = r.d.rollback(r.now);
    assert_eq!((answer, out), (RollbackAnswer::AfterThis, vec![]));
    r.slots(
        view(healthy(), down()),
        &[
            "step old_stopped",
            "adopt",
            "record succeeded (activate): -",
        ],
    );
    assert_eq!(r.d.rollback(r.now).0, RollbackAnswer::AfterThis);
}

#[test]
fn stops_and_shutdown_end_the_deploy() {
    let why = "the service was stopped by an operator";
    // Before the switch: failed, the new release stopped.
    let mut r = Run::start(
        plan(Strategy::PortSwap, true),
        view(down(), old_running()),
        &accepted_and(&["prepare", "start 1"]),
    );
    r.step(
        Input::Abort(why.into()),
        &["active 0", "stop 1", &format!("record failed: {why}")],
    );
    // During the watch: rolled back.
    let mut r = switched(true);
    r.step(Input::Abort(why.into()), &["switch 0"]);
    // While draining: the new release stays.
    let mut r = switched(true);
    r.slots(
        View {
            old_open: 1,
            ..view(healthy(), old_running())
        },
        &[],
    );
    r.at(WATCH).step(Input::Deadline, &[]);
    r.step(
        Input::Abort(why.into()),
        &["stop 0", "adopt", "record succeeded (activate): -"],
    );
    // While the forward switch runs: point back after it, stop the new release.
    let mut r = Run::start(
        plan(Strategy::PortSwap, true),
        view(down(), old_running()),
        &accepted_and(&["prepare", "start 1"]),
    );
    r.slots(view(starting(), old_running()), &["step started 11"]);
    r.slots(
        view(healthy(), old_running()),
        &["step healthy", "switch 1"],
    );
    r.step(
        Input::Abort(why.into()),
        &[
            "switch 0",
            "active 0",
            "stop 1",
            &format!("record failed: {why}"),
        ],
    );
    r.step(Input::Switched(Ok(())), &[]);
}

#[test]
fn restart_strategy() {
    let restart = |rollback| Plan {
        rollback,
        ..plan(Strategy::Restart, false)
    };
    // Success: stop the old, start the new, ready after the settle time.
    let mut r = Run::start(
        restart(false),
        view(down(), old_running()),
        &accepted_and(&["prepare", "stop 0"]),
    );
    r.slots(view(down(), stopping()), &[]);
    r.slots(view(down(), down()), &["start 1"]);
    let running = slot(State::Running, Health::None, Some(11));
    r.slots(view(running.clone(), down()), &["step started 11"]);
    r.at(super::machine::SETTLE).step(
        Input::Deadline,
        &[
            "step healthy",
            "active 1",
            "adopt",
            "record succeeded (activate): -",
        ],
    );
    r.step(Input::Recorded(Ok(())), &["finish succeeded: -"]);

    // The new release fails: the old one is started again, rolled back.
    let mut r = Run::start(
        restart(false),
        view(down(), old_running()),
        &accepted_and(&["prepare", "stop 0"]),
    );
    r.slots(view(down(), down()), &["start 1"]);
    r.slots(
        view(crashed(State::Failed, "exited with status 3"), down()),
        &[
            "active 0",
            "stop 1",
            "start 0",
            "record rolled_back: release v2 stopped before it became ready: exited with status 3",
        ],
    );

    // A rollback (`rollback --to w9`) whose release fails has failed (exit 1), although the
    // release that ran before is started again.
    let mut r = Run::start(
        restart(true),
        view(down(), old_running()),
        &accepted_and(&["prepare", "stop 0"]),
    );
    r.slots(view(down(), down()), &["start 1"]);
    r.slots(
        view(crashed(State::Failed, "exited with status 3"), down()),
        &[
            "active 0",
            "stop 1",
            "start 0",
            "record failed: release v2 stopped before it became ready: exited with status 3; \
             the rollback did not happen (v1 runs again)",
        ],
    );
    r.step(
        Input::Recorded(Ok(())),
        &["finish failed: release v2 stopped before it became \
        ready: exited with status 3; the rollback did not happen (v1 runs again)"],
    );
}

#[test]
fn reports_carry_the_releases_and_the_outcome() {
    let mut r = switched(true);
    r.at(WATCH).step(Input::Deadline, &["stop 0"]);
    let out = r.d.step(Input::Slots(view(healthy(), down())), r.now);
    let Some(Action::Record { report, activate }) = out.last() else {
        panic!("{out:?}")
    };
    assert!(activate);
    assert_eq!(report.result, Outcome::Succeeded);
    assert_eq!(
        (
            report.release.as_str(),
            report.previous.as_str(),
            report.active.as_str()
        ),
        ("v2", "v1", "v2")
    );
    assert_eq!(report.duration_ms, WATCH.as_millis() as u64);
    assert_eq!((report.reason.as_deref(), report.rollback), (None, false));
}

/// An idle slot left running (a switch back that failed keeps both releases up) is stopped
/// before the next deploy begins, once; the deploy does not wait for it forever.
#[test]
fn an_idle_slot_left_running_is_stopped_first() {
    let mut r = Run::start(
        plan(Strategy::PortSwap, true),
        view(healthy(), old_running()),
        &accepted_and(&["stop 1"]),
    );
    r.slots(view(healthy(), old_running()), &[]);
    r.slots(view(stopping(), old_running()), &[]);
    r.slots(view(down(), old_running()), &["prepare", "start 1"]);
}
