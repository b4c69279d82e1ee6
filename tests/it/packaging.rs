//! Packaging: the systemd unit, man pages, completions, the default config, and the .deb.
//!
//! The fast checks run with every `cargo test` on the debug binaries. `deb_package` builds the
//! release .deb (packaging/build-deb.sh), so it is `#[ignore]`d by default and scripts/test.sh
//! runs it explicitly (`cargo test --test it packaging -- --ignored`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::util::{ORCHCTL, ORCHD};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Asserts success and returns stdout.
fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `systemd-analyze verify` prints warnings but exits 0 on them (systemd 252): any output is a
/// failure. It also insists that ExecStart exists, so the copy it checks points ExecStart at the
/// binary just built; nothing else is changed.
#[test]
fn systemd_unit_verifies_without_any_output() {
    if !have("systemd-analyze") {
        eprintln!("note: systemd-analyze not installed; orchd.service not verified");
        return;
    }
    let unit = std::fs::read_to_string(repo().join("packaging/orchd.service")).expect("unit");
    assert!(unit.contains("ExecStart=/usr/bin/orchd --config /etc/orch/orchd.toml\n"));
    for key in [
        "Type=notify\n",
        "NotifyAccess=main\n",
        "WatchdogSec=",
        "ExecReload=/bin/kill -HUP $MAINPID\n",
        "KillMode=mixed\n",
        "TimeoutStopSec=",
        "Restart=on-failure\n",
        "RuntimeDirectory=orch\n",
        "StateDirectory=orch\n",
        "ConfigurationDirectory=orch\n",
        "Delegate=yes\n",
    ] {
        assert!(unit.contains(key), "orchd.service lacks {key}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("orchd.service");
    std::fs::write(&copy, unit.replace("/usr/bin/orchd", ORCHD)).expect("write");
    let out = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && all.trim().is_empty(),
        "systemd-analyze verify packaging/orchd.service ({}):\n{all}",
        out.status
    );
}

/// Both binaries print the same version, with the git commit.
#[test]
fn versions_carry_the_git_commit() {
    let d = ok(Command::new(ORCHD).arg("--version"));
    let c = ok(Command::new(ORCHCTL).arg("--version"));
    let d = d.trim().strip_prefix("orchd ").expect("orchd NAME VERSION");
    let c = c
        .trim()
        .strip_prefix("orchctl ")
        .expect("orchctl NAME VERSION");
    assert_eq!(d, c);
    assert_eq!(d, orch::VERSION);
    let commit = d
        .strip_prefix(concat!(env!("CARGO_PKG_VERSION"), " ("))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("version {d:?} is not `X.Y.Z (COMMIT)`"));
    assert!(
        commit == "unknown" || commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{commit:?}"
    );
}

/// Render a man page with groff; any warning fails. Returns the rendered text.
fn render_man(page: &Path) -> String {
    let out = run(Command::new("sh").arg("-c").arg(format!(
        "zcat -f '{}' | groff -man -Tutf8 -ww -P -cbou",
        page.display()
    )));
    assert!(out.status.success(), "groff {}", page.display());
    assert!(
        out.stderr.is_empty(),
        "groff warnings for {}:\n{}",
        page.display(),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn man_pages_render_from_the_binaries_and_docs() {
    if !have("groff") {
        eprintln!("note: groff not installed; man pages not rendered");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let orchd = dir.path().join("orchd.8");
    std::fs::write(&orchd, ok(Command::new(ORCHD).arg("--print-man"))).expect("write");
    let orchctl = dir.path().join("orchctl.1");
    std::fs::write(&orchctl, ok(Command::new(ORCHCTL).arg("man"))).expect("write");
    let unit = dir.path().join("orch.unit.5");
    let roff = ok(Command::new("/usr/bin/python3")
        .arg(repo().join("packaging/md2man.py"))
        .arg(repo().join("docs/units.md"))
        .args(["orch.unit", "5", "orch unit file format"]));
    std::fs::write(&unit, roff).expect("write");

    let page = render_man(&orchd);
    for s in ["--check", "--config", "SIGHUP", "EXIT STATUS", "orchctl(1)"] {
        assert!(page.contains(s), "orchd(8) lacks {s}:\n{page}");
    }
    let page = render_man(&orchctl);
    for s in [
        "orchctl deploy SERVICE --release R",
        "--detach",
        "EXIT STATUS",
        "ORCH_SOCKET",
    ] {
        assert!(page.contains(s), "orchctl(1) lacks {s}:\n{page}");
    }
    let page = render_man(&unit);
    for s in ["NAME", "orch.unit", "exec", "[restart]"] {
        assert!(page.contains(s), "orch.unit(5) lacks {s}:\n{page}");
    }
}

/// The completion script loads in bash and registers `orchctl`.
fn bash_completion_loads(script: &Path) {
    let out = ok(Command::new("bash").arg("-c").arg(format!(
        "source '{}' && complete -p orchctl",
        script.display()
    )));
    assert!(out.contains("orchctl"), "{out}");
}

#[test]
fn completions_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bash = dir.path().join("orchctl.bash");
    std::fs::write(
        &bash,
        ok(Command::new(ORCHCTL).args(["completions", "bash"])),
    )
    .expect("w");
    bash_completion_loads(&bash);
    for (shell, check) in [("zsh", "zsh -n"), ("fish", "fish --no-execute")] {
        let script = dir.path().join(format!("orchctl.{shell}"));
        std::fs::write(
            &script,
            ok(Command::new(ORCHCTL).args(["completions", shell])),
        )
        .expect("write");
        if have(shell) {
            ok(Command::new("sh")
                .arg("-c")
                .arg(format!("{check} '{}'", script.display())));
        }
    }
}

/// The default /etc/orch/orchd.toml and the example unit pass `orchd --check`.
#[test]
fn default_config_and_example_unit_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("units")).expect("mkdir");
    let config = dir.path().join("orchd.toml");
    std::fs::copy(repo().join("packaging/orchd.toml"), &config).expect("copy");
    std::fs::copy(
        repo().join("packaging/hello.toml"),
        dir.path().join("units/hello.toml"),
    )
    .expect("copy");
    let out = ok(Command::new(ORCHD)
        .arg("--check")
        .arg("--config")
        .arg(&config));
    assert!(out.contains("configuration is valid"), "{out}");
    // The commented-out examples are valid too, once uncommented.
    let uncommented: String = std::fs::read_to_string(&config)
        .expect("read")
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if is_toml_line(rest) => rest.to_owned(),
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&config, uncommented).expect("write");
    let out = ok(Command::new(ORCHD)
        .arg("--check")
        .arg("--config")
        .arg(&config));
    assert!(out.contains("configuration is valid"), "{out}");
}

