//! The board's connections, served with bounds.
//! See docs/design.md, Web board. `axum::serve` keeps every accepted connection open for as long
//! as its peer likes, even one that never sends a byte: another local user
//! could open connections until the primary ran out of file descriptors,
//! and with them its RPC socket, its store readers and every task start.
//! Here at most [`MAX_CONNECTIONS`] are open at once (the rest wait in the
//! kernel's backlog, costing us nothing), and a connection that has not
//! sent a whole request head within [`HEADER_TIMEOUT`] (at its start, or
//! idle between requests) is closed. A stream of events, once answered,
//! is not affected: its request was read long ago.

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Connections open at once: a few browser tabs need a handful each (one
/// event stream, a few reads).
pub const MAX_CONNECTIONS: usize = 64;

/// How long a connection may take to send a request head, and stay idle
/// between requests.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to pause after `accept` failed (out of descriptors, say), so
/// that a persistent failure does not spin the event loop.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until aborted; aborting it closes every
/// connection too (they live in its `JoinSet`), so a primary that hands
/// over stops serving the board at once.
pub async fn serve(listener: TcpListener, app: axum::Router) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut open = JoinSet::new();
    let mut accept_failures = 0u64;
    loop {
        // Finished connections leave the set as they end, so it holds at
        // most `MAX_CONNECTIONS` entries.
        while open.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                accept_failures += 1;
                if accept_failures.is_power_of_two() {
                    tracing::warn!(
                        "web board: accepting a connection failed ({accept_failures} times so far): {e}"
                    );
                }
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        open.spawn(async move {
            let _slot = slot;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!("web board: a connection ended: {e}");
            }
        });
    }
}
