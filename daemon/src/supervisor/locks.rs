//! One lock per profile, so that preparing (or tearing down) profile P never waits for
//! another profile's useradd, netns or nft: only two preparations of the *same* profile
//! wait for each other. The map of locks is behind a plain mutex taken for a moment;
//! an entry goes away when its last holder and waiter are gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type Entry = Arc<tokio::sync::Mutex<()>>;

/// Per-name async locks.
#[derive(Debug, Default)]
pub struct ProfileLocks {
    map: Arc<Mutex<HashMap<String, Entry>>>,
}

/// Held while one profile is prepared or torn down; releases it when dropped.
#[derive(Debug)]
pub struct ProfileGuard {
    map: Arc<Mutex<HashMap<String, Entry>>>,
    name: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl ProfileLocks {
    /// Waits until no one else holds `name`'s lock, then holds it. Other names are
    /// never waited for.
    pub async fn lock(&self, name: &str) -> ProfileGuard {
        let entry = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(name.to_string()).or_default().clone()
        };
        let guard = entry.lock_owned().await;
        ProfileGuard { map: self.map.clone(), name: name.to_string(), guard: Some(guard) }
    }

    /// How many names have a lock entry (held or waited for): for tests.
    pub fn entries(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for ProfileGuard {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // Released under the map's lock, so no one can clone the entry in between.
        self.guard = None;
        if map.get(&self.name).is_some_and(|e| Arc::strong_count(e) == 1) {
            map.remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    /// Profile A's preparation is stuck in a slow step (it waits for a signal that only
    /// comes after B finished): B is prepared meanwhile. Under one lock for all
    /// profiles this test would never end, so it is bounded by a deadline.
    #[tokio::test]
    async fn a_slow_profile_does_not_hold_up_another() {
        let locks = Arc::new(ProfileLocks::default());
        let (a_inside_tx, a_inside) = oneshot::channel::<()>();
        let (release_a, a_released) = oneshot::channel::<()>();
        let order = Arc::new(Mutex::new(Vec::new()));
        let a = tokio::spawn({
            let (locks, order) = (locks.clone(), order.clone());
            async move {
                let _g = locks.lock("alpha").await;
                order.lock().unwrap().push("alpha begins");
                a_inside_tx.send(()).unwrap();
                a_released.await.unwrap(); // the slow step: useradd, netns, nft
                order.lock().unwrap().push("alpha ends");
            }
        });
        a_inside.await.unwrap();
        let b = tokio::spawn({
            let (locks, order) = (locks.clone(), order.clone());
            async move {
                let _g = locks.lock("beta").await;
                order.lock().unwrap().push("beta prepared");
            }
        });
        tokio::time::timeout(std::time::Duration::from_secs(60), b)
            .await
            .expect("beta waited for alpha's preparation")
            .unwrap();
        release_a.send(()).unwrap();
        a.await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["alpha begins", "beta prepared", "alpha ends"]);
        assert_eq!(locks.entries(), 0, "the entries go with their last holder");
    }

    /// Two preparations of the same profile take turns: the second begins only after
    /// the first ended (checked on a single-threaded runtime: the waiter was polled and
    /// stayed blocked).
    #[tokio::test(flavor = "current_thread")]
    async fn the_same_profile_is_prepared_one_at_a_time() {
        let locks = Arc::new(ProfileLocks::default());
        let first = locks.lock("alpha").await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let second = tokio::spawn({
            let (locks, order) = (locks.clone(), order.clone());
            async move {
                let _g = locks.lock("alpha").await;
                order.lock().unwrap().push("second");
            }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!second.is_finished(), "the second preparation did not wait");
        assert_eq!(locks.entries(), 1);
        order.lock().unwrap().push("first");
        drop(first);
        second.await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["first", "second"]);
        assert_eq!(locks.entries(), 0);
    }
}
