//! Held requests: a request whose rule says `hold` waits, connection open, until a
//! human approves or denies it, or its deadline passes (then it is denied — a held
//! request is never forwarded on timeout).
//!
//! The waiting itself is here (a oneshot per request); the *record* of what waits is
//! the [`HoldSink`] gvmd gives the gateway (its SQLite approval queue), which also
//! hands out the id. The gateway does not depend on gvmd: without a sink (tests, the
//! benches) ids come from a counter in memory. A sink that cannot record the hold
//! refuses the request: nothing waits for a human who cannot be told about it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::oneshot;

/// A request waiting for a human, as the gateway keeps it in memory.
pub use gvm_api::HeldRequest;

/// What the gateway knows of a request it is about to hold.
#[derive(Debug, Clone)]
pub struct HeldInfo {
    pub profile: String,
    pub method: String,
    /// `scheme://host[:port]/path?query` as the gateway understood it.
    pub url: String,
    /// The rule that held it (`None`: the profile's default).
    pub rule: Option<String>,
    /// The request body is not read before the decision (it streams to the upstream
    /// once approved): what is known is its `Content-Type` and `Content-Length`,
    /// e.g. `1.2 kB application/json`. `None` for tunnels and bodiless requests.
    pub body: Option<String>,
    pub since: time::OffsetDateTime,
    pub expires_at: time::OffsetDateTime,
}

/// How a hold ended, as the gateway saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldEnd {
    Approved,
    Denied,
    /// Its deadline passed.
    TimedOut,
    /// The client went away (or the request was dropped) before an answer.
    Abandoned,
}

/// Where held requests are recorded durably (gvmd's approval queue).
pub trait HoldSink: Send + Sync + 'static {
    /// Records a new held request; returns its id (never reused). An error refuses
    /// the request. Called from a blocking thread: it may do disk I/O.
    fn held(&self, info: &HeldInfo) -> Result<u64, String>;
    /// The request stopped waiting. Called for every hold, also after an answer the
    /// sink already knows of (then it should change nothing). Blocking thread.
    fn ended(&self, id: u64, end: HoldEnd);
}

/// Why a hold could not be resolved.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HoldError {
    #[error("no held request has id {id}; it may have been answered or timed out (see `gvmctl approvals`)")]
    NotFound { id: u64 },
}

/// How a hold ended, for the request path.
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

type Map = Arc<Mutex<HashMap<u64, Entry>>>;

#[derive(Clone, Default)]
pub(crate) struct Holds {
    next: Arc<AtomicU64>,
    map: Map,
    sink: Arc<RwLock<Option<Arc<dyn HoldSink>>>>,
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Removes the entry when the waiting request goes away (answer, timeout, client hung
/// up) and tells the sink how it ended.
struct Guard {
    id: u64,
    map: Map,
    sink: Option<Arc<dyn HoldSink>>,
    end: HoldEnd,
}
impl Drop for Guard {
    fn drop(&mut self) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
        if let Some(sink) = self.sink.take() {
            let (id, end) = (self.id, self.end);
            match tokio::runtime::Handle::try_current() {
                Ok(h) => drop(h.spawn_blocking(move || sink.ended(id, end))),
                Err(_) => sink.ended(id, end),
            }
        }
    }
}

impl Holds {
    pub(crate) fn set_sink(&self, sink: Arc<dyn HoldSink>) {
        *self.sink.write().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }

    /// Registers a held request; returns its id and a future that ends with the
    /// outcome, or why it could not be recorded (then the request must be refused).
    pub(crate) async fn hold(
        &self,
        info: HeldInfo,
        timeout: Duration,
    ) -> Result<(u64, impl std::future::Future<Output = HoldOutcome> + Send + 'static), String> {
        let sink = self.sink.read().unwrap_or_else(|e| e.into_inner()).clone();
        let id = match &sink {
            Some(s) => {
                let (s, i) = (s.clone(), info.clone());
                tokio::task::spawn_blocking(move || s.held(&i))
                    .await
                    .map_err(|e| format!("the approval queue failed: {e}"))??
            }
            None => self.next.fetch_add(1, Ordering::Relaxed) + 1,
        };
        let wire = HeldRequest {
            id,
            profile: info.profile,
            method: info.method,
            url: info.url,
            rule: info.rule,
            since: rfc3339(info.since),
            expires_at: rfc3339(info.expires_at),
        };
        let (tx, rx) = oneshot::channel();
        self.map.lock().unwrap_or_else(|e| e.into_inner()).insert(id, Entry { info: wire, tx });
        let mut guard = Guard { id, map: self.map.clone(), sink, end: HoldEnd::Abandoned };
        let fut = async move {
            let outcome = match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(true)) => HoldOutcome::Approved,
                Ok(Ok(false)) | Ok(Err(_)) => HoldOutcome::Denied,
                Err(_) => HoldOutcome::TimedOut,
            };
            guard.end = match outcome {
                HoldOutcome::Approved => HoldEnd::Approved,
                HoldOutcome::Denied => HoldEnd::Denied,
                HoldOutcome::TimedOut => HoldEnd::TimedOut,
            };
            drop(guard);
            outcome
        };
        Ok((id, fut))
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
