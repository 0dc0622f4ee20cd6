//! Byte-level helpers: a stream with already-read bytes put back in front, sniffing
//! the first bytes of a connection (TLS ClientHello with its SNI, or HTTP), and
//! splicing.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// A stream whose first bytes were read already and are replayed before the rest.
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self { prefix, pos: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// What the first bytes of a client stream are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// A TLS ClientHello; the SNI host name if it carries one (raw, not normalised), and
    /// whether it offers Encrypted Client Hello (its SNI is then only the public name).
    Tls { sni: Option<String>, ech: bool },
    /// Looks like an HTTP/1 request line.
    Http,
    /// Something else (or nothing before the timeout: a server-speaks-first protocol).
    Other,
}

const MAX_HELLO: usize = 16 * 1024 + 5;

/// Reads the first bytes of `s` (returned, to be replayed) and classifies them.
/// `wait`: how long to wait for the client's first byte (`None`: forever).
/// Longest a client may take to send what the gateway needs to decide (a request head,
/// a whole ClientHello, a TLS handshake): a client that stalls is cut off, so stalled
/// connections cannot pile up in gvmd (ATTACKS class 17, slowloris).
pub(crate) const STALL_LIMIT: Duration = Duration::from_secs(30);

/// Sniffs within [`STALL_LIMIT`]; a client still silent or mid-record by then gets
/// `TimedOut`.
pub(crate) async fn sniff<S: AsyncRead + Unpin>(s: &mut S, wait: Option<Duration>) -> io::Result<(Sniffed, Vec<u8>)> {
    match tokio::time::timeout(STALL_LIMIT, sniff_within(s, wait)).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

async fn sniff_within<S: AsyncRead + Unpin>(s: &mut S, wait: Option<Duration>) -> io::Result<(Sniffed, Vec<u8>)> {
    let mut buf = Vec::with_capacity(2048);
    let first = async {
        let mut tmp = [0u8; 2048];
        let n = s.read(&mut tmp).await?;
        Ok::<_, io::Error>(tmp[..n].to_vec())
    };
    let got = match wait {
        Some(d) => match tokio::time::timeout(d, first).await {
            Ok(r) => r?,
            Err(_) => return Ok((Sniffed::Other, buf)),
        },
        None => first.await?,
    };
    if got.is_empty() {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&got);
    if buf[0] == 0x16 {
        // Read the whole first record (the ClientHello).
        loop {
            if buf.len() >= 5 {
                let len = usize::from(u16::from_be_bytes([buf[3], buf[4]])) + 5;
                if buf.len() >= len.min(MAX_HELLO) {
                    let hello = &buf[..len.min(buf.len())];
                    let sni = client_hello_sni(hello);
                    let ech = hello_extension(hello, EXT_ECH).is_some();
                    return Ok((Sniffed::Tls { sni, ech }, buf));
                }
            }
            let mut tmp = [0u8; 4096];
            let n = s.read(&mut tmp).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&tmp[..n]);
        }
    }
    // Any letters, so that a case variant of a method (`delete /x`) is answered with a
    // 400 that says why, not just closed as an unknown protocol.
    let token_len = buf.iter().take_while(|b| b.is_ascii_alphabetic() || **b == b'-').count();
    if token_len > 0 && token_len < buf.len() && buf[token_len] == b' ' {
        return Ok((Sniffed::Http, buf));
    }
    Ok((Sniffed::Other, buf))
}

/// The server_name of a TLS ClientHello record, if well-formed and present.
pub(crate) fn client_hello_sni(rec: &[u8]) -> Option<String> {
    let mut r = Reader { b: hello_extension(rec, 0)?, i: 0 };
    let _list = r.u16()?;
    if r.u8()? != 0 {
        return None;
    }
    let n = r.u16()? as usize;
    String::from_utf8(r.take(n)?.to_vec()).ok()
}

/// The `encrypted_client_hello` extension (RFC 9849).
const EXT_ECH: u16 = 0xfe0d;

/// The body of extension `ty` in a TLS ClientHello record, if well-formed and present.
fn hello_extension(rec: &[u8], ty: u16) -> Option<&[u8]> {
    let mut r = Reader { b: rec, i: 0 };
    if r.u8()? != 0x16 {
        return None;
    }
    r.skip(2)?; // legacy record version
    let _len = r.u16()?;
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    r.skip(3)?; // handshake length
    r.skip(2 + 32)?; // version, random
    let sid = r.u8()? as usize;
    r.skip(sid)?;
    let cs = r.u16()? as usize;
    r.skip(cs)?;
    let cm = r.u8()? as usize;
    r.skip(cm)?;
    let ext_total = r.u16()? as usize;
    let end = r.i + ext_total;
    while r.i + 4 <= end {
        let this = r.u16()?;
        let len = r.u16()? as usize;
        let body = r.take(len)?;
        if this == ty {
            return Some(body);
        }
    }
    None
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}
impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.i..self.i + n)?;
        self.i += n;
        Some(s)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|s| u16::from_be_bytes([s[0], s[1]]))
    }
}
