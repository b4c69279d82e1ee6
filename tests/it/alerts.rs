//! Alerts end to end, against real receivers on loopback: an SMTP server (aiosmtpd, plain and
//! STARTTLS + AUTH) and an HTTP webhook receiver. Crash loops as one incident plus recovery,
//! payload shapes and HMAC, retries, the durable outbox across restarts, silences, secrets.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::receiver::{Receiver, Secure, Smtp, certificates, free_port};
use crate::util::*;

const T: Duration = Duration::from_secs(15);

/// A service printing a few lines, then crashing until `fixed` exists.
fn crash_loop_unit(s: &Setup, extra: &str) -> String {
    let fixed = s.file("fixed");
    format!(
        "exec = [\"sh\", \"-c\", \"echo starting; echo 'config loaded'; if [ -e {} ]; then exec sleep 1000; fi; echo 'db: connection refused'; exit 3\"]\n{extra}[restart]\ndelay = \"20ms\"\nmax_delay = \"200ms\"\nreset_after = \"1s\"\n",
        fixed.display()
    )
}

/// A service that fails once and is not restarted.
const FAIL_ONCE: &str =
    "exec = [\"sh\", \"-c\", \"echo about to fail; exit 7\"]\n[restart]\npolicy = \"no\"\n";

fn outbox_files(s: &Setup) -> usize {
    std::fs::read_dir(s.path().join("state/outbox"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0)
}

/// Poll `cond` until it holds or `timeout` passes; false on timeout.
fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn header<'a>(mail: &'a str, name: &str) -> Option<&'a str> {
    mail.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

#[test]
fn crash_loop_sends_one_failed_mail_then_one_recovery_with_output() {
    let s = Setup::new();
    let smtp = Smtp::start(&s.file("mail"), None);
    s.unit("api", &crash_loop_unit(&s, ""));
    let mut s = s;
    s.extra_config = format!(
        "[alerts]\nrepeat_interval = \"1h\"\n[[alerts.email]]\nname = \"oncall\"\nserver = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"orchd <orchd@example.com>\"\nto = [\"a@example.com\", \"b@example.com\"]\n",
        smtp.port
    );
    let o = s.start();
    wait_for("5 restarts", T, || {
        o.status("api")["restarts"].as_u64().unwrap_or(0) >= 5
    });
    let mails = smtp.wait_mails(1, T);
    let m = &mails[0];
    let subject = header(m, "Subject").unwrap();
    assert!(
        subject.contains("] api FAILED: exited 3, restarting (restart 1)"),
        "{m}"
    );
    assert!(
        header(m, "Date").is_some() && header(m, "Message-ID").is_some(),
        "{m}"
    );
    assert_eq!(header(m, "X-Rcpt"), Some("a@example.com, b@example.com"));
    assert!(m.contains("db: connection refused"), "{m}");
    assert!(m.contains("config loaded"), "{m}");
    assert!(m.contains("orchctl logs api -n 100"), "{m}");
    std::fs::write(s.file("fixed"), "").unwrap();
    let mails = smtp.wait_mails(2, T);
    let rec = &mails[1];
    assert!(
        header(rec, "Subject")
            .unwrap()
            .contains("] api RECOVERED: up again after"),
        "{rec}"
    );
    assert!(rec.contains("Held back:"), "{rec}");
    assert_eq!(smtp.mails().len(), 2, "one incident, one recovery");
}

