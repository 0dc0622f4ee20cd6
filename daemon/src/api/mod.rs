//! The control API: HTTP/1.1 + JSON over the Unix socket `<runtime-dir>/gvmd.sock`.
//!
//! Who may talk: the kernel tells us the peer of every connection (SO_PEERCRED, taken at
//! connect time, so it cannot be spoofed by the client); root and members of `gvm-admin`
//! get the API, anyone else gets `403` with a message saying why and what to do, and an
//! audit event. The socket file is also 0660 root:gvm-admin, but that is the outer
//! fence, not the check. Routes and bodies are the wire contract of `gvm_api`.

pub(crate) mod explain;
mod review;
mod routes;
mod runs;
mod suggest;
mod versions;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{UnixListener, UnixStream};

use crate::state::Daemon;
use crate::sys::creds::{user_name, Peer};

/// An error answer: status plus the wire body.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub body: gvm_api::ApiError,
}

impl ApiFailure {
    pub fn new(status: StatusCode, error: impl Into<String>, hint: Option<&str>) -> Self {
        ApiFailure { status, body: gvm_api::ApiError { error: error.into(), hint: hint.map(str::to_owned) } }
    }
    pub fn internal(error: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string(), Some("see `journalctl -u gvmd` for details"))
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// How long a control client may take to send its first bytes, and then each request
/// head: gvmctl sends at once, so a connection that stays silent (or dribbles a head)
/// is closed instead of holding one of gvmd's descriptors for ever.
pub const HEAD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Accepts control connections until the task is dropped or aborted.
pub async fn serve(listener: UnixListener, daemon: Arc<Daemon>) {
    let router = routes::router(daemon.clone());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("control socket accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let daemon = daemon.clone();
        let router = router.clone();
        tokio::spawn(async move { handle(stream, daemon, router).await });
    }
}

/// Does the connection start with `gvm_api::RUN_MAGIC` (a `gvmctl run` session) rather
/// than HTTP? Peeks without consuming.
async fn is_run_session(stream: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let magic = gvm_api::RUN_MAGIC.as_bytes();
    let mut buf = [0u8; 16];
    loop {
        if stream.readable().await.is_err() {
            return false;
        }
        let peeked = stream.try_io(tokio::io::Interest::READABLE, || {
            nix::sys::socket::recv(stream.as_raw_fd(), &mut buf, nix::sys::socket::MsgFlags::MSG_PEEK)
                .map_err(std::io::Error::from)
        });
        match peeked {
            Ok(0) => return false,
            Ok(n) if n >= magic.len() || !magic.starts_with(&buf[..n]) => return buf[..n].starts_with(magic),
            // A prefix of the magic so far: wait for more. (A peeked message stays
            // readable, so yield briefly instead of spinning on readiness.)
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(1)).await,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return false,
        }
    }
}

async fn handle(stream: UnixStream, daemon: Arc<Daemon>, router: axum::Router) {
    let peer = match stream.peer_cred() {
        Ok(c) => Peer { uid: c.uid(), gid: c.gid(), pid: c.pid() },
        Err(e) => {
            tracing::warn!("cannot read the peer credentials of a control connection ({e}); closing it");
            return;
        }
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEAD_DEADLINE);
    if daemon.admin.admits(&peer) {
        let run = match tokio::time::timeout(HEAD_DEADLINE, is_run_session(&stream)).await {
            Ok(run) => run,
            Err(_) => {
                tracing::debug!(pid = ?peer.pid, "control connection sent nothing within {HEAD_DEADLINE:?}; closed");
                return;
            }
        };
        if run {
            crate::supervisor::run_session::session(stream, daemon, peer).await;
            return;
        }
        let io = TokioIo::new(stream);
        let svc = TowerToHyperService::new(router.layer(axum::Extension(peer)));
        if let Err(e) = builder.serve_connection(io, svc).await {
            tracing::debug!("control connection ended: {e}");
        }
        return;
    }

    let who = user_name(peer.uid);
    tracing::warn!(uid = peer.uid, pid = ?peer.pid, "refused control connection from {who}: not root and not in gvm-admin");
    daemon
        .record(gvm_audit::NewEvent {
            profile: None,
            kind: gvm_api::EventKind::ControlRefused.into(),
            decision: Some(gvm_api::Decision::Deny.into()),
            rule: None,
            details: serde_json::json!({ "uid": peer.uid, "gid": peer.gid, "pid": peer.pid, "user": who }),
        })
        .await;
    let refusal = ApiFailure::new(
        StatusCode::FORBIDDEN,
        format!(
            "user {who} (uid {}) may not control gvmd: only root and members of the {} group may",
            peer.uid, daemon.admin.name
        ),
        Some(&format!(
            "run gvmctl with sudo, or ask an administrator: `sudo usermod -aG {} {who}` (then log in again)",
            daemon.admin.name
        )),
    );
    let body = serde_json::to_vec(&refusal.body).unwrap_or_default();
    let io = TokioIo::new(stream);
    let svc = hyper::service::service_fn(move |_req| {
        let body = body.clone();
        async move {
            hyper::Response::builder()
                .status(StatusCode::FORBIDDEN)
                .header("content-type", "application/json")
                .header("connection", "close")
                .body(axum::body::Body::from(body))
        }
    });
    let _ = builder.keep_alive(false).serve_connection(io, svc).await;
}
