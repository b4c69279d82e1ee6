//! Checks across unit files: dependencies that name no unit, dependency cycles, and
//! ports or listen addresses claimed twice. Each problem is reported on every unit
//! involved, so they all show as `bad-setting`. Called by `load` in `mod.rs`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::Path;

use super::diag::Diagnostic;
use super::validate_unit::Links;

/// The cross-unit diagnostics, keyed by unit name. `units` holds every unit file found,
/// valid or not, so that a dependency on a broken unit is not "unknown".
pub(crate) fn cross_check(
    units: &BTreeMap<String, Links>,
    units_dir: &Path,
) -> BTreeMap<String, Vec<Diagnostic>> {
    let mut out: BTreeMap<String, Vec<Diagnostic>> = BTreeMap::new();
    unknown_deps(units, units_dir, &mut out);
    cycles(units, &mut out);
    ports(units, &mut out);
    out
}

fn unknown_deps(
    units: &BTreeMap<String, Links>,
    units_dir: &Path,
    out: &mut BTreeMap<String, Vec<Diagnostic>>,
) {
    for (name, links) in units {
        for (dep, pos) in &links.deps {
            if !units.contains_key(dep) {
                let message = format!(
                    "unknown dependency `{dep}`: no unit file {dep}.toml in {}",
                    units_dir.display()
                );
                out.entry(name.clone()).or_default().push(pos.diag(message));
            }
        }
    }
}

type Graph<'a> = BTreeMap<&'a str, BTreeSet<&'a str>>;

fn cycles(units: &BTreeMap<String, Links>, out: &mut BTreeMap<String, Vec<Diagnostic>>) {
    let graph: Graph<'_> = units
        .iter()
        .map(|(name, links)| {
            let deps = links.deps.iter().map(|(d, _)| d.as_str());
            (
                name.as_str(),
                deps.filter(|d| units.contains_key(*d)).collect(),
            )
        })
        .collect();
    let reach: BTreeMap<&str, BTreeSet<&str>> =
        graph.keys().map(|n| (*n, reachable(&graph, n))).collect();
    for (name, links) in units {
        let n = name.as_str();
        if !reach[n].contains(n) {
            continue;
        }
        // The cycle is named from the alphabetically-first unit of n's strongly connected
        // component, so every member of a simple cycle reports the same text.
        let first = reach[n]
            .iter()
            .copied()
            .filter(|m| reach[m].contains(n))
            .min()
            .unwrap_or(n);
        let mut cycle = shortest_path(&graph, first, first);
        if !cycle.contains(&n) {
            cycle = shortest_path(&graph, first, n);
            cycle.extend(shortest_path(&graph, n, first).into_iter().skip(1));
        }
        let i = cycle.iter().position(|m| *m == n).unwrap_or(0);
        let next = cycle.get(i + 1).copied().unwrap_or(first);
        let Some((_, pos)) = links.deps.iter().find(|(d, _)| d == next) else {
            continue;
        };
        let message = format!("dependency cycle: {}", cycle.join(" -> "));
        out.entry(name.clone()).or_default().push(pos.diag(message));
    }
}

fn reachable<'a>(graph: &Graph<'a>, from: &'a str) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<&str> = graph.get(from).into_iter().flatten().copied().collect();
    while let Some(n) = todo.pop() {
        if seen.insert(n) {
            todo.extend(graph.get(n).into_iter().flatten().copied());
        }
    }
    seen
}

/// The shortest path `from -> … -> to` with at least one edge, taking the alphabetically
/// first neighbour on ties. Empty when there is none.
fn shortest_path<'a>(graph: &Graph<'a>, from: &'a str, to: &'a str) -> Vec<&'a str> {
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([from]);
    while let Some(n) = queue.pop_front() {
        for &m in graph.get(n).into_iter().flatten() {
            if m == to {
                let mut path = vec![to, n];
                let mut cur = n;
                while cur != from {
                    cur = parent[cur];
                    path.push(cur);
                }
                path.reverse();
                return path;
            }
            if m != from && !parent.contains_key(m) {
                parent.insert(m, n);
                queue.push_back(m);
            }
        }
    }
    Vec::new()
}

