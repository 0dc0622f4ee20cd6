//! `gvmctl suggest P`: the profile change that would allow what P's agent was seen
//! doing, as a diff of its profile file; `--apply` writes it. gvmd computes and writes
//! (it reads the audit log and owns the profiles); gvmctl shows.

use std::process::ExitCode;

use gvm_api::client::Client;
use gvm_api::suggest::{SuggestRequest, SuggestResponse};

use crate::audit::percent_encode;
use crate::output;

/// The long help: the cycle the command is for.
pub const HELP: &str = "\
The cycle: watch -> suggest -> enforce.

  1. Let the agent work with nothing enforced, everything recorded:
       gvmctl run --watch --profile invoices -- ./agent.sh
     (or `mode = \"watch\"` under [agent] in the profile, for a unit)
  2. See what the profile would need, as a diff of its file (nothing is written):
       gvmctl suggest invoices              # since the profile was last loaded
       gvmctl suggest invoices --run 412    # one run: the seq of its run_started event
       gvmctl suggest invoices --since 2h   # or 2026-12-07T08:00:00Z
  3. Write it (comments kept, old file kept as FILE.bak, profiles reloaded):
       gvmctl suggest invoices --apply --expect sha256:...   # the hash the dry run printed
  4. Enforce: run without --watch (or set mode = \"enforce\"); check with
       gvmctl audit log --profile invoices

How requests become rules: one rule per host, port and path, with the methods seen.
Path segments that look like ids (cus_123, ch_3Nx..., UUIDs, numbers, hex of 8+,
base64 tokens of 16+) become `*`; 5 or more distinct segments under one prefix become
`/prefix/**`. Requests a rule already decides (allow, deny or hold) are left alone.
Never written as rules, only listed as comments for you to decide: raw IP addresses,
single-label hosts, a host seen once with an upload of 256 KiB or more, hosts seen only
in DNS. [files] auto_apply globs for the agent's new files are comments too.";

pub struct Args {
    pub profile: String,
    pub since: Option<String>,
    pub run: Option<u64>,
    pub apply: bool,
    pub expect: Option<String>,
    pub json: bool,
}

pub fn run(client: &Client, a: Args) -> anyhow::Result<ExitCode> {
    let since = a.since.map(|s| crate::audit::parse_since(&s, time::OffsetDateTime::now_utc())).transpose()?;
    let path = format!("/v1/agents/{}/suggest", percent_encode(&a.profile));
    let r: SuggestResponse = if a.apply {
        let req = SuggestRequest { since, run: a.run, apply: true, expect_sha256: a.expect };
        client.post(&path, Some(&serde_json::to_value(&req)?))?
    } else {
        let mut q = Vec::new();
        if let Some(s) = &since {
            q.push(format!("since={}", percent_encode(s)));
        }
        if let Some(r) = a.run {
            q.push(format!("run={r}"));
        }
        let target = if q.is_empty() { path } else { format!("{path}?{}", q.join("&")) };
        client.get(&target)?
    };
    if a.json {
        output::json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render(&r));
    Ok(ExitCode::SUCCESS)
}

/// The human text: what was read, the diff, what to do next.
pub fn render(r: &SuggestResponse) -> String {
    let mut out = format!("{}: {}, {} ({})\n", r.profile, r.window.described, r.file, r.base_sha256);
    if r.decisions == 0 {
        out.push_str(&format!(
            "No network traffic in this window: nothing to suggest.\nRun the agent in watch mode first: gvmctl run --watch --profile {} -- CMD\n",
            r.profile
        ));
        return out;
    }
    let covered: u64 = r.rules.iter().map(|x| x.requests).sum();
    out.push_str(&format!(
        "{} decisions read; {} requests already allowed; {} new rule(s) covering {covered} request(s); {} flagged for you\n",
        r.decisions,
        r.already_allowed,
        r.rules.len(),
        r.flagged.len()
    ));
    if r.diff.is_empty() {
        out.push_str("Nothing to add: the profile already allows everything seen.\n");
        return out;
    }
    out.push('\n');
    out.push_str(&r.diff);
    out.push('\n');
    if r.applied {
        out.push_str(&format!(
            "Written to {} ({}); the previous version is {}. Profiles reloaded.\n",
            r.file,
            r.new_sha256.as_deref().unwrap_or(""),
            r.backup.as_deref().unwrap_or("")
        ));
    } else {
        out.push_str(&format!(
            "Nothing was written. To apply exactly this: gvmctl suggest {} --apply --expect {}\n",
            r.profile, r.base_sha256
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_window_says_so_and_a_dry_run_says_how_to_apply() {
        let mut r = SuggestResponse { profile: "inv".into(), base_sha256: "sha256:ab".into(), ..Default::default() };
        assert!(render(&r).contains("No network traffic in this window"), "{}", render(&r));
        r.decisions = 3;
        r.already_allowed = 3;
        assert!(render(&r).contains("already allows everything seen"), "{}", render(&r));
        r.diff = "--- f\n+++ f\n".into();
        assert!(render(&r).contains("gvmctl suggest inv --apply --expect sha256:ab"), "{}", render(&r));
    }
}
