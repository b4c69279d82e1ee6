//! Test harness: a real orchd on a temp dir of units, driven through the real orchctl.
#![allow(dead_code)] // each test module uses a different part of the harness
//!
//! Every wait is a condition polled against a deadline; nothing sleeps and hopes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ORCHD: &str = env!("CARGO_BIN_EXE_orchd");
pub const ORCHCTL: &str = env!("CARGO_BIN_EXE_orchctl");

/// Poll `cond` every few ms until it holds or `timeout` passes; panics with `what` on timeout.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Like [`wait_for`] but returns the value `f` produced.
pub fn wait_some<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// For a test marked `#[ignore = "needs root …"]` (scripts/test.sh runs those as root with
/// `--ignored`, as CI does): run without root it fails, rather than pass having tested nothing.
pub fn require_root(why: &str) {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root ({why}): run it as root with --ignored (scripts/test.sh does)"
    );
}

/// A temp directory laid out as orchd expects: `orchd.toml`, `units/`, `state/`, `orchd.sock`.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub extra_config: String,
    /// `[api] dbus` in the generated config (unless `extra_config` has its own `[api]`).
    pub dbus: String,
    /// Extra environment for orchd (e.g. `DBUS_SESSION_BUS_ADDRESS`).
    pub env: Vec<(String, String)>,
}

