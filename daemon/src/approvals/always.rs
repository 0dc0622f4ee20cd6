//! `--always`: the narrowest rule that covers one held request, written into the
//! profile's TOML file with its comments and layout kept.
//!
//! The rule: the exact host, the port only when it is not the scheme's default, the
//! one method, the exact path (no query), `action = "allow"` or `"deny"`. The new text
//! is validated exactly like `gvmctl policy check` and must decide the request as
//! asked before it replaces the file (a temporary file, fsynced, renamed over it, same
//! owner and mode); the previous version stays as `<file>.bak` (the profile loader
//! reads `*.toml` only). On any failure the file is untouched. The writing is
//! `crate::profile_file`'s, shared with `gvmctl suggest --apply`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use gvm_policy::{Request, Scheme, Verdict};

/// What went wrong; the file is unchanged in every case.
#[derive(Debug, thiserror::Error)]
pub enum AlwaysError {
    #[error("cannot {what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Write(#[from] crate::profile_file::WriteError),
    #[error("{path} is not TOML that can be edited: {reason}")]
    Edit { path: PathBuf, reason: String },
    #[error("the rule for {url} would make {path} invalid: {diagnostic}")]
    Invalid { path: PathBuf, url: String, diagnostic: String },
    #[error("the rule was not written: with it, {path} would still decide {method} {url} as `{verdict}` ({why}); edit that rule by hand")]
    Ineffective { path: PathBuf, method: String, url: String, verdict: String, why: String },
    #[error("approval {id} has no request URL to write a rule for")]
    NoUrl { id: u64 },
    #[error("cannot write a rule for {url}: {reason}")]
    Url { url: String, reason: String },
}

/// The rule written, as TOML text, for the answer.
#[derive(Debug, Clone)]
pub struct Written {
    pub rule: String,
    pub file: PathBuf,
}

