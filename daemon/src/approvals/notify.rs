//! Telling a human that something waits: a journald NOTICE for every new item (with
//! the exact `gvmctl approve ID` command and `GVM_PROFILE=`, `GVM_APPROVAL_ID=`), and,
//! when `[notify] webhook` is set in gvmd.toml, a JSON POST per item.
//!
//! The POST body suits ntfy's JSON publishing (`topic`, `title`, `message`) and
//! Matrix hookshot's generic webhooks (`text`), and carries structured fields (`id`,
//! `profile`, `kind`, `what`, `approve`, `deny`, `expires_at`) for anything else.
//!
//! Must never block the request path: notices go into a bounded queue (full → the
//! notice is counted as dropped; the journald line is still written) drained by one
//! task that retries with exponential backoff. HTTPS is verified against the same
//! roots as the gateway's upstream connections; plain `http://` is accepted for
//! loopback addresses only (a local relay, the tests), never across a network.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gvm_api::{Approval, NotifyStatus};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

/// Notices waiting for delivery at most.
pub const QUEUE: usize = 256;
/// Tries per notice, and the pause before the second (doubling after).
pub const TRIES: u32 = 5;
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Time allowed for one try (connect, TLS, request, response head).
pub const TRY_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed webhook address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    pub tls: bool,
    /// Without brackets for IPv6.
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
    /// `host[:port]` as the Host header carries it.
    pub authority: String,
}

