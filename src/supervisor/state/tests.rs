//! Table tests of the state machine: inputs in, (state, actions) out.

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::*;

fn machine(policy: RestartPolicy, burst: u32) -> Machine {
    let restart = RestartConfig {
        policy,
        delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(1),
        multiplier: 2.0,
        jitter: 0.0,
        reset_after: Duration::from_secs(60),
        burst,
        interval: Duration::from_secs(60),
    };
    Machine::new(
        restart,
        StopConfig {
            signal: Signal::SIGTERM,
            timeout: Duration::from_secs(5),
        },
    )
}

struct Clock(Instant);
impl Clock {
    fn at(&self, ms: u64) -> Ctx {
        Ctx {
            now: self.0 + Duration::from_millis(ms),
            rand: 0.0,
        }
    }
}

fn crash() -> Input {
    Input::Exited {
        code: None,
        signal: Some(Signal::SIGKILL),
    }
}

fn backoff(delay_ms: u64, restarts: u32) -> Action {
    Action::Emit(EventKind::Backoff { delay_ms, restarts })
}

#[test]
fn start_spawns_and_runs() {
    let c = Clock(Instant::now());
    let mut m = machine(RestartPolicy::OnFailure, 0);
    assert_eq!(m.step(Input::Start, c.at(0)), vec![Action::Spawn]);
    assert_eq!(m.state(), State::Starting);
    assert_eq!(m.step(Input::Spawned { pid: 10 }, c.at(1)), vec![]);
    assert_eq!(m.state(), State::Running);
}

#[test]
fn crash_goes_to_backoff_with_growing_delay_then_restarts() {
    let c = Clock(Instant::now());
    let mut m = machine(RestartPolicy::OnFailure, 0);
    m.step(Input::Start, c.at(0));
    m.step(Input::Spawned { pid: 10 }, c.at(0));
    assert_eq!(
        m.step(crash(), c.at(10)),
        vec![Action::KillAll, backoff(100, 1)]
    );
    assert_eq!(m.state(), State::Backoff);
    assert_eq!(m.deadline(), Some(c.at(110).now));
    assert_eq!(m.reason(), Some("killed by SIGKILL"));
    // an early deadline does nothing
    assert_eq!(m.step(Input::Deadline, c.at(50)), vec![]);
    assert_eq!(m.step(Input::Deadline, c.at(110)), vec![Action::Spawn]);
    m.step(Input::Spawned { pid: 11 }, c.at(110));
    assert_eq!(
        m.step(crash(), c.at(120)),
        vec![Action::KillAll, backoff(200, 2)]
    );
}

#[test]
fn backoff_resets_after_a_stable_run() {
    let c = Clock(Instant::now());
    let mut m = machine(RestartPolicy::Always, 0);
    m.step(Input::Start, c.at(0));
    m.step(Input::Spawned { pid: 10 }, c.at(0));
    m.step(crash(), c.at(1));
    m.step(Input::Deadline, c.at(101));
    m.step(Input::Spawned { pid: 11 }, c.at(101));
    // ran for 60 s: the exponent starts again from 0
    assert_eq!(
        m.step(crash(), c.at(60_101)),
        vec![Action::KillAll, backoff(100, 2)]
    );
}

#[test]
fn clean_exit_under_on_failure_is_exited() {
    let c = Clock(Instant::now());
    let mut m = machine(RestartPolicy::OnFailure, 0);
    m.step(Input::Start, c.at(0));
    m.step(Input::Spawned { pid: 10 }, c.at(0));
    let a = m.step(
        Input::Exited {
            code: Some(0),
            signal: None,
        },
        c.at(5),
    );
    assert_eq!(a, vec![Action::KillAll]);
    assert_eq!(m.state(), State::Exited);
}

#[test]
fn always_restarts_a_clean_exit() {
    let c = Clock(Instant::now());
    let mut m = machine(RestartPolicy::Always, 0);
    m.step(Input::Start, c.at(0));
    m.step(Input::Spawned { pid: 10 }, c.at(0));
    let a = m.step(
        Input::Exited {
            code: Some(0),
            signal: None,
        },
        c.at(5),
    );
    assert_eq!(a, vec![Action::KillAll, backoff(100, 1)]);
}

