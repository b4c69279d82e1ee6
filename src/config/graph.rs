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
