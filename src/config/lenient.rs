//! Error-collecting deserialization of a whole TOML document into a serde mirror.
//!
//! serde stops at the first bad value. To report *every* bad key, a failed document is
//! probed key by key: each value is deserialized alone, wrapped in copies of its parent
//! tables (so paths, spans and `deny_unknown_fields` still apply), and the bad ones are
//! pruned. What is left deserializes cleanly and still gets semantic validation. Only
//! `raw.rs`'s mirrors go through here, and they keep every field optional so a lone key
//! is always a complete document.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeArray, DeString, DeTable, DeValue, ValueDeserializer};

/// The outcome of a lenient parse.
pub(crate) struct Lenient<T> {
    /// The document minus its bad keys; `None` only on TOML syntax errors.
    pub value: Option<T>,
    /// Syntax errors, or one error per bad key, in document order.
    pub errors: Vec<toml::de::Error>,
    /// Dotted paths of keys dropped whole (e.g. `deploy.ports`), so validation does not
    /// also complain that they are missing.
    pub dropped: BTreeSet<String>,
}

/// One step from a container to a child.
#[derive(Clone)]
enum Seg<'i> {
    Key(Spanned<DeString<'i>>),
    Index(usize),
}

/// Parses `text` as `T`, collecting one error per bad key.
pub(crate) fn parse<T: DeserializeOwned>(text: &str) -> Lenient<T> {
    let (root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        return Lenient {
            value: None,
            errors: syntax,
            dropped: BTreeSet::new(),
        };
    }
    let span = root.span();
    let root = Spanned::new(span, DeValue::Table(root.into_inner()));
    if let Ok(value) = deserialize::<T>(&root) {
        return Lenient {
            value: Some(value),
            errors: Vec::new(),
            dropped: BTreeSet::new(),
        };
    }
    let mut pruner = Pruner::<T> {
        pristine: &root,
        errors: Vec::new(),
        dropped: BTreeSet::new(),
        _t: std::marker::PhantomData,
    };
    let mut work = root.clone();
    pruner.prune_children(&mut Vec::new(), &mut work);
    let mut errors = pruner.errors;
    let dropped = pruner.dropped;
    let value = match deserialize::<T>(&work) {
        Ok(v) => Some(v),
        Err(e) => {
            // Should not happen: every remaining key passed alone. Report rather than hide.
            errors.push(e);
            None
        }
    };
    errors.sort_by_key(|e| e.span().map_or(0, |s| s.start));
    Lenient {
        value,
        errors,
        dropped,
    }
}

fn deserialize<T: DeserializeOwned>(value: &Spanned<DeValue<'_>>) -> Result<T, toml::de::Error> {
    T::deserialize(ValueDeserializer::from(value.clone()))
}

struct Pruner<'p, 'i, T> {
    pristine: &'p Spanned<DeValue<'i>>,
    errors: Vec<toml::de::Error>,
    dropped: BTreeSet<String>,
    _t: std::marker::PhantomData<T>,
}

