//! The fanout baseline: a bare PUB in its own thread and runtime (the
//! primary is another process) sends `n` frames of the size of a grove
//! event, as fast as it can, to `k` bare SUBs on this runtime — the same
//! crate, the same ipc transport, the same thread as the measured
//! subscribers, with no store, no decoding and no repair.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

/// Per SUB: frames/s received, and frames never received.
pub struct RawRun {
    pub rates: Vec<f64>,
    pub lost: Vec<f64>,
}

/// A SUB's "subscribed" flag and the task counting what it receives.
type RawSub = (
    Arc<AtomicBool>,
    tokio::task::JoinHandle<(usize, Option<Instant>)>,
);

struct Publisher {
    go: std::sync::mpsc::Sender<()>,
    sent: oneshot::Receiver<()>,
    done: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

pub async fn run(k: usize, n: usize, payload_len: usize) -> Result<RawRun, String> {
    let n = n.max(1);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let endpoint = format!("ipc://{}", dir.path().join("pub.sock").display());
    let publisher = start_publisher(&endpoint, n, payload_len)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut subs = Vec::with_capacity(k);
    for _ in 0..k {
        let mut sub = zeromq::SubSocket::new();
        sub.connect(&endpoint).await.map_err(|e| e.to_string())?;
        sub.subscribe("").await.map_err(|e| e.to_string())?;
        let ready = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(receive(sub, n, ready.clone(), stop_rx.clone()));
        subs.push((ready, task));
    }
    let result = measure(&publisher.go, publisher.sent, &subs, &stop_tx).await;
    let _ = stop_tx.send(true);
    let _ = publisher.done.send(());
    let thread = publisher.thread;
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    let t0 = result?;
    let mut out = RawRun {
        rates: Vec::with_capacity(k),
        lost: Vec::with_capacity(k),
    };
    for (_, task) in subs {
        let (count, last) = task.await.map_err(|e| e.to_string())?;
        let secs = last.map_or(0.0, |l| l.duration_since(t0).as_secs_f64());
        out.rates
            .push(if secs > 0.0 { count as f64 / secs } else { 0.0 });
        out.lost.push(n.saturating_sub(count) as f64);
    }
    Ok(out)
}

/// Waits for every SUB to be subscribed, starts the burst, waits for it to
/// be received (or lost); returns the start instant.
async fn measure(
    go: &std::sync::mpsc::Sender<()>,
    sent: oneshot::Receiver<()>,
    subs: &[RawSub],
    stop: &watch::Sender<bool>,
) -> Result<Instant, String> {
    let until = Instant::now() + Duration::from_secs(10);
    while !subs.iter().all(|(r, _)| r.load(Ordering::Relaxed)) {
        if Instant::now() > until {
            return Err("raw SUBs did not connect within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let t0 = Instant::now();
    go.send(()).map_err(|_| "the raw publisher stopped")?;
    tokio::time::timeout(Duration::from_secs(60), sent)
        .await
        .map_err(|_| "the raw publisher did not finish in 60 s")?
        .map_err(|_| "the raw publisher stopped")?;
    let until = Instant::now() + Duration::from_secs(5);
    while !subs.iter().all(|(_, t)| t.is_finished()) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let _ = stop.send(true);
    Ok(t0)
}

fn start_publisher(endpoint: &str, n: usize, payload_len: usize) -> Result<Publisher, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel();
    let (sent_tx, sent_rx) = oneshot::channel();
    let (done_tx, done_rx) = oneshot::channel();
    let endpoint = endpoint.to_string();
    let thread = crate::bench::on_own_thread(async move {
        let mut publisher = zeromq::PubSocket::new();
        if publisher.bind(&endpoint).await.is_err() {
            return;
        }
        let _ = ready_tx.send(());
        // Until told to go, send warm-up frames: a SUB that got one is
        // subscribed (PUB drops everything before the subscription).
        loop {
            match go_rx.try_recv() {
                Ok(()) => break,
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    let _ = publisher.send(frame("w", 0, 8)).await;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
            }
        }
        for seq in 0..n {
            let _ = publisher.send(frame("d", seq as u64, payload_len)).await;
        }
        let _ = sent_tx.send(());
        // Keep the runtime, and so the queued sends, alive until the
        // bench has read everything.
        let _ = done_rx.await;
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| "the raw publisher did not start")?;
    Ok(Publisher {
        go: go_tx,
        sent: sent_rx,
        done: done_tx,
        thread,
    })
}

fn frame(topic: &str, seq: u64, len: usize) -> ZmqMessage {
    let mut payload = vec![0u8; len.max(8)];
    payload[..8].copy_from_slice(&seq.to_le_bytes());
    let mut msg = ZmqMessage::from(topic.to_string());
    msg.push_back(bytes::Bytes::from(payload));
    msg
}

/// Counts data frames until the last one or `stop`; returns the count and
/// when the last one arrived.
async fn receive(
    mut sub: zeromq::SubSocket,
    n: usize,
    ready: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) -> (usize, Option<Instant>) {
    let mut count = 0;
    let mut last = None;
    loop {
        tokio::select! {
            msg = sub.recv() => {
                let Ok(msg) = msg else { break };
                ready.store(true, Ordering::Relaxed);
                if msg.get(0).is_some_and(|t| t.as_ref() == b"d") {
                    count += 1;
                    last = Some(Instant::now());
                    let seq = msg.get(1).and_then(|p| p.get(..8)).and_then(|b| b.try_into().ok());
                    if seq.map(u64::from_le_bytes) == Some(n as u64 - 1) {
                        break;
                    }
                }
            }
            _ = stop.changed() => break,
        }
    }
    (count, last)
}
