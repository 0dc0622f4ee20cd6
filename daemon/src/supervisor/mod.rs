//! Agents: preparing a profile's sandbox resources, and running sandboxed commands.
//!
//! gvmd prepares, the launcher confines. For profile P gvmd makes (idempotently) the
//! user `gvm-P`, the network namespace bound at `<runtime>/netns/P` with the gateway's
//! listeners opened *inside* it (explicit proxy, transparent catch-all, DNS), the state
//! directories, and a CA bundle; it hands the launcher a [`gvm_api::LaunchPlan`]. The
//! launcher (`gvmd launch`, a short-lived root process: under systemd, in foreground
//! mode and for `gvmctl run`) builds the sandbox from the plan and execs the agent.
//!
//! One live instance per profile: two sandboxes of one profile would share the overlay
//! upper directories (which overlayfs does not allow) and the same identity on the
//! gateway (their requests could not be told apart).

pub mod launch;
pub mod prepare;
pub mod run;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use tokio::task::JoinHandle;

/// What gvmd keeps per prepared profile.
#[derive(Debug)]
pub struct Prepared {
    pub uid: u32,
    pub gid: u32,
    /// The gateway's tasks serving the listeners inside the profile's netns.
    pub listeners: Vec<JoinHandle<()>>,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        for l in &self.listeners {
            l.abort();
        }
    }
}

/// The agents side of gvmd's state.
#[derive(Debug, Default)]
pub struct Agents {
    pub prepared: tokio::sync::Mutex<HashMap<String, Prepared>>,
    active: Mutex<HashSet<String>>,
}

/// Held while an instance of a profile runs; frees the profile when dropped.
#[derive(Debug)]
pub struct Instance<'a> {
    agents: &'a Agents,
    profile: String,
}

impl Agents {
    /// Claims the profile for one instance, or says it is taken.
    pub fn claim(&self, profile: &str) -> Option<Instance<'_>> {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        active.insert(profile.to_string()).then(|| Instance { agents: self, profile: profile.to_string() })
    }

    pub fn is_active(&self, profile: &str) -> bool {
        self.active.lock().unwrap_or_else(|e| e.into_inner()).contains(profile)
    }
}

impl Drop for Instance<'_> {
    fn drop(&mut self) {
        self.agents.active.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.profile);
    }
}
