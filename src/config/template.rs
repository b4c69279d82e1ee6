//! `{port}` / `{release}` templates in `exec`, `working_dir`, `env` and health targets:
//! checked at load time here, substituted by supervisors and probers at spawn time.

/// The placeholders a template may use.
const KNOWN: &str = "{port}, {release}";

/// Replaces `{port}` and `{release}` in `template`; `{{` and `}}` stand for braces.
/// With `port` `None`, `{port}` stays as written: validation rejects `{port}` in units
/// without `[deploy]`, so that only happens for templates that were never validated.
/// Unknown placeholders are likewise left as written.
pub fn substitute(template: &str, port: Option<u16>, release: &str) -> String {
    let mut out = String::with_capacity(template.len());
    for piece in pieces(template) {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Brace(c) => out.push(c),
            Piece::Placeholder("port") => match port {
                Some(p) => out.push_str(&p.to_string()),
                None => out.push_str("{port}"),
            },
            Piece::Placeholder("release") => out.push_str(release),
            Piece::Placeholder(other) => {
                out.push('{');
                out.push_str(other);
                out.push('}');
            }
            Piece::Unmatched(c) => out.push(c),
        }
    }
    out
}

/// The problems in `template` (empty when valid). `has_port` is whether the unit has
/// deploy slot ports for `{port}` to stand for.
pub(crate) fn check(template: &str, has_port: bool) -> Vec<String> {
    let mut errors = Vec::new();
    for piece in pieces(template) {
        match piece {
            Piece::Placeholder("port") if !has_port => {
                errors.push("`{port}` needs a [deploy] section with ports".to_string());
            }
            Piece::Placeholder("port" | "release") | Piece::Text(_) | Piece::Brace(_) => {}
            Piece::Placeholder(other) => {
                errors.push(format!("unknown placeholder `{{{other}}}`; known: {KNOWN}"));
            }
            Piece::Unmatched(c) => errors.push(format!(
                "unmatched `{c}` in template; write `{c}{c}` for a literal brace"
            )),
        }
    }
    errors
}

enum Piece<'a> {
    Text(&'a str),
    /// `{{` or `}}`.
    Brace(char),
    Placeholder(&'a str),
    Unmatched(char),
}

fn pieces(template: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        if i > 0 {
            out.push(Piece::Text(&rest[..i]));
        }
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("{{") {
            out.push(Piece::Brace('{'));
            rest = after;
        } else if let Some(after) = rest.strip_prefix("}}") {
            out.push(Piece::Brace('}'));
            rest = after;
        } else if let Some(after) = rest.strip_prefix('}') {
            out.push(Piece::Unmatched('}'));
            rest = after;
        } else {
            let body = &rest[1..];
            match body.find(['{', '}']) {
                Some(j) if body[j..].starts_with('}') => {
                    out.push(Piece::Placeholder(&body[..j]));
                    rest = &body[j + 1..];
                }
                _ => {
                    out.push(Piece::Unmatched('{'));
                    rest = body;
                }
            }
        }
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_port_release_and_escapes() {
        assert_eq!(
            substitute("/opt/{release}/bin --port={port} {{x}}", Some(9000), "v2"),
            "/opt/v2/bin --port=9000 {x}"
        );
        assert_eq!(substitute("{port}", None, "r"), "{port}");
        assert_eq!(substitute("{foo}", Some(1), "r"), "{foo}");
    }

    #[test]
    fn check_reports_exact_texts() {
        assert!(check("/opt/{release}/{port}", true).is_empty());
        assert_eq!(
            check("--port={port}", false),
            ["`{port}` needs a [deploy] section with ports"]
        );
        assert_eq!(
            check("{foo}", true),
            ["unknown placeholder `{foo}`; known: {port}, {release}"]
        );
        assert_eq!(
            check("a{b", true),
            ["unmatched `{` in template; write `{{` for a literal brace"]
        );
        assert_eq!(
            check("a}b", true),
            ["unmatched `}` in template; write `}}` for a literal brace"]
        );
        assert!(check("{{port}}", false).is_empty());
    }
}
