//! Unit fuzz test (issue 14): seeded random mutations of valid unit files, through the real
//! `orchd --check` and through `orchctl reload` of a running orchd.
//!
//! What must hold for every mutant:
//! - `orchd --check` ends within a deadline with exit 0 or 2, never a panic or a signal;
//! - with exit 2, every stdout line is `PATH:LINE:COL: message`, PATH one of the files,
//!   LINE:COL inside that file, and stderr is `N error(s)`; with exit 0, stdout is the
//!   documented `CONFIG: configuration is valid (N unit(s) in DIR)`;
//! - a running orchd agrees with `--check`: a reload succeeds exactly when `--check` says
//!   valid, and a failed one lists the same errors and changes nothing (same services, pids,
//!   states and releases, the running service keeps its pid, and a dry run of the old files
//!   afterwards plans no change).
//!
//! Each run prints its seed; `ORCH_FUZZ_SEED=N cargo test --test it unit_fuzz::` replays it.
//! A failure shows the seed, the mutations, the mutant's text and what went wrong (a batch
//! that fails is re-checked one mutant at a time to name the culprit).

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::Value;

use crate::util::{ORCHCTL, ORCHD, Orchd, Setup, alive, free_ports, text};

/// Mutants per `orchd --check` run; runs; reloads of the running orchd.
const BATCH: usize = 24;
const BATCHES: usize = 50;
const RELOADS: usize = 150;
/// How long one `orchd --check` or `orchctl` call may take on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(30);

/// Alert channels for the units' `alert` key, in every orchd.toml of this test.
const ALERTS: &str = r#"
[alerts]
repeat_interval = "1h"
[[alerts.email]]
name = "oncall"
server = "127.0.0.1"
port = 9
tls = "none"
username = "orchd"
password_env = "ORCH_FUZZ_SMTP_PASSWORD"
from = "orchd <orchd@example.com>"
to = ["oncall@example.com"]
[[alerts.webhook]]
name = "slack"
url = "http://127.0.0.1:9/hook"
format = "json"
"#;

/// Units that every run has unchanged, as targets of `requires`/`after`.
const BASE: &[(&str, &str)] = &[
    (
        "db",
        "description = \"monitor-only\"\n[health]\ntcp = \"127.0.0.1:9\"\ninterval = \"1h\"\n\
         on_unhealthy = \"alert\"\n",
    ),
    (
        "cache",
        "exec = [\"/bin/sh\", \"-c\", \"exec sleep 3600\"]\n[health]\nexec = [\"/bin/true\"]\n",
    ),
    ("job", "exec = [\"/bin/true\"]\nrelease = \"v1\"\n"),
];

/// The running service of the reload part: a sleep loop whose pid must never change.
const KEEPER: &str = r#"description = "keeps running"
exec = ["/bin/sh", "-c", "while :; do sleep 1; done"]
release = "k1"
env = { A = "1" }
after = ["job"]
alert = ["slack"]
[restart]
policy = "always"
delay = "1s"
[stop]
signal = "SIGTERM"
timeout = "5s"
"#;

/// Valid units covering every key; `@LISTEN@`, `@P0@` and `@P1@` become ports when written.
/// Every program they run is harmless, whatever a mutation makes of it.
const CORPUS: &[(&str, &str)] = &[
    (
        "api",
        r#"description = "Public API"
exec = ["/bin/sh", "-c", "exec sleep 30", "{release}", "{port}"]
working_dir = "."
release = "current"
user = "root"
group = "root"
env = { RUST_LOG = "info", BIND = "127.0.0.1:{port}", R = "{release}", LIT = "{{x}}" }
env_file = "api.env"
requires = ["db"]
after = ["cache"]
alert = ["oncall", "slack"]

[restart]
policy = "on-failure"
delay = "100ms"
max_delay = "30s"
multiplier = 2.0
jitter = 0.1
reset_after = "60s"
burst = 5
interval = "60s"

[stop]
signal = "SIGTERM"
timeout = "10s"

[health]
http = "http://127.0.0.1:{port}/health"
expect_status = [200, 204]
expect_body = "ok"
headers = { Host = "api.example.com" }
insecure = false
interval = "5s"
timeout = "2s"
retries = 3
start_period = "10s"
success_threshold = 1
on_unhealthy = "restart"

[deploy]
listen = "127.0.0.1:@LISTEN@"
proxy = "http"
ports = [@P0@, @P1@]
timeout = "60s"
watch = "60s"
drain = "30s"
keep_releases = 5
switch = "proxy"
"#,
    ),
    (
        "web",
        r#"exec = ["/bin/sh", "-c", "exec sleep 30 # $PORT"]
[restart]
policy = "always"
[stop]
signal = "int"
timeout = "1m30s"
[health]
tcp = "127.0.0.1:{port}"
retries = 2
on_unhealthy = "alert"
[deploy]
listen = "127.0.0.1:@LISTEN@"
proxy = "tcp"
ports = [@P0@, @P1@]
"#,
    ),
    (
        "lb",
        r#"exec = ["/bin/sleep", "30"]
release = "2026-12-08_abc123"
[deploy]
ports = [@P0@, @P1@]
switch = "command"
switch_command = ["/bin/true", "{port}", "{release}"]
keep_releases = 1
"#,
    ),
    (
        "worker",
        r#"exec = ["/bin/sleep", "30"]
requires = ["db", "job"]
after = ["job"]
alert = []
env_file = "/nonexistent/worker.env"
[restart]
policy = "no"
burst = 0
[stop]
signal = "SIGQUIT"
[health]
exec = ["/bin/true", "{release}"]
timeout = "1s"
interval = "2s"
"#,
    ),
    (
        "mon",
        r#"description = "partner API"
[health]
http = "http://user:pw@127.0.0.1:9/status"
expect_status = 200
expect_body = "up"
headers = { Accept = "text/plain", X-Probe = "orchd" }
insecure = true
start_period = "0s"
success_threshold = 2
"#,
    ),
];