impl WebhookUrl {
    /// Accepts `https://...`, and `http://` to loopback only.
    pub fn parse(url: &str) -> Result<WebhookUrl, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err("the webhook must be an https:// URL".into());
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.is_empty() || authority.contains('@') {
            return Err("the webhook URL needs a host (and no user:password@; put credentials in `headers`)".into());
        }
        let path = if path.is_empty() {
            "/".to_string()
        } else if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        let default = if tls { 443 } else { 80 };
        let (host, port) = if let Some(b) = authority.strip_prefix('[') {
            let (h, after) = b.split_once(']').ok_or("unclosed [ in the webhook's host")?;
            match after.strip_prefix(':') {
                Some(p) => (h.to_string(), p.parse().map_err(|_| format!("bad port {p:?}"))?),
                None if after.is_empty() => (h.to_string(), default),
                None => return Err(format!("unexpected {after:?} after the address")),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| format!("bad port {p:?}"))?),
                None => (authority.to_string(), default),
            }
        };
        if !tls && !is_loopback(&host) {
            return Err(format!(
                "plain http:// is accepted for loopback addresses only (got {host}): the notice names what an agent wants to do; use https://"
            ));
        }
        Ok(WebhookUrl { tls, host, port, path, authority: authority.to_string() })
    }

    /// The URL without its query (which may carry a token), for status and logs.
    pub fn shown(&self) -> String {
        let path = self.path.split('?').next().unwrap_or("/");
        format!("{}://{}{}", if self.tls { "https" } else { "http" }, self.authority, path)
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What one POST says about `a`.
pub fn notice_body(a: &Approval, topic: &str) -> serde_json::Value {
    let what = a.what();
    let title = format!("gvm: {} {} waits for approval ({})", a.kind, a.id, a.profile);
    let approve = format!("gvmctl approve {}", a.id);
    let deny = format!("gvmctl deny {}", a.id);
    let message = format!("{what}\nApprove: {approve}\nDeny: {deny}");
    serde_json::json!({
        "topic": topic,
        "title": title,
        "message": message,
        "text": format!("{title}\n{message}"),
        "id": a.id,
        "profile": a.profile,
        "kind": a.kind,
        "what": what,
        "approve": approve,
        "deny": deny,
        "expires_at": a.expires_at,
    })
}

/// What one POST says about a budget that crossed 80 % (`b` as [`Notices::budget`]
/// queues it).
pub fn budget_body(b: &serde_json::Value, topic: &str) -> serde_json::Value {
    let s = |k: &str| b[k].as_str().unwrap_or_default().to_string();
    let title = format!("gvm: {} spent 80 % of a budget", s("profile"));
    let message = format!(
        "{}: {} of {} {} per {} spent; resets {}",
        s("budget"),
        b["spent"],
        b["limit"],
        s("of"),
        s("per"),
        s("resets_at")
    );
    serde_json::json!({
        "topic": topic,
        "title": title,
        "message": message,
        "text": format!("{title}\n{message}"),
        "kind": "budget",
        "profile": b["profile"],
        "budget": b["budget"],
        "of": b["of"],
        "spent": b["spent"],
        "limit": b["limit"],
        "resets_at": b["resets_at"],
    })
}

impl gvm_gateway::BudgetSink for Notices {
    fn budget_notice(&self, n: &gvm_gateway::BudgetNotice) {
        self.budget(n);
    }
}

struct Hook {
    url: WebhookUrl,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    topic: String,
    tls: Arc<rustls::ClientConfig>,
}

/// Writes the journald line for each new item and feeds the webhook, if any.
#[derive(Debug, Clone, Default)]
pub struct Notices {
    tx: Option<mpsc::Sender<serde_json::Value>>,
    status: Option<Arc<Mutex<NotifyStatus>>>,
}

impl Notices {
    /// Starts the delivery task when `[notify] webhook` is set (needs a runtime).
    pub fn start(cfg: &crate::config::NotifySection, tls: rustls::ClientConfig) -> Result<Notices, String> {
        let Some(raw) = &cfg.webhook else { return Ok(Notices::default()) };
        let url = WebhookUrl::parse(raw)?;
        let mut headers = Vec::new();
        for (k, v) in &cfg.headers {
            let name = http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("bad header name {k:?}"))?;
            let mut value = http::HeaderValue::from_str(v).map_err(|_| format!("bad value for header {k}"))?;
            value.set_sensitive(true);
            headers.push((name, value));
        }
        let status = Arc::new(Mutex::new(NotifyStatus { webhook: url.shown(), ..NotifyStatus::default() }));
        let (tx, rx) = mpsc::channel(QUEUE);
        let hook = Hook { url, headers, topic: cfg.topic.clone(), tls: Arc::new(tls) };
        tokio::spawn(deliver(hook, rx, status.clone()));
        Ok(Notices { tx: Some(tx), status: Some(status) })
    }

    /// A new item waits: tell journald, queue the webhook POST. Never blocks.
    pub fn announce(&self, a: &Approval) {
        tracing::info!(
            gvm_profile = %a.profile,
            gvm_approval_id = a.id,
            gvm_approval_kind = %a.kind,
            "approval {} waits: {} (profile {}) — approve with `gvmctl approve {}`, deny with `gvmctl deny {}`",
            a.id, a.what(), a.profile, a.id, a.id
        );
        let (Some(tx), Some(status)) = (&self.tx, &self.status) else { return };
        if tx.try_send(serde_json::json!({ "approval": a })).is_err() {
            status.lock().unwrap_or_else(|e| e.into_inner()).dropped += 1;
            tracing::warn!(gvm_approval_id = a.id, "approval webhook queue full: notice for {} dropped", a.id);
        }
    }

    /// A budget crossed 80 %: queue the webhook POST (the gateway wrote the journald
    /// NOTICE). Never blocks.
    pub fn budget(&self, n: &gvm_gateway::BudgetNotice) {
        let (Some(tx), Some(status)) = (&self.tx, &self.status) else { return };
        let item = serde_json::json!({ "budget": {
            "profile": n.profile, "budget": n.budget, "of": n.of, "spent": n.spent, "limit": n.limit,
            "per": n.per, "resets_at": n.resets_at,
        }});
        if tx.try_send(item).is_err() {
            status.lock().unwrap_or_else(|e| e.into_inner()).dropped += 1;
            tracing::warn!(gvm_profile = %n.profile, "notify webhook queue full: a budget notice was dropped");
        }
    }

    pub fn status(&self) -> Option<NotifyStatus> {
        self.status.as_ref().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

async fn deliver(hook: Hook, mut rx: mpsc::Receiver<serde_json::Value>, status: Arc<Mutex<NotifyStatus>>) {
    while let Some(item) = rx.recv().await {
        let (body, what) = if let Some(b) = item.get("budget") {
            (budget_body(b, &hook.topic), "a budget notice".to_string())
        } else {
            let Ok(a) = serde_json::from_value::<Approval>(item["approval"].clone()) else { continue };
            (notice_body(&a, &hook.topic), format!("approval {}", a.id))
        };
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let mut pause = FIRST_BACKOFF;
        for attempt in 1..=TRIES {
            let result = match tokio::time::timeout(TRY_TIMEOUT, post(&hook, &body)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {} s", TRY_TIMEOUT.as_secs())),
            };
            let now = crate::rfc3339(time::OffsetDateTime::now_utc());
            match result {
                Ok(()) => {
                    let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
                    s.sent += 1;
                    s.last_success_at = Some(now);
                    break;
                }
                Err(e) => {
                    let last = attempt == TRIES;
                    {
                        let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
                        s.last_error = Some(e.clone());
                        s.last_error_at = Some(now);
                        if last {
                            s.failures += 1;
                        }
                    }
                    if last {
                        tracing::warn!(
                            "notify webhook {}: the notice of {what} was not delivered after {TRIES} tries: {e}",
                            hook.url.shown(),
                        );
                    } else {
                        tracing::debug!("notify webhook try {attempt} for {what} failed: {e}");
                        tokio::time::sleep(pause).await;
                        pause *= 2;
                    }
                }
            }
        }
    }
}

async fn post(hook: &Hook, body: &[u8]) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect((hook.url.host.as_str(), hook.url.port))
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", hook.url.authority))?;
    let _ = tcp.set_nodelay(true);
    if hook.url.tls {
        let name = rustls::pki_types::ServerName::try_from(hook.url.host.clone())
            .map_err(|e| format!("bad TLS name {}: {e}", hook.url.host))?;
        let tls = tokio_rustls::TlsConnector::from(hook.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", hook.url.authority))?;
        send(TokioIo::new(tls), hook, body).await
    } else {
        send(TokioIo::new(tcp), hook, body).await
    }
}

async fn send<I>(io: I, hook: &Hook, body: &[u8]) -> Result<(), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(conn);
    let mut req = http::Request::post(hook.url.path.as_str())
        .header(http::header::HOST, hook.url.authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, concat!("gvmd/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| e.to_string())?;
    for (k, v) in &hook.headers {
        req.headers_mut().insert(k.clone(), v.clone());
    }
    let resp = sender.send_request(req).await.map_err(|e| format!("HTTP: {e}"))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("{} answered HTTP {}", hook.url.authority, resp.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls() {
        let u = WebhookUrl::parse("https://ntfy.example/?token=x").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port, u.path.as_str()), (true, "ntfy.example", 443, "/?token=x"));
        assert_eq!(u.shown(), "https://ntfy.example/");
        let u = WebhookUrl::parse("http://127.0.0.1:8099/hook").unwrap();
        assert_eq!((u.tls, u.port, u.authority.as_str()), (false, 8099, "127.0.0.1:8099"));
        assert!(WebhookUrl::parse("http://[::1]/x").is_ok());
        let e = WebhookUrl::parse("http://hooks.example/x").unwrap_err();
        assert!(e.contains("loopback addresses only"), "{e}");
        assert!(WebhookUrl::parse("ftp://x").is_err());
        assert!(WebhookUrl::parse("https://u:p@x/").is_err());
    }

    #[test]
    fn notice_names_the_commands() {
        let a = Approval {
            id: 17,
            profile: "invoices".into(),
            kind: "request".into(),
            method: Some("POST".into()),
            url: Some("https://api.example/v1/x".into()),
            body: Some("1.2 kB application/json".into()),
            command: "gvmctl approve 17".into(),
            ..Approval::default()
        };
        let b = notice_body(&a, "gvm");
        assert_eq!(b["approve"], "gvmctl approve 17");
        assert_eq!(b["deny"], "gvmctl deny 17");
        assert_eq!(b["topic"], "gvm");
        assert!(b["message"].as_str().unwrap().contains("POST https://api.example/v1/x (1.2 kB application/json)"));
        assert!(b["text"].as_str().unwrap().contains("gvmctl approve 17"));
    }

    #[test]
    fn a_budget_notice_says_what_was_spent_and_when_it_resets() {
        let b = serde_json::json!({
            "profile": "coder", "budget": "profile", "of": "money", "spent": 4.0, "limit": 5.0,
            "per": "day", "resets_at": "2026-12-08T00:00:00Z",
        });
        let body = budget_body(&b, "gvm");
        assert_eq!(body["title"], "gvm: coder spent 80 % of a budget");
        assert_eq!(body["message"], "profile: 4.0 of 5.0 money per day spent; resets 2026-12-08T00:00:00Z");
        assert_eq!((body["kind"].as_str(), body["topic"].as_str()), (Some("budget"), Some("gvm")));
    }
}
