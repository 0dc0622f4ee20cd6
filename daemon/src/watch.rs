//! Watch mode switched at run time: `gvmctl watch P on|off [--for 1h]`.
//!
//! Watching changes only how the gateway decides P's network requests: each is allowed
//! and recorded with what enforce mode would have done. The sandbox stays as it is
//! (files, system calls, `deny_read`); the other profiles are not touched. A switch is
//! held in gvmd's memory, not in the profile file: a gvmd restart puts every profile
//! back to its file's mode (enforce unless the file says watch), so a forgotten watch
//! never outlives the daemon. Every switch, and the end of a `--for`, is audited.
//!
//! Everything that puts a profile in force (start, reload, the end of a `gvmctl run
//! --watch`) goes through [`Daemon::put_in_force`], which applies the switch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

use crate::state::Daemon;

/// A profile switched to watch mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    pub since: OffsetDateTime,
    /// When it ends by itself (`--for`); `None`: until `gvmctl watch P off`.
    pub until: Option<OffsetDateTime>,
    pub by: String,
}

/// The switches in force, by profile.
#[derive(Debug, Default)]
pub struct Watches {
    map: Mutex<HashMap<String, Switch>>,
}

impl Watches {
    pub fn get(&self, profile: &str) -> Option<Switch> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(profile).filter(|s| s.until.is_none_or(|u| u > OffsetDateTime::now_utc())).cloned()
    }

    fn set(&self, profile: &str, switch: Option<Switch>) -> Option<Switch> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match switch {
            Some(s) => map.insert(profile.to_string(), s),
            None => map.remove(profile),
        }
    }

    /// Ends the switch of `profile` if it is still the one that ends at `until`.
    fn expire(&self, profile: &str, until: OffsetDateTime) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(profile).is_some_and(|s| s.until == Some(until)) {
            map.remove(profile);
            return true;
        }
        false
    }
}

/// `profile` in watch mode: the same rules, every network decision allowed and
/// recorded as what enforce mode would have done.
pub fn watched(profile: &gvm_policy::Profile) -> gvm_policy::Profile {
    let mut watched = profile.clone();
    watched.agent.mode = gvm_policy::Mode::Watch;
    watched.compiled =
        Arc::new(gvm_policy::CompiledPolicy::compile(&watched.file, gvm_policy::Mode::Watch, &watched.network));
    watched
}

impl Daemon {
    /// Hands `profile` to the gateway, in watch mode while a switch says so. (The values
    /// of its masked files are the caller's: [`crate::secrets::file_values`] reads files.)
    pub fn put_in_force(&self, profile: &gvm_policy::Profile) {
        if self.watches.get(profile.name.as_str()).is_some() && profile.agent.mode != gvm_policy::Mode::Watch {
            self.gateway.set_profile(&watched(profile));
        } else {
            self.gateway.set_profile(profile);
        }
    }

    /// The mode the gateway decides `profile`'s requests in now.
    pub fn effective_mode(&self, profile: &gvm_policy::Profile) -> gvm_policy::Mode {
        if self.watches.get(profile.name.as_str()).is_some() {
            gvm_policy::Mode::Watch
        } else {
            profile.agent.mode
        }
    }
}

/// Why a switch was refused.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("no profile named {0:?} is in force")]
    NoProfile(String),
    #[error("profile {0}'s file says `mode = \"watch\"`: it watches until the file says otherwise (edit [agent] mode, then gvmctl reload)")]
    FileSaysWatch(String),
}

/// Switches `profile` on (for `duration`, or until switched off) or off; audits it.
pub async fn switch(
    daemon: &Arc<Daemon>,
    profile: &str,
    on: bool,
    duration: Option<Duration>,
    by: &str,
) -> Result<gvm_api::WatchState, WatchError> {
    let set = daemon.profiles();
    let loaded = set.profiles.get(profile).ok_or_else(|| WatchError::NoProfile(profile.to_string()))?;
    let p = loaded.profile.clone();
    if p.agent.mode == gvm_policy::Mode::Watch {
        return Err(WatchError::FileSaysWatch(profile.to_string()));
    }
    let now = OffsetDateTime::now_utc();
    let until = duration.map(|d| now + d);
    let previous = if on {
        daemon.watches.set(profile, Some(Switch { since: now, until, by: by.to_string() }))
    } else {
        daemon.watches.set(profile, None)
    };
    daemon.put_in_force(&p);
    daemon
        .record(gvm_audit::NewEvent {
            profile: Some(profile.to_string()),
            kind: if on { gvm_api::EventKind::WatchOn } else { gvm_api::EventKind::WatchOff }.into(),
            decision: None,
            rule: None,
            details: serde_json::json!({
                "by": by,
                "until": until.map(crate::rfc3339),
                "was_watching": previous.is_some(),
            }),
        })
        .await;
    tracing::info!(
        gvm_profile = profile,
        "profile {profile}: watch mode {} by {by}{}",
        if on { "on" } else { "off" },
        until.map(|u| format!(" until {}", crate::rfc3339(u))).unwrap_or_default()
    );
    if let Some(until) = until {
        let (d, name) = (daemon.clone(), profile.to_string());
        tokio::spawn(async move {
            let left = (until - OffsetDateTime::now_utc()).unsigned_abs();
            tokio::time::sleep(left).await;
            if !d.watches.expire(&name, until) {
                return; // switched off or replaced meanwhile
            }
            if let Some(loaded) = d.profiles().profiles.get(&name) {
                d.put_in_force(&loaded.profile);
            }
            d.record(gvm_audit::NewEvent {
                profile: Some(name.clone()),
                kind: gvm_api::EventKind::WatchOff.into(),
                decision: None,
                rule: None,
                details: serde_json::json!({ "by": "timer", "until": crate::rfc3339(until) }),
            })
            .await;
            tracing::info!(gvm_profile = %name, "profile {name}: watch mode ended (its --for ran out)");
        });
    }
    Ok(state(daemon, profile, &p))
}

/// What `gvmctl watch` and `gvmctl status` show of a profile's mode.
pub fn state(daemon: &Daemon, profile: &str, p: &gvm_policy::Profile) -> gvm_api::WatchState {
    let switch = daemon.watches.get(profile);
    gvm_api::WatchState {
        profile: profile.to_string(),
        mode: daemon.effective_mode(p),
        file_mode: p.agent.mode,
        until: switch.as_ref().and_then(|s| s.until).map(crate::rfc3339),
        since: switch.as_ref().map(|s| crate::rfc3339(s.since)),
        by: switch.map(|s| s.by),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_ends_by_itself_and_only_the_one_that_was_timed() {
        let w = Watches::default();
        let past = OffsetDateTime::now_utc() - Duration::from_secs(1);
        w.set("p", Some(Switch { since: past, until: Some(past), by: "root".into() }));
        assert_eq!(w.get("p"), None, "an expired switch is not in force even before its timer runs");
        let later = OffsetDateTime::now_utc() + Duration::from_secs(60);
        w.set("p", Some(Switch { since: past, until: Some(later), by: "root".into() }));
        assert!(!w.expire("p", past), "the old timer does not end the new switch");
        assert!(w.get("p").is_some());
        assert!(w.expire("p", later));
        assert_eq!(w.get("p"), None);
    }
}