/// Values that each break a key in a different way (or don't, where the key takes them).
const WEIRD: &[&str] = &[
    "\"\"",
    "0",
    "-1",
    "1",
    "1e308",
    "-1e308",
    "1e-308",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "4294967296",
    "65536",
    "nan",
    "inf",
    "-inf",
    "1.5",
    "true",
    "1979-05-27T07:32:00Z",
    "07:32:00",
    "[]",
    "{}",
    "[1, \"a\"]",
    "[\"\"]",
    "{ a = 1 }",
    "[[1], [2]]",
    "[{ x = 1 }]",
    "\"500000000000y\"",
    "\"99999999999999999999s\"",
    "\"18446744073709551615s\"",
    "\"584942417356y\"",
    "\"0s\"",
    "\"1ns\"",
    "\"-1s\"",
    "\"5\"",
    "\"24h\"",
    "\"24h 1ns\"",
    "\"30d\"",
    "\"..\"",
    "\".\"",
    "\"/\"",
    "\"../../../bin/sh\"",
    "\"/etc/passwd\"",
    "\"a\\u0000b\"",
    "\"\\u001b[31mred\"",
    "\"line\\nbreak\"",
    "\"tab\\there\"",
    "\"\\u007f\\u0085\"",
    "\"\\r\"",
    "\"{port}\"",
    "\"{release}\"",
    "\"{\"",
    "\"}\"",
    "\"{{}}\"",
    "\"{nope}\"",
    "\"{a\\nb}\"",
    "\"SIGKILL\"",
    "\"SIGSTOP\"",
    "\"sigcont\"",
    "\"SIG\"",
    "\"65\"",
    "\"127.0.0.1:0\"",
    "\"[::1]:0\"",
    "\"0.0.0.0:99999\"",
    "\"http://\"",
    "\"tcp://x\"",
    "\"ünïcødé 名前\"",
    "'literal'",
    "'''multi\nline'''",
    "\"\"\"multi\nline\"\"\"",
    "[\"db\", \"db\"]",
    "[\"nope\"]",
    "[\"a\\nb\"]",
    "[\"..\"]",
    "[\"oncall\", \"pager\"]",
    "[\"\\u001b]0;x\\u0007\"]",
    "[0, 0]",
    "[1, 65535]",
    "[70000, 1]",
    "[1]",
    "[1, 2, 3]",
];

/// Durations at, past and far past their bounds (docs/units.md), and odd ones.
const HUGE_DURATIONS: &[&str] = &[
    "\"500000000000y\"",
    "\"99999999999999999999s\"",
    "\"18446744073709551615s\"",
    "\"584942417355y\"",
    "\"1h 1ns\"",
    "\"24h 1ns\"",
    "\"30d 1s\"",
    "\"367d\"",
    "\"0s\"",
    "\"1ns\"",
    "\"1 s\"",
    "\"1s1s\"",
];

/// Numbers past the bounds of counts, factors and ports, and odd ones.
const HUGE_NUMBERS: &[&str] = &[
    "1e308",
    "18446744073709551616",
    "18446744073709551615",
    "-1",
    "4294967296",
    "4294967295",
    "65536",
    "1001",
    "10001",
    "100.0000001",
    "1.0000001",
    "nan",
    "-inf",
    "-0.0",
    "0",
];

/// Lines that are not keys of any section, or not TOML at all.
const JUNK: &[&str] = &[
    "bogus = 1",
    "polcy = \"no\"",
    "[bogus]",
    "[restart.bogus]",
    "[[restart]]",
    "[[deploy.ports]]",
    "health.http = \"http://127.0.0.1:9/\"",
    "a.b.c = 1",
    "= =",
    "[",
    "[[",
    "]",
    "\"",
    "key =",
    "x = 1 = 2",
    "\"\\u0000\" = 1",
    "\"a\\nb\" = 1",
    "\"\\u001b[2J\" = 1",
    "exec = [\"/bin/true\"]",
    "[health]",
    "[deploy]",
    "\u{feff}exec = []",
];

