//! The D-Bus API against a private `dbus-daemon`: methods through `busctl`, `dbus-send` and a
//! zbus proxy, the `ServiceChanged` signal, authorization of an unprivileged caller, the
//! shipped system bus policy, and an orchd that runs on without a bus.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::util::*;

const T: Duration = Duration::from_secs(10);
const DEST: &str = "io.orchd.Manager1";
const PATH: &str = "/io/orchd/Manager1";
const POLICY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/packaging/io.orchd.Manager1.conf"
);

/// Run a command as `nobody`, with no supplementary groups.
const AS_NOBODY: &[&str] = &[
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
];

#[zbus::proxy(
    interface = "io.orchd.Manager1",
    default_service = "io.orchd.Manager1",
    default_path = "/io/orchd/Manager1"
)]
trait Manager1 {
    fn list_services(
        &self,
    ) -> zbus::Result<Vec<(String, String, String, i32, String, u32, String)>>;
    fn get_service(
        &self,
        name: &str,
    ) -> zbus::Result<(String, String, String, i32, String, u32, String)>;
    /// `(dry_run, added, removed, restarted, updated, unchanged, notes)`.
    #[allow(clippy::type_complexity)]
    fn reload(
        &self,
        dry_run: bool,
    ) -> zbus::Result<(
        bool,
        Vec<String>,
        Vec<String>,
        Vec<String>,
        Vec<String>,
        Vec<String>,
        Vec<String>,
    )>;
    /// The entries `(deploy_id, release, previous, result, started, finished, duration_ms, who,
    /// reason, rollback)` and the release a rollback would go back to.
    #[allow(clippy::type_complexity)]
    fn history(
        &self,
        name: &str,
    ) -> zbus::Result<(
        Vec<(
            String,
            String,
            String,
            String,
            String,
            String,
            u64,
            String,
            String,
            bool,
        )>,
        String,
    )>;
    #[zbus(signal)]
    fn service_changed(&self, name: String, state: String, health: String) -> zbus::Result<()>;
    #[zbus(signal)]
    fn deploy_finished(&self, name: String, release: String, result: String) -> zbus::Result<()>;
    /// `(deploy_id, result, release, previous, active, duration_ms, reason, rollback, detached)`.
    #[allow(clippy::type_complexity)]
    fn deploy(
        &self,
        name: &str,
        release: &str,
        timeout: &str,
        detach: bool,
    ) -> zbus::Result<(
        String,
        String,
        String,
        String,
        String,
        u64,
        String,
        bool,
        bool,
    )>;
}

/// A private `dbus-daemon` on a socket anyone may connect to; killed on drop.
struct Bus {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Bus {
    /// Start a bus whose configuration has `policy` (XML inside `<busconfig>`).
    fn start(policy: &str) -> Bus {
        let dir = tempfile::Builder::new()
            .prefix("orch-bus-")
            .tempdir()
            .expect("tempdir");
        // nobody must reach the socket.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod bus dir");
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN\"\n \
                 \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
                 <busconfig>\n  <type>session</type>\n  <listen>unix:path={}/bus</listen>\n  \
                 <auth>EXTERNAL</auth>\n{policy}\n</busconfig>\n",
                dir.path().display()
            ),
        )
        .expect("write bus.conf");
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dbus-daemon (is the dbus package installed?)");
        let stdout = child.stdout.take().expect("dbus-daemon stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let address = rx
            .recv_timeout(T)
            .expect("dbus-daemon printed no address")
            .trim()
            .to_owned();
        assert!(address.starts_with("unix:"), "bad bus address {address:?}");
        Bus {
            child,
            address,
            _dir: dir,
        }
    }

    /// `busctl --address=… ARGS`, optionally as nobody.
    fn busctl(&self, nobody: bool, args: &[&str]) -> Output {
        let addr = format!("--address={}", self.address);
        self.run(nobody, "busctl", &[&[addr.as_str()], args].concat())
    }

    /// `dbus-send --print-reply --dest=io.orchd.Manager1 /io/orchd/Manager1 ARGS`: unlike
    /// busctl it prints the error name.
    fn send(&self, nobody: bool, args: &[&str]) -> Output {
        let bus = format!("--bus={}", self.address);
        let dest = format!("--dest={DEST}");
        let fixed = [bus.as_str(), "--print-reply", dest.as_str(), PATH];
        self.run(nobody, "dbus-send", &[&fixed[..], args].concat())
    }

    fn run(&self, nobody: bool, program: &str, args: &[&str]) -> Output {
        let mut argv: Vec<&str> = if nobody { AS_NOBODY.to_vec() } else { vec![] };
        argv.push(program);
        argv.extend_from_slice(args);
        Command::new(argv[0])
            .args(&argv[1..])
            .output()
            .unwrap_or_else(|e| panic!("run {argv:?}: {e}"))
    }