#[test]
fn failure_under_policy_no_is_failed() {
    let c = Clock(Instant::now());
    let mut m = machine(RestartPolicy::No, 0);
    m.step(Input::Start, c.at(0));
    m.step(Input::Spawned { pid: 10 }, c.at(0));
    let a = m.step(
        Input::Exited {
            code: Some(3),
            signal: None,
        },
        c.at(5),
    );
    assert_eq!(
        a,
        vec![
            Action::KillAll,
            Action::Emit(EventKind::Failed {
                reason: "exited with status 3".into()
            })
        ]
    );
    assert_eq!(m.state(), State::Failed);
}

#[test]
fn start_limit_gives_up() {
    let c = Clock(Instant::now());
    let mut m = machine(RestartPolicy::OnFailure, 2);
    m.step(Input::Start, c.at(0));
    m.step(Input::Spawned { pid: 1 }, c.at(0));
    m.step(crash(), c.at(1));
    m.step(Input::Deadline, c.at(101));
    m.step(Input::Spawned { pid: 2 }, c.at(101));
    let a = m.step(crash(), c.at(102));
    assert_eq!(m.state(), State::Failed);
    let reason = "killed by SIGKILL; gave up after 1 restarts (start limit: 2 starts within 1m)";
    assert_eq!(
        a,
        vec![
            Action::KillAll,
            Action::Emit(EventKind::Failed {
                reason: reason.into()
            })
        ]
    );
    assert_eq!(m.reason(), Some(reason));
    // no more restarts until the operator says so
    assert_eq!(m.step(Input::Deadline, c.at(10_000)), vec![]);
    assert_eq!(m.step(Input::Reset, c.at(10_001)), vec![Action::Spawn]);
}

#[test]
fn stop_signals_then_kills_at_timeout_and_never_restarts() {
    let c = Clock(Instant::now());
    let mut m = machine(RestartPolicy::Always, 0);
    m.step(Input::Start, c.at(0));
    m.step(Input::Spawned { pid: 1 }, c.at(0));
    assert_eq!(
        m.step(Input::Stop, c.at(10)),
        vec![
            Action::Signal(Signal::SIGTERM),
            Action::Emit(EventKind::Stopped)
        ]
    );
    assert_eq!(m.state(), State::Stopping);
    assert_eq!(m.step(Input::Deadline, c.at(5_010)), vec![Action::KillAll]);
    let a = m.step(
        Input::Exited {
            code: None,
            signal: Some(Signal::SIGKILL),
        },
        c.at(5_011),
    );
    // Killed already: what is left goes at once, with no grace.
    assert_eq!(a, vec![Action::Clear { grace_until: None }]);
    assert_eq!(m.state(), State::Stopping);
    assert_eq!(m.step(Input::Cleared, c.at(5_012)), vec![]);
    assert_eq!(m.state(), State::Inactive);
    assert!(!m.want_up());
}

/// After the stop signal the main process may exit before the rest of what it started: the
/// stop is done only once that is cleared, within the same stop timeout.
#[test]
fn a_stop_ends_only_when_everything_is_cleared() {
    let c = Clock(Instant::now());
    let exited = || Input::Exited {
        code: None,
        signal: Some(Signal::SIGTERM),
    };
    // (inputs after the stop at 10 ms, the last one's actions, state after it)
    type Row = (Vec<(Input, u64)>, Vec<Action>, State);
    let table: Vec<Row> = vec![
        // The main process exits at 100 ms: the rest of its group may take until the
        // stop deadline (10 + 5000 ms).
        (
            vec![(exited(), 100)],
            vec![Action::Clear {
                grace_until: Some(c.at(5_010).now),
            }],
            State::Stopping,
        ),
        // The machine's own deadline is off while the clearing job keeps it.
        (
            vec![(exited(), 100), (Input::Deadline, 5_010)],
            vec![],
            State::Stopping,
        ),
        (
            vec![(exited(), 100), (Input::Cleared, 200)],
            vec![],
            State::Inactive,
        ),
        // A second stop changes nothing; a start waits for the clearing, then spawns.
        (
            vec![(exited(), 100), (Input::Stop, 150)],
            vec![],
            State::Stopping,
        ),
        (
            vec![(exited(), 100), (Input::Start, 150), (Input::Cleared, 200)],
            vec![Action::Spawn],
            State::Starting,
        ),
        // A stray report (no clearing under way) is ignored.
        (vec![(Input::Cleared, 100)], vec![], State::Stopping),
    ];
    for (i, (inputs, want, state)) in table.into_iter().enumerate() {
        let mut m = machine(RestartPolicy::Always, 0);
        m.step(Input::Start, c.at(0));
        m.step(Input::Spawned { pid: 1 }, c.at(0));
        m.step(Input::Stop, c.at(10));
        let mut got = vec![];
        for (input, at) in inputs {
            got = m.step(input, c.at(at));
        }
        assert_eq!(got, want, "row {i}");
        assert_eq!(m.state(), state, "row {i}");
    }
}

