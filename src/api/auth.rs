//! Who is calling, and what they may do: `SO_PEERCRED` plus the `[api]` rules (DESIGN §5).
//!
//! root, orchd's own uid and members of `socket_group` may do everything; `readonly_groups`
//! may read; `[[api.grant]]` gives listed commands on listed services; everyone else is denied.
//! File modes play no part: the socket is 0666 and every request is checked here.

use std::collections::BTreeSet;

use nix::unistd::{Gid, Group, Uid, User};

use super::proto::{ApiError, Command, ErrorCode, READ_ONLY};
use crate::config::{ApiConfig, Principal};

/// The credentials of a connected client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// Primary and supplementary groups of the calling process.
    pub groups: BTreeSet<u32>,
    pub pid: Option<i32>,
    pub user: String,
}

impl Caller {
    /// Build from peer credentials; supplementary groups come from `/proc/<pid>/status` (what
    /// the process really has), else from the user database.
    pub fn from_peer(uid: u32, gid: u32, pid: Option<i32>) -> Caller {
        let user = User::from_uid(Uid::from_raw(uid)).ok().flatten();
        let mut groups: BTreeSet<u32> = pid.and_then(proc_groups).unwrap_or_else(|| {
            user.as_ref()
                .and_then(|u| {
                    let name = std::ffi::CString::new(u.name.as_bytes()).ok()?;
                    nix::unistd::getgrouplist(&name, Gid::from_raw(gid)).ok()
                })
                .map(|gs| gs.into_iter().map(Gid::as_raw).collect())
                .unwrap_or_default()
        });
        groups.insert(gid);
        let user = user.map(|u| u.name).unwrap_or_else(|| uid.to_string());
        Caller {
            uid,
            gid,
            groups,
            pid,
            user,
        }
    }

    /// "uid 65534 (nobody), pid 123" for logs and errors.
    pub fn describe(&self) -> String {
        match self.pid {
            Some(pid) => format!("uid {} ({}), pid {pid}", self.uid, self.user),
            None => format!("uid {} ({})", self.uid, self.user),
        }
    }
}

fn proc_groups(pid: i32) -> Option<BTreeSet<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    Some(
        line.split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect(),
    )
}

/// What a caller may do, resolved once per connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Rights {
    All,
    /// Read-only commands everywhere, plus the grants.
    Limited {
        read_all: bool,
        grants: Vec<(Vec<String>, Vec<String>)>,
    },
}

/// Resolve a caller's rights under `api`. Group names that don't exist match nobody.
pub fn rights(api: &ApiConfig, caller: &Caller) -> Rights {
    let in_group = |name: &str| {
        Group::from_name(name)
            .ok()
            .flatten()
            .is_some_and(|g| caller.groups.contains(&g.gid.as_raw()))
    };
    if caller.uid == 0
        || caller.uid == Uid::effective().as_raw()
        || api.socket_group.as_deref().is_some_and(in_group)
    {
        return Rights::All;
    }
    let read_all = api.readonly_groups.iter().any(|g| in_group(g));
    let grants = api
        .grants
        .iter()
        .filter(|g| match &g.principal {
            Principal::User(u) => *u == caller.user || *u == caller.uid.to_string(),
            Principal::Group(name) => in_group(name),
        })
        .map(|g| (g.commands.clone(), g.services.clone()))
        .collect();
    Rights::Limited { read_all, grants }
}

impl Rights {
    /// May the caller run `cmd`? Services a grant doesn't name are refused.
    pub fn check(&self, cmd: &Command, caller: &Caller) -> Result<(), ApiError> {
        let Rights::Limited { read_all, grants } = self else {
            return Ok(());
        };
        let name = cmd.name();
        if *read_all && READ_ONLY.contains(&name) {
            return Ok(());
        }
        let services = cmd.services();
        let granted = grants.iter().any(|(commands, allowed)| {
            commands.iter().any(|c| c == name)
                && (allowed.iter().any(|s| s == "*")
                    // `status` of everything is narrowed to the granted services by the handler.
                    || (services.is_empty() && name == "status")
                    || (!services.is_empty() && services.iter().all(|s| allowed.contains(s))))
        });
        if granted {
            return Ok(());
        }
        let on = if services.is_empty() {
            String::new()
        } else {
            format!(" on {}", services.join(", "))
        };
        Err(ApiError::new(
            ErrorCode::PermissionDenied,
            format!(
                "permission denied: {} may not run \"{name}\"{on}",
                caller.describe()
            ),
        ))
    }

    /// For `status` with no services named: the services a grant-only caller may see.
    pub fn visible_services(&self) -> Option<Vec<String>> {
        match self {
            Rights::All | Rights::Limited { read_all: true, .. } => None,
            Rights::Limited { grants, .. } => {
                let mut all = BTreeSet::new();
                for (commands, services) in grants {
                    if commands.iter().any(|c| c == "status") {
                        if services.iter().any(|s| s == "*") {
                            return None;
                        }
                        all.extend(services.iter().cloned());
                    }
                }
                Some(all.into_iter().collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(uid: u32) -> Caller {
        Caller {
            uid,
            gid: uid,
            groups: BTreeSet::from([uid]),
            pid: Some(42),
            user: "ci".into(),
        }
    }

    #[test]
    fn grants_cover_listed_commands_and_services_only() {
        let rights = Rights::Limited {
            read_all: false,
            grants: vec![(vec!["restart".into(), "status".into()], vec!["api".into()])],
        };
        let c = caller(1234);
        assert!(
            rights
                .check(
                    &Command::Restart {
                        services: vec!["api".into()]
                    },
                    &c
                )
                .is_ok()
        );
        let e = rights
            .check(
                &Command::Restart {
                    services: vec!["api".into(), "db".into()],
                },
                &c,
            )
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        assert_eq!(
            e.message,
            "permission denied: uid 1234 (ci), pid 42 may not run \"restart\" on api, db"
        );
        assert!(
            rights
                .check(
                    &Command::Stop {
                        services: vec!["api".into()]
                    },
                    &c
                )
                .is_err()
        );
        assert!(
            rights
                .check(&Command::Reload { dry_run: false }, &c)
                .is_err()
        );
        assert_eq!(rights.visible_services(), Some(vec!["api".to_string()]));
    }

    #[test]
    fn readonly_may_read_not_write() {
        let rights = Rights::Limited {
            read_all: true,
            grants: vec![],
        };
        let c = caller(1234);
        assert!(
            rights
                .check(&Command::Status { services: vec![] }, &c)
                .is_ok()
        );
        assert!(
            rights
                .check(
                    &Command::Logs {
                        service: "api".into(),
                        n: 5,
                        follow: false
                    },
                    &c
                )
                .is_ok()
        );
        assert!(
            rights
                .check(
                    &Command::Start {
                        services: vec!["api".into()]
                    },
                    &c
                )
                .is_err()
        );
    }
}
