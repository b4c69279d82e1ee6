//! Dependency order: which services stop first.
//!
//! Starting needs no global order: each supervisor waits for its own dependencies. Stopping goes
//! in levels, dependents before what they depend on.

use std::collections::BTreeMap;

use crate::config::{Config, UnitEntry};

/// Depth of each valid unit: 0 for no dependencies, else 1 + the deepest dependency.
fn depths(config: &Config) -> BTreeMap<String, usize> {
    let mut depth = BTreeMap::new();
    for name in config.units.keys() {
        visit(config, name, &mut depth, 0);
    }
    depth
}

fn visit(config: &Config, name: &str, depth: &mut BTreeMap<String, usize>, guard: usize) -> usize {
    if let Some(&d) = depth.get(name) {
        return d;
    }
    // Validation rejects cycles; the guard only keeps a bug from recursing forever.
    if guard > config.units.len() {
        return 0;
    }
    let d = match config.units.get(name) {
        Some(UnitEntry::Ok(unit)) => unit
            .requires
            .iter()
            .chain(&unit.after)
            .map(|dep| visit(config, dep, depth, guard + 1) + 1)
            .max()
            .unwrap_or(0),
        _ => 0,
    };
    depth.insert(name.to_owned(), d);
    d
}

/// Groups of services to stop, one group after the other: deepest dependents first.
pub fn stop_levels(config: &Config) -> Vec<Vec<String>> {
    let depth = depths(config);
    let max = depth.values().copied().max().unwrap_or(0);
    let mut levels = vec![Vec::new(); max + 1];
    for (name, d) in depth {
        levels[d].push(name);
    }
    levels.reverse();
    levels
}
