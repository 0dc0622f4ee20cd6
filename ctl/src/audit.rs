//! `gvmctl audit log` and `gvmctl audit verify`.
//!
//! Both ask gvmd. `verify` can also work without gvmd (`--state-dir DIR`, or
//! automatically on the default state dir when gvmd is down), re-walking the database
//! file read-only with the public key gvmd left beside it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use gvm_api::{paths, EventsQuery, EventsResponse, VerifyReport};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::output;
use gvm_api::client::{Client, ClientError};

/// `--since` accepts an RFC 3339 time or an age such as `30m`, `2h`, `7d`.
pub fn parse_since(text: &str, now: OffsetDateTime) -> anyhow::Result<String> {
    if OffsetDateTime::parse(text, &Rfc3339).is_ok() {
        return Ok(text.to_string());
    }
    let age = gvm_policy::parse_duration(text).map_err(|_| {
        anyhow::anyhow!("--since {text:?} is neither a time like 2026-11-23T10:00:00Z nor an age like 30m, 2h or 7d")
    })?;
    let then = now - time::Duration::try_from(age).context("--since is too far back")?;
    Ok(then.format(&Rfc3339)?)
}

pub fn log(client: &Client, query: EventsQuery, json: bool) -> anyhow::Result<()> {
    let mut target = paths::AUDIT_EVENTS.to_string();
    let mut sep = '?';
    let mut add = |k: &str, v: &str| {
        target.push(sep);
        target.push_str(k);
        target.push('=');
        target.push_str(&percent_encode(v));
        sep = '&';
    };
    if let Some(p) = &query.profile {
        add("profile", p);
    }
    if let Some(s) = &query.since {
        add("since", s);
    }
    if let Some(l) = query.limit {
        add("limit", &l.to_string());
    }
    let r: EventsResponse = client.get(&target)?;
    if json {
        return output::json(&r.events);
    }
    if r.events.is_empty() {
        println!("No events match.");
        return Ok(());
    }
    let dash = || "-".to_string();
    let rows: Vec<Vec<String>> = r
        .events
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                output::short_time(&e.time),
                e.profile.clone().unwrap_or_else(dash),
                e.kind.clone(),
                e.decision.clone().unwrap_or_else(dash),
                // A decision without a rule was made by the profile's [network] default.
                e.rule.clone().unwrap_or_else(|| if e.decision.is_some() { "default".into() } else { dash() }),
                summarize(&e.details),
            ]
        })
        .collect();
    output::table(&["SEQ", "TIME", "PROFILE", "KIND", "DECISION", "RULE", "DETAILS"], &rows);
    Ok(())
}

/// One line of `key=value` pairs, the request first when there is one.
fn summarize(details: &serde_json::Value) -> String {
    let Some(map) = details.as_object() else { return details.to_string() };
    let mut parts = Vec::new();
    for (k, v) in map {
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => continue,
            other => other.to_string(),
        };
        parts.push(format!("{k}={v}"));
    }
    let line = parts.join(" ");
    if line.chars().count() > 120 {
        format!("{}…", line.chars().take(119).collect::<String>())
    } else {
        line
    }
}

pub(crate) fn percent_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn verify(client: &Client, state_dir: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let report = match state_dir {
        Some(dir) => offline(dir)?,
        None => match client.post::<VerifyReport>(paths::AUDIT_VERIFY, None) {
            Ok(r) => r,
            Err(ClientError::NotRunning(sock)) => {
                let dir = PathBuf::from("/var/lib/gvm");
                if !dir.join(gvm_audit::DB_FILE).exists() {
                    return Err(ClientError::NotRunning(sock).into());
                }
                eprintln!("gvmd is not running; verifying {} directly", dir.join(gvm_audit::DB_FILE).display());
                offline(&dir)?
            }
            Err(e) => return Err(e.into()),
        },
    };
    if json {
        output::json(&report)?;
    } else if let Some(p) = &report.problem {
        println!("FAILED at seq {}: {} — {}", p.seq, p.kind, p.detail);
        println!("checked {} events and {} checkpoints before the failure", report.events, report.checkpoints);
    } else {
        println!("ok: {} events, {} checkpoints", report.events, report.checkpoints);
    }
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn offline(state_dir: &Path) -> anyhow::Result<VerifyReport> {
    let db = state_dir.join(gvm_audit::DB_FILE);
    if !db.exists() {
        anyhow::bail!("no audit database at {} — is {} gvmd's --state-dir?", db.display(), state_dir.display());
    }
    Ok(gvm_audit::verify_db(&db, &gvm_audit::public_key_path(state_dir)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_times_and_ages() {
        let now = OffsetDateTime::parse("2026-11-23T10:00:00Z", &Rfc3339).unwrap();
        assert_eq!(parse_since("2026-11-23T09:00:00Z", now).unwrap(), "2026-11-23T09:00:00Z");
        assert_eq!(parse_since("2h", now).unwrap(), "2026-11-23T08:00:00Z");
        let err = parse_since("yesterday", now).unwrap_err().to_string();
        assert!(err.contains("neither a time"), "{err}");
    }
}
