//! Token buckets for `rate = "N/period"`, per profile and rule. The policy only says
//! which limit applies; counting is state, so it lives here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A bucket's key: the profile and the rule's index (`None`: the default).
type Key = (Arc<str>, Option<usize>);

#[derive(Default)]
pub(crate) struct RateLimiter {
    /// No string is built per request to find a bucket.
    buckets: Mutex<HashMap<Key, Bucket>>,
}

impl RateLimiter {
    /// Takes one token from the bucket `(profile, rule)` holding at most `burst` tokens,
    /// refilled at `burst` per `per`. `Err(wait)` when empty: retry after `wait`.
    pub(crate) fn take(
        &self,
        profile: &Arc<str>,
        rule: Option<usize>,
        burst: u32,
        per: Duration,
        now: Instant,
    ) -> Result<(), Duration> {
        let cap = f64::from(burst.max(1));
        let rate = cap / per.as_secs_f64().max(1e-6); // tokens per second
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = map.entry((profile.clone(), rule)).or_insert(Bucket { tokens: cap, last: now });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(cap);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }

    /// Forgets the buckets of a profile (removed or reloaded with other limits).
    pub(crate) fn forget(&self, profile: &str) {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).retain(|(p, _), _| &**p != profile);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills() {
        let r = RateLimiter::default();
        let t0 = Instant::now();
        let min = Duration::from_secs(60);
        let p: Arc<str> = "p".into();
        assert!(r.take(&p, Some(0), 2, min, t0).is_ok());
        assert!(r.take(&p, Some(0), 2, min, t0).is_ok());
        let wait = r.take(&p, Some(0), 2, min, t0).unwrap_err();
        assert!(wait > Duration::from_secs(29) && wait <= Duration::from_secs(30));
        assert!(r.take(&p, Some(1), 2, min, t0).is_ok());
        assert!(r.take(&p, None, 2, min, t0).is_ok());
        assert!(r.take(&p, Some(0), 2, min, t0 + Duration::from_secs(31)).is_ok());
        r.forget("p");
        assert!(r.take(&p, Some(0), 2, min, t0).is_ok());
    }
}
