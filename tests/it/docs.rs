//! Every TOML block in `docs/*.md` (and README.md) is checked with the real `orchd --check`, so
//! the docs never drift from the code. The fence's info string says what a block is
//! (documented in docs/README.md):
//!
//! - ```` ```toml unit ```` (or ```` ```toml unit NAME ````): a unit file. Checked as
//!   `units/NAME.toml` (NAME from the info string, else from a first-line comment naming
//!   `…/NAME.toml`, else `example`) next to an `orchd.toml` that defines every alert channel it
//!   names, beside stub units for every service it `requires` or comes `after`.
//! - ```` ```toml orchd ````: an `orchd.toml`, checked with its (relative) `units_dir` created
//!   empty beside it. Only the error "cannot read units_dir" for an absolute `units_dir` that
//!   doesn't exist here is ignored.
//! - ```` ```toml fragment ````: a part of a file (one table, a key or two): not checked.
//!
//! A plain ```` ```toml ```` block is an error: say which it is.

use std::path::{Path, PathBuf};

use crate::util::orchd_check;

/// One fenced TOML block.
#[derive(Debug)]
struct Block {
    file: PathBuf,
    /// 1-based line of the opening fence.
    line: usize,
    kind: String,
    name: Option<String>,
    body: String,
}

fn blocks(file: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(file).expect("read doc");
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let trimmed = line.trim_start();
        let Some(info) = trimmed.strip_prefix("```") else {
            continue;
        };
        let fence_indent = line.len() - trimmed.len();
        let mut words = info.split_whitespace();
        let lang = words.next().unwrap_or("");
        let mut body = String::new();
        for (_, l) in lines.by_ref() {
            if l.trim_start().starts_with("```") {
                break;
            }
            body.push_str(l.get(fence_indent..).unwrap_or(l.trim_start()));
            body.push('\n');
        }
        if lang != "toml" {
            continue;
        }
        out.push(Block {
            file: file.to_owned(),
            line: n + 1,
            kind: words.next().unwrap_or("").to_owned(),
            name: words.next().map(str::to_owned),
            body,
        });
    }
    out
}

fn doc_files() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.push(root.join("README.md"));
    files.sort();
    files
}

/// The service name for a unit block.
fn unit_name(block: &Block) -> String {
    if let Some(name) = &block.name {
        return name.clone();
    }
    let first = block.body.lines().next().unwrap_or("");
    first
        .strip_prefix('#')
        .map(str::trim)
        .and_then(|c| c.split_whitespace().next())
        .and_then(|p| p.rsplit('/').next())
        .and_then(|f| f.strip_suffix(".toml"))
        .filter(|n| !n.is_empty())
        .unwrap_or("example")
        .to_owned()
}

