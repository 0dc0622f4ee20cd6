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
//!
//! Profiles are prepared side by side: each preparation or teardown holds its own
//! profile's lock ([`locks::ProfileLocks`]) across useradd, netns and nft, and the map
//! of prepared profiles only for a look or an insert; 10 agents start at once.

pub mod children;
pub mod control;
pub mod ephemeral;
pub mod locks;
pub mod plan_to_spec;
pub mod prepare;
pub mod run_session;
pub mod systemd;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

/// What gvmd keeps per prepared profile.
#[derive(Debug)]
pub struct Prepared {
    pub uid: u32,
    pub gid: u32,
    /// The gateway's tasks serving the listeners inside the profile's netns.
    pub listeners: Vec<JoinHandle<()>>,
    /// The profile's `[agent]` section when it was prepared, to tell when a change
    /// needs a restart of the agent.
    pub agent: String,
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
    /// Locked only for a look or an insert, never across a preparation's steps.
    pub prepared: tokio::sync::Mutex<HashMap<String, Prepared>>,
    /// Held across one profile's preparation or teardown (useradd, netns, nft).
    pub prepare_locks: locks::ProfileLocks,
    active: Arc<Mutex<HashSet<String>>>,
    /// How each unit's agent last ended, as its ExecStopPost told us (systemd forgets it
    /// as soon as the next start begins, so a restart loop would never show it).
    last_exits: Mutex<HashMap<String, String>>,
}

/// Held while an instance of a profile runs; frees the profile when dropped.
#[derive(Debug)]
pub struct Instance {
    active: Arc<Mutex<HashSet<String>>>,
    profile: String,
}

impl Agents {
    /// Claims the profile for one instance, or says it is taken.
    pub fn claim(&self, profile: &str) -> Option<Instance> {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        active
            .insert(profile.to_string())
            .then(|| Instance { active: self.active.clone(), profile: profile.to_string() })
    }

    pub fn is_active(&self, profile: &str) -> bool {
        self.active.lock().unwrap_or_else(|e| e.into_inner()).contains(profile)
    }

    pub fn set_last_exit(&self, profile: &str, how: String) {
        self.last_exits.lock().unwrap_or_else(|e| e.into_inner()).insert(profile.to_string(), how);
    }

    pub fn last_exit(&self, profile: &str) -> Option<String> {
        self.last_exits.lock().unwrap_or_else(|e| e.into_inner()).get(profile).cloned()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.active.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.profile);
    }
}

/// Who runs the agents.
#[derive(Debug)]
pub enum Backend {
    /// PID 1 is systemd: agents are `gvm-agent@P.service` units.
    Systemd(systemd::Systemd),
    /// Foreground mode: gvmd spawns and supervises the launchers itself.
    Gvmd(children::Children),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Systemd(_) => "systemd",
            Backend::Gvmd(_) => "gvmd",
        }
    }
}
