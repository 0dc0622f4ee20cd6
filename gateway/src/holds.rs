//! Held requests: a request whose rule says `hold` waits, connection open, until a
//! human approves or denies it, or its deadline passes (then it is denied — a held
//! request is never forwarded on timeout).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

/// A request waiting for a human: the wire type of `GET /v1/holds`.
pub use gvm_api::HeldRequest;

/// Why a hold could not be resolved.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HoldError {
    #[error("no held request has id {id}; it may have been answered or timed out (see `gvmctl approvals`)")]
    NotFound { id: u64 },
}

/// How a hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HoldOutcome {
    Approved,
    Denied,
    TimedOut,
}

struct Entry {
    info: HeldRequest,
    tx: oneshot::Sender<bool>,
}

#[derive(Clone, Default)]
pub(crate) struct Holds {
    next: Arc<AtomicU64>,
    map: Arc<Mutex<HashMap<u64, Entry>>>,
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Removes the entry when the waiting request goes away (client hung up, timeout).
struct Guard {
    id: u64,
    map: Arc<Mutex<HashMap<u64, Entry>>>,
}
impl Drop for Guard {
    fn drop(&mut self) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

impl Holds {
    /// Registers a held request; returns its id and a future that ends with the outcome.
    pub(crate) fn hold(
        &self,
        profile: &str,
        method: &str,
        url: String,
        rule: Option<String>,
        timeout: Duration,
    ) -> (u64, impl std::future::Future<Output = HoldOutcome> + Send + 'static) {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let now = time::OffsetDateTime::now_utc();
        let info = HeldRequest {
            id,
            profile: profile.to_string(),
            method: method.to_string(),
            url,
            rule,
            since: rfc3339(now),
            expires_at: rfc3339(now + timeout),
        };
        let (tx, rx) = oneshot::channel();
        self.map.lock().unwrap_or_else(|e| e.into_inner()).insert(id, Entry { info, tx });
        let guard = Guard { id, map: self.map.clone() };
        let fut = async move {
            let _guard = guard;
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(true)) => HoldOutcome::Approved,
                Ok(Ok(false)) | Ok(Err(_)) => HoldOutcome::Denied,
                Err(_) => HoldOutcome::TimedOut,
            }
        };
        (id, fut)
    }

    pub(crate) fn list(&self) -> Vec<HeldRequest> {
        let mut v: Vec<HeldRequest> =
            self.map.lock().unwrap_or_else(|e| e.into_inner()).values().map(|e| e.info.clone()).collect();
        v.sort_by_key(|h| h.id);
        v
    }

    pub(crate) fn resolve(&self, id: u64, approve: bool) -> Result<(), HoldError> {
        let entry = self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(&id).ok_or(HoldError::NotFound { id })?;
        entry.tx.send(approve).map_err(|_| HoldError::NotFound { id })
    }
}
