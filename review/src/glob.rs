//! The `[files]` globs and the classification of a change by them. Pure: no I/O.
//!
//! Syntax (as `gvm_policy::validate_glob` accepts it): `*` (any run of characters
//! within one path component), `?`, `[abc]`, `[a-z]`, `[!abc]`, `{a,b}` (may nest and
//! may hold `/`), `**` as a whole component (zero or more components), `\x` escapes.
//! A glob matches a whole workspace-relative path.

use gvm_api::review::FileClass;

/// Brace alternatives are expanded up front; a glob that expands past this is refused.
const MAX_EXPANSIONS: usize = 256;

#[derive(Debug, Clone)]
enum Tok {
    Lit(char),
    One,
    Star,
    Class { negated: bool, ranges: Vec<(char, char)> },
}

#[derive(Debug, Clone)]
enum Comp {
    AnyDepth,
    Name(Vec<Tok>),
}

/// One glob, compiled.
#[derive(Debug, Clone)]
pub struct Glob {
    source: String,
    alternatives: Vec<Vec<Comp>>,
}

impl Glob {
    pub fn new(source: &str) -> Result<Glob, String> {
        gvm_policy::validate_glob(source)?;
        let mut expanded = Vec::new();
        expand_braces(source, &mut expanded)?;
        let alternatives = expanded
            .iter()
            .map(|alt| {
                alt.split('/')
                    .filter(|c| !c.is_empty())
                    .map(|c| if c == "**" { Comp::AnyDepth } else { Comp::Name(tokens(c)) })
                    .collect()
            })
            .collect();
        Ok(Glob { source: source.to_string(), alternatives })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn matches(&self, path: &str) -> bool {
        let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        self.alternatives.iter().any(|alt| match_comps(alt, &comps))
    }
}

fn expand_braces(s: &str, out: &mut Vec<String>) -> Result<(), String> {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut open = None;
    let mut depth = 0;
    let mut commas = Vec::new();
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 1,
            '[' => {
                // Skip a class: braces inside it are literal.
                let mut j = i + 1;
                if j < chars.len() && (chars[j] == '!' || chars[j] == '^') {
                    j += 1;
                }
                if j < chars.len() && chars[j] == ']' {
                    j += 1;
                }
                while j < chars.len() && chars[j] != ']' {
                    j += 1;
                }
                i = j;
            }
            '{' => {
                if depth == 0 {
                    open = Some(i);
                    commas.clear();
                }
                depth += 1;
            }
            ',' if depth == 1 => commas.push(i),
            '}' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    let start = open.unwrap_or(0);
                    let prefix: String = chars[..start].iter().collect();
                    let suffix: String = chars[i + 1..].iter().collect();
                    let mut bounds = vec![start];
                    bounds.extend(&commas);
                    bounds.push(i);
                    for w in bounds.windows(2) {
                        let alt: String = chars[w[0] + 1..w[1]].iter().collect();
                        expand_braces(&format!("{prefix}{alt}{suffix}"), out)?;
                        if out.len() > MAX_EXPANSIONS {
                            return Err(format!("the glob expands to more than {MAX_EXPANSIONS} alternatives"));
                        }
                    }
                    return Ok(());
                }
            }
            _ => {}
        }
        i += 1;
    }
    out.push(s.to_string());
    Ok(())
}

fn tokens(comp: &str) -> Vec<Tok> {
    let chars: Vec<char> = comp.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' if i + 1 < chars.len() => {
                out.push(Tok::Lit(chars[i + 1]));
                i += 1;
            }
            '*' => {
                if !matches!(out.last(), Some(Tok::Star)) {
                    out.push(Tok::Star);
                }
            }
            '?' => out.push(Tok::One),
            '[' => {
                let mut j = i + 1;
                let negated = j < chars.len() && (chars[j] == '!' || chars[j] == '^');
                if negated {
                    j += 1;
                }
                let mut ranges = Vec::new();
                let mut first = true;
                while j < chars.len() && (first || chars[j] != ']') {
                    first = false;
                    let mut lo = chars[j];
                    if lo == '\\' && j + 1 < chars.len() {
                        j += 1;
                        lo = chars[j];
                    }
                    if j + 2 < chars.len() && chars[j + 1] == '-' && chars[j + 2] != ']' {
                        ranges.push((lo, chars[j + 2]));
                        j += 3;
                    } else {
                        ranges.push((lo, lo));
                        j += 1;
                    }
                }
                if j >= chars.len() {
                    // No closing bracket: a literal `[` (validate_glob refuses this anyway).
                    out.push(Tok::Lit('['));
                } else {
                    out.push(Tok::Class { negated, ranges });
                    i = j;
                }
            }
            c => out.push(Tok::Lit(c)),
        }
        i += 1;
    }
    out
}

