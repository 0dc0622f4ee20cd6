//! `gvmctl start|stop|restart PROFILE`: the agent of a profile, through systemd
//! (gvm-agent@PROFILE.service) or, in gvmd's foreground mode, through gvmd itself.

use gvm_api::client::Client;
use gvm_api::{paths, AgentAction, AgentVerb};

use crate::output;

pub fn act(client: &Client, profile: &str, action: AgentVerb, json: bool) -> anyhow::Result<()> {
    let r: AgentAction = client.post(&paths::agent_action(profile, action), None)?;
    if json {
        return output::json(&r);
    }
    println!("{}: {} (agent is {})", r.profile, r.action, r.state);
    Ok(())
}
