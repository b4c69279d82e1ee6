//! Restart policy against real processes: backoff growth and cap, the start limit, policies.

use std::path::Path;
use std::time::Duration;

use crate::util::*;

const T: Duration = Duration::from_secs(10);

/// A unit whose process appends `date +%s%N` to `record` and then runs `then` (shell).
fn recording_unit(record: &Path, then: &str, extra: &str) -> String {
    format!(
        "exec = [\"/bin/sh\", \"-c\", \"date +%s%N >> {}; {then}\"]\n{extra}",
        record.display()
    )
}

/// Start times (ns since the epoch) a recording unit wrote.
fn starts(record: &Path) -> Vec<u128> {
    lines(record)
        .iter()
        .map(|l| l.trim().parse().expect("a nanosecond timestamp"))
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
    let t = starts(&record);
    let gaps: Vec<u128> = t.windows(2).map(|w| (w[1] - w[0]) / 1_000_000).collect();
    let expected = [50u128, 100, 200, 400, 400];
    for (i, (&gap, &want)) in gaps.iter().zip(&expected).enumerate() {
        assert!(
            gap >= want && gap < want + 150,
            "gap {i} between starts is {gap} ms, expected {want} ms (+ < 150 ms); all gaps: {gaps:?}"
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
    assert_eq!(lines(&record).len(), 3, "starts before giving up");

    // A separator in the record: any start after giving up (before the reset) would land
    // before it; the reset must give exactly one more burst after it.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&record)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"reset\n"))
        .unwrap();
    let events_before = started_events(&orchd, "crasher");
    assert_eq!(events_before, 3, "started events before the reset");
    let _ = orchd.ctl(&["reset", "crasher"]);
    wait_for("3 more starts after the reset", T, || {
        lines(&record).len() >= 7
    });
    orchd.wait_state("crasher", "failed", T);
    let all = lines(&record);
    let sep = all.iter().position(|l| l == "reset").unwrap();
    assert_eq!(sep, 3, "a start happened after giving up: {all:?}");
    assert_eq!(all.len() - sep - 1, 3, "starts after the reset: {all:?}");
    assert_eq!(started_events(&orchd, "crasher"), 6);
}

fn started_events(orchd: &Orchd, service: &str) -> usize {
    orchd.json(&["events", "-n", "1000"])["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["service"] == service && e["kind"] == "started")
        .count()
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
    let failed: Vec<serde_json::Value> = orchd.json(&["events"])["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["service"] == "once" && e["kind"] == "failed")
        .cloned()
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