#[test]
fn stop_during_backoff_cancels_restart() {
    let c = Clock(Instant::now());
    let mut m = machine(RestartPolicy::Always, 0);
    m.step(Input::Start, c.at(0));
    m.step(Input::Spawned { pid: 1 }, c.at(0));
    m.step(crash(), c.at(1));
    assert_eq!(m.step(Input::Stop, c.at(2)), vec![]);
    assert_eq!(m.state(), State::Inactive);
    assert_eq!(m.step(Input::Deadline, c.at(500)), vec![]);
}

#[test]
fn restart_stops_then_starts_and_clears_counters() {
    let c = Clock(Instant::now());
    let mut m = machine(RestartPolicy::OnFailure, 0);
    m.step(Input::Start, c.at(0));
    m.step(Input::Spawned { pid: 1 }, c.at(0));
    assert_eq!(
        m.step(Input::Restart, c.at(1)),
        vec![Action::Signal(Signal::SIGTERM)]
    );
    let a = m.step(
        Input::Exited {
            code: None,
            signal: Some(Signal::SIGTERM),
        },
        c.at(2),
    );
    assert_eq!(
        a,
        vec![Action::Clear {
            grace_until: Some(c.at(5_001).now)
        }]
    );
    assert_eq!(m.step(Input::Cleared, c.at(3)), vec![Action::Spawn]);
    assert_eq!(m.restarts(), 0);
}

#[test]
fn zero_delay_restarts_immediately() {
    let c = Clock(Instant::now());
    let mut m = machine(RestartPolicy::OnFailure, 0);
    m.reconfigure(
        RestartConfig {
            delay: Duration::ZERO,
            ..RestartConfig::default()
        },
        StopConfig::default(),
    );
    m.step(Input::Start, c.at(0));
    m.step(Input::Spawned { pid: 1 }, c.at(0));
    assert_eq!(
        m.step(crash(), c.at(1)),
        vec![Action::KillAll, backoff(0, 1), Action::Spawn]
    );
    assert_eq!(m.state(), State::Starting);
}

#[test]
fn dependencies_gate_the_spawn() {
    let c = Clock(Instant::now());
    let mut m = machine(RestartPolicy::OnFailure, 0);
    m.step(
        Input::DepsChanged(Deps::Waiting("db (starting)".into())),
        c.at(0),
    );
    assert_eq!(m.step(Input::Start, c.at(0)), vec![]);
    assert_eq!(m.state(), State::Starting);
    assert_eq!(m.reason(), Some("waiting for db (starting)"));
    assert_eq!(
        m.step(Input::DepsChanged(Deps::Ready), c.at(5)),
        vec![Action::Spawn]
    );
}

#[test]
fn blocked_dependency_fails_and_recovers_by_itself() {
    let c = Clock(Instant::now());
    let mut m = machine(RestartPolicy::OnFailure, 0);
    m.step(
        Input::DepsChanged(Deps::Blocked("db is failed".into())),
        c.at(0),
    );
    let a = m.step(Input::Start, c.at(0));
    let reason = "dependency db is failed";
    assert_eq!(
        a,
        vec![Action::Emit(EventKind::Failed {
            reason: reason.into()
        })]
    );
    assert_eq!(m.state(), State::Failed);
    assert_eq!(m.reason(), Some(reason));
    assert_eq!(
        m.step(Input::DepsChanged(Deps::Ready), c.at(9)),
        vec![Action::Spawn]
    );
}

#[test]
fn unhealthy_restarts_through_backoff() {
    let c = Clock(Instant::now());
    let mut m = machine(RestartPolicy::OnFailure, 0);
    m.step(Input::Start, c.at(0));
    m.step(Input::Spawned { pid: 1 }, c.at(0));
    assert_eq!(
        m.step(Input::Unhealthy, c.at(5)),
        vec![Action::Signal(Signal::SIGTERM)]
    );
    let a = m.step(
        Input::Exited {
            code: None,
            signal: Some(Signal::SIGTERM),
        },
        c.at(6),
    );
    assert_eq!(
        a,
        vec![Action::Clear {
            grace_until: Some(c.at(5_005).now)
        }]
    );
    assert_eq!(m.step(Input::Cleared, c.at(7)), vec![backoff(100, 1)]);
    assert_eq!(m.state(), State::Backoff);
}

