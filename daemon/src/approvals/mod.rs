//! Everything waiting for a human, in one durable queue: requests the gateway holds
//! and file changes waiting for review.
//!
//! * [`store`]: `<state-dir>/approvals.db`, ids never reused.
//! * [`notify`]: the journald NOTICE and the `[notify]` webhook for each new item.
//! * [`always`]: `gvmctl approve|deny ID --always` writes the narrowest rule.
//!
//! The gateway knows nothing of this module: it records holds through the
//! [`gvm_gateway::HoldSink`] that [`Approvals`] implements. Trusts: the gateway's
//! description of a request. Must never: let a request wait that is not recorded
//! (the sink's error refuses it), or answer an item twice.

pub mod always;
pub mod notify;
pub mod store;

use std::sync::Arc;

use gvm_api::Approval;
use gvm_gateway::{HeldInfo, HoldEnd, HoldSink};

pub use store::{FileItem, Outcome, Store, StoreError};

/// The queue and its messenger.
#[derive(Debug)]
pub struct Approvals {
    pub store: Store,
    pub notices: notify::Notices,
}

impl Approvals {
    pub fn new(store: Store, notices: notify::Notices) -> Arc<Approvals> {
        Arc::new(Approvals { store, notices })
    }

    /// The overlay scan's current change set for `profile`: new items are announced.
    pub fn sync_files(&self, profile: &str, items: &[FileItem]) -> Result<Vec<Approval>, StoreError> {
        let new = self.store.sync_files(profile, items)?;
        for a in &new {
            self.notices.announce(a);
        }
        Ok(new)
    }
}

impl HoldSink for Approvals {
    fn held(&self, info: &HeldInfo) -> Result<u64, String> {
        let a = self
            .store
            .insert_request(&store::NewRequest {
                profile: &info.profile,
                method: &info.method,
                url: &info.url,
                body: info.body.as_deref(),
                rule: info.rule.as_deref(),
                created_at: info.since,
                expires_at: info.expires_at,
            })
            .map_err(|e| {
                tracing::error!(gvm_profile = %info.profile, "a held request could not be recorded, refusing it: {e}");
                e.to_string()
            })?;
        self.notices.announce(&a);
        Ok(a.id)
    }

    fn ended(&self, id: u64, end: HoldEnd) {
        let (outcome, by) = match end {
            // The route that answered already wrote who and when.
            HoldEnd::Approved | HoldEnd::Denied => return,
            HoldEnd::TimedOut => (Outcome::Expired, "timeout"),
            HoldEnd::Abandoned => (Outcome::Expired, "client disconnected"),
        };
        if let Err(e) = self.store.end_if_pending(id, outcome, by) {
            tracing::error!(gvm_approval_id = id, "approval {id} could not be marked {}: {e}", outcome.as_str());
        }
    }
}
