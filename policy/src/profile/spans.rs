//! From byte spans and TOML/serde errors to diagnostics: line, column, the dotted field
//! path and a fix, for profiles and for every other TOML file gvm reads.

use std::ops::Range;
use std::path::Path;

use crate::diag::Diagnostic;

impl Diagnostic {
    /// A TOML or serde error of any file gvm reads (profiles, `gvmd.toml`), taken apart
    /// into position, field, message and fix.
    pub fn from_toml_error(file: &Path, text: &str, e: &toml::de::Error) -> Diagnostic {
        toml_error(file, text, e)
    }
}

pub(super) fn toml_error(file: &Path, text: &str, e: &toml::de::Error) -> Diagnostic {
    let span = e.span().unwrap_or(0..0);
    let raw = e.message().trim();
    let (message, fix) = split_serde_message(raw);
    let field = field_at(text, span.clone());
    let mut d = Diagnostic::at(file, text, span, message).maybe_fix(fix);
    d.field = field;
    d
}

/// Splits serde's "unknown field `x`, expected one of `a`, `b`" into a message and a
/// fix listing what is accepted. Other messages are kept, on one line.
pub(super) fn split_serde_message(raw: &str) -> (String, Option<String>) {
    let one_line = raw.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
    for (prefix, what, list) in [
        ("unknown field `", "unknown field", "accepted fields"),
        ("unknown variant `", "unknown value", "allowed values"),
    ] {
        let Some(rest) = one_line.strip_prefix(prefix) else { continue };
        let Some((bad, expected)) = rest.split_once('`') else { continue };
        let accepted: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let message = format!("{what} `{bad}`");
        let fix = if accepted.is_empty() {
            if expected.contains("there are no fields") {
                Some("this table takes no fields".to_string())
            } else {
                None
            }
        } else {
            Some(format!("{list}: {}", accepted.join(", ")))
        };
        return (message, fix);
    }
    if let Some(rest) = one_line.strip_prefix("missing field `") {
        if let Some((name, _)) = rest.split_once('`') {
            return (one_line.clone(), Some(format!("add `{name} = ...` to this table")));
        }
    }
    // serde names Rust types; say what to write in TOML.
    let one_line = one_line
        .replace("expected i64", "expected an integer")
        .replace("expected u64", "expected an integer")
        .replace("expected a boolean", "expected true or false");
    (one_line, None)
}

/// The dotted path (`network.rule[2].action`) of the key or value at `span.start`,
/// found by re-reading the document with spans. `None` for a syntax error.
pub(super) fn field_at(text: &str, span: Range<usize>) -> Option<String> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let at = span.start;
    fn walk(v: &DeValue<'_>, at: usize, path: &mut String) -> bool {
        match v {
            DeValue::Table(t) => {
                for (k, val) in t.iter() {
                    let inside_key = k.span().contains(&at);
                    let inside_val = val.span().contains(&at) || val.span().start == at;
                    let mut deeper = path.clone();
                    if !deeper.is_empty() {
                        deeper.push('.');
                    }
                    deeper.push_str(k.get_ref());
                    if inside_key {
                        *path = deeper;
                        return true;
                    }
                    if inside_val || matches!(val.get_ref(), DeValue::Table(_) | DeValue::Array(_)) {
                        let mut p = deeper.clone();
                        if walk(val.get_ref(), at, &mut p) {
                            *path = p;
                            return true;
                        }
                        if inside_val {
                            *path = deeper;
                            return true;
                        }
                    }
                }
                false
            }
            DeValue::Array(a) => {
                for (i, val) in a.iter().enumerate() {
                    let inside = val.span().contains(&at) || val.span().start == at;
                    let deeper = format!("{path}[{i}]");
                    if inside || matches!(val.get_ref(), DeValue::Table(_)) {
                        let mut p = deeper.clone();
                        if walk(val.get_ref(), at, &mut p) {
                            *path = p;
                            return true;
                        }
                        if inside {
                            *path = deeper;
                            return true;
                        }
                    }
                }
                false
            }
            _ => false,
        }
    }
    let mut path = String::new();
    let root = DeValue::Table(doc.into_inner());
    (walk(&root, at, &mut path) && !path.is_empty()).then_some(path)
}