fn match_name(toks: &[Tok], name: &[char]) -> bool {
    match toks.first() {
        None => name.is_empty(),
        Some(Tok::Star) => (0..=name.len()).any(|k| match_name(&toks[1..], &name[k..])),
        Some(t) => {
            let Some(&c) = name.first() else { return false };
            let ok = match t {
                Tok::Lit(l) => *l == c,
                Tok::One => true,
                Tok::Class { negated, ranges } => ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated,
                Tok::Star => unreachable!("handled above"),
            };
            ok && match_name(&toks[1..], &name[1..])
        }
    }
}

fn match_comps(pat: &[Comp], path: &[&str]) -> bool {
    match pat.first() {
        None => path.is_empty(),
        Some(Comp::AnyDepth) => (0..=path.len()).any(|k| match_comps(&pat[1..], &path[k..])),
        Some(Comp::Name(toks)) => {
            let Some(first) = path.first() else { return false };
            let name: Vec<char> = first.chars().collect();
            match_name(toks, &name) && match_comps(&pat[1..], &path[1..])
        }
    }
}

/// The profile's `[files]`, compiled.
#[derive(Debug, Clone, Default)]
pub struct FileRules {
    auto_apply: Vec<Glob>,
    review: Vec<Glob>,
    discard: Vec<Glob>,
}

impl FileRules {
    pub fn new(files: &gvm_policy::Files) -> Result<FileRules, (String, String)> {
        let compile = |globs: &[String]| -> Result<Vec<Glob>, (String, String)> {
            globs.iter().map(|g| Glob::new(g).map_err(|e| (g.clone(), e))).collect()
        };
        Ok(FileRules {
            auto_apply: compile(&files.auto_apply)?,
            review: compile(&files.review)?,
            discard: compile(&files.discard)?,
        })
    }

    /// Class of a change that the safety rules let through. `new_file` is true for an
    /// added regular file, the only kind `auto_apply` may take.
    #[must_use]
    pub fn classify(&self, path: &str, new_file: bool) -> (FileClass, String) {
        let first = |globs: &[Glob]| globs.iter().find(|g| g.matches(path)).map(|g| g.as_str().to_string());
        if let Some(g) = first(&self.discard) {
            return (FileClass::Discard, format!("matches discard glob `{g}`"));
        }
        if let Some(g) = first(&self.review) {
            return (FileClass::Review, format!("matches review glob `{g}`"));
        }
        if let Some(g) = first(&self.auto_apply) {
            if new_file {
                return (FileClass::AutoApply, format!("matches auto_apply glob `{g}`"));
            }
            return (
                FileClass::Review,
                format!("matches auto_apply glob `{g}`, but only new files are applied without review"),
            );
        }
        (FileClass::Review, "matches no [files] glob".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(g: &str, p: &str) -> bool {
        Glob::new(g).unwrap().matches(p)
    }

    #[test]
    fn star_stays_in_one_component() {
        assert!(m("*.csv", "a.csv"));
        assert!(!m("*.csv", "x/a.csv"));
        assert!(m("out/*", "out/a"));
        assert!(!m("out/*", "out/a/b"));
    }

    #[test]
    fn double_star_spans_components() {
        assert!(m("**/*.csv", "a.csv"));
        assert!(m("**/*.csv", "x/y/a.csv"));
        assert!(m("out/**", "out"));
        assert!(m("out/**", "out/a/b"));
        assert!(!m("out/**", "outx/a"));
        assert!(m("a/**/b", "a/b"));
        assert!(m("a/**/b", "a/x/y/b"));
    }

    #[test]
    fn classes_braces_and_escapes() {
        assert!(m("file?.[ct]sv", "file1.csv"));
        assert!(!m("file?.[!ct]sv", "file1.csv"));
        assert!(m("[a-c]x", "bx"));
        assert!(m("{src,docs/a}/*.md", "docs/a/c.md"));
        assert!(m("{src,docs/a}/*.md", "src/r.md"));
        assert!(!m("{src,docs/a}/*.md", "src/a/r.md"));
        assert!(m("{src,docs}/**/*.md", "docs/a/b/c.md"));
        assert!(m("a{b,c{d,e}}f", "acef"));
        assert!(m(r"a\*", "a*"));
        assert!(!m(r"a\*", "ab"));
    }

    #[test]
    fn precedence_discard_review_auto() {
        let rules = FileRules::new(&gvm_policy::Files {
            auto_apply: vec!["out/**".into(), "tmp/**".into()],
            review: vec!["out/secret*".into()],
            discard: vec!["tmp/**".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(rules.classify("out/a.csv", true).0, FileClass::AutoApply);
        assert_eq!(rules.classify("out/a.csv", false).0, FileClass::Review);
        assert_eq!(rules.classify("out/secret.txt", true).0, FileClass::Review);
        assert_eq!(rules.classify("tmp/x", true).0, FileClass::Discard);
        let (class, why) = rules.classify("other", true);
        assert_eq!((class, why.as_str()), (FileClass::Review, "matches no [files] glob"));
    }
}
