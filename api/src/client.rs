//! The socket client (feature `client`): one HTTP/1.1 request per connection over
//! gvmd's Unix socket. Used by gvmctl and by the launcher (`gvmd launch`).
//!
//! Deliberately tiny and blocking: gvmctl sends one request and prints one answer, so a
//! plain `UnixStream` and a few lines of HTTP are all it needs (and it starts fast).
//! Every failure becomes a [`ClientError`] whose message says what to do.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "gvmd is not running (nothing answers on {0}) — start it with `systemctl start gvmd` or `gvmd --foreground`"
    )]
    NotRunning(PathBuf),
    #[error("permission denied on {0} — gvmctl must run as root or as a member of the group that owns that socket (gvm-admin unless gvmd.toml's [control] admin_group says otherwise: `sudo usermod -aG gvm-admin $USER`, then log in again)")]
    PermissionDenied(PathBuf),
    #[error("cannot talk to gvmd on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("gvmd closed {0} without answering — did it stop or crash? `journalctl -u gvmd` says why; what it was doing is finished or undone when it starts again")]
    Closed(PathBuf),
    #[error("gvmd answered something that is not HTTP ({0}) — is {1} really gvmd's socket?")]
    Protocol(String, PathBuf),
    #[error("{error}{}", hint.as_ref().map(|h| format!(" — {h}")).unwrap_or_default())]
    Api { status: u16, error: String, hint: Option<String> },
    #[error("gvmd's answer does not match this gvmctl ({0}) — are gvmd and gvmctl the same version?")]
    Decode(serde_json::Error),
}

/// Where gvmd listens.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: PathBuf) -> Client {
        Client { socket }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn get<T: DeserializeOwned>(&self, path_and_query: &str) -> Result<T, ClientError> {
        self.call("GET", path_and_query, None)
    }

    pub fn post<T: DeserializeOwned>(&self, path: &str, body: Option<&serde_json::Value>) -> Result<T, ClientError> {
        self.call("POST", path, body)
    }

    fn connect(&self) -> Result<UnixStream, ClientError> {
        UnixStream::connect(&self.socket).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning(self.socket.clone())
            }
            std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(self.socket.clone()),
            _ => ClientError::Io { path: self.socket.clone(), source: e },
        })
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        target: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, ClientError> {
        let io = |source| ClientError::Io { path: self.socket.clone(), source };
        let mut stream = self.connect()?;
        stream.set_read_timeout(Some(Duration::from_secs(300))).map_err(io)?;
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: gvmd\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
            payload.len()
        );
        stream.write_all(request.as_bytes()).map_err(io)?;

        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        if reader.read_line(&mut status_line).map_err(io)? == 0 {
            return Err(ClientError::Closed(self.socket.clone()));
        }
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .filter(|_| status_line.starts_with("HTTP/1."))
            .ok_or_else(|| ClientError::Protocol(status_line.trim().to_string(), self.socket.clone()))?;
        let mut length = None;
        let mut chunked = false;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).map_err(io)? == 0 {
                break;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse::<usize>().ok(),
                    "transfer-encoding" => chunked = value.trim().eq_ignore_ascii_case("chunked"),
                    _ => {}
                }
            }
        }
        let body = if chunked {
            read_chunked(&mut reader).map_err(io)?
        } else if let Some(n) = length {
            let mut buf = vec![0; n];
            reader.read_exact(&mut buf).map_err(io)?;
            buf
        } else {
            let mut buf = Vec::new();
            reader.read_to_end(&mut buf).map_err(io)?;
            buf
        };

        if !(200..300).contains(&status) {
            return Err(match serde_json::from_slice::<crate::ApiError>(&body) {
                Ok(e) => ClientError::Api { status, error: e.error, hint: e.hint },
                Err(_) => ClientError::Api {
                    status,
                    error: format!("gvmd answered HTTP {status}: {}", String::from_utf8_lossy(&body).trim()),
                    hint: None,
                },
            });
        }
        serde_json::from_slice(&body).map_err(ClientError::Decode)
    }
}

fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut size_line = String::new();
        reader.read_line(&mut size_line)?;
        let size_text = size_line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            return Ok(out);
        }
        let start = out.len();
        out.resize(start + size, 0);
        reader.read_exact(&mut out[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
    }
}