/// Adds the narrowest rule for `method url` to `file` (a profile), allowing or denying.
pub fn add_rule(file: &Path, method: &str, url: &str, allow: bool) -> Result<Written, AlwaysError> {
    // A held tunnel (CONNECT, transparent TLS) is `host:port`: a host-level rule, port
    // always written (narrowest, and more specific than a host-only hold).
    let tunnel = method == "CONNECT";
    let parsed = if tunnel && !url.contains("://") { format!("https://{url}/") } else { url.to_string() };
    let (scheme, host, port, path_q) =
        crate::api::explain::parse_url(&parsed).map_err(|reason| AlwaysError::Url { url: url.into(), reason })?;
    let path = path_q.split('?').next().unwrap_or("/").to_string();
    if path.contains('*') {
        return Err(AlwaysError::Url {
            url: url.into(),
            reason: "a path with `*` cannot be written as an exact rule".into(),
        });
    }
    let default_port = if scheme == Scheme::Https { 443 } else { 80 };
    let action = if allow { "allow" } else { "deny" };

    let text =
        std::fs::read_to_string(file).map_err(|source| AlwaysError::Io { what: "read", path: file.into(), source })?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| AlwaysError::Edit { path: file.into(), reason: e.to_string() })?;
    let mut rule = toml_edit::Table::new();
    rule.decor_mut().set_prefix(format!(
        "\n# Written by `gvmctl {} --always` on {}.\n",
        if allow { "approve" } else { "deny" },
        crate::rfc3339(
            time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        )
    ));
    rule["host"] = toml_edit::value(host.as_str());
    if port != default_port || tunnel {
        rule["port"] = toml_edit::value(i64::from(port));
    }
    if !tunnel {
        let mut methods = toml_edit::Array::new();
        methods.push(method);
        rule["methods"] = toml_edit::value(methods);
        rule["path"] = toml_edit::value(path.as_str());
    }
    rule["action"] = toml_edit::value(action);
    // JSON strings are valid TOML basic strings.
    let q = |v: &str| serde_json::to_string(v).unwrap_or_default();
    let mut shown = format!("[[network.rule]]\nhost = {}\n", q(host.as_str()));
    if port != default_port || tunnel {
        shown.push_str(&format!("port = {port}\n"));
    }
    if !tunnel {
        shown.push_str(&format!("methods = [{}]\npath = {}\n", q(method), q(&path)));
    }
    shown.push_str(&format!("action = {}", q(action)));
    crate::profile_file::push_rules(&mut doc, vec![rule])
        .map_err(|reason| AlwaysError::Edit { path: file.into(), reason })?;
    let new_text = doc.to_string();

    // Validate exactly like `gvmctl policy check`, and check the rule does its job.
    let profile = gvm_policy::parse_profile(file, &new_text).map_err(|d| AlwaysError::Invalid {
        path: file.into(),
        url: url.into(),
        diagnostic: d.to_string(),
    })?;
    let decision =
        profile.compiled.decide(&Request { scheme, host: &host, port, method, path: &path }, SystemTime::now());
    let wanted = if allow { Verdict::Allow } else { Verdict::Deny };
    if decision.policy_verdict != wanted {
        let why = match &decision.rule {
            Some(r) => format!("network.rule[{}] at line {} decides it", r.index, r.line),
            None => "the profile's default decides it".into(),
        };
        return Err(AlwaysError::Ineffective {
            path: file.into(),
            method: method.into(),
            url: url.into(),
            verdict: decision.policy_verdict.to_string(),
            why,
        });
    }
    crate::profile_file::replace(file, &text, &new_text)?;
    Ok(Written { rule: shown, file: file.into() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const PROFILE: &str = "# invoices: the billing agent\n[network]\ndefault = \"deny\"\n\n# charges wait for a human\n[[network.rule]]\nhost = \"api.example\"\npath = \"/v1/**\"\naction = \"hold\"   # keep this\n";

    #[test]
    fn writes_the_narrowest_rule_and_keeps_comments() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("invoices.toml");
        std::fs::write(&file, PROFILE).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let w = add_rule(&file, "POST", "https://api.example/v1/charges?x=1", true).unwrap();
        assert!(w.rule.contains("host = \"api.example\"") && !w.rule.contains("port"), "{}", w.rule);
        assert!(w.rule.contains("methods = [\"POST\"]") && w.rule.contains("path = \"/v1/charges\""), "{}", w.rule);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with(PROFILE), "{text}");
        assert!(text.contains("action = \"allow\""), "{text}");
        assert_eq!(std::fs::read_to_string(dir.path().join("invoices.toml.bak")).unwrap(), PROFILE);
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o640);
        let p = gvm_policy::parse_profile(&file, &text).unwrap();
        assert_eq!(p.network.rules.len(), 2);
        let w = add_rule(&file, "GET", "http://api.example:8080/x", false).unwrap();
        assert!(w.rule.contains("port = 8080") && w.rule.contains("\"deny\""), "{}", w.rule);
        // A held tunnel: host and port only.
        let w = add_rule(&file, "CONNECT", "tunnel.example:443", true).unwrap();
        assert_eq!(w.rule, "[[network.rule]]\nhost = \"tunnel.example\"\nport = 443\naction = \"allow\"");
    }

    #[test]
    fn an_ineffective_or_invalid_rule_leaves_the_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("invoices.toml");
        let exact = "[network]\ndefault = \"deny\"\n[[network.rule]]\nhost = \"api.example\"\nmethods = [\"POST\"]\npath = \"/v1/charges\"\naction = \"hold\"\n";
        std::fs::write(&file, exact).unwrap();
        let e = add_rule(&file, "POST", "https://api.example/v1/charges", true).unwrap_err().to_string();
        assert!(e.contains("would still decide POST https://api.example/v1/charges as `hold`"), "{e}");
        assert!(e.contains("network.rule[0]"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), exact);
        assert!(!dir.path().join("invoices.toml.bak").exists());
        std::fs::write(&file, "[network]\nrule = 3\n").unwrap();
        assert!(add_rule(&file, "GET", "https://api.example/", true).is_err());
    }

    #[test]
    fn a_rule_beyond_the_profiles_tier_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("invoices.toml");
        let l2 = "[agent]\ntier = \"L2\"\n\n[[network.rule]]\nhost = \"api.example\"\nmethods = [\"POST\"]\naction = \"hold\"\n";
        std::fs::write(&file, l2).unwrap();
        let e = add_rule(&file, "POST", "https://api.example/v1/charges", true).unwrap_err().to_string();
        assert!(e.contains("would make") && e.contains("beyond tier L2"), "{e}");
        assert!(e.contains("add \"network\" to [agent] tier_override"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), l2);
        // A read is within L2: written.
        add_rule(&file, "GET", "https://api.example/v1/charges", true).unwrap();
    }
}