/// A file name for the mutant; mostly valid, sometimes not.
fn file_name(rng: &mut StdRng, origin: &str, i: usize) -> OsString {
    let weird: Vec<Vec<u8>> = vec![
        b"..toml".to_vec(),
        format!("my unit {i}.toml").into(),
        format!("{i} .toml").into(),
        format!("x{i}\t.toml").into(),
        format!("x{i}\n.toml").into(),
        format!("名前{i}.toml").into(),
        format!("{}{i}.toml", "n".repeat(130)).into(),
        [b"\xff".as_slice(), format!("{i}.toml").as_bytes()].concat(),
        format!("a..b{i}.toml").into(),
        format!("-{i}@x.toml").into(),
        format!(".{i}.toml").into(),
        format!("{i}.TOML").into(),
        format!("{i}.toml.bak").into(),
    ];
    if rng.random_bool(0.15) {
        OsString::from_vec(weird[rng.random_range(0..weird.len())].clone())
    } else {
        OsString::from(format!("{origin}-{i}.toml"))
    }
}

/// One mutated unit file, with the mutations that made it (for the failure message).
#[derive(Clone)]
struct Mutant {
    file: OsString,
    /// The text with `@LISTEN@`/`@P0@`/`@P1@` still in it.
    template: Vec<u8>,
    ops: Vec<String>,
}

impl Mutant {
    /// The text as written, with these ports.
    fn text(&self, ports: [u16; 3]) -> Vec<u8> {
        let mut out = self.template.clone();
        for (marker, port) in ["@LISTEN@", "@P0@", "@P1@"].iter().zip(ports) {
            out = replace_all(&out, marker.as_bytes(), port.to_string().as_bytes());
        }
        out
    }

    fn describe(&self, seed: u64, ports: [u16; 3]) -> String {
        let text = self.text(ports);
        let shown = String::from_utf8_lossy(&text);
        let shown: String = shown.chars().take(3000).collect();
        format!(
            "seed {seed} (replay: ORCH_FUZZ_SEED={seed} cargo test --test it unit_fuzz::)\n\
             mutant file {:?}, mutations: {}\n--- mutant text ({} bytes{}) ---\n{shown}\n---",
            self.file,
            self.ops.join("; "),
            text.len(),
            if text.len() > shown.len() {
                ", cut"
            } else {
                ""
            },
        )
    }
}