impl Setup {
    pub fn new() -> Setup {
        let dir = tempfile::Builder::new()
            .prefix("orch-test-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir(dir.path().join("units")).expect("units dir");
        Setup {
            dir,
            extra_config: String::new(),
            dbus: "off".into(),
            env: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.path().join("orchd.sock")
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("orchd.toml")
    }

    /// Write `units/<name>.toml`.
    pub fn unit(&self, name: &str, body: &str) -> &Self {
        std::fs::write(self.path().join("units").join(format!("{name}.toml")), body)
            .expect("write unit");
        self
    }

    pub fn remove_unit(&self, name: &str) {
        std::fs::remove_file(self.path().join("units").join(format!("{name}.toml")))
            .expect("remove unit");
    }

    /// A file in the test dir (for scripts and their records).
    pub fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    /// Write `orchd.toml` (also done by [`Setup::start`]; call it before a reload).
    pub fn write_config(&self) {
        let cfg = format!(
            "units_dir = \"units\"\nstate_dir = \"state\"\n{}\n[api]\nsocket = \"orchd.sock\"\nsocket_group = \"\"\ndbus = \"{}\"\n",
            self.extra_config, self.dbus
        );
        let cfg = if self.extra_config.contains("[api]") {
            format!(
                "units_dir = \"units\"\nstate_dir = \"state\"\n{}\n",
                self.extra_config
            )
        } else {
            cfg
        };
        std::fs::write(self.config_path(), cfg).expect("write orchd.toml");
    }

    /// Start orchd and wait until its socket answers.
    pub fn start(&self) -> Orchd {
        self.start_with_env(&[])
    }

    /// Start orchd with extra environment variables (e.g. `NOTIFY_SOCKET`) and wait until its
    /// socket answers. Each start logs to its own `orchd-N.log`, so a restarted orchd keeps the
    /// previous one's log.
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Orchd {
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        self.write_config();
        let log = self.path().join(format!(
            "orchd-{}.log",
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let child = Command::new(ORCHD)
            .arg("--config")
            .arg(self.config_path())
            .env("ORCH_LOG", "debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn orchd");
        let orchd = Orchd {
            child: Some(child),
            socket: self.socket(),
            log,
        };
        wait_for("orchd's socket", Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&orchd.socket).is_ok()
        });
        orchd
    }
}

/// A running orchd; killed (SIGKILL) on drop if still running.
pub struct Orchd {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Orchd {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Run orchctl with `args` against this orchd.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(ORCHCTL)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run orchctl")
    }

    /// `orchctl --json ARGS`, parsed; panics unless it exits 0.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ctl(&all);
        assert!(
            out.status.success(),
            "orchctl {args:?} failed: {}\n{}",
            text(&out.stderr),
            text(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("bad JSON from orchctl {args:?}: {e}: {}", text(&out.stdout))
        })
    }

    /// orchd's last `n` events (`orchctl events -n N`), oldest first.
    pub fn events(&self, n: usize) -> Vec<Value> {
        let v = self.json(&["events", "-n", &n.to_string()]);
        match v["events"].as_array() {
            Some(events) => events.clone(),
            None => panic!("no list of events in {v}"),
        }
    }

    /// How many of orchd's last 1000 events are `kind` events of `service`.
    pub fn count_events(&self, service: &str, kind: &str) -> usize {
        self.events(1000)
            .iter()
            .filter(|e| e["service"] == service && e["kind"] == kind)
            .count()
    }

    /// One service's status object.
    pub fn status(&self, name: &str) -> Value {
        self.json(&["status", name])["services"][0].clone()
    }

    pub fn state(&self, name: &str) -> String {
        self.status(name)["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn pid_of(&self, name: &str) -> Option<i32> {
        self.status(name)["pid"].as_i64().map(|p| p as i32)
    }

    /// Wait until `name` is in `state`.
    pub fn wait_state(&self, name: &str, state: &str, timeout: Duration) {
        let mut last = String::new();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            last = self.state(name);
            if last == state {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!(
            "{name} did not reach {state} within {timeout:?} (last: {last})\n--- orchd log ---\n{}",
            self.log_text()
        );
    }

    /// Like [`wait_for`], with orchd's log in the panic message.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if cond() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!(
            "timed out after {timeout:?} waiting for {what}\n--- orchd log ---\n{}",
            self.log_text()
        );
    }

    /// Wait until `name` runs with a pid different from `old`.
    pub fn wait_new_pid(&self, name: &str, old: Option<i32>, timeout: Duration) -> i32 {
        wait_some(&format!("a new pid for {name}"), timeout, || {
            let s = self.status(name);
            let pid = s["pid"].as_i64().map(|p| p as i32);
            (s["state"] == "running" && pid.is_some() && pid != old)
                .then_some(pid)
                .flatten()
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send a signal to orchd.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal orchd");
    }

    /// SIGTERM and wait for exit; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(Duration::from_secs(30))
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("orchd already reaped");
        let status = wait_some("orchd to exit", timeout, || child.try_wait().ok().flatten());
        self.child = None;
        status
    }
}

impl Drop for Orchd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `orchd --check --config CONFIG`, run to the end.
pub fn orchd_check(config: &Path) -> Output {
    Command::new(ORCHD)
        .arg("--check")
        .arg("--config")
        .arg(config)
        .output()
        .expect("run orchd --check")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Is a process with this pid alive (and not a zombie)?
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Lines of a file written by a test service (empty if missing).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Read a pid a test service wrote to `path`.
pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// State letter and parent pid of a process, from `/proc/PID/stat`.
pub fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Every pid in `/proc`.
pub fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Living (non-zombie) children of `parent`.
pub fn children(parent: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| proc_stat(p).is_some_and(|(s, pp)| pp == parent && s != 'Z'))
        .collect()
}

/// Zombie children of `parent`: exited, not reaped.
pub fn zombies_of(parent: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| proc_stat(p).is_some_and(|(s, pp)| pp == parent && s == 'Z'))
        .collect()
}

/// Pids whose environment has a variable starting with `prefix` (e.g. `ORCH_INSTANCE=abc/`).
pub fn pids_with_env(prefix: &str) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/environ")).is_ok_and(|env| {
                env.split(|&b| b == 0)
                    .any(|var| var.starts_with(prefix.as_bytes()))
            })
        })
        .collect()
}

/// One variable of a process's environment.
pub fn env_of(pid: i32, key: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{key}=");
    env.split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Resident memory of a process in KiB (`VmRSS`).
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// `n` distinct loopback TCP ports that were free a moment ago.
pub fn free_ports(n: usize) -> Vec<u16> {
    // Hold all listeners until every port is known, so no port is handed out twice.
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// The cgroup directory orchd uses for the services of `setup`, if it found a writable tree.
pub fn orch_cgroup(setup: &Setup) -> Option<PathBuf> {
    let id = orch::daemon::daemon_id(&setup.path().join("state"));
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(|m| {
            Path::new(m)
                .join(path.trim_start_matches('/'))
                .join(format!("orch.{id}"))
        })
        .find(|d| d.is_dir())
}

/// Sub-directories (instance cgroups) of a cgroup directory.
pub fn sub_cgroups(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
