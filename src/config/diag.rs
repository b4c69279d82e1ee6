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

/// At most this many errors from the `toml` crate are shown per file. One stray character
/// early in a long inline table or array makes its recovering parser report every entry after
/// it (a 1 MiB unit gave 347,875 lines and took orchd 20 s to list, in `--check` and in a
/// reload's reply); past the first few they are noise caused by the first one.
pub(crate) const MAX_TOML_ERRORS: usize = 50;

/// Collects the diagnostics of one file, turning byte spans into line and column.
pub(crate) struct Report<'a> {
    pub path: &'a Path,
    text: &'a str,
    pub errors: Vec<Diagnostic>,
    index: std::cell::OnceCell<LineIndex>,
}

impl<'a> Report<'a> {
    pub fn new(path: &'a Path, text: &'a str) -> Self {
        Report {
            path,
            text,
            errors: Vec::new(),
            index: std::cell::OnceCell::new(),
        }
    }

    /// Reports `message` at the start of `span`.
    pub fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let d = self.pos(span).diag(message);
        self.errors.push(d);
    }

    /// The position of `span`, to report at later (cross-file checks).
    pub fn pos(&self, span: Range<usize>) -> Pos {
        let index = self.index.get_or_init(|| LineIndex::new(self.text));
        let (line, col) = index.line_col(self.text, span.start);
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

    /// Reports the errors of the `toml` crate for this file, at most [`MAX_TOML_ERRORS`] of
    /// them, then how many more there were.
    pub fn toml_all(&mut self, errors: &[toml::de::Error]) {
        for e in errors.iter().take(MAX_TOML_ERRORS) {
            self.toml(e);
        }
        if let Some(next) = errors.get(MAX_TOML_ERRORS) {
            let message = format!(
                "… and {} more error(s) from here on, often caused by the ones above: fix those first",
                errors.len() - MAX_TOML_ERRORS
            );
            match next.span() {
                Some(span) => self.at(span, message),
                None => self.whole(message),
            }
        }
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

/// Where the lines of a text start and where its multi-byte characters are, so each position
/// is found by binary search instead of a scan from the start of the text (which made a file
/// with many errors, such as a long `requires` list, quadratic to report).
struct LineIndex {
    /// Byte offset of the start of each line.
    starts: Vec<usize>,
    /// Byte offsets of UTF-8 continuation bytes (each makes a column one byte wider).
    continuations: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        let mut continuations = Vec::new();
        for (i, b) in text.bytes().enumerate() {
            if b == b'\n' {
                starts.push(i + 1);
            } else if b & 0xC0 == 0x80 {
                continuations.push(i);
            }
        }
        LineIndex {
            starts,
            continuations,
        }
    }

    /// 1-based line and character column of byte `offset` in `text` (the text indexed).
    fn line_col(&self, text: &str, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line - 1];
        let wide = self.continuations.partition_point(|&c| c < offset)
            - self.continuations.partition_point(|&c| c < start);
        (line, offset - start - wide + 1)
    }
}

/// 1-based line and character column of byte `offset` in `text`.
#[cfg(test)]
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    LineIndex::new(text).line_col(text, offset)
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
    fn the_index_agrees_with_counting_from_the_start() {
        let text = "a = \"é\"\n\n名前 = [\"x\", 1]\r\n  z = '🦀🦀' # ü\nlast";
        let index = LineIndex::new(text);
        for offset in 0..=text.len() + 2 {
            let mut at = offset.min(text.len());
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let before = &text[..at];
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let col = before[line_start..].chars().count() + 1;
            assert_eq!(index.line_col(text, offset), (line, col), "offset {offset}");
        }
    }

    #[test]
    fn a_cascade_of_toml_errors_is_cut_with_a_count() {
        // One stray `-` for a `=` early in a long inline table.
        let mut text = String::from("env = { K0 = \"v\"");
        for k in 1..500 {
            text.push_str(&format!(", K{k} {} \"v\"", if k == 3 { '-' } else { '=' }));
        }
        text.push_str(" }\n");
        let (_, errors) = toml::de::DeTable::parse_recoverable(&text);
        assert!(errors.len() > 100, "{}", errors.len());
        let mut r = Report::new(Path::new("/u/a.toml"), &text);
        r.toml_all(&errors);
        assert_eq!(r.errors.len(), MAX_TOML_ERRORS + 1);
        let last = r.errors.last().map(ToString::to_string).unwrap_or_default();
        let more = errors.len() - MAX_TOML_ERRORS;
        assert!(
            last.ends_with(&format!(
                ": … and {more} more error(s) from here on, often caused by the ones above: \
                 fix those first"
            )),
            "{last}"
        );
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