fn replace_all(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// The seeded mutator.
struct Fuzzer {
    seed: u64,
    rng: StdRng,
}

impl Fuzzer {
    fn new() -> Fuzzer {
        let seed = match std::env::var("ORCH_FUZZ_SEED") {
            Ok(s) => s.trim().parse().expect("ORCH_FUZZ_SEED must be a u64"),
            Err(_) => rand::random(),
        };
        eprintln!("unit_fuzz: seed {seed} (replay with ORCH_FUZZ_SEED={seed})");
        Fuzzer {
            seed,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// A mutant of a random corpus unit, with 0 to 3 mutations.
    fn mutant(&mut self, i: usize) -> Mutant {
        let all: Vec<(&str, &str)> = CORPUS.iter().chain(BASE).copied().collect();
        let (origin, text) = all[self.rng.random_range(0..all.len())];
        let file = file_name(&mut self.rng, origin, i);
        self.mutate_text(file, text)
    }

    fn mutate_text(&mut self, file: OsString, text: &str) -> Mutant {
        let mut template = text.as_bytes().to_vec();
        let n = if self.rng.random_bool(0.05) {
            0
        } else {
            self.rng.random_range(1..=3)
        };
        // Half the mutants change only values, so the file stays TOML and reaches the
        // semantic checks (bounds, names, templates, ports, dependencies).
        let values_only = self.rng.random_bool(0.5);
        let ops = (0..n)
            .map(|_| self.mutate(&mut template, values_only))
            .collect();
        Mutant {
            file,
            template,
            ops,
        }
    }

    /// Applies one random mutation to `text`; says which. `values_only`: swap and replace
    /// values, nothing else.
    fn mutate(&mut self, text: &mut Vec<u8>, values_only: bool) -> String {
        let rng = &mut self.rng;
        let mut lines: Vec<Vec<u8>> = text.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
        let kv: Vec<usize> = (0..lines.len())
            .filter(|&i| value_at(&lines[i]).is_some())
            .collect();
        let pos = rng.random_range(0..=text.len());
        let line = rng.random_range(0..lines.len());
        let op = if values_only {
            *pick(rng, &[5, 6, 15, 15])
        } else {
            rng.random_range(0..16)
        };
        let op = match op {
            0 if !text.is_empty() => {
                let i = rng.random_range(0..text.len());
                let bit = rng.random_range(0..8);
                text[i] ^= 1 << bit;
                return format!("flip bit {bit} of byte {i}");
            }
            1 => {
                let end = (pos + rng.random_range(1..20)).min(text.len());
                text.drain(pos..end);
                return format!("delete bytes {pos}..{end}");
            }
            2 => {
                let bytes: Vec<u8> = (0..rng.random_range(1..4))
                    .map(|_| *pick(rng, &[0u8, b'\r', 0x1b, 0x7f, 0x80, 0xc3, 0xff, b'"', b'{']))
                    .collect();
                text.splice(pos..pos, bytes.iter().copied());
                return format!("insert bytes {bytes:?} at {pos}");
            }
            3 => {
                lines.remove(line);
                format!("delete line {}", line + 1)
            }
            4 => {
                let copy = lines[line].clone();
                let to = rng.random_range(0..=lines.len());
                lines.insert(to, copy);
                format!("copy line {} to line {}", line + 1, to + 1)
            }
            5 if kv.len() >= 2 => {
                let (a, b) = (*pick(rng, &kv), *pick(rng, &kv));
                let (va, vb) = (value_at(&lines[a]), value_at(&lines[b]));
                let (va, vb) = (va.unwrap_or_default(), vb.unwrap_or_default());
                set_value(&mut lines[a], &vb);
                set_value(&mut lines[b], &va);
                format!("swap values of lines {} and {}", a + 1, b + 1)
            }
            6 | 7 if !kv.is_empty() => {
                let at = *pick(rng, &kv);
                let v = pick(rng, WEIRD).as_bytes().to_vec();
                set_value(&mut lines[at], &v);
                format!("line {}: value {:?}", at + 1, text_of(&v))
            }
            8 if !kv.is_empty() => {
                let at = *pick(rng, &kv);
                let (v, what) = monster(rng);
                set_value(&mut lines[at], &v);
                format!("line {}: value {what}", at + 1)
            }
            9 if !kv.is_empty() => {
                let at = *pick(rng, &kv);
                let old = value_at(&lines[at]).unwrap_or_default();
                let (v, what) = confuse(rng, &old);
                set_value(&mut lines[at], &v);
                format!("line {}: {what}", at + 1)
            }
            10 => {
                let junk = pick(rng, JUNK);
                lines.insert(line, junk.as_bytes().to_vec());
                format!("insert {junk:?} at line {}", line + 1)
            }
            11 => {
                // A key of another unit, maybe of another section: keys in the wrong place,
                // duplicate keys and new combinations of valid ones.
                let (_, other) = *pick(rng, CORPUS);
                let others: Vec<&str> = other.lines().filter(|l| !l.is_empty()).collect();
                let l = pick(rng, &others);
                lines.insert(line, l.as_bytes().to_vec());
                format!("insert {l:?} at line {}", line + 1)
            }
            12 => {
                let headers: Vec<usize> = (0..lines.len())
                    .filter(|&i| lines[i].starts_with(b"["))
                    .collect();
                if headers.is_empty() {
                    lines.push(b"[restart]".to_vec());
                    "append [restart]".to_string()
                } else {
                    let h = lines[*pick(rng, &headers)].clone();
                    lines.push(h.clone());
                    lines.push(b"interval = \"1s\"".to_vec());
                    format!("append a second {:?}", text_of(&h))
                }
            }
            13 => {
                text.truncate(pos);
                return format!("truncate at byte {pos}");
            }
            15 if !kv.is_empty() => {
                // A string (most are durations) or a number past every bound.
                let at = *pick(rng, &kv);
                let old = value_at(&lines[at]).unwrap_or_default();
                let v = match old.first() {
                    Some(b'"') => pick(rng, HUGE_DURATIONS),
                    _ => pick(rng, HUGE_NUMBERS),
                };
                set_value(&mut lines[at], v.as_bytes());
                format!("line {}: value {v}", at + 1)
            }
            14 => {
                let d = *pick(rng, &[10usize, 1_000, 100_000]);
                let path = vec!["a"; d].join(".");
                let (l, what) = match rng.random_range(0..3) {
                    0 => (format!("{path} = 1"), "key"),
                    1 => (format!("[{path}]"), "table"),
                    _ => (format!("[[{path}]]"), "array of tables"),
                };
                lines.insert(line, l.into_bytes());
                format!("insert a dotted {what} {d} deep at line {}", line + 1)
            }
            _ => {
                let dup = lines.clone();
                lines.extend(dup);
                "append the whole file again".to_string()
            }
        };
        *text = lines.join(&b'\n');
        op
    }
}

fn pick<'a, T>(rng: &mut StdRng, from: &'a [T]) -> &'a T {
    &from[rng.random_range(0..from.len())]
}

fn text_of(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    if s.len() > 60 {
        format!(
            "{}… ({} bytes)",
            &s.chars().take(40).collect::<String>(),
            b.len()
        )
    } else {
        s.into_owned()
    }
}

/// The value of a `key = value` line (not a table header or comment).
fn value_at(line: &[u8]) -> Option<Vec<u8>> {
    if line.starts_with(b"[") || line.starts_with(b"#") {
        return None;
    }
    let eq = line.iter().position(|&b| b == b'=')?;
    Some(line[eq + 1..].trim_ascii().to_vec())
}

fn set_value(line: &mut Vec<u8>, value: &[u8]) {
    if let Some(eq) = line.iter().position(|&b| b == b'=') {
        line.truncate(eq + 1);
        line.push(b' ');
        line.extend_from_slice(value);
    }
}

/// A value that is very long, very deep or very wide.
fn monster(rng: &mut StdRng) -> (Vec<u8>, String) {
    match rng.random_range(0..6) {
        0 => {
            let n = *pick(rng, &[1_000usize, 100_000, 1_100_000]);
            let s = format!("\"{}\"", "x".repeat(n));
            (s.into_bytes(), format!("a string of {n} bytes"))
        }
        1 => {
            let d = *pick(rng, &[10usize, 200, 1_000, 20_000, 200_000]);
            let s = format!("{}1{}", "[".repeat(d), "]".repeat(d));
            (s.into_bytes(), format!("an array {d} deep"))
        }
        2 => {
            let d = *pick(rng, &[10usize, 200, 1_000, 20_000, 100_000]);
            let s = format!("{}1{}", "{ a = ".repeat(d), " }".repeat(d));
            (s.into_bytes(), format!("an inline table {d} deep"))
        }
        3 => {
            // Each entry of a long `requires` is an error of its own: not too many, or
            // a debug build takes seconds to print them.
            let n = *pick(rng, &[100usize, 5_000, 20_000]);
            let s = format!("[{}\"x\"]", "\"x\", ".repeat(n));
            (s.into_bytes(), format!("an array of {n} strings"))
        }
        4 => {
            let n = *pick(rng, &[100usize, 20_000]);
            let keys: Vec<String> = (0..n).map(|k| format!("K{k} = \"v\"")).collect();
            let s = format!("{{ {} }}", keys.join(", "));
            (s.into_bytes(), format!("an inline table of {n} keys"))
        }
        _ => {
            let n = *pick(rng, &[30usize, 1_000, 100_000]);
            (
                "9".repeat(n).into_bytes(),
                format!("a number of {n} digits"),
            )
        }
    }
}

/// The same value as another type: string ↔ number ↔ array ↔ table.
fn confuse(rng: &mut StdRng, old: &[u8]) -> (Vec<u8>, String) {
    let inner = old
        .strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .unwrap_or(old);
    let v: Vec<u8> = match rng.random_range(0..5) {
        0 => [b"\"".as_slice(), old, b"\""].concat(),
        1 => inner.to_vec(),
        2 => [b"[".as_slice(), old, b"]"].concat(),
        3 => [b"{ x = ".as_slice(), old, b" }"].concat(),
        _ => [b"[[".as_slice(), old, b"], []]"].concat(),
    };
    let what = format!("{:?} -> {:?}", text_of(old), text_of(&v));
    (v, what)
}

/// Runs `cmd` to the end, killing it after [`DEADLINE`].
fn run_bounded(mut cmd: Command) -> Result<Output, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("piped stdout")));
    let err = reader(Box::new(child.stderr.take().expect("piped stderr")));
    let end = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| format!("waiting: {e}"))? {
            break s;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{cmd:?} still running after {DEADLINE:?}: killed"));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Ok(Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    })
}

