//! A ceiling on the connections one profile holds open in gvmd at once (ATTACKS class
//! 17): every accepted connection costs gvmd a descriptor (two while it is forwarded),
//! and an agent that opens them faster than they time out must not starve the other
//! profiles, the control socket or the audit store.
//!
//! One count per profile covers every listener (proxy, transparent, DNS over TCP) and
//! lasts as long as the connection, also after it became a tunnel or a WebSocket. The
//! ceiling is the profile's `[limits] connections`, but never more than its share of
//! gvmd's descriptor budget: `(budget) / 2 / profiles in force`, so that every profile
//! at its ceiling at once still leaves gvmd its reserve. Past the ceiling a new
//! connection is closed at once and counted in a `limits_exceeded` event; the agent's
//! earlier connections are untouched.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Descriptors gvmd keeps for itself whatever the agents do: the control socket and
/// its clients, the audit database and its WAL, journald, listeners, netns handles.
pub const FD_RESERVE: usize = 256;
/// Descriptors each profile's listeners and netns take besides its connections.
pub const FD_PER_PROFILE: usize = 8;

/// Connections a profile that is not in force may hold: its listeners only answer
/// "the profile is not loaded" (403, audited), and they are closing.
pub const UNLOADED_CAP: usize = 8;

/// One profile's count.
#[derive(Debug)]
struct Room {
    open: AtomicUsize,
    cap: AtomicUsize,
    saturated: AtomicBool,
}

impl Default for Room {
    fn default() -> Self {
        Room { open: AtomicUsize::new(0), cap: AtomicUsize::new(UNLOADED_CAP), saturated: AtomicBool::new(false) }
    }
}

/// A place taken by one open connection; given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot(Arc<Room>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
pub(crate) struct ConnLimits {
    /// Descriptors the gateway may spend on agents' connections, all profiles together.
    budget: usize,
    per_profile: Mutex<HashMap<Arc<str>, Arc<Room>>>,
}

impl ConnLimits {
    pub(crate) fn new(fd_limit: usize) -> Self {
        ConnLimits { budget: fd_limit.saturating_sub(FD_RESERVE), per_profile: Mutex::default() }
    }

    /// Sets every profile's ceiling from its own limit and the number of profiles in
    /// force (`wanted`: profile → `[limits] connections`). Profiles not named keep
    /// [`UNLOADED_CAP`]: their listeners are closing.
    pub(crate) fn set_caps(&self, wanted: &[(Arc<str>, usize)]) {
        let n = wanted.len().max(1);
        let share = (self.budget.saturating_sub(FD_PER_PROFILE * n) / 2 / n).max(1);
        let mut map = self.per_profile.lock().unwrap_or_else(|e| e.into_inner());
        for (name, want) in wanted {
            let room = map.entry(name.clone()).or_default();
            room.cap.store((*want).min(share), Ordering::Release);
        }
        map.retain(|name, room| {
            let keep = wanted.iter().any(|(n, _)| n == name);
            if !keep {
                room.cap.store(UNLOADED_CAP, Ordering::Release);
            }
            keep || room.open.load(Ordering::Acquire) > 0
        });
    }

    /// The ceiling in force for `profile`.
    pub(crate) fn cap(&self, profile: &str) -> usize {
        let map = self.per_profile.lock().unwrap_or_else(|e| e.into_inner());
        map.get(profile).map_or(UNLOADED_CAP, |r| r.cap.load(Ordering::Acquire))
    }

    /// A place for one more connection of `profile`, held as long as the connection
    /// lives; `Err(cap)` when the profile is at its ceiling (logged once per saturation).
    pub(crate) fn admit(&self, profile: &Arc<str>) -> Result<Slot, usize> {
        let room = {
            let mut map = self.per_profile.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(profile.clone()).or_default().clone()
        };
        let cap = room.cap.load(Ordering::Acquire);
        let before = room.open.fetch_add(1, Ordering::AcqRel);
        if before < cap {
            room.saturated.store(false, Ordering::Relaxed);
            return Ok(Slot(room));
        }
        room.open.fetch_sub(1, Ordering::AcqRel);
        if !room.saturated.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                gvm_profile = %profile,
                "profile {profile} holds {cap} connections open (its [limits] connections, or its share of gvmd's descriptors); refusing new ones until some close"
            );
        }
        Err(cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_is_per_profile_and_frees_with_the_connection() {
        let limits = ConnLimits::new(100_000);
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        limits.set_caps(&[(a.clone(), 1024), (b.clone(), 1024)]);
        let held: Vec<_> = (0..1024).map(|_| limits.admit(&a).unwrap()).collect();
        assert_eq!(limits.admit(&a).unwrap_err(), 1024, "past the ceiling");
        assert!(limits.admit(&b).is_ok(), "another profile is not affected");
        drop(held);
        assert!(limits.admit(&a).is_ok(), "closing connections frees room");
    }

    #[test]
    fn profiles_share_the_descriptor_budget() {
        // 16,384 descriptors (gvmd.service), 50 profiles that each ask for 1,024.
        let limits = ConnLimits::new(16_384);
        let names: Vec<(Arc<str>, usize)> = (0..50).map(|i| (Arc::from(format!("p{i}")), 1024)).collect();
        limits.set_caps(&names);
        let cap = limits.cap("p0");
        assert_eq!(cap, (16_384 - FD_RESERVE - 50 * FD_PER_PROFILE) / 2 / 50);
        assert!(50 * (2 * cap + FD_PER_PROFILE) + FD_RESERVE <= 16_384, "all at their ceiling still fit");
        // One profile alone gets what it asked for.
        limits.set_caps(&names[..1]);
        assert_eq!(limits.cap("p0"), 1024);
        assert_eq!(limits.cap("p1"), UNLOADED_CAP, "a removed profile only gets its 403s");
        let p1: Arc<str> = Arc::from("p1");
        let held: Vec<_> = (0..UNLOADED_CAP).map(|_| limits.admit(&p1).unwrap()).collect();
        assert!(limits.admit(&p1).is_err());
        drop(held);
    }
}
