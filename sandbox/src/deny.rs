//! `deny_read` globs, resolved to the paths to mask at launch.
//!
//! Patterns: `~/x` is relative to the agent's home; `/x` is absolute; anything else is
//! relative to each workspace, and a pattern without `/` matches a name at any depth (as
//! in .gitignore: `*.pem`, `.env`). `*` and `?` match within a component, `**` any number
//! of components.
//!
//! What this does not do (be honest): globs are resolved when the sandbox starts. A file
//! that appears *later* in a workspace's real (lower) directory — the operator writes a new
//! `.env` while the agent runs — is visible to the agent if its permissions allow. Landlock
//! cannot express globs (it grants by hierarchy, not by name), and seccomp cannot see
//! paths. Files the agent itself creates that match a glob hold only what the agent wrote.
//! A follow-up is for gvmd to watch the lower directories (inotify) and add masks into the
//! running sandbox's mount namespace.

use std::path::{Path, PathBuf};

/// Walking stops after this many entries per root (a huge tree must not stall a launch).
const MAX_ENTRIES: usize = 200_000;

/// Resolves `patterns` against `home` and `roots` (the workspaces' real paths).
pub fn resolve(patterns: &[String], home: &Path, roots: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for pat in patterns {
        let pat = pat.trim();
        if pat.is_empty() {
            continue;
        }
        if let Some(rest) = pat.strip_prefix("~/") {
            walk(home, &split(rest), true, &mut out);
        } else if let Some(rest) = pat.strip_prefix('/') {
            walk(Path::new("/"), &split(rest), true, &mut out);
        } else if !pat.contains('/') {
            let comps: Vec<&str> = std::iter::once("**").chain(split(pat)).collect();
            for root in roots {
                walk(root, &comps, false, &mut out);
            }
        } else {
            for root in roots {
                walk(root, &split(pat), false, &mut out);
            }
        }
    }
    out.sort();
    out.dedup();
    // A path inside an already-masked directory needs no mask of its own.
    let mut kept: Vec<PathBuf> = Vec::new();
    for p in out {
        if !kept.iter().any(|k| p.starts_with(k) && p != *k) {
            kept.push(p);
        }
    }
    kept
}

fn split(p: &str) -> Vec<&str> {
    p.split('/').filter(|c| !c.is_empty() && *c != ".").collect()
}

fn walk(root: &Path, comps: &[&str], _absolute: bool, out: &mut Vec<PathBuf>) {
    let mut budget = MAX_ENTRIES;
    walk_inner(root, comps, out, &mut budget);
}

fn walk_inner(dir: &Path, comps: &[&str], out: &mut Vec<PathBuf>, budget: &mut usize) {
    let Some((first, rest)) = comps.split_first() else {
        return;
    };
    if *first == "**" {
        // `**` matches zero components...
        walk_inner(dir, rest, out, budget);
        // ...or one more, then itself again.
        for entry in entries(dir, budget) {
            if entry.1 {
                walk_inner(&entry.0, comps, out, budget);
            }
        }
        return;
    }
    if !first.contains(['*', '?', '[']) {
        let p = dir.join(first);
        if std::fs::symlink_metadata(&p).is_ok() {
            if rest.is_empty() {
                out.push(p);
            } else if p.is_dir() && !p.is_symlink() {
                walk_inner(&p, rest, out, budget);
            }
        }
        return;
    }
    for (p, is_dir) in entries(dir, budget) {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if matches(first, &name) {
            if rest.is_empty() {
                out.push(p);
            } else if is_dir {
                walk_inner(&p, rest, out, budget);
            }
        }
    }
}

/// Directory entries as (path, is a real directory — symlinks are not followed).
fn entries(dir: &Path, budget: &mut usize) -> Vec<(PathBuf, bool)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for e in rd.flatten() {
        if *budget == 0 {
            break;
        }
        *budget -= 1;
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        v.push((e.path(), is_dir));
    }
    v
}

/// Shell-style match of one component: `*`, `?`, and `[abc]`/`[a-z]` classes.
pub fn matches(pat: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pat.chars().collect(), name.chars().collect());
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => {
                let Some(end) = p.iter().position(|&c| c == ']') else {
                    return n.first() == Some(&'[') && go(&p[1..], &n[1..]);
                };
                let Some(&c) = n.first() else { return false };
                let class = &p[1..end];
                let (neg, class) = match class.first() {
                    Some('!') | Some('^') => (true, &class[1..]),
                    _ => (false, class),
                };
                let mut hit = false;
                let mut i = 0;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == '-' {
                        hit |= class[i] <= c && c <= class[i + 2];
                        i += 3;
                    } else {
                        hit |= class[i] == c;
                        i += 1;
                    }
                }
                hit != neg && go(&p[end + 1..], &n[1..])
            }
            Some(&c) => n.first() == Some(&c) && go(&p[1..], &n[1..]),
        }
    }
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_match() {
        assert!(matches("*.pem", "key.pem"));
        assert!(!matches("*.pem", "key.pem.bak"));
        assert!(matches(".env*", ".env.local"));
        assert!(matches("id_[rd]sa", "id_rsa"));
        assert!(!matches("id_[!r]sa", "id_rsa"));
        assert!(matches("?", "a"));
    }

    #[test]
    fn resolves_globs() {
        let d = tempfile::tempdir().unwrap();
        let ws = d.path().join("ws");
        std::fs::create_dir_all(ws.join("a/b")).unwrap();
        std::fs::create_dir_all(ws.join("secrets")).unwrap();
        for f in [".env", "a/b/.env", "a/key.pem", "a/b/ok.txt", "secrets/x"] {
            std::fs::write(ws.join(f), "x").unwrap();
        }
        let home = d.path().join("home");
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        let pats: Vec<String> =
            ["**/.env", "*.pem", "secrets", "secrets/x", "~/.ssh"].iter().map(|s| s.to_string()).collect();
        let got = resolve(&pats, &home, std::slice::from_ref(&ws));
        let want =
            vec![ws.join(".env"), ws.join("a/b/.env"), ws.join("a/key.pem"), ws.join("secrets"), home.join(".ssh")];
        let mut want = want;
        want.sort();
        assert_eq!(got, want);
    }
}