/// A unit file of a check, as written.
struct Written {
    path: PathBuf,
    text: Vec<u8>,
}

/// How `--check` judged a set of files: the error lines of each file, by index.
struct Verdict {
    errors: Vec<Vec<String>>,
    lines: Vec<String>,
}

/// How a diagnostic prints a path: control characters escaped, so a diagnostic stays one line.
fn shown_path(p: &Path) -> String {
    escape_controls(&p.display().to_string())
}

fn escape_controls(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Runs `orchd --check --config config` over `files` and checks everything it printed.
fn check(config: &Path, config_text: &str, files: &[Written]) -> Result<Verdict, String> {
    let mut cmd = Command::new(ORCHD);
    cmd.arg("--check").arg("--config").arg(config);
    let out = run_bounded(cmd)?;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let said = || format!("--- stdout ---\n{stdout}--- stderr ---\n{stderr}");
    if stderr.contains("panicked") || out.status.code().is_none_or(|c| c != 0 && c != 2) {
        return Err(format!(
            "orchd --check ended with {:?}\n{}",
            out.status,
            said()
        ));
    }
    let units_dir = config.with_file_name("units");
    let units = files
        .iter()
        .filter(|f| f.path.extension().is_some_and(|e| e == "toml"))
        .count();
    if out.status.code() == Some(0) {
        let expected = format!(
            "{}: configuration is valid ({units} unit(s) in {})\n",
            config.display(),
            units_dir.display()
        );
        if stdout != expected || !stderr.is_empty() {
            return Err(format!(
                "exit 0 but not the summary {expected:?}\n{}",
                said()
            ));
        }
        return Ok(Verdict {
            errors: vec![Vec::new(); files.len()],
            lines: Vec::new(),
        });
    }
    // Split on '\n' only: a stray '\r' in a line must show, not vanish as in `lines()`.
    let body = stdout.strip_suffix('\n').unwrap_or(&stdout);
    let lines: Vec<String> = body.split('\n').map(str::to_owned).collect();
    if body.is_empty() || stderr != format!("{} error(s)\n", lines.len()) {
        return Err(format!(
            "exit 2 needs error lines and `N error(s)` on stderr\n{}",
            said()
        ));
    }
    let mut errors = vec![Vec::new(); files.len()];
    for line in &lines {
        let at = place(line, config, config_text, files)
            .map_err(|e| format!("bad error line {line:?}: {e}\n{}", said()))?;
        if let Some(i) = at {
            errors[i].push(line.clone());
        }
    }
    Ok(Verdict { errors, lines })
}

/// Which file an error line is about (`None`: orchd.toml), checking its form and place.
fn place(
    line: &str,
    config: &Path,
    config_text: &str,
    files: &[Written],
) -> Result<Option<usize>, String> {
    let candidates = std::iter::once((None, shown_path(config), config_text.as_bytes())).chain(
        files
            .iter()
            .enumerate()
            .map(|(i, f)| (Some(i), shown_path(&f.path), f.text.as_slice())),
    );
    for (index, path, body) in candidates {
        let Some(rest) = line.strip_prefix(&format!("{path}:")) else {
            continue;
        };
        let mut parts = rest.splitn(3, ':');
        let (Some(l), Some(c), Some(message)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(l), Ok(c)) = (l.parse::<usize>(), c.parse::<usize>()) else {
            continue;
        };
        if !message.starts_with(' ') || message.trim().is_empty() {
            return Err("no message after LINE:COL".into());
        }
        let body = String::from_utf8_lossy(body);
        let file_lines: Vec<&str> = body.split('\n').collect();
        if l == 0 || c == 0 || l > file_lines.len() {
            return Err(format!(
                "{l}:{c} is outside the file's {} lines",
                file_lines.len()
            ));
        }
        let width = file_lines[l - 1].chars().count();
        if c > width + 1 {
            return Err(format!(
                "column {c} is past the end of line {l} ({width} chars)"
            ));
        }
        return Ok(index);
    }
    Err("not FILE:LINE:COL: message with FILE one of the files checked".into())
}

/// Writes `units` into `dir` (emptied first) and returns them as written.
fn write_units(dir: &Path, units: Vec<(OsString, Vec<u8>)>) -> Vec<Written> {
    for entry in std::fs::read_dir(dir).expect("read units dir").flatten() {
        std::fs::remove_file(entry.path()).expect("remove old unit");
    }
    units
        .into_iter()
        .map(|(name, text)| {
            let path = dir.join(name);
            std::fs::write(&path, &text).expect("write unit");
            Written { path, text }
        })
        .collect()
}

fn base_units() -> Vec<(OsString, Vec<u8>)> {
    BASE.iter()
        .map(|(n, t)| (OsString::from(format!("{n}.toml")), t.as_bytes().to_vec()))
        .collect()
}

/// Fake ports for a mutant that is only checked, never run.
fn check_ports(i: usize) -> [u16; 3] {
    let p = 20_000 + 3 * (i as u16 % 10_000);
    [p, p + 1, p + 2]
}

/// Part 1: batches of mutants through `orchd --check`. Returns the mutants it accepted.
fn check_batches(fz: &mut Fuzzer) -> Vec<Mutant> {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("orchd.toml");
    let units_dir = dir.path().join("units");
    std::fs::create_dir(&units_dir).expect("units dir");
    let head = "units_dir = \"units\"\n";
    let daemon = format!("{head}state_dir = \"state\"\n{ALERTS}");
    let (mut accepted, mut rejected) = (Vec::new(), 0);
    for b in 0..BATCHES {
        // Every fifth run also has a mutated orchd.toml.
        let config_bytes = if b % 5 == 4 {
            // units_dir stays: the files checked must be the ones written.
            let m = fz.mutate_text("orchd.toml".into(), &daemon[head.len()..]);
            [head.as_bytes(), &m.template].concat()
        } else {
            daemon.clone().into_bytes()
        };
        std::fs::write(&config, &config_bytes).expect("write orchd.toml");
        let config_text = String::from_utf8_lossy(&config_bytes).into_owned();
        let mut names = std::collections::BTreeSet::new();
        let mut mutants: Vec<Mutant> = (0..BATCH).map(|k| fz.mutant(b * BATCH + k)).collect();
        for (k, m) in mutants.iter_mut().enumerate() {
            if !names.insert(m.file.clone()) {
                m.file = format!("dup-{k}.toml").into();
            }
        }
        let mut units = base_units();
        let first = units.len();
        units.extend(
            mutants
                .iter()
                .enumerate()
                .map(|(k, m)| (m.file.clone(), m.text(check_ports(b * BATCH + k)))),
        );
        let files = write_units(&units_dir, units);
        let verdict = check(&config, &config_text, &files)
            .unwrap_or_else(|e| blame(fz.seed, &config, &config_text, &mutants, b * BATCH, &e));
        if verdict.lines.is_empty() || config_text == daemon {
            for (k, m) in mutants.iter().enumerate() {
                let f = &files[first + k];
                if verdict.errors[first + k].is_empty() && is_unit(&f.path) {
                    accepted.push(m.clone());
                } else {
                    rejected += 1;
                }
            }
        }
        for (i, errors) in verdict.errors[..first].iter().enumerate() {
            assert!(
                errors.is_empty() || config_text != daemon,
                "seed {}: errors in the unchanged unit {}: {errors:?}",
                fz.seed,
                files[i].path.display()
            );
        }
    }
    eprintln!(
        "unit_fuzz: {} mutants checked: {} accepted, {rejected} rejected",
        BATCHES * BATCH,
        accepted.len()
    );
    accepted
}

fn is_unit(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "toml")
}

