//! The one accept loop behind every TCP listener of the gateway (the explicit proxy,
//! the transparent listener, DNS over TCP): each connection takes a place in the
//! profile's `[limits] connections` or is closed at once (counted), then is served on
//! its own task by what the listener is for.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::pipeline::{ConnCtx, ConnKind};
use crate::transparent::OriginalDst;
use crate::Inner;

/// What a listener serves.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Door {
    /// The explicit proxy: absolute-form HTTP and CONNECT.
    Proxy,
    /// Connections nft redirected, with where their original destination comes from.
    Transparent(OriginalDst),
    /// DNS over TCP, allowed names answered with this address.
    DnsTcp(IpAddr),
}

impl Door {
    /// The listener's name in `limits_exceeded` events.
    fn name(self) -> &'static str {
        match self {
            Door::Proxy => "proxy",
            Door::Transparent(_) => "transparent",
            Door::DnsTcp(_) => "dns-tcp",
        }
    }
}

pub(crate) async fn serve(inner: Arc<Inner>, listener: TcpListener, profile: Arc<str>, door: Door) {
    loop {
        let Ok((tcp, _peer)) = listener.accept().await else {
            // Out of descriptors and the like: wait a little instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let Some(slot) = inner.admit_connection(&profile, door.name()) else { continue };
        let _ = tcp.set_nodelay(true);
        let slot = Arc::new(slot);
        let inner = inner.clone();
        let profile = profile.clone();
        tokio::spawn(async move {
            match door {
                Door::Proxy => {
                    let conn = Arc::new(ConnCtx { profile, kind: ConnKind::Proxy, _slot: slot });
                    inner.serve_http(tcp, conn).await;
                }
                Door::Transparent(dst) => crate::transparent::one(inner, tcp, profile, dst, slot).await,
                Door::DnsTcp(answer) => {
                    crate::dns::serve_tcp(inner, tcp, profile, answer).await;
                    drop(slot);
                }
            }
        });
    }
}