#[test]
fn stop_while_spawn_in_flight_stops_the_new_process() {
    let c = Clock(Instant::now());
    let mut m = machine(RestartPolicy::OnFailure, 0);
    m.step(Input::Start, c.at(0));
    m.step(Input::Stop, c.at(0));
    assert_eq!(m.state(), State::Inactive);
    let a = m.step(Input::Spawned { pid: 1 }, c.at(1));
    assert_eq!(
        a,
        vec![
            Action::Signal(Signal::SIGTERM),
            Action::Emit(EventKind::Stopped)
        ]
    );
}

#[test]
fn spawn_failure_backs_off() {
    let c = Clock(Instant::now());
    let mut m = machine(RestartPolicy::OnFailure, 0);
    m.step(Input::Start, c.at(0));
    let a = m.step(
        Input::SpawnFailed {
            error: "no such file".into(),
        },
        c.at(0),
    );
    assert_eq!(
        a,
        vec![
            Action::Emit(EventKind::SpawnFailed {
                error: "no such file".into()
            }),
            backoff(100, 1)
        ]
    );
    assert_eq!(m.reason(), Some("could not start: no such file"));
}

/// With `policy = "no"`, a start that cannot run is given up on at once, with a `failed`
/// event (alerts hear of it, as of an exit); a stop that raced the spawn is no failure to tell.
#[test]
fn spawn_failure_without_restarts_fails_with_an_event() {
    let c = Clock(Instant::now());
    let failed = || Input::SpawnFailed {
        error: "no such file".into(),
    };
    let mut m = machine(RestartPolicy::No, 0);
    m.step(Input::Start, c.at(0));
    assert_eq!(
        m.step(failed(), c.at(1)),
        vec![
            Action::Emit(EventKind::SpawnFailed {
                error: "no such file".into()
            }),
            Action::Emit(EventKind::Failed {
                reason: "could not start: no such file".into()
            })
        ]
    );
    assert_eq!(m.state(), State::Failed);

    let mut m = machine(RestartPolicy::OnFailure, 0);
    m.step(Input::Start, c.at(0));
    m.step(Input::Stop, c.at(1));
    assert_eq!(
        m.step(failed(), c.at(2)),
        vec![Action::Emit(EventKind::SpawnFailed {
            error: "no such file".into()
        })]
    );
}

#[test]
fn failed_for_a_dependency_does_not_flap_while_it_is_still_unready() {
    let c = Clock(Instant::now());
    let mut m = machine(RestartPolicy::OnFailure, 0);
    m.step(
        Input::DepsChanged(Deps::Blocked("db did not become healthy".into())),
        c.at(0),
    );
    m.step(Input::Start, c.at(0));
    assert_eq!(m.state(), State::Failed);
    assert_eq!(
        m.step(
            Input::DepsChanged(Deps::Waiting("db (running)".into())),
            c.at(5)
        ),
        vec![]
    );
    assert_eq!(m.state(), State::Failed);
    assert_eq!(
        m.step(Input::DepsChanged(Deps::Ready), c.at(9)),
        vec![Action::Spawn]
    );
}

/// Only a failure *for a dependency* is undone when the dependencies become ready: the rule
/// looks at the kind of cause, not at the words of the reason.
#[test]
fn only_a_dependency_failure_is_undone_by_its_dependencies() {
    let c = Clock(Instant::now());
    let mut m = machine(RestartPolicy::No, 0);
    m.step(Input::Start, c.at(0));
    m.step(Input::Spawned { pid: 10 }, c.at(1));
    m.step(
        Input::Exited {
            code: Some(3),
            signal: None,
        },
        c.at(2),
    );
    assert_eq!(m.state(), State::Failed);
    assert_eq!(m.step(Input::DepsChanged(Deps::Ready), c.at(3)), vec![]);
    assert_eq!(m.state(), State::Failed);
    // Blocked by a dependency, then it is ready: started again.
    let mut m = machine(RestartPolicy::OnFailure, 0);
    m.step(
        Input::DepsChanged(Deps::Blocked("db is failed".into())),
        c.at(0),
    );
    m.step(Input::Start, c.at(0));
    assert_eq!(m.state(), State::Failed);
    assert_eq!(m.reason(), Some("dependency db is failed"));
    assert_eq!(
        m.step(Input::DepsChanged(Deps::Ready), c.at(1)),
        vec![Action::Spawn]
    );
}