/// A commented-out TOML line (`[table]`, `[[array]]` or `key = value`) rather than prose.
fn is_toml_line(l: &str) -> bool {
    let l = l.trim();
    if l.starts_with('[') {
        return true;
    }
    l.split_once(" = ").is_some_and(|(k, _)| {
        !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Builds the .deb (release) and checks it: file list, conffiles, maintainer scripts, lintian,
/// man pages, completions; then, as root, installs it, runs orchd, upgrades over itself and purges.
#[test]
#[ignore = "builds the release .deb (minutes): scripts/test.sh runs it with --ignored"]
fn deb_package() {
    for tool in ["cargo-deb", "dpkg-deb", "lintian", "groff"] {
        assert!(have(tool), "{tool} is missing: scripts/test.sh installs it");
    }
    let started = std::time::Instant::now();
    // Not cargo's test environment (CARGO_*, LD_LIBRARY_PATH, …): under it the nested release
    // build would not reuse what an ordinary `cargo build --release` compiled.
    let mut build = Command::new(repo().join("packaging/build-deb.sh"));
    build.env_clear();
    for (key, value) in std::env::vars_os() {
        let k = key.to_string_lossy();
        let keep = [
            "PATH",
            "HOME",
            "USER",
            "LANG",
            "TERM",
            "TMPDIR",
            "CARGO_HOME",
        ]
        .contains(&k.as_ref())
            || k == "CARGO_TARGET_DIR"
            || k.starts_with("RUSTUP_");
        if keep {
            build.env(&key, &value);
        }
    }
    let out = ok(&mut build);
    let deb = PathBuf::from(
        out.lines()
            .last()
            .expect("build-deb.sh prints the .deb")
            .trim(),
    );
    assert!(deb.is_file(), "{}", deb.display());
    eprintln!("built {} in {:?}", deb.display(), started.elapsed());

    // File list.
    let list = ok(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let files: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    for f in [
        "./usr/bin/orchd",
        "./usr/bin/orchctl",
        "./usr/lib/systemd/system/orchd.service",
        "./usr/share/dbus-1/system.d/io.orchd.Manager1.conf",
        "./usr/lib/sysusers.d/orch.conf",
        "./usr/lib/tmpfiles.d/orch.conf",
        "./etc/orch/orchd.toml",
        "./usr/share/doc/orch/examples/units/hello.toml",
        "./usr/share/man/man8/orchd.8.gz",
        "./usr/share/man/man1/orchctl.1.gz",
        "./usr/share/man/man5/orch.unit.5.gz",
        "./usr/share/bash-completion/completions/orchctl",
        "./usr/share/zsh/vendor-completions/_orchctl",
        "./usr/share/fish/vendor_completions.d/orchctl.fish",
        "./usr/share/doc/orch/copyright",
        "./usr/share/doc/orch/changelog.Debian.gz",
        "./usr/share/doc/orch/docs/getting-started.md",
        "./usr/share/doc/orch/README.md",
    ] {
        assert!(files.contains(&f), "{f} not in the .deb:\n{list}");
    }
    assert!(
        list.lines()
            .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with("./usr/bin/orchd")),
        "{list}"
    );

    // Control: conffiles and maintainer scripts.
    let conffiles = ok(Command::new("dpkg-deb")
        .arg("-I")
        .arg(&deb)
        .arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/orch/orchd.toml");
    let control = ok(Command::new("dpkg-deb").arg("-I").arg(&deb));
    assert!(control.contains("Package: orch\n"), "{control}");
    let dir = tempfile::tempdir().expect("tempdir");
    let ctl = dir.path().join("DEBIAN");
    ok(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&ctl));
    for script in ["postinst", "prerm", "postrm"] {
        let path = ctl.join(script);
        let body = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("no {script}"));
        ok(Command::new("sh").arg("-n").arg(&path));
        // Every call that needs a running systemd is guarded.
        for (n, line) in body.lines().enumerate() {
            let code = !line.trim_start().starts_with('#');
            if code && (line.contains("systemctl ") || line.contains("deb-systemd-invoke ")) {
                let before = body.lines().take(n).collect::<Vec<_>>().join("\n");
                let guard = before.rfind("[ -d /run/systemd/system ]");
                let closed = before.rfind("\tfi\n").max(before.rfind("\nfi\n"));
                assert!(
                    guard.is_some() && guard > closed,
                    "{script}:{}: unguarded `{line}`",
                    n + 1
                );
            }
        }
    }
    let postinst = std::fs::read_to_string(ctl.join("postinst")).expect("postinst");
    for s in [
        "systemd-sysusers",
        "groupadd --system orch",
        "deb-systemd-helper enable 'orchd.service'",
        "try-restart 'orchd.service'",
    ] {
        assert!(postinst.contains(s), "postinst lacks {s}");
    }

    // lintian: no errors.
    let out = run(Command::new("lintian").arg(&deb));
    let report = text(&out.stdout);
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{report}");
    eprintln!("lintian:\n{report}");

    // Contents: man pages render, completions load.
    let root = dir.path().join("root");
    ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    for page in [
        "usr/share/man/man8/orchd.8.gz",
        "usr/share/man/man1/orchctl.1.gz",
        "usr/share/man/man5/orch.unit.5.gz",
    ] {
        let path = root.join(page);
        render_man(&path);
        if have("man") {
            let out = run(Command::new("man")
                .arg("-l")
                .arg(&path)
                .env("MANWIDTH", "80")
                .env("MAN_KEEP_FORMATTING", "0"));
            assert!(
                out.status.success() && out.stdout.len() > 200,
                "man -l {page}"
            );
        }
    }
    bash_completion_loads(&root.join("usr/share/bash-completion/completions/orchctl"));

    // Install, run, upgrade over itself, purge: as root only (CI runs as root).
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("note: not root; the .deb was not installed");
        return;
    }
    if Path::new("/var/lib/dpkg/info/orch.list").exists() {
        eprintln!("note: orch is installed on this machine; testing an upgrade over it");
    }
    ok(Command::new("dpkg")
        .arg("-i")
        .arg(&deb)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    let purge = Purge;
    let version = ok(Command::new("/usr/bin/orchd").arg("--version"));
    assert_eq!(version.trim(), format!("orchd {}", built_version()));
    ok(Command::new("getent").args(["group", "orch"]));
    for dir in ["/etc/orch/units", "/var/lib/orch"] {
        assert!(Path::new(dir).is_dir(), "{dir} not created");
    }
    let check = ok(Command::new("/usr/bin/orchd").arg("--check"));
    assert!(check.contains("configuration is valid"), "{check}");
    // Enabled, not started (no systemd here: deb-systemd-helper writes the symlink itself).
    if have("deb-systemd-helper") {
        assert!(
            Path::new("/etc/systemd/system/multi-user.target.wants/orchd.service").exists(),
            "orchd.service not enabled"
        );
    }
    // The upgrade path (postinst with a previous version) works without systemd too.
    ok(Command::new("dpkg")
        .arg("-i")
        .arg(&deb)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    drop(purge);
    for gone in [
        "/usr/bin/orchd",
        "/etc/orch/orchd.toml",
        "/var/lib/orch",
        "/etc/systemd/system/multi-user.target.wants/orchd.service",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} left after dpkg -P");
    }
    eprintln!("deb_package took {:?}", started.elapsed());
}

/// The version the release binary reports (same source as the installed one).
fn built_version() -> String {
    let release = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
        .join("release/orchd");
    let v = ok(Command::new(release).arg("--version"));
    v.trim().trim_start_matches("orchd ").to_owned()
}

/// Purges the package on drop, so a failing assertion does not leave it installed.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let out = Command::new("dpkg").args(["-P", "orch"]).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("dpkg -P orch failed: {}", text(&o.stderr)),
            Err(e) => eprintln!("cannot run dpkg -P: {e}"),
        }
    }
}
