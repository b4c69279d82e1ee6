//! Dependencies: start order, and a failed requirement keeping its dependents down until fixed.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::util::*;

const T: Duration = Duration::from_secs(10);

/// A unit that, once running, records which of `deps` already had a process (one whose
/// environment says `ORCH_SERVICE=<dep>`) into `record`, then sleeps (as a child, not by
/// `exec`: a process in the middle of `execve` can show an empty environment to a reader).
///
/// Without health checks a service is ready once spawned, so the guarantee is "forked after
/// its dependency's process exists"; timestamps taken by the processes themselves are not
/// ordered by it (shell start-up varies by milliseconds), hence this check.
fn ordered_unit(record: &Path, deps: &[&str], relation: &str) -> String {
    let checks: String = deps
        .iter()
        .map(|d| {
            format!(
                "grep -qsxz ORCH_SERVICE={d} /proc/[0-9]*/environ && echo {d} >> {r}.tmp; ",
                r = record.display()
            )
        })
        .collect();
    let quoted: Vec<String> = deps.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        "exec = [\"/bin/sh\", \"-c\", \"{checks}echo end >> {r}.tmp; mv {r}.tmp {r}; sleep 1000\"]\n{relation} = [{}]\n",
        quoted.join(", "),
        r = record.display()
    )
}

#[test]
fn services_start_in_dependency_order() {
    let s = Setup::new();
    let (api, web) = (s.file("api"), s.file("web"));
    // Alphabetical order (api, db, web) would start api first.
    s.unit("web", &ordered_unit(&web, &["api", "db"], "after"));
    s.unit("api", &ordered_unit(&api, &["db"], "requires"));
    s.unit("db", "exec = [\"sleep\", \"1000\"]\n");
    let orchd = s.start();
    wait_for("api and web to record what they saw", T, || {
        api.exists() && web.exists()
    });
    assert_eq!(lines(&api), ["db", "end"], "db's process when api started");
    assert_eq!(
        lines(&web),
        ["api", "db", "end"],
        "processes when web started"
    );
    // orchd's own record: the `started` events come in dependency order.
    let started = wait_some("three started events", T, || {
        let started: Vec<String> = orchd
            .events(100)
            .iter()
            .filter(|e| e["kind"] == "started")
            .filter_map(|e| e["service"].as_str().map(str::to_owned))
            .collect();
        (started.len() == 3).then_some(started)
    });
    assert_eq!(started, ["db", "api", "web"]);
}

#[test]
fn a_failed_requirement_blocks_its_dependent_until_fixed() {
    let s = Setup::new();
    // `dep` cannot even be spawned yet: its program doesn't exist. With policy "no" it fails.
    let program = s.file("dep.sh");
    s.unit(
        "dep",
        &format!(
            "exec = [\"{}\"]\n[restart]\npolicy = \"no\"\n",
            program.display()
        ),
    );
    s.unit(
        "app",
        "exec = [\"sleep\", \"1000\"]\nrequires = [\"dep\"]\n",
    );
    let orchd = s.start();
    orchd.wait_state("dep", "failed", T);
    orchd.wait_state("app", "failed", T);
    let st = orchd.status("app");
    assert_eq!(st["reason"], "dependency dep is failed", "{st}");
    assert_eq!(st["pid"], serde_json::Value::Null);
    assert!(st["want_up"].as_bool().unwrap(), "{st}");

    // Fix dep and restart it: app follows by itself.
    std::fs::write(&program, "#!/bin/sh\nexec sleep 1000\n").unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = orchd.ctl(&["restart", "dep"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    orchd.wait_new_pid("app", None, T);
    assert_eq!(orchd.status("app")["reason"], serde_json::Value::Null);
}

#[test]
fn a_dependent_added_while_its_requirement_is_failed_waits_for_it() {
    let s = Setup::new();
    let ok = s.file("ok");
    s.unit(
        "dep",
        &format!(
            "exec = [\"/bin/sh\", \"-c\", \"test -f {} || exit 1; exec sleep 1000\"]\n[restart]\npolicy = \"no\"\n",
            ok.display()
        ),
    );
    let orchd = s.start();
    orchd.wait_state("dep", "failed", T);
    s.unit(
        "app",
        "exec = [\"sleep\", \"1000\"]\nrequires = [\"dep\"]\n",
    );
    let out = orchd.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    orchd.wait_state("app", "failed", T);
    assert_eq!(orchd.status("app")["reason"], "dependency dep is failed");

    std::fs::write(&ok, "").unwrap();
    let out = orchd.ctl(&["restart", "dep"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    orchd.wait_new_pid("app", None, T);
    let started = orchd.count_events("app", "started");
    assert_eq!(started, 1, "app started before dep was fixed, or twice");
}
