//! A tcp-mode connection: routed once, to the backend active when it was accepted, and copied
//! both ways until either side closes, the proxy stops or its slot's drain time is over.
//! Started by the accept loop (`super`).

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use super::stats::{GuardOwner, OpenGuard};

pub(super) async fn tcp_connection(mut client: TcpStream, ctx: &Ctx, cancel: CancellationToken) {
    let Some(backend) = *ctx.backend.borrow() else {
        return;
    };
    let _open = OpenGuard::new(GuardOwner::Stats(ctx.stats.clone()), backend.slot);
    let cut = ctx.stats.cut_token(backend.slot).child_token();
    let mut upstream = match TcpStream::connect(backend.addr).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(service = %ctx.service, backend = %backend.addr, error = %e, "proxy cannot reach the backend");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    tokio::select! {
        // The copy first: it is what wakes this task; the tokens are checked after it.
        biased;
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = cut.cancelled() => {}
        _ = cancel.cancelled() => {}
    }
}