/// A batch failed: find the mutant that fails alone, and panic with it.
fn blame(
    seed: u64,
    config: &Path,
    config_text: &str,
    mutants: &[Mutant],
    first: usize,
    batch_error: &str,
) -> ! {
    let units_dir = config.with_file_name("units");
    for (k, m) in mutants.iter().enumerate() {
        let ports = check_ports(first + k);
        let mut units = base_units();
        units.push((m.file.clone(), m.text(ports)));
        let files = write_units(&units_dir, units);
        if let Err(e) = check(config, config_text, &files) {
            panic!(
                "orchd --check failed on one mutant: {e}\n{}",
                m.describe(seed, ports)
            );
        }
    }
    let all: Vec<String> = mutants
        .iter()
        .enumerate()
        .map(|(k, m)| m.describe(seed, check_ports(first + k)))
        .collect();
    panic!(
        "orchd --check failed on a batch (no mutant fails alone): {batch_error}\n\
         --- orchd.toml ---\n{config_text}\n{}",
        all.join("\n")
    );
}

/// orchctl against `orchd`, bounded.
fn ctl(orchd: &Orchd, args: &[&str]) -> Result<Output, String> {
    let mut cmd = Command::new(ORCHCTL);
    cmd.arg("--socket").arg(&orchd.socket).args(args);
    run_bounded(cmd)
}

