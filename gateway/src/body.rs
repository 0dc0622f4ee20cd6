//! Bodies that stream through untouched while counting bytes, and the completion
//! record written when an exchange ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::budget::Bucket;

/// `(status, bytes_up, bytes_down, duration_ms, usage)`.
pub(crate) type OnDone = Box<dyn FnOnce(u16, u64, u64, u64, Option<serde_json::Value>) + Send + Sync>;

/// Called once when the exchange is over (both bodies dropped).
pub(crate) struct Completion {
    pub start: Instant,
    pub up: AtomicU64,
    pub down: AtomicU64,
    pub status: AtomicU16,
    /// What the response's LLM usage cost (`usage.rs`), for the completion record.
    pub usage: Mutex<Option<serde_json::Value>>,
    pub on_done: Option<OnDone>,
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(f) = self.on_done.take() {
            f(
                self.status.load(Ordering::Relaxed),
                self.up.load(Ordering::Relaxed),
                self.down.load(Ordering::Relaxed),
                self.start.elapsed().as_millis() as u64,
                self.usage.lock().unwrap_or_else(|e| e.into_inner()).take(),
            );
        }
    }
}

/// A body passed through frame by frame (no buffering), counting data bytes.
pub(crate) struct Counting<B> {
    inner: B,
    done: Option<Arc<Completion>>,
    upstream: bool,
    throttle: Option<Throttle>,
}

/// Slows a body down to the profile's `[limits] request_body_per_sec`: after a frame
/// that puts the profile's bucket into debt, the next frame is read only once the debt
/// is paid. The agent's TCP window fills and its upload waits; nothing is refused.
struct Throttle {
    bucket: Arc<Mutex<Bucket>>,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> Counting<B> {
    pub(crate) fn new(inner: B, done: Option<Arc<Completion>>, upstream: bool) -> Self {
        Self { inner, done, upstream, throttle: None }
    }

    /// Shares `bucket` (bytes per second) with the profile's other request bodies.
    pub(crate) fn throttled(mut self, bucket: Arc<Mutex<Bucket>>) -> Self {
        self.throttle = Some(Throttle { bucket, wait: None });
        self
    }
}

impl<B> Body for Counting<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(wait) = self.throttle.as_mut().and_then(|t| t.wait.as_mut()) {
            std::task::ready!(wait.as_mut().poll(cx));
            if let Some(t) = self.throttle.as_mut() {
                t.wait = None;
            }
        }
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(d), Some(done)) = (f.data_ref(), &self.done) {
                    let c = if self.upstream { &done.up } else { &done.down };
                    c.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                if let (Some(d), Some(t)) = (f.data_ref(), self.throttle.as_mut()) {
                    let debt = t.bucket.lock().unwrap_or_else(|e| e.into_inner()).spend(d.len() as f64, Instant::now());
                    if !debt.is_zero() {
                        t.wait = Some(Box::pin(tokio::time::sleep(debt)));
                    }
                }
            }
            Poll::Ready(None) => {
                // Finished: let the completion record go as soon as both sides are done.
                self.done = None;
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body's exfiltration scan, shared by the body and the exchange that sent
/// it: the body records the hit and fails the upstream request; whoever sees the hit
/// first after that answers and records it (the exchange, when the response has not
/// started: a 403; otherwise `late`, in the background).
pub(crate) struct LeakWatch {
    state: Mutex<LeakState>,
}

#[derive(Default)]
struct LeakState {
    hit: Option<crate::exfil::Hit>,
    /// The response was handed to the agent: a later hit is recorded by `late`.
    responded: bool,
    late: Option<Box<dyn FnOnce(crate::exfil::Hit) + Send>>,
}

impl LeakWatch {
    pub(crate) fn new(late: Box<dyn FnOnce(crate::exfil::Hit) + Send>) -> Self {
        LeakWatch { state: Mutex::new(LeakState { late: Some(late), ..LeakState::default() }) }
    }

    fn found(&self, hit: crate::exfil::Hit) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.hit.is_some() {
            return;
        }
        s.hit = Some(hit);
        if s.responded {
            if let Some(late) = s.late.take() {
                drop(s);
                late(hit);
            }
        }
    }

    /// Called once the upstream answered (or failed): the hit so far, if any; from
    /// now on a hit is recorded by `late`.
    pub(crate) fn respond(&self) -> Option<crate::exfil::Hit> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.responded = true;
        s.hit
    }
}

/// Why a scanned body stopped: it carried a value that must not leave.
#[derive(Debug)]
pub(crate) struct Leaked;

impl std::fmt::Display for Leaked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body carries a value that must not leave (exfiltration scan)")
    }
}

impl std::error::Error for Leaked {}

/// A request body scanned frame by frame before each frame is passed on: the frame
/// that completes a match is never forwarded; the body fails instead, which makes
/// hyper abort the upstream request.
pub(crate) struct Scanned<B> {
    inner: B,
    scan: Option<(crate::exfil::Stream, Arc<LeakWatch>)>,
    /// Placeholders swapped after the scan (`body_swap.rs`).
    swap: Option<crate::body_swap::BodySwap>,
    /// A frame that waits for the swap's last held bytes to go first.
    next: Option<Frame<Bytes>>,
    ended: bool,
}

impl<B> Scanned<B> {
    pub(crate) fn new(inner: B, scan: Option<(crate::exfil::Stream, Arc<LeakWatch>)>) -> Self {
        Scanned { inner, scan, swap: None, next: None, ended: false }
    }

    /// Swaps placeholders in what passed the scan.
    pub(crate) fn swapping(mut self, swap: Option<crate::body_swap::BodySwap>) -> Self {
        self.swap = swap;
        self
    }

    fn held(&self) -> bool {
        self.swap.as_ref().is_some_and(crate::body_swap::BodySwap::holds) || self.next.is_some()
    }
}

impl<B> Body for Scanned<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(f) = self.next.take() {
            return Poll::Ready(Some(Ok(f)));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        let r = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match r {
            Some(Ok(f)) => {
                if let (Some(d), Some((stream, watch))) = (f.data_ref(), self.scan.as_mut()) {
                    if let Some(hit) = stream.feed(d) {
                        watch.found(hit);
                        return Poll::Ready(Some(Err(Box::new(Leaked))));
                    }
                }
                let Some(swap) = self.swap.as_mut() else { return Poll::Ready(Some(Ok(f))) };
                match f.into_data() {
                    Ok(d) => Poll::Ready(Some(Ok(Frame::data(swap.push(&d))))),
                    Err(trailers) => {
                        let held = swap.finish();
                        self.next = Some(trailers);
                        Poll::Ready(Some(Ok(Frame::data(held))))
                    }
                }
            }
            Some(Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
            None => {
                self.ended = true;
                match self.swap.as_mut().map(crate::body_swap::BodySwap::finish) {
                    Some(held) if !held.is_empty() => Poll::Ready(Some(Ok(Frame::data(held)))),
                    _ => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        (self.ended || self.inner.is_end_stream()) && !self.held()
    }

    fn size_hint(&self) -> SizeHint {
        if self.swap.is_some() {
            return SizeHint::default(); // swapped: another length, sent chunked
        }
        self.inner.size_hint()
    }
}