impl<'i, T: DeserializeOwned> Pruner<'_, 'i, T> {
    /// Deserializes the document made of only `path` leading to `leaf`.
    fn probe(&self, path: &[Seg<'i>], leaf: &Spanned<DeValue<'i>>) -> Result<(), toml::de::Error> {
        let doc = wrap(self.pristine, path, leaf);
        deserialize::<T>(&doc).map(|_| ())
    }

    /// Keeps `value` (at `path`) if it is valid, else prunes inside it; returns whether
    /// anything of it is left to keep.
    fn prune(&mut self, path: &mut Vec<Seg<'i>>, value: &mut Spanned<DeValue<'i>>) -> bool {
        let Err(err) = self.probe(path, value) else {
            return true;
        };
        let empty = match value.get_ref() {
            DeValue::Table(_) => DeValue::Table(DeTable::new()),
            DeValue::Array(a) if a.iter().all(|v| v.get_ref().is_table()) && !a.is_empty() => {
                DeValue::Array(DeArray::new())
            }
            _ => return self.drop_whole(path, err),
        };
        // A container that is wrong even when empty has the wrong type: one error for it,
        // not one per child.
        if self
            .probe(path, &Spanned::new(value.span(), empty))
            .is_err()
        {
            return self.drop_whole(path, err);
        }
        self.prune_children(path, value);
        match self.probe(path, value) {
            Ok(()) => true,
            Err(e) => self.drop_whole(path, e),
        }
    }

    fn prune_children(&mut self, path: &mut Vec<Seg<'i>>, value: &mut Spanned<DeValue<'i>>) {
        match value.get_mut() {
            DeValue::Table(table) => {
                let keys: Vec<_> = table.keys().cloned().collect();
                for key in keys {
                    let Some(child) = table.get_mut(&key) else {
                        continue;
                    };
                    path.push(Seg::Key(key.clone()));
                    let keep = self.prune(path, child);
                    path.pop();
                    if !keep {
                        table.remove(&key);
                    }
                }
            }
            DeValue::Array(array) => {
                let mut keep = Vec::with_capacity(array.len());
                for (i, child) in array.iter_mut().enumerate() {
                    path.push(Seg::Index(i));
                    keep.push(self.prune(path, child));
                    path.pop();
                }
                let items = std::mem::replace(array, DeArray::new());
                *array = items
                    .into_iter()
                    .zip(keep)
                    .filter_map(|(v, k)| k.then_some(v))
                    .collect();
            }
            _ => {}
        }
    }

    fn drop_whole(&mut self, path: &[Seg<'i>], err: toml::de::Error) -> bool {
        self.errors.push(err);
        self.dropped.insert(dotted(path));
        false
    }
}

/// Copies of the containers along `path` in `container`, each holding only the next step,
/// with `leaf` at the end.
fn wrap<'i>(
    container: &Spanned<DeValue<'i>>,
    path: &[Seg<'i>],
    leaf: &Spanned<DeValue<'i>>,
) -> Spanned<DeValue<'i>> {
    let Some((first, rest)) = path.split_first() else {
        return leaf.clone();
    };
    let value = match (container.get_ref(), first) {
        (DeValue::Table(t), Seg::Key(k)) => match t.get_key_value(k) {
            Some((key, child)) => {
                let mut one = DeTable::new();
                one.insert(key.clone(), wrap(child, rest, leaf));
                DeValue::Table(one)
            }
            None => DeValue::Table(DeTable::new()),
        },
        (DeValue::Array(a), Seg::Index(i)) => match a.get(*i) {
            Some(child) => DeValue::Array(std::iter::once(wrap(child, rest, leaf)).collect()),
            None => DeValue::Array(DeArray::new()),
        },
        // The pristine document has the shape the path was taken from.
        (other, _) => other.clone(),
    };
    Spanned::new(container.span(), value)
}

fn dotted(path: &[Seg<'_>]) -> String {
    let parts: Vec<String> = path
        .iter()
        .map(|s| match s {
            Seg::Key(k) => k.get_ref().to_string(),
            Seg::Index(i) => i.to_string(),
        })
        .collect();
    parts.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        a: Option<u32>,
        b: Option<String>,
        sec: Option<Sec>,
        item: Option<Vec<Sec>>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sec {
        x: Option<u32>,
        y: Option<u32>,
    }

    fn messages(l: &Lenient<Doc>) -> Vec<(usize, String)> {
        l.errors
            .iter()
            .map(|e| {
                (
                    e.span().map_or(usize::MAX, |s| s.start),
                    e.message().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn valid_document_has_no_errors() {
        let l = parse::<Doc>("a = 1\n[sec]\nx = 2\n");
        assert!(l.errors.is_empty());
        assert_eq!(l.value.and_then(|d| d.sec).and_then(|s| s.x), Some(2));
    }

    #[test]
    fn every_bad_key_is_reported_and_the_rest_kept() {
        let text = "a = \"one\"\nb = \"ok\"\nzzz = 1\n[sec]\nx = \"two\"\nq = 3\ny = 4\n\
                    [[item]]\nx = 1\n[[item]]\nx = true\n";
        let l = parse::<Doc>(text);
        let m = messages(&l);
        assert_eq!(m.len(), 5, "{m:?}");
        assert!(
            m[0].1
                .starts_with("invalid type: string \"one\", expected u32")
        );
        assert!(m[1].1.starts_with("unknown field `zzz`"));
        assert!(m[2].1.starts_with("invalid type: string \"two\""));
        assert!(m[3].1.starts_with("unknown field `q`"));
        assert!(m[4].1.starts_with("invalid type: boolean `true`"));
        let doc = l.value.expect("pruned document deserializes");
        assert_eq!(doc.b.as_deref(), Some("ok"));
        assert_eq!(
            doc.sec,
            Some(Sec {
                x: None,
                y: Some(4)
            })
        );
        assert_eq!(doc.item.map(|i| i.len()), Some(2));
        assert!(l.dropped.contains("item.1.x"));
        assert!(l.dropped.contains("a") && l.dropped.contains("sec.x"));
    }

    #[test]
    fn a_section_of_the_wrong_type_is_one_error() {
        let l = parse::<Doc>("sec = 5\n");
        assert_eq!(l.errors.len(), 1);
        let l = parse::<Doc>("[b]\nx = 1\ny = 2\n");
        assert_eq!(l.errors.len(), 1, "{:?}", messages(&l));
    }

    #[test]
    fn syntax_errors_stop_the_file() {
        let l = parse::<Doc>("a = \nb = \"x\"\n");
        assert!(l.value.is_none());
        assert!(!l.errors.is_empty());
    }
}
