//! `gvmctl watch P on|off [--for 1h]`: switch one profile's network decisions to watch
//! mode (every request allowed and recorded with what enforce mode would have done)
//! without restarting its agent or touching the other profiles. The sandbox stays as
//! it is. gvmd forgets the switch when it restarts: profiles go back to their file's mode.

use gvm_api::client::Client;
use gvm_api::{WatchRequest, WatchState};

use crate::audit::percent_encode;
use crate::output;

pub fn run(client: &Client, profile: &str, on: bool, duration: Option<&str>, json: bool) -> anyhow::Result<()> {
    let for_secs = duration
        .map(|d| gvm_policy::parse_duration(d).map(|d| d.as_secs()).map_err(|e| anyhow::anyhow!("--for {d}: {e}")))
        .transpose()?;
    let req = WatchRequest { on, for_secs };
    let s: WatchState =
        client.post(&format!("/v1/agents/{}/watch", percent_encode(profile)), Some(&serde_json::to_value(&req)?))?;
    if json {
        return output::json(&s);
    }
    match (on, &s.until) {
        (true, Some(until)) => println!(
            "{profile}: watching until {} — requests are allowed and recorded; then enforce again",
            output::short_time(until)
        ),
        (true, None) => println!(
            "{profile}: watching until `gvmctl watch {profile} off` (or a gvmd restart) — requests are allowed and recorded"
        ),
        (false, _) => println!("{profile}: {} (as its file says)", s.mode),
    }
    if on {
        println!("See what it did: gvmctl audit log --profile {profile}; turn it into rules: gvmctl suggest {profile}");
    }
    Ok(())
}
