//! Diagnostics: what a refused profile (or a `gvmctl policy check` warning) looks like.
//!
//! Every diagnostic names the file, the position (1-based line and column, columns
//! counted in characters), the dotted field and a fix. It never repeats its source
//! error: TOML and serde messages are taken apart into "what is wrong" and "what to
//! write instead" rather than quoted whole.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A reason a profile was refused, or a warning about it.
///
/// `Display` is `file:line:col: `field`: message — fix`, with the parts that are
/// unknown left out; it is the same text `gvm_api::ProfileRefusal` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: Option<u32>,
    pub column: Option<u32>,
    /// Dotted path of the offending field, e.g. `network.rule[2].action`
    /// (array indexes count from 0, as in the TOML array).
    pub field: Option<String>,
    pub message: String,
    pub fix: Option<String>,
}

/// A `gvmctl policy check` finding: same shape as a refusal, but the profile loads.
pub type Warning = Diagnostic;

impl Diagnostic {
    /// A diagnostic about the file as a whole (no position).
    pub fn file_level(file: &Path, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            line: None,
            column: None,
            field: None,
            message: message.into(),
            fix: None,
        }
    }

    /// A diagnostic at the start of `span` in `text`.
    pub(crate) fn at(file: &Path, text: &str, span: Range<usize>, message: impl Into<String>) -> Self {
        let (line, column) = line_col(text, span.start);
        Diagnostic {
            file: file.to_path_buf(),
            line: Some(line),
            column: Some(column),
            field: None,
            message: message.into(),
            fix: None,
        }
    }

    pub(crate) fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub(crate) fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }

    pub(crate) fn maybe_fix(mut self, fix: Option<String>) -> Self {
        self.fix = fix;
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "`{field}`: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, " — {fix}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}

impl From<&Diagnostic> for gvm_api::ProfileRefusal {
    fn from(d: &Diagnostic) -> Self {
        gvm_api::ProfileRefusal {
            file: d.file.display().to_string(),
            line: d.line,
            column: d.column,
            field: d.field.clone(),
            message: d.message.clone(),
            fix: d.fix.clone(),
        }
    }
}

/// 1-based (line, column) of `byte_offset` in `text`. Columns count characters
/// (Unicode scalar values), not bytes. An offset past the end is clamped to the end;
/// an offset inside a multi-byte character counts as that character.
pub fn line_col(text: &str, byte_offset: usize) -> (u32, u32) {
    let mut offset = byte_offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (u32::try_from(line).unwrap_or(u32::MAX), u32::try_from(column).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let t = "ab\ncdé\nf";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 1), (1, 2));
        assert_eq!(line_col(t, 3), (2, 1));
        // 'é' is two bytes; the 'f' line starts after it.
        assert_eq!(line_col(t, 8), (3, 1));
        assert_eq!(line_col(t, 7), (2, 4));
        // Inside the two-byte 'é' → the 'é' itself.
        assert_eq!(line_col(t, 6), (2, 3));
        assert_eq!(line_col(t, 999), (3, 2));
    }

    #[test]
    fn display_matches_the_wire_type() {
        let d = Diagnostic {
            file: "p/x.toml".into(),
            line: Some(3),
            column: Some(9),
            field: Some("network.default".into()),
            message: "unknown value `allow`".into(),
            fix: Some("allowed values: deny, hold".into()),
        };
        let wire = gvm_api::ProfileRefusal::from(&d);
        assert_eq!(d.to_string(), wire.to_string());
        assert_eq!(
            d.to_string(),
            "p/x.toml:3:9: `network.default`: unknown value `allow` — allowed values: deny, hold"
        );
    }
}
