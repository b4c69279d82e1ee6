//! Restart policy against real processes: backoff growth and cap, the start limit, policies.

use std::path::Path;
use std::time::Duration;

use crate::util::*;

const T: Duration = Duration::from_secs(10);

/// A unit whose process appends its start time (µs since the epoch, from a bash builtin: no
/// fork of `date` to blur it) to `record` and then runs `then` (shell). Braces are doubled for
/// the unit template.
fn recording_unit(record: &Path, then: &str, extra: &str) -> String {
    format!(
        "exec = [\"/bin/bash\", \"-c\", \"echo ${{{{EPOCHREALTIME/./}}}} >> {}; {then}\"]\n{extra}",
        record.display()
    )
}

/// Start times (µs since the epoch) a recording unit wrote.
fn starts(record: &Path) -> Vec<u128> {
    lines(record)
        .iter()
        .map(|l| l.trim().parse().expect("a microsecond timestamp"))
        .collect()
}

#[test]
fn backoff_delays_grow_and_cap() {
    let s = Setup::new();
    let record = s.file("starts");
    s.unit(
        "crasher",
        &recording_unit(
            &record,
            "exit 1",
            "[restart]\ndelay = \"50ms\"\nmultiplier = 2\nmax_delay = \"400ms\"\njitter = 0\n",
        ),
    );
    let orchd = s.start();
    wait_for("6 starts", T, || lines(&record).len() >= 6);
    // Stop the loop so the record no longer grows while we look at it.
    let out = orchd.ctl(&["stop", "crasher"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // What orchd decided: exactly the configured delays (jitter 0).
    let delays: Vec<u64> = orchd
        .events(1000)
        .iter()
        .filter(|e| e["kind"] == "backoff")
        .map(|e| e["delay_ms"].as_u64().unwrap())
        .take(5)
        .collect();
    assert_eq!(delays, [50, 100, 200, 400, 400]);
    // What it did: each gap between starts is at least the delay (so it grew: 100 > 50 + 0, …)
    // and not much more (so it capped: an uncapped 800 ms would exceed 400 + 250).
    let t = starts(&record);
    let gaps: Vec<u128> = t.windows(2).map(|w| (w[1] - w[0]) / 1000).collect();
    let expected = [50u128, 100, 200, 400, 400];
    for (i, (&gap, &want)) in gaps.iter().zip(&expected).enumerate() {
        assert!(
            gap >= want && gap < want + 250,
            "gap {i} between starts is {gap} ms, expected {want} ms (+ < 250 ms); all gaps: {gaps:?}"
        );
    }
}

#[test]
fn start_limit_gives_up_as_failed_until_reset() {
    let s = Setup::new();
    let record = s.file("starts");
    s.unit(
        "crasher",
        &recording_unit(
            &record,
            "exit 1",
            "[restart]\ndelay = \"10ms\"\nburst = 3\ninterval = \"60s\"\n",
        ),
    );
    let orchd = s.start();
    orchd.wait_state("crasher", "failed", T);
    let st = orchd.status("crasher");
    let reason = st["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("start limit: 3 starts within 1m"),
        "reason: {reason}"
    );
    assert_eq!(st["pid"], serde_json::Value::Null);
    assert_eq!(
        lines(&record).len(),
        3,
        "starts before giving up; events: {}\n{}",
        orchd.json(&["events", "-n", "1000"]),
        orchd.log_text()
    );

    // A separator in the record: any start after giving up (before the reset) would land
    // before it; the reset must give exactly one more burst after it.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&record)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"reset\n"))
        .unwrap();
    let events_before = orchd.count_events("crasher", "started");
    assert_eq!(events_before, 3, "started events before the reset");
    let _ = orchd.ctl(&["reset", "crasher"]);
    orchd.wait_for("3 more starts after the reset", T, || {
        lines(&record).len() >= 7
    });
    orchd.wait_state("crasher", "failed", T);
    let all = lines(&record);
    let sep = all.iter().position(|l| l == "reset").unwrap();
    assert_eq!(sep, 3, "a start happened after giving up: {all:?}");
    assert_eq!(all.len() - sep - 1, 3, "starts after the reset: {all:?}");
    assert_eq!(orchd.count_events("crasher", "started"), 6);
}

#[test]
fn policy_no_fails_on_nonzero_exit() {
    let s = Setup::new();
    let record = s.file("starts");
    s.unit(
        "once",
        &recording_unit(
            &record,
            "exit 3",
            "[restart]\npolicy = \"no\"\ndelay = \"10ms\"\n",
        ),
    );
    let orchd = s.start();
    orchd.wait_state("once", "failed", T);
    let st = orchd.status("once");
    assert_eq!(
        st["reason"], "exited with status 3; restart policy is \"no\"",
        "{st}"
    );
    assert_eq!(st["restarts"], 0);
    assert_eq!(lines(&record).len(), 1);
    let failed: Vec<serde_json::Value> = orchd
        .events(1000)
        .into_iter()
        .filter(|e| e["service"] == "once" && e["kind"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["reason"], "exited with status 3");
}

#[test]
fn policy_always_restarts_a_clean_exit() {
    let s = Setup::new();
    let record = s.file("starts");
    s.unit(
        "looper",
        &recording_unit(
            &record,
            "exit 0",
            "[restart]\npolicy = \"always\"\ndelay = \"10ms\"\n",
        ),
    );
    let orchd = s.start();
    wait_for("3 starts", T, || lines(&record).len() >= 3);
    let st = orchd.status("looper");
    assert_ne!(st["state"], "exited", "{st}");
    assert!(st["restarts"].as_u64().unwrap() >= 2, "{st}");
    // The same clean exit under the default policy (on-failure) stays `exited`: covered by
    // core::clean_exit_under_on_failure_is_exited.
}

#[test]
fn immediate_restarts_each_run_their_process() {
    // With no delay, each new process is spawned while the previous instance is still being
    // cleaned up: the cleanup must not touch the new one (kill it, or remove its cgroup).
    let s = Setup::new();
    let record = s.file("starts");
    s.unit(
        "crasher",
        &recording_unit(&record, "exit 1", "[restart]\ndelay = \"0s\"\njitter = 0\n"),
    );
    let orchd = s.start();
    orchd.wait_for("30 starts", T, || lines(&record).len() >= 30);
    let out = orchd.ctl(&["stop", "crasher"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events = orchd.events(1000);
    let bad: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["kind"] == "spawn_failed" || (e["kind"] == "exited" && e["code"] != 1))
        .collect();
    // The last exit may be the stop's SIGTERM.
    let bad: Vec<_> = bad.iter().filter(|e| e["signal"] != "SIGTERM").collect();
    assert!(
        bad.is_empty(),
        "spawns that failed or processes killed: {bad:?}"
    );
    // One cgroup per spawn, each removed after its exit: none is left behind.
    if let Some(dir) = orch_cgroup(&s) {
        orchd.wait_for("the instance cgroups to be removed", T, || {
            sub_cgroups(&dir).is_empty()
        });
    }
}
