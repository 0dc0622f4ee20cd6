//! File approvals: what approving or denying a pending file change does.

use crate::api::ApiFailure;
use crate::state::Daemon;

/// Applies (approve) or discards (deny) the file change behind `approval`; `always`
/// makes the choice stick for the path. Returns what was done, for the answer.
pub async fn answer_file(
    _daemon: &Daemon,
    _approval: &gvm_api::Approval,
    _approve: bool,
    _always: bool,
    _by: &str,
) -> Result<String, ApiFailure> {
    Err(ApiFailure::new(axum::http::StatusCode::NOT_IMPLEMENTED, "file approvals are not wired yet", None))
}