#[test]
fn starttls_auth_works_and_a_wrong_password_keeps_the_alert_queued() {
    let s = Setup::new();
    let (ca, cert, key) = certificates(s.path());
    let smtp = Smtp::start(
        &s.file("mail"),
        Some(Secure {
            cert: &cert,
            key: &key,
            user: "orchd",
            password: "right-horse-battery",
        }),
    );
    std::fs::write(s.file("smtp.pass"), "right-horse-battery\n").unwrap();
    let channel = |name: &str, pw: &str| {
        format!(
            "[[alerts.email]]\nname = \"{name}\"\nserver = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\nusername = \"orchd\"\n{pw}\nfrom = \"orchd@example.com\"\nto = [\"oncall@example.com\"]\n",
            smtp.port
        )
    };
    let mut s = s;
    s.extra_config = format!(
        "[alerts]\n{}{}",
        channel("good", "password_file = \"smtp.pass\""),
        channel("bad", "password_env = \"ORCH_TEST_SMTP_PW\"")
    );
    s.unit("job", &format!("alert = [\"bad\"]\n{FAIL_ONCE}"));
    let ca = ca.to_string_lossy().into_owned();
    let o = s.start_with_env(&[
        ("SSL_CERT_FILE", &ca),
        ("ORCH_TEST_SMTP_PW", "wrong-staple-pony"),
    ]);
    let out = o.ctl(&["alert-test", "good"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "good: delivered\n");
    let mails = smtp.wait_mails(1, T);
    assert!(
        header(&mails[0], "Subject").unwrap().contains("orchd TEST"),
        "{}",
        mails[0]
    );

    // The failing job's alert goes to "bad": refused, logged clearly, kept in the outbox.
    let logged = wait_until(T, || {
        o.log_text()
            .contains("alert delivery failed; kept in the outbox")
    });
    let log = o.log_text();
    assert!(logged, "no logged delivery failure:\n{log}");
    assert!(log.contains("535"), "{log}");
    assert_eq!(outbox_files(&s), 1);
    let out = o.ctl(&["alert-test", "bad"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("test alert not delivered:\nbad: SMTP 127.0.0.1:"),
        "{err}"
    );
    assert_eq!(smtp.mails().len(), 1);
    for secret in ["right-horse-battery", "wrong-staple-pony"] {
        for t in [o.log_text(), err.clone(), text(&out.stdout)] {
            assert!(!t.contains(secret), "secret {secret} leaked:\n{t}");
        }
    }
}

fn verify(key: &[u8], hit: &crate::receiver::Hit) {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(&hit.body);
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(hit.headers.get("x-orch-signature"), Some(&want));
    let ts: u64 = hit.headers["x-orch-timestamp"].parse().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(ts) < 60, "{ts}");
}

#[test]
fn webhook_formats_hmac_reload_and_no_secret_leaks() {
    let r = Receiver::start(&[]);
    let s = Setup::new();
    std::fs::write(s.file("hook.key"), "hmac-key-do-not-print\n").unwrap();
    s.unit("api", "exec = [\"sleep\", \"1000\"]\n");
    let json_hook = format!(
        "[[alerts.webhook]]\nname = \"generic\"\nurl = \"{}\"\nformat = \"json\"\nsecret_file = \"hook.key\"\n",
        r.url("/json/T0KEN-json?sig=QUERYSECRET")
    );
    let mut s = s;
    s.extra_config = format!("[alerts]\n{json_hook}");
    let o = s.start();
    let pid = o.wait_new_pid("api", None, T);
    let v = o.json(&["alert-test"]);
    assert_eq!(v["channels"][0]["delivered"], true, "{v}");
    let hits = r.hits();
    assert_eq!(hits.len(), 1);
    verify(b"hmac-key-do-not-print", &hits[0]);
    let j = hits[0].json();
    for key in [
        "schema",
        "id",
        "host",
        "service",
        "event",
        "severity",
        "subject",
        "summary",
        "time",
        "time_local",
        "exit_code",
        "signal",
        "restarts",
        "backoff_ms",
        "reason",
        "last_probe",
        "release",
        "held_back",
        "down_secs",
        "output",
        "investigate",
    ] {
        assert!(j.get(key).is_some(), "json schema lacks {key}: {j}");
    }
    assert_eq!(j.as_object().unwrap().len(), 21, "{j}");
    assert_eq!(
        (j["schema"].clone(), j["event"].clone()),
        (1.into(), "test".into())
    );

    // Reload adds Slack, Discord and a refusing hook without touching the service.
    s.extra_config = format!(
        "[alerts]\n{json_hook}[[alerts.webhook]]\nname = \"slack\"\nurl = \"{}\"\nformat = \"slack\"\n[[alerts.webhook]]\nname = \"discord\"\nurl = \"{}\"\nformat = \"discord\"\n[[alerts.webhook]]\nname = \"gone\"\nurl = \"{}\"\n",
        r.url("/slack/T0KEN-slack"),
        r.url("/discord/T0KEN-discord"),
        r.url("/gone/T0KEN-gone"),
    );
    s.write_config();
    let out = o.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for ch in ["slack", "discord"] {
        let out = o.ctl(&["alert-test", ch]);
        assert_eq!(text(&out.stdout), format!("{ch}: delivered\n"));
    }
    let hits = r.hits();
    let slack = hits
        .iter()
        .find(|h| h.path.starts_with("/slack/"))
        .unwrap()
        .json();
    assert!(
        slack["text"].as_str().unwrap().contains("orchd TEST"),
        "{slack}"
    );
    let types: Vec<&str> = slack["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["header", "section", "context"], "{slack}");
    let discord = hits
        .iter()
        .find(|h| h.path.starts_with("/discord/"))
        .unwrap()
        .json();
    assert!(
        discord["content"].as_str().unwrap().contains("orchd TEST"),
        "{discord}"
    );
    assert!(
        discord["embeds"][0]["title"].is_string() && discord["embeds"][0]["fields"].is_array(),
        "{discord}"
    );
    assert!(
        hits.iter()
            .filter(|h| !h.path.starts_with("/json/"))
            .all(|h| !h.headers.contains_key("x-orch-signature"))
    );
    assert_eq!(
        o.pid_of("api"),
        Some(pid),
        "reloading [alerts] must not restart services"
    );

    let refusing = Receiver::start(&[404]);
    s.extra_config = format!(
        "[alerts]\n[[alerts.webhook]]\nname = \"gone\"\nurl = \"{}\"\n",
        refusing.url("/gone/T0KEN-gone?key=QUERYSECRET")
    );
    s.write_config();
    assert!(o.ctl(&["reload"]).status.success());
    let out = o.ctl(&["alert-test"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "gone: POST http://127.0.0.1:{}/…: HTTP 404",
            refusing.port
        )),
        "{err}"
    );
    let status = text(&o.ctl(&["status"]).stdout);
    for secret in ["T0KEN", "QUERYSECRET", "hmac-key-do-not-print"] {
        for t in [o.log_text(), err.clone(), text(&out.stdout), status.clone()] {
            assert!(!t.contains(secret), "secret {secret} leaked:\n{t}");
        }
    }
}

#[test]
fn a_500_is_retried_and_delivered_once() {
    let r = Receiver::start(&[500]);
    let s = Setup::new();
    s.unit("job", FAIL_ONCE);
    let mut s = s;
    s.extra_config = format!(
        "[alerts]\n[[alerts.webhook]]\nname = \"hook\"\nurl = \"{}\"\n",
        r.url("/hook")
    );
    let o = s.start();
    wait_for("two attempts", T, || r.hits().len() >= 2);
    wait_for("an empty outbox", T, || outbox_files(&s) == 0);
    let hits = r.hits();
    assert_eq!(hits.len(), 2, "{hits:?}");
    let (a, b) = (hits[0].json(), hits[1].json());
    assert_eq!(a["id"], b["id"]);
    assert_eq!(b["event"], "failed");
    assert_eq!(b["exit_code"], 7);
    assert_eq!(b["output"][0], "about to fail");
    assert!(
        b["subject"]
            .as_str()
            .unwrap()
            .ends_with("job FAILED: exited 7, not restarting"),
        "{b}"
    );
    assert!(o.log_text().contains("HTTP 500"));
}

#[test]
fn an_undelivered_alert_survives_a_restart_of_orchd() {
    let port = free_port();
    let s = Setup::new();
    s.unit("job", FAIL_ONCE);
    let mut s = s;
    s.extra_config = format!(
        "[alerts]\n[[alerts.webhook]]\nname = \"hook\"\nurl = \"http://127.0.0.1:{port}/hook\"\n"
    );
    let mut o = s.start();
    wait_for("a failed delivery", T, || {
        o.log_text()
            .contains("alert delivery failed; kept in the outbox")
    });
    assert_eq!(outbox_files(&s), 1);
    let queued: serde_json::Value = {
        let dir = s.path().join("state/outbox");
        let f = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .path();
        serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap()
    };
    assert!(o.stop().success());
    assert_eq!(outbox_files(&s), 1, "still queued after a clean stop");

    let r = Receiver::start_on(port, &[]);
    let _o = s.start();
    wait_for("the queued alert", T, || {
        r.hits()
            .iter()
            .any(|h| h.json()["id"] == queued["alert"]["id"])
    });
}

#[test]
fn a_silence_holds_alerts_back_and_ends_by_itself_with_a_summary() {
    let r = Receiver::start(&[]);
    let s = Setup::new();
    s.unit(
        "job",
        "exec = [\"sleep\", \"1000\"]\n[restart]\npolicy = \"no\"\n",
    );
    let mut s = s;
    s.extra_config = format!(
        "[alerts]\n[[alerts.webhook]]\nname = \"hook\"\nurl = \"{}\"\n",
        r.url("/hook")
    );
    let o = s.start();
    let pid = o.wait_new_pid("job", None, T);
    let out = o.ctl(&["silence", "job", "--for", "2s", "--reason", "maintenance"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("silenced: s"),
        "{}",
        text(&out.stdout)
    );
    let list = o.json(&["silences"]);
    assert_eq!(list["silences"][0]["target"], "job");
    assert_eq!(list["silences"][0]["reason"], "maintenance");
    assert_eq!(
        o.ctl(&["silence", "nope", "--for", "1h"]).status.code(),
        Some(2)
    );
    assert_eq!(o.ctl(&["unsilence", "s000000"]).status.code(), Some(2));

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    o.wait_state("job", "failed", T);
    wait_for("the alert to be held", T, || {
        o.json(&["silences"])["silences"][0]["held"]
            .as_array()
            .is_some_and(|h| h.len() == 1)
    });
    assert!(r.hits().is_empty(), "silenced");
    wait_for("the silence to end", T, || !r.hits().is_empty());
    let hits = r.hits();
    assert_eq!(hits.len(), 1);
    let j = hits[0].json();
    assert_eq!(j["event"], "silence_ended");
    assert_eq!(j["held_back"], 1);
    assert!(
        j["reason"].as_str().unwrap().contains("job FAILED: "),
        "{j}"
    );
    assert_eq!(text(&o.ctl(&["silences"]).stdout), "no active silences\n");
}

/// The BENCHMARKS figure: from a crash (the process's last act) to the receiver having the
/// alert. Prints the median; asserts a generous bound so a loaded CI machine passes.
#[test]
fn crash_to_webhook_latency() {
    let r = Receiver::start(&[]);
    let s = Setup::new();
    let n = 9;
    for i in 0..n {
        let stamp = s.file(&format!("crash-{i}"));
        s.unit(
            &format!("svc{i}"),
            &format!(
                "exec = [\"sh\", \"-c\", \"sleep 0.{}; date +%s%N > {}; exit 1\"]\n[restart]\ndelay = \"10s\"\n",
                3 + i,
                stamp.display()
            ),
        );
    }
    let mut s = s;
    s.extra_config = format!(
        "[alerts]\n[[alerts.webhook]]\nname = \"hook\"\nurl = \"{}\"\n",
        r.url("/hook")
    );
    let _o = s.start();
    wait_for("all alerts", T, || r.hits().len() >= n);
    let mut ms: Vec<f64> = r
        .hits()
        .iter()
        .map(|h| {
            let svc = h.json()["service"].as_str().unwrap().to_owned();
            let i: usize = svc.trim_start_matches("svc").parse().unwrap();
            let crashed: u128 = std::fs::read_to_string(s.file(&format!("crash-{i}")))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let got = h.at.duration_since(UNIX_EPOCH).unwrap().as_nanos();
            (got.saturating_sub(crashed)) as f64 / 1e6
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let median = ms[ms.len() / 2];
    eprintln!("crash -> webhook latency ms: median {median:.1}, all {ms:.1?}");
    assert!(median < 1000.0, "{ms:?}");
}