fn ports(units: &BTreeMap<String, Links>, out: &mut BTreeMap<String, Vec<Diagnostic>>) {
    for (name, links) in units {
        for (other, other_links) in units {
            let same = name == other;
            for (port, pos) in &links.ports {
                let slot_clash = other_links.ports.iter().any(|(p, _)| p == port);
                if !same && slot_clash {
                    let message = format!("port {port} is also a slot port of unit `{other}`");
                    out.entry(name.clone()).or_default().push(pos.diag(message));
                }
                if other_links
                    .listen
                    .as_ref()
                    .is_some_and(|(a, _)| a.port() == *port)
                {
                    let message = if same {
                        format!("port {port} is also this unit's deploy.listen port")
                    } else {
                        format!("port {port} is also the deploy.listen port of unit `{other}`")
                    };
                    out.entry(name.clone()).or_default().push(pos.diag(message));
                }
            }
            if let (Some((a, pos)), Some((b, _))) = (&links.listen, &other_links.listen) {
                if !same && clash(a, b) {
                    let message = format!("listen address {a} is also used by unit `{other}`");
                    out.entry(name.clone()).or_default().push(pos.diag(message));
                }
            }
        }
    }
}

/// Whether two listening sockets cannot both be bound.
fn clash(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::config::UnitEntry;
    use crate::config::load::{UnitFile, build_units};
    use crate::config::validate_unit::UnitCtx;

    /// Cross-checks in-memory units in `/u` and returns each bad unit's diagnostics.
    fn errors(units: &[(&str, &str)]) -> Vec<String> {
        let files = units
            .iter()
            .map(|(name, text)| UnitFile {
                name: name.to_string(),
                path: PathBuf::from(format!("/u/{name}.toml")),
                text: Ok(text.to_string()),
            })
            .collect();
        build_units(files, Path::new("/u"), &UnitCtx::default())
            .into_values()
            .flat_map(|e| match e {
                UnitEntry::Ok(_) => Vec::new(),
                UnitEntry::Bad { errors, .. } => errors,
            })
            .map(|d| d.to_string())
            .collect()
    }

    #[test]
    fn unknown_dependency() {
        assert_eq!(
            errors(&[("api", "exec = [\"a\"]\nrequires = [\"db\"]\n")]),
            ["/u/api.toml:2:13: unknown dependency `db`: no unit file db.toml in /u"]
        );
    }

    #[test]
    fn a_dependency_on_a_broken_unit_is_not_unknown() {
        let units = [
            ("api", "exec = [\"a\"]\nafter = [\"db\"]\n"),
            ("db", "exec = 1\n"),
        ];
        assert_eq!(
            errors(&units),
            ["/u/db.toml:1:8: invalid type: integer `1`, expected an array"]
        );
    }

    #[test]
    fn dependency_cycles_are_reported_on_every_member() {
        let units = [
            ("web", "exec = [\"a\"]\nrequires = [\"api\"]\n"),
            (
                "api",
                "exec = [\"a\"]\nafter = [\"cache\"]\nrequires = [\"web\"]\n",
            ),
            ("cache", "exec = [\"a\"]\n"),
            ("loop", "exec = [\"a\"]\nafter = [\"loop\"]\n"),
        ];
        assert_eq!(
            errors(&units),
            [
                "/u/api.toml:3:13: dependency cycle: api -> web -> api",
                "/u/loop.toml:2:10: dependency cycle: loop -> loop",
                "/u/web.toml:2:13: dependency cycle: api -> web -> api",
            ]
        );
    }

    #[test]
    fn longer_cycles_start_at_the_alphabetically_first_unit() {
        let units = [
            ("c", "exec = [\"a\"]\nafter = [\"a\"]\n"),
            ("a", "exec = [\"a\"]\nafter = [\"b\"]\n"),
            ("b", "exec = [\"a\"]\nafter = [\"c\"]\n"),
        ];
        let cycle = "dependency cycle: a -> b -> c -> a";
        assert_eq!(
            errors(&units),
            [
                format!("/u/a.toml:2:10: {cycle}"),
                format!("/u/b.toml:2:10: {cycle}"),
                format!("/u/c.toml:2:10: {cycle}"),
            ]
        );
    }

    #[test]
    fn ports_and_listen_addresses_claimed_twice() {
        let web = "exec = [\"a\"]\n[deploy]\nlisten = \"0.0.0.0:8000\"\nports = [9000, 9001]\n";
        let api = "exec = [\"a\"]\n[deploy]\nlisten = \"127.0.0.1:8000\"\nports = [9002, 9000]\n";
        assert_eq!(
            errors(&[("web", web), ("api", api)]),
            [
                "/u/api.toml:3:10: listen address 127.0.0.1:8000 is also used by unit `web`",
                "/u/api.toml:4:16: port 9000 is also a slot port of unit `web`",
                "/u/web.toml:3:10: listen address 0.0.0.0:8000 is also used by unit `api`",
                "/u/web.toml:4:10: port 9000 is also a slot port of unit `api`",
            ]
        );
        let own = "exec = [\"a\"]\n[deploy]\nlisten = \"0.0.0.0:9001\"\nports = [9000, 9001]\n";
        assert_eq!(
            errors(&[("own", own)]),
            ["/u/own.toml:4:16: port 9001 is also this unit's deploy.listen port"]
        );
    }
}