    /// Wait until orchd owns its name and answers.
    fn wait_for_orchd(&self, orchd: &Orchd) {
        let deadline = Instant::now() + T;
        while Instant::now() < deadline {
            let out = self.busctl(false, &["call", DEST, PATH, DEST, "ListServices"]);
            if out.status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "orchd did not come up on the bus within {T:?}\n--- orchd log ---\n{}",
            orchd.log_text()
        );
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Anyone may connect, own names and call anything: orchd's own checks are under test.
const OPEN_POLICY: &str = r#"  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>"#;

fn start_orchd(bus: &Bus) -> (Setup, Orchd) {
    let mut s = Setup::new();
    s.unit(
        "sleeper",
        "exec = [\"sleep\", \"1000\"]\n[restart]\ndelay = \"10ms\"\n",
    );
    s.dbus = "session".into();
    s.env
        .push(("DBUS_SESSION_BUS_ADDRESS".into(), bus.address.clone()));
    let orchd = s.start();
    bus.wait_for_orchd(&orchd);
    (s, orchd)
}

#[test]
fn dbus_api_lists_restarts_signals_and_refuses_strangers() {
    let bus = Bus::start(OPEN_POLICY);
    let (_s, orchd) = start_orchd(&bus);
    let old = orchd.wait_new_pid("sleeper", None, T);

    let out = bus.busctl(false, &["call", DEST, PATH, DEST, "ListServices"]);
    let listed = text(&out.stdout);
    assert!(
        listed.starts_with("a(sssisus) 1 \"sleeper\" \"running\" \"none\""),
        "{listed}"
    );
    let version = bus.busctl(false, &["get-property", DEST, PATH, DEST, "Version"]);
    assert!(
        text(&version.stdout).starts_with("s \"0.1.0 ("),
        "{}",
        text(&version.stdout)
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let new = rt.block_on(async {
        let conn = zbus::connection::Builder::address(bus.address.as_str())
            .build()
            .await
            .unwrap();
        let proxy = Manager1Proxy::new(&conn).await.unwrap();
        let typed = proxy.list_services().await.unwrap();
        assert_eq!(typed.len(), 1);
        assert_eq!((typed[0].0.as_str(), typed[0].3), ("sleeper", old));
        match proxy.get_service("nope").await {
            Err(zbus::Error::MethodError(name, Some(msg), _)) => {
                assert_eq!(name.as_str(), "io.orchd.Manager1.Error.NotFound");
                assert!(msg.starts_with("no such service: nope"), "{msg}");
            }
            other => panic!("expected NotFound, got {other:?}"),
        }

        let mut changes = proxy.receive_service_changed().await.unwrap();
        let out = bus.busctl(
            false,
            &["call", DEST, PATH, DEST, "Restart", "as", "1", "sleeper"],
        );
        assert!(
            out.status.success(),
            "Restart failed: {}",
            text(&out.stderr)
        );
        let new = orchd.wait_new_pid("sleeper", Some(old), T);
        assert_ne!(new, old);

        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let signal = tokio::time::timeout_at(deadline, changes.next())
                .await
                .unwrap_or_else(|_| panic!("no ServiceChanged to running; saw {seen:?}"))
                .expect("signal stream ended");
            let args = signal.args().unwrap();
            seen.push(format!("{} {} {}", args.name, args.state, args.health));
            if args.name == "sleeper" && args.state == "running" {
                break;
            }
        }
        assert!(
            seen.len() >= 2 && seen[0] != "sleeper running none",
            "expected the way down before running: {seen:?}"
        );

        // A deploy over the bus (restart strategy: sleeper has no [deploy]) answers its
        // result and is announced with DeployFinished.
        let mut finished = proxy.receive_deploy_finished().await.unwrap();
        let reply = proxy.deploy("sleeper", "r2", "", false).await.unwrap();
        assert_eq!(reply.1, "succeeded", "{reply:?}");
        let signal = tokio::time::timeout(T, finished.next())
            .await
            .expect("no DeployFinished")
            .expect("signal stream ended");
        let args = signal.args().unwrap();
        assert_eq!(
            (
                args.name.as_str(),
                args.release.as_str(),
                args.result.as_str()
            ),
            ("sleeper", "r2", "succeeded")
        );
        orchd.wait_new_pid("sleeper", Some(new), T)
    });

    // nobody is neither root, orchd's user nor in a group: denied by orchd itself.
    let denied = bus.send(true, &[&format!("{DEST}.Restart"), "array:string:sleeper"]);
    assert!(!denied.status.success());
    let err = text(&denied.stderr);
    assert!(
        err.contains("io.orchd.Manager1.Error.PermissionDenied: permission denied: uid 65534"),
        "{err}"
    );
    assert!(err.contains("may not run \"restart\" on sleeper"), "{err}");
    let out = bus.busctl(
        true,
        &["call", DEST, PATH, DEST, "Restart", "as", "1", "sleeper"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("permission denied"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        orchd.pid_of("sleeper"),
        Some(new),
        "a refused restart restarted"
    );
    assert!(orchd.log_text().contains("permission denied"));
}

#[test]
fn dbus_deploy_detaches_and_reload_and_history_are_typed() {
    let bus = Bus::start(OPEN_POLICY);
    let (_s, orchd) = start_orchd(&bus);
    let old = orchd.wait_new_pid("sleeper", None, T);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = zbus::connection::Builder::address(bus.address.as_str())
            .build()
            .await
            .unwrap();
        let proxy = Manager1Proxy::new(&conn).await.unwrap();

        let plan = proxy.reload(true).await.unwrap();
        assert!(plan.0, "{plan:?}");
        assert_eq!(plan.5, ["sleeper"], "{plan:?}");

        match proxy.deploy("sleeper", "r2", "2d", false).await {
            Err(zbus::Error::MethodError(name, Some(msg), _)) => {
                assert_eq!(name.as_str(), "io.orchd.Manager1.Error.BadRequest");
                assert!(msg.starts_with("bad --timeout: "), "{msg}");
            }
            other => panic!("expected BadRequest, got {other:?}"),
        }

        // Detached: the answer comes once the deploy is accepted (no result yet), the end with
        // DeployFinished.
        let mut finished = proxy.receive_deploy_finished().await.unwrap();
        let reply = proxy.deploy("sleeper", "r2", "30s", true).await.unwrap();
        assert!(reply.0.starts_with("sleeper-"), "{reply:?}");
        assert_eq!(
            (reply.1.as_str(), reply.2.as_str()),
            ("", "r2"),
            "{reply:?}"
        );
        assert!(reply.8, "not detached: {reply:?}");
        let signal = tokio::time::timeout(T, finished.next())
            .await
            .expect("no DeployFinished")
            .expect("signal stream ended");
        assert_eq!(signal.args().unwrap().result.as_str(), "succeeded");

        let history = proxy.history("sleeper").await.unwrap();
        let last = history.0.last().expect("an entry");
        assert_eq!(
            (
                last.0.as_str(),
                last.1.as_str(),
                last.3.as_str(),
                last.8.as_str()
            ),
            (reply.0.as_str(), "r2", "succeeded", "")
        );
        assert_eq!(history.1, "current", "{history:?}");
    });
    orchd.wait_new_pid("sleeper", Some(old), T);
}

#[test]
fn system_bus_policy_admits_root_and_refuses_others() {
    // The shipped policy, on a bus that otherwise lets anyone connect and call anything (its
    // rules come later, so they win).
    let bus = Bus::start(&format!(
        "  <policy context=\"default\">\n    <allow user=\"*\"/>\n    <allow send_destination=\"*\"/>\n    \
         <allow receive_sender=\"*\"/>\n  </policy>\n  <include>{POLICY}</include>"
    ));
    let (_s, orchd) = start_orchd(&bus);
    orchd.wait_new_pid("sleeper", None, T);

    let call = |nobody| bus.send(nobody, &[&format!("{DEST}.ListServices")]);
    let root = call(false);
    assert!(root.status.success(), "{}", text(&root.stderr));
    assert!(text(&root.stdout).contains("\"sleeper\""));
    let nobody = call(true);
    assert!(!nobody.status.success());
    assert!(
        text(&nobody.stderr).contains("org.freedesktop.DBus.Error.AccessDenied"),
        "{}",
        text(&nobody.stderr)
    );
    let version = bus.busctl(true, &["get-property", DEST, PATH, DEST, "Version"]);
    assert!(version.status.success(), "{}", text(&version.stderr));
    let introspect = bus.busctl(true, &["introspect", DEST, PATH]);
    assert!(introspect.status.success(), "{}", text(&introspect.stderr));
    assert!(text(&introspect.stdout).contains(".ServiceChanged"));

    // A graceful stop is not held up by the bus connection.
    let mut orchd = orchd;
    let started = Instant::now();
    assert!(orchd.stop().success());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        started.elapsed()
    );
}

#[test]
fn dbus_policy_is_well_formed_xml() {
    let out = Command::new("python3")
        .args([
            "-c",
            "import xml.dom.minidom,sys; d=xml.dom.minidom.parse(sys.argv[1]); \
             assert d.documentElement.tagName == 'busconfig'",
            POLICY,
        ])
        .output()
        .expect("run python3");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn orchd_runs_on_without_a_bus() {
    let mut s = Setup::new();
    s.unit("sleeper", "exec = [\"sleep\", \"1000\"]\n");
    s.dbus = "system".into();
    let nowhere = format!("unix:path={}", s.file("no-bus").display());
    s.env.push(("DBUS_SYSTEM_BUS_ADDRESS".into(), nowhere));
    let mut orchd = s.start();
    orchd.wait_new_pid("sleeper", None, T);
    wait_for("the D-Bus warning", T, || {
        orchd
            .log_text()
            .contains("D-Bus API unavailable; orchd runs on without it")
    });
    assert!(orchd.stop().success());
}