/// A service as a failed reload must leave it: name, state, pid and release.
type Seen = (String, String, Option<i64>, String);

/// Every service as `orchctl status` shows it.
fn snapshot(orchd: &Orchd) -> Result<Vec<Seen>, String> {
    let out = ctl(orchd, &["--json", "status"])?;
    if !out.status.success() {
        return Err(format!("orchctl status failed: {}", text(&out.stderr)));
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("status JSON: {e}"))?;
    let services = v["services"].as_array().cloned().unwrap_or_default();
    Ok(services
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_owned(),
                s["state"].as_str().unwrap_or_default().to_owned(),
                s["pid"].as_i64(),
                s["release"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

/// The reload part's running orchd, its files and the keeper's pid.
struct Live {
    setup: Setup,
    orchd: Orchd,
    config_text: String,
    keeper_pid: i32,
    seed: u64,
}

impl Live {
    fn start(seed: u64) -> Live {
        let mut setup = Setup::new();
        setup.extra_config = ALERTS.to_string();
        for (n, t) in BASE.iter().chain([&("keeper", KEEPER)]) {
            setup.unit(n, t);
        }
        let orchd = setup.start();
        let config_text = std::fs::read_to_string(setup.config_path()).expect("orchd.toml");
        for (name, state) in [
            ("keeper", "running"),
            ("cache", "running"),
            ("db", "running"),
            ("job", "exited"),
        ] {
            orchd.wait_state(name, state, Duration::from_secs(20));
        }
        let keeper_pid = orchd.pid_of("keeper").expect("keeper has a pid");
        Live {
            setup,
            orchd,
            config_text,
            keeper_pid,
            seed,
        }
    }

    fn units_dir(&self) -> PathBuf {
        self.setup.path().join("units")
    }

    /// The unit files now in the units dir, as `--check` will see them.
    fn files(&self) -> Vec<Written> {
        let mut files: Vec<Written> = std::fs::read_dir(self.units_dir())
            .expect("units dir")
            .flatten()
            .map(|e| Written {
                text: std::fs::read(e.path()).unwrap_or_default(),
                path: e.path(),
            })
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        files
    }

    /// One mutant through `--check` and a reload; `Err` says what went wrong.
    /// `accepted`: `--check` accepted this mutant in part 1, so it must be valid here too.
    fn round(
        &self,
        m: &Mutant,
        keeper: bool,
        accepted: bool,
        ports: [u16; 3],
    ) -> Result<&'static str, String> {
        let path = self.units_dir().join(&m.file);
        let target = if keeper {
            self.units_dir().join("keeper.toml")
        } else {
            path
        };
        std::fs::write(&target, m.text(ports)).map_err(|e| format!("write: {e}"))?;
        let files = self.files();
        let verdict = check(&self.setup.config_path(), &self.config_text, &files);
        let result = verdict.and_then(|v| match v.lines.is_empty() || !accepted {
            true => self.reload(&v, keeper),
            false => Err(format!(
                "accepted in a --check run with other units, refused here: {:#?}",
                v.lines
            )),
        });
        if keeper {
            std::fs::write(&target, KEEPER).map_err(|e| format!("restore keeper: {e}"))?;
        } else if target.exists() {
            std::fs::remove_file(&target).map_err(|e| format!("remove mutant: {e}"))?;
        }
        let outcome = result?;
        if outcome == "applied" {
            let out = ctl(&self.orchd, &["reload"])?;
            if !out.status.success() {
                return Err(format!(
                    "reload of the old files failed: {}",
                    text(&out.stderr)
                ));
            }
        }
        self.unchanged_plan()?;
        self.healthy()?;
        Ok(outcome)
    }

    /// A reload of the mutant: `applied` (to be undone), `dry run` or `rejected`.
    fn reload(&self, verdict: &Verdict, keeper: bool) -> Result<&'static str, String> {
        let valid = verdict.lines.is_empty();
        let before = snapshot(&self.orchd)?;
        // A valid change of the running service would restart it: dry run only.
        let dry = valid && keeper;
        let args: &[&str] = if dry {
            &["--json", "reload", "--dry-run"]
        } else {
            &["--json", "reload"]
        };
        let out = ctl(&self.orchd, args)?;
        let said = format!(
            "--- orchctl stdout ---\n{}--- stderr ---\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        match (valid, out.status.code()) {
            (true, Some(0)) => return Ok(if dry { "dry run" } else { "applied" }),
            (true, _) => return Err(format!("--check said valid, the reload failed\n{said}")),
            (false, Some(2)) => {}
            (false, _) => {
                return Err(format!(
                    "--check found errors {:?}, the reload did not fail with exit 2\n{said}",
                    verdict.lines
                ));
            }
        }
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}\n{said}"))?;
        let listed: Vec<String> = v["error"]["detail"]["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e.as_str().unwrap_or("?").to_owned())
                    .collect()
            })
            .unwrap_or_default();
        if listed != verdict.lines {
            return Err(format!(
                "the reload's errors are not --check's: {listed:#?} vs {:#?}",
                verdict.lines
            ));
        }
        let after = snapshot(&self.orchd)?;
        if after != before {
            return Err(format!(
                "a failed reload changed the services: {before:#?} -> {after:#?}"
            ));
        }
        Ok("rejected")
    }

    /// With the old files back, a dry run must plan no change: nothing of a failed (or
    /// undone) reload stayed applied.
    fn unchanged_plan(&self) -> Result<(), String> {
        let out = ctl(&self.orchd, &["--json", "reload", "--dry-run"])?;
        let v: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("dry run: {e}: {}", text(&out.stderr)))?;
        for key in ["added", "removed", "restarted", "updated"] {
            if v[key].as_array().is_none_or(|a| !a.is_empty()) {
                return Err(format!(
                    "with the old files back, a dry run plans changes: {v}"
                ));
            }
        }
        Ok(())
    }

    /// orchd alive, answering, without a panic in its log; the keeper on its first pid.
    fn healthy(&self) -> Result<(), String> {
        if !alive(self.orchd.pid()) {
            return Err("orchd is gone".into());
        }
        let log = self.orchd.log_text();
        if let Some(l) = log.lines().find(|l| l.contains("panicked")) {
            return Err(format!("orchd's log: {l}"));
        }
        let now = snapshot(&self.orchd)?;
        let keeper = now.iter().find(|s| s.0 == "keeper");
        match keeper {
            Some((_, state, Some(pid), _))
                if state == "running" && *pid == self.keeper_pid as i64 =>
            {
                Ok(())
            }
            other => Err(format!(
                "keeper is not running on its first pid {}: {other:?}",
                self.keeper_pid
            )),
        }
    }
}

