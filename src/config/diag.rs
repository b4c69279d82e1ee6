//! `FILE:LINE:COL: message` diagnostics, and the mapping from byte offsets in a config
//! file to 1-based line and column. Every stage of config loading reports through here.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in a config or unit file, printed as `FILE:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based; 1 when the problem concerns the whole file.
    pub line: usize,
    /// 1-based, counted in characters; 1 when the problem concerns the whole file.
    pub col: usize,
    pub message: String,
}

/// Always one line: control characters in the path or the message (a unit file named
/// `a<TAB>.toml`, `requires = ["a\nb"]`, a key holding ESC) are written escaped, as `\t`,
/// `\n`, `\u{1b}`, so a message can neither break the `FILE:LINE:COL: message` lines that
/// tools read nor send escape sequences to the operator's terminal.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, &self.file.display().to_string())?;
        write!(f, ":{}:{}: ", self.line, self.col)?;
        write_escaped(f, &self.message)
    }
}

fn write_escaped(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    for c in s.chars() {
        if c.is_control() {
            write!(f, "{}", c.escape_debug())?;
        } else {
            write!(f, "{c}")?;
        }
    }
    Ok(())
}

impl Diagnostic {
    /// A diagnostic about a whole file (line 1, column 1).
    pub fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            line: 1,
            col: 1,
            message: message.into(),
        }
    }
}

/// A place in a file, kept for diagnostics found after the file was validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pos {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
}

impl Pos {
    /// The start of `file`.
    pub fn start_of(file: &Path) -> Self {
        Pos {
            file: file.to_path_buf(),
            line: 1,
            col: 1,
        }
    }

    pub fn diag(&self, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            line: self.line,
            col: self.col,
            message: message.into(),
        }
    }
}

/// Collects the diagnostics of one file, turning byte spans into line and column.
pub(crate) struct Report<'a> {
    pub path: &'a Path,
    text: &'a str,
    pub errors: Vec<Diagnostic>,
}

impl<'a> Report<'a> {
    pub fn new(path: &'a Path, text: &'a str) -> Self {
        Report {
            path,
            text,
            errors: Vec::new(),
        }
    }

    /// Reports `message` at the start of `span`.
    pub fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let d = self.pos(span).diag(message);
        self.errors.push(d);
    }

    /// The position of `span`, to report at later (cross-file checks).
    pub fn pos(&self, span: Range<usize>) -> Pos {
        let (line, col) = line_col(self.text, span.start);
        Pos {
            file: self.path.to_path_buf(),
            line,
            col,
        }
    }

    /// Reports `message` about the whole file.
    pub fn whole(&mut self, message: impl Into<String>) {
        self.errors.push(Diagnostic::whole_file(self.path, message));
    }

    /// Reports a syntax or serde error from the `toml` crate with its short message, not
    /// the multi-line rendering with a source snippet.
    pub fn toml(&mut self, e: &toml::de::Error) {
        // serde's data-model words, in TOML's: `[…]` is an array, `{…}` and `[section]` tables.
        let message = e
            .message()
            .trim_end()
            .replace("expected a sequence", "expected an array")
            .replace("expected a map", "expected a table")
            .replace("invalid type: sequence", "invalid type: array")
            .replace("invalid type: map", "invalid type: table");
        match e.span() {
            Some(span) => self.at(span, message),
            None => self.whole(message),
        }
    }
}

/// 1-based line and character column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_to_one_based_line_and_char_column() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        // "é" is two bytes; the "=" after "bé " is the 4th character.
        assert_eq!(line_col(text, 10), (2, 4));
        assert_eq!(line_col(text, 999), (3, 1));
    }

    #[test]
    fn display_is_file_line_col_message() {
        let d = Diagnostic {
            file: "/etc/orch/units/api.toml".into(),
            line: 3,
            col: 7,
            message: "boom".into(),
        };
        assert_eq!(d.to_string(), "/etc/orch/units/api.toml:3:7: boom");
    }

    #[test]
    fn control_characters_are_escaped_so_a_diagnostic_is_one_line() {
        let d = Diagnostic {
            file: "/u/x\t.toml".into(),
            line: 2,
            col: 13,
            message: "unknown dependency `b\nc`, key `\u{1b}[2J`, \u{85}é".into(),
        };
        assert_eq!(
            d.to_string(),
            "/u/x\\t.toml:2:13: unknown dependency `b\\nc`, key `\\u{1b}[2J`, \\u{85}é"
        );
    }
}