/// Names in an array key of a parsed unit, e.g. `requires`.
fn names(value: &toml::Value, key: &str) -> Vec<String> {
    value
        .get(key)
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `orchd --check` on the block; returns its diagnostics (empty: valid).
fn check(block: &Block) -> Result<Vec<String>, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let units = dir.path().join("units");
    std::fs::create_dir(&units).expect("mkdir");
    let config = dir.path().join("orchd.toml");
    match block.kind.as_str() {
        "unit" => {
            let name = unit_name(block);
            // Parse first so a syntax error is reported against the doc, not a stub.
            let parsed: toml::Value = toml::from_str(&block.body).map_err(|e| e.to_string())?;
            let mut orchd = String::from(
                "units_dir = \"units\"\nstate_dir = \"state\"\n[api]\nsocket = \"s.sock\"\ndbus = \"off\"\n",
            );
            for channel in names(&parsed, "alert") {
                orchd.push_str(&format!(
                    "[[alerts.webhook]]\nname = \"{channel}\"\nurl = \"https://example.com/hook\"\n"
                ));
            }
            std::fs::write(&config, orchd).expect("write");
            for dep in names(&parsed, "requires")
                .into_iter()
                .chain(names(&parsed, "after"))
            {
                std::fs::write(
                    units.join(format!("{dep}.toml")),
                    "exec = [\"/bin/true\"]\n",
                )
                .expect("write stub");
            }
            std::fs::write(units.join(format!("{name}.toml")), &block.body).expect("write");
        }
        "orchd" => {
            // A relative units_dir is created beside it, like the package's /etc/orch/units.
            let parsed: toml::Value = toml::from_str(&block.body).map_err(|e| e.to_string())?;
            if let Some(rel) = parsed.get("units_dir").and_then(|v| v.as_str()) {
                if Path::new(rel).is_relative() {
                    std::fs::create_dir_all(dir.path().join(rel)).expect("mkdir units_dir");
                }
            }
            std::fs::write(&config, &block.body).expect("write")
        }
        other => return Err(format!("unknown block kind `{other}`")),
    }
    let out = orchd_check(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let errors: Vec<String> = stdout
        .lines()
        .filter(|l| !l.contains(": configuration is valid ("))
        .filter(|l| {
            // An absolute units_dir (e.g. /etc/orch/units) need not exist on this machine.
            !(block.kind == "orchd"
                && l.contains("cannot read units_dir /")
                && !l.contains(&dir.path().display().to_string()))
        })
        .map(|l| l.replace(&dir.path().display().to_string(), "<tmp>"))
        .collect();
    if errors.is_empty() && !out.status.success() && block.kind != "orchd" {
        return Err(format!(
            "orchd --check exited {} without diagnostics: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(errors)
}

#[test]
fn every_toml_block_in_the_docs_passes_orchd_check() {
    let mut failures = Vec::new();
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for file in doc_files() {
        for block in blocks(&file) {
            *counts.entry(block.kind.clone()).or_default() += 1;
            let at = format!("{}:{}", block.file.display(), block.line);
            match block.kind.as_str() {
                "fragment" => continue,
                "" => failures.push(format!(
                    "{at}: a ```toml block must say what it is: ```toml unit, ```toml orchd or ```toml fragment (docs/README.md)"
                )),
                _ => match check(&block) {
                    Ok(errors) if errors.is_empty() => {}
                    Ok(errors) => failures.push(format!(
                        "{at}: ```toml {} block fails orchd --check:\n  {}",
                        block.kind,
                        errors.join("\n  ")
                    )),
                    Err(e) => failures.push(format!("{at}: {e}")),
                },
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} TOML block(s) in the docs are wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        counts.get("unit").copied().unwrap_or(0) > 0,
        "no ```toml unit block found: {counts:?}"
    );
}

/// The extractor itself: kinds, names, indented fences.
#[test]
fn toml_blocks_are_extracted_with_their_kind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let md = dir.path().join("x.md");
    std::fs::write(
        &md,
        "# T\n\n```toml unit api\nexec = [\"a\"]\n```\n\n- item:\n\n  ```toml fragment\n  [stop]\n  ```\n\n```sh\nls\n```\n```toml\nx = 1\n```\n",
    )
    .expect("write");
    let b = blocks(&md);
    assert_eq!(b.len(), 3, "{b:?}");
    assert_eq!((b[0].line, b[0].kind.as_str()), (3, "unit"));
    assert_eq!(b[0].name.as_deref(), Some("api"));
    assert_eq!(b[1].kind, "fragment");
    assert_eq!(b[1].body, "[stop]\n");
    assert_eq!(b[2].kind, "");
    let bad = Block {
        file: md.clone(),
        line: 1,
        kind: "unit".into(),
        name: None,
        body: "# /etc/orch/units/web.toml\nexec = [\"a\"]\npolcy = 1\n".into(),
    };
    assert_eq!(unit_name(&bad), "web");
    let errors = check(&bad).expect("checked");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("<tmp>/units/web.toml:3:1: unknown field `polcy`"),
        "{errors:?}"
    );
}
