//! A ceiling on the connections one profile holds open in gvmd at once (ATTACKS class
//! 17): every accepted connection costs gvmd a descriptor, and an agent that opens them
//! faster than they time out must not starve the other profiles or the control socket.
//! Past the ceiling a new connection is closed at once; the agent's earlier connections
//! are untouched.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections one profile may hold open through all its listeners together.
pub(crate) const MAX_CONNECTIONS_PER_PROFILE: usize = 1024;

/// One profile's room: the permits, and whether its saturation was already logged.
type Room = (Arc<Semaphore>, Arc<AtomicBool>);

#[derive(Debug, Default)]
pub(crate) struct ConnLimits {
    per_profile: Mutex<HashMap<Arc<str>, Room>>,
}

impl ConnLimits {
    /// A permit for one more connection of `profile`, held as long as the connection
    /// lives; `None` when the profile is at its ceiling (logged once per saturation).
    pub(crate) fn admit(&self, profile: &Arc<str>) -> Option<OwnedSemaphorePermit> {
        let (sem, saturated) = {
            let mut map = self.per_profile.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(profile.clone())
                .or_insert_with(|| (Arc::new(Semaphore::new(MAX_CONNECTIONS_PER_PROFILE)), Arc::default()))
                .clone()
        };
        match sem.try_acquire_owned() {
            Ok(permit) => {
                saturated.store(false, Ordering::Relaxed);
                Some(permit)
            }
            Err(_) => {
                if !saturated.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        gvm_profile = %profile,
                        "profile {profile} holds {MAX_CONNECTIONS_PER_PROFILE} connections open; refusing new ones until some close"
                    );
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_is_per_profile_and_frees_with_the_connection() {
        let limits = ConnLimits::default();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let held: Vec<_> = (0..MAX_CONNECTIONS_PER_PROFILE).map(|_| limits.admit(&a).unwrap()).collect();
        assert!(limits.admit(&a).is_none(), "past the ceiling");
        assert!(limits.admit(&b).is_some(), "another profile is not affected");
        drop(held);
        assert!(limits.admit(&a).is_some(), "closing connections frees room");
    }
}