/// Part 2: mutants written into a running orchd's units dir and reloaded.
fn reloads(fz: &mut Fuzzer, accepted: &[Mutant]) {
    let live = Live::start(fz.seed);
    let mut outcomes = std::collections::BTreeMap::new();
    for i in 0..RELOADS {
        let keeper = fz.rng.random_bool(0.2);
        let reuse = !keeper && !accepted.is_empty() && fz.rng.random_bool(0.3);
        let m = if keeper {
            fz.mutate_text("keeper.toml".into(), KEEPER)
        } else if reuse {
            // A sample of what part 1 accepted, really loaded by a running orchd.
            let mut m = pick(&mut fz.rng, accepted).clone();
            m.file = format!("acc-{i}.toml").into();
            m
        } else {
            fz.mutant(100_000 + i)
        };
        let p = free_ports(3);
        let ports = [p[0], p[1], p[2]];
        match live.round(&m, keeper, reuse, ports) {
            Ok(outcome) => *outcomes.entry(outcome).or_insert(0) += 1,
            Err(e) => panic!(
                "reload {i}: {e}\n{}\n--- orchd log (tail) ---\n{}",
                m.describe(live.seed, ports),
                tail(&live.orchd.log_text(), 40)
            ),
        }
    }
    eprintln!("unit_fuzz: {RELOADS} reloads: {outcomes:?}");
    live.healthy()
        .unwrap_or_else(|e| panic!("seed {}: at the end: {e}", live.seed));
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn mutated_units_never_panic_always_have_a_place_and_a_bad_reload_changes_nothing() {
    let mut fz = Fuzzer::new();
    let t = Instant::now();
    let accepted = check_batches(&mut fz);
    eprintln!("unit_fuzz: checks took {:?}", t.elapsed());
    let t = Instant::now();
    reloads(&mut fz, &accepted);
    eprintln!("unit_fuzz: reloads took {:?}", t.elapsed());
}
