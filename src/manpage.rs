//! Man pages for `orchd(8)` and `orchctl(1)`, rendered from the same clap definitions as
//! `--help` (`orchd --print-man`, `orchctl man`), plus the sections clap does not know about:
//! each `orchctl` command's arguments, exit status, files, environment, see also.
//! `packaging/gen.sh` runs these when the .deb is built.

use std::io::{self, Write};

/// Render `cmd` as a man page in `section`, with every subcommand's arguments described and
/// `extra` (roff: `.SH` sections) appended.
pub fn render(cmd: clap::Command, section: &str, extra: &str, w: &mut dyn Write) -> io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone())
        .section(section)
        .source(format!("orch {}", crate::VERSION))
        .manual(if section == "8" {
            "System Administration"
        } else {
            "User Commands"
        });
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(w)?;
    }
    let subs: Vec<&clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .collect();
    if !subs.is_empty() {
        writeln!(w, ".SH COMMANDS")?;
        for sub in subs {
            render_subcommand(cmd.get_name(), sub, w)?;
        }
    }
    w.write_all(extra.as_bytes())?;
    man.render_version_section(w)?;
    Ok(())
}

fn render_subcommand(parent: &str, sub: &clap::Command, w: &mut dyn Write) -> io::Result<()> {
    let mut usage = format!("{parent} {}", sub.get_name());
    for arg in sub
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_global_set())
    {
        if arg.is_positional() {
            let name = arg
                .get_value_names()
                .and_then(|v| v.first())
                .map(|s| s.to_string())
                .unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
            let many = matches!(arg.get_num_args(), Some(r) if r.max_values() > 1);
            let dots = if many { "..." } else { "" };
            if arg.is_required_set() {
                usage.push_str(&format!(" {name}{dots}"));
            } else {
                usage.push_str(&format!(" [{name}{dots}]"));
            }
        } else if arg.is_required_set() {
            if let (Some(long), Some(value)) = (
                arg.get_long(),
                arg.get_value_names().and_then(|v| v.first()),
            ) {
                usage.push_str(&format!(" --{long} {value}"));
            }
        }
    }
    writeln!(w, ".TP")?;
    writeln!(w, "\\fB{}\\fR", esc(&usage))?;
    if let Some(about) = sub.get_about() {
        writeln!(w, "{}", esc(&about.to_string()))?;
    }
    let flags: Vec<&clap::Arg> = sub
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_global_set() && !a.is_positional())
        .filter(|a| a.get_id() != "help")
        .collect();
    if flags.is_empty() {
        return Ok(());
    }
    writeln!(w, ".RS")?;
    for arg in flags {
        let mut names = Vec::new();
        if let Some(s) = arg.get_short() {
            names.push(format!("-{s}"));
        }
        if let Some(l) = arg.get_long() {
            names.push(format!("--{l}"));
        }
        let mut head = format!("\\fB{}\\fR", esc(&names.join(", ")));
        if arg.get_action().takes_values() {
            let value = arg
                .get_value_names()
                .and_then(|v| v.first())
                .map(|s| s.to_string())
                .unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
            head.push_str(&format!(" \\fI{}\\fR", esc(&value)));
        }
        writeln!(w, ".TP")?;
        writeln!(w, "{head}")?;
        let mut help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if !defaults.is_empty() {
            help.push_str(&format!(" [default: {}]", defaults.join(", ")));
        }
        writeln!(w, "{}", esc(help.trim()))?;
    }
    writeln!(w, ".RE")?;
    Ok(())
}

/// Escape text for roff: backslashes, hyphens (so they stay ASCII `-` in copy-paste), and a
/// leading `.` or `'` that would start a request.
pub fn esc(s: &str) -> String {
    let mut out = s.replace('\\', "\\e").replace('-', "\\-");
    if out.starts_with('.') || out.starts_with('\'') {
        out.insert_str(0, "\\&");
    }
    out
}

/// Extra sections of `orchd(8)`.
pub const ORCHD_EXTRA: &str = r#".SH SIGNALS
.TP
\fBSIGHUP\fR
Reload: validate \fIorchd.toml\fR and the units; on error keep the running configuration and log why; else start added units, stop removed ones, restart changed ones, leave the rest alone.
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop every service in reverse dependency order (each with its own stop signal and timeout), persist state and exit 0. A second signal skips the graceful wait.
.SH EXIT STATUS
.TP
\fB0\fR
Stopped on request; with \fB\-\-check\fR: the configuration is valid.
.TP
\fB1\fR
Could not start (invalid \fIorchd.toml\fR, socket taken, state directory not writable).
.TP
\fB2\fR
\fB\-\-check\fR found errors (each printed as \fIFILE\fR:\fILINE\fR:\fICOL\fR: message), or a bad command line.
.SH ENVIRONMENT
.TP
\fBORCHD_CONFIG\fR
Configuration file, when \fB\-\-config\fR is not given.
.TP
\fBORCH_LOG\fR, \fBRUST_LOG\fR
Log filter, e.g. \fBinfo\fR (default) or \fBorch=debug\fR.
.TP
\fBNOTIFY_SOCKET\fR, \fBWATCHDOG_USEC\fR, \fBJOURNAL_STREAM\fR
Set by systemd: readiness and watchdog notifications, logging to the journal.
.SH FILES
.TP
\fI/etc/orch/orchd.toml\fR
The daemon's configuration.
.TP
\fI/etc/orch/units/*.toml\fR
One unit file per service; the service name is the file stem. See \fBorch.unit\fR(5).
.TP
\fI/var/lib/orch\fR
State: active releases, stopped services, deploy history.
.TP
\fI/run/orch/orchd.sock\fR
The API socket used by \fBorchctl\fR(1).
.TP
\fI/usr/lib/systemd/system/orchd.service\fR
The systemd unit.
.SH SEE ALSO
\fBorchctl\fR(1), \fBorch.unit\fR(5), \fBsystemctl\fR(1), \fBsystemd.service\fR(5).
Documentation: \fI/usr/share/doc/orch/docs/\fR.
"#;

/// Extra sections of `orchctl(1)`.
pub const ORCHCTL_EXTRA: &str = r#".SH EXIT STATUS
.TP
\fB0\fR
Done.
.TP
\fB1\fR
The operation failed: the deploy failed or was rolled back, the service failed.
.TP
\fB2\fR
Usage or validation error.
.TP
\fB3\fR
Cannot reach \fBorchd\fR (not running, wrong \fB\-\-socket\fR).
.TP
\fB4\fR
Permission denied: see \fIsocket_group\fR, \fIreadonly_groups\fR and \fI[[api.grant]]\fR in \fIorchd.toml\fR.
.SH ENVIRONMENT
.TP
\fBORCH_SOCKET\fR
orchd's socket, when \fB\-\-socket\fR is not given (default \fI/run/orch/orchd.sock\fR).
.TP
\fBNO_COLOR\fR
Set to disable colours in human output.
.SH SEE ALSO
\fBorchd\fR(8), \fBorch.unit\fR(5).
Documentation: \fI/usr/share/doc/orch/docs/\fR.
"#;
