//! Upstream connections: TCP (TCP_NODELAY) to the one address the SSRF check passed,
//! TLS verified against the system roots plus the configured extra roots, HTTP/1.1,
//! and a small keep-alive pool keyed by profile, scheme, host, port and address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use crate::body::{Counting, Scanned};
use crate::GatewayError;

pub(crate) type UpBody = Scanned<Counting<crate::mcp::ReqBody>>;
pub(crate) type Sender = SendRequest<UpBody>;

/// System CA bundle read for upstream verification.
pub(crate) const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
const IDLE_PER_KEY: usize = 32;
/// Idle upstream connections one profile keeps, all hosts together: a wildcard rule
/// over many hosts must not keep gvmd's descriptors open without bound.
const IDLE_PER_PROFILE: usize = 64;

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(crate) struct PoolKey {
    pub profile: Arc<str>,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub addr: SocketAddr,
}

pub(crate) struct Upstreams {
    tls: tokio_rustls::TlsConnector,
    idle: Mutex<HashMap<PoolKey, Vec<Sender>>>,
    /// How `agent.<name>` is reached (gvmd's sockets inside the callee's netns).
    dialer: std::sync::RwLock<Option<Arc<dyn crate::AgentDialer>>>,
}

pub(crate) fn client_config(extra_roots: &[impl AsRef<Path>]) -> Result<rustls::ClientConfig, GatewayError> {
    let mut roots = rustls::RootCertStore::empty();
    if Path::new(SYSTEM_ROOTS).exists() {
        if let Ok(it) = CertificateDer::pem_file_iter(SYSTEM_ROOTS) {
            for c in it.flatten() {
                let _ = roots.add(c);
            }
        }
    }
    for p in extra_roots {
        let p = p.as_ref();
        let certs: Vec<_> = CertificateDer::pem_file_iter(p)
            .map_err(|e| GatewayError::Roots { path: p.to_path_buf(), reason: e.to_string() })?
            .collect::<Result<_, _>>()
            .map_err(|e| GatewayError::Roots { path: p.to_path_buf(), reason: e.to_string() })?;
        if certs.is_empty() {
            return Err(GatewayError::Roots { path: p.to_path_buf(), reason: "no PEM certificate in it".into() });
        }
        for c in certs {
            roots.add(c).map_err(|e| GatewayError::Roots { path: p.to_path_buf(), reason: e.to_string() })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| GatewayError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

impl Upstreams {
    pub(crate) fn new(cfg: rustls::ClientConfig) -> Self {
        Self {
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            idle: Mutex::new(HashMap::new()),
            dialer: std::sync::RwLock::new(None),
        }
    }

    pub(crate) fn set_dialer(&self, dialer: Arc<dyn crate::AgentDialer>) {
        *self.dialer.write().unwrap_or_else(|e| e.into_inner()) = Some(dialer);
    }

    /// A connection to `port` inside agent `callee`'s netns (never a real address).
    async fn dial_agent(&self, callee: &str, port: u16) -> Result<TcpStream, String> {
        let dialer = self.dialer.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(dialer) = dialer else {
            return Err(format!("this gateway has no way to reach agent `{callee}` (calls between agents need gvmd)"));
        };
        let name = callee.to_string();
        let std = tokio::task::spawn_blocking(move || dialer.dial(&name, port))
            .await
            .map_err(|e| format!("reaching agent `{callee}`: {e}"))??;
        std.set_nonblocking(true).map_err(|e| e.to_string())?;
        TcpStream::from_std(std).map_err(|e| e.to_string())
    }

    /// A pooled connection ready for a request, if any. Connections still busy with
    /// an earlier response stay in the pool; closed ones are dropped.
    pub(crate) fn checkout(&self, key: &PoolKey) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(key)?;
        list.retain(|s| !s.is_closed());
        let found = list.iter().rposition(SendRequest::is_ready).map(|i| list.swap_remove(i));
        if list.is_empty() {
            idle.remove(key);
        }
        found
    }

    /// Puts `s` back in the pool at once (no task): it is handed out again by
    /// [`Upstreams::checkout`] once its current exchange is finished.
    pub(crate) fn checkin(&self, key: PoolKey, s: Sender) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let of_profile: usize = idle.iter().filter(|(k, _)| k.profile == key.profile).map(|(_, l)| l.len()).sum();
        let list = idle.entry(key).or_default();
        if list.len() < IDLE_PER_KEY && of_profile < IDLE_PER_PROFILE {
            list.push(s);
        }
    }

    /// Forgets the idle connections of a profile.
    pub(crate) fn forget(&self, profile: &str) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| &*k.profile != profile);
    }

    /// A new connection to `key.addr`, TLS-verified for `key.host` when `key.tls`.
    pub(crate) async fn connect(&self, key: &PoolKey) -> Result<Sender, String> {
        let agent = crate::agents::agent_host(&key.host);
        let tcp = match agent {
            Some(callee) => self.dial_agent(callee, key.port).await?,
            None => tokio::time::timeout(std::time::Duration::from_secs(10), TcpStream::connect(key.addr))
                .await
                .map_err(|_| format!("connecting to {} timed out", key.addr))?
                .map_err(|e| format!("connecting to {}: {e}", key.addr))?,
        };
        let _ = tcp.set_nodelay(true);
        let builder = {
            let mut b = http1::Builder::new();
            b.max_buf_size(256 * 1024);
            b
        };
        if key.tls && agent.is_none() {
            let name = ServerName::try_from(key.host.clone())
                .map_err(|e| format!("`{}` is not a TLS server name: {e}", key.host))?;
            let tls =
                self.tls.connect(name, tcp).await.map_err(|e| format!("TLS to {} ({}): {e}", key.host, key.addr))?;
            let (s, conn) =
                builder.handshake(TokioIo::new(tls)).await.map_err(|e| format!("HTTP/1.1 to {}: {e}", key.host))?;
            tokio::spawn(conn.with_upgrades());
            Ok(s)
        } else {
            let (s, conn) =
                builder.handshake(TokioIo::new(tcp)).await.map_err(|e| format!("HTTP/1.1 to {}: {e}", key.host))?;
            tokio::spawn(conn.with_upgrades());
            Ok(s)
        }
    }

    /// A TCP connection for a tunnel (no HTTP).
    pub(crate) async fn connect_raw(addr: SocketAddr) -> Result<TcpStream, String> {
        let tcp = tokio::time::timeout(std::time::Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }
}
