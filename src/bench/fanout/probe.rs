//! One measured subscriber: a grove subscription (the code under test)
//! recording when each durable event is delivered, paired with a *tap* — a
//! bare SUB socket on the same PUB endpoint, following `primary.json` with
//! the same 5 ms poll — recording which events actually came over the wire.
//! An event the subscription delivered but the tap never saw was lost on
//! the wire and repaired from the store.

use crate::paths::Workspace;
use crate::primary_record::PrimaryWatch;
use crate::subscriber::{Health, Subscription};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zeromq::{Socket, SocketRecv};

/// How often a probe looks for the events it still waits for.
const PROBE_POLL: Duration = Duration::from_millis(5);
/// How long a subscription may take to deliver up to the target seq.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a tap may lag behind its subscription before it is stopped.
const TAP_GRACE: Duration = Duration::from_millis(200);

/// What one subscriber saw.
pub struct Record {
    /// Durable events delivered by the subscription, in delivery order.
    pub delivered: Vec<(u64, Instant)>,
    /// Seqs that arrived on the tap's SUB socket.
    pub tapped: HashSet<u64>,
}

struct Probe {
    health: Arc<Health>,
    tap_ready: Arc<AtomicBool>,
    delivered: JoinHandle<Vec<(u64, Instant)>>,
    tapped: JoinHandle<Vec<u64>>,
}

/// `k` probes and the targets that stop them (`u64::MAX`: keep going).
pub struct Probes {
    probes: Vec<Probe>,
    until: watch::Sender<u64>,
    tap_until: watch::Sender<u64>,
}

impl Probes {
    pub fn start(ws: &Workspace, first_seq: u64, k: usize) -> Probes {
        let (until, until_rx) = watch::channel(u64::MAX);
        let (tap_until, tap_rx) = watch::channel(u64::MAX);
        let probes = (0..k)
            .map(|_| {
                let sub = crate::subscriber::subscribe(ws, first_seq);
                let tap_ready = Arc::new(AtomicBool::new(false));
                Probe {
                    health: sub.health.clone(),
                    tap_ready: tap_ready.clone(),
                    delivered: tokio::spawn(record_deliveries(sub, until_rx.clone())),
                    tapped: tokio::spawn(tap(ws.clone(), tap_rx.clone(), tap_ready)),
                }
            })
            .collect();
        Probes {
            probes,
            until,
            tap_until,
        }
    }

    /// Waits until every subscription and tap receives from the PUB.
    pub async fn wait_ready(&self) -> Result<(), String> {
        let until = Instant::now() + Duration::from_secs(10);
        while !self
            .probes
            .iter()
            .all(|p| p.health.heartbeat_age_ms().is_some() && p.tap_ready.load(Ordering::Relaxed))
        {
            if Instant::now() > until {
                return Err("subscribers did not connect within 10 s".into());
            }
            tokio::time::sleep(PROBE_POLL).await;
        }
        Ok(())
    }

    /// Lets every probe run until `target` (or its deadline) and returns
    /// what each saw. A subscription that misses the deadline is stopped:
    /// its missing events show in the record, they do not fail the bench.
    pub async fn collect(self, target: u64) -> Result<Vec<Record>, String> {
        let _ = self.until.send(target);
        let _ = self.tap_until.send(target);
        let deadline = tokio::time::Instant::now() + DELIVERY_DEADLINE;
        let mut delivered = Vec::with_capacity(self.probes.len());
        let mut taps = Vec::with_capacity(self.probes.len());
        for p in self.probes {
            delivered.push(finish(p.delivered, deadline, &self.until).await?);
            taps.push(p.tapped);
        }
        let grace = tokio::time::Instant::now() + TAP_GRACE;
        let mut out = Vec::with_capacity(delivered.len());
        for (d, t) in delivered.into_iter().zip(taps) {
            let tapped = finish(t, grace, &self.tap_until).await?;
            out.push(Record {
                delivered: d,
                tapped: tapped.into_iter().collect(),
            });
        }
        Ok(out)
    }
}

/// Awaits a recorder until `deadline`, then tells it to stop (target 0).
async fn finish<T>(
    mut h: JoinHandle<T>,
    deadline: tokio::time::Instant,
    until: &watch::Sender<u64>,
) -> Result<T, String> {
    if let Ok(r) = tokio::time::timeout_at(deadline, &mut h).await {
        return r.map_err(|e| e.to_string());
    }
    let _ = until.send(0);
    h.await.map_err(|e| e.to_string())
}

fn reached(last: Option<u64>, until: &watch::Receiver<u64>) -> bool {
    last.unwrap_or(0) >= *until.borrow()
}

async fn record_deliveries(
    mut sub: Subscription,
    mut until: watch::Receiver<u64>,
) -> Vec<(u64, Instant)> {
    let mut got: Vec<(u64, Instant)> = Vec::new();
    loop {
        if reached(got.last().map(|g| g.0), &until) {
            return got;
        }
        tokio::select! {
            event = sub.events.recv() => match event {
                Some(e) if e.seq > 0 => got.push((e.seq, Instant::now())),
                Some(_) => {}
                None => return got,
            },
            changed = until.changed() => if changed.is_err() {
                return got;
            },
        }
    }
}

/// Just the `seq` of an event: the tap decodes nothing else.
#[derive(serde::Deserialize)]
struct SeqOnly {
    seq: u64,
}

async fn tap(ws: Workspace, mut until: watch::Receiver<u64>, ready: Arc<AtomicBool>) -> Vec<u64> {
    let mut watch = PrimaryWatch::new(&ws);
    let mut seen = Vec::new();
    while !reached(seen.last().copied(), &until) {
        watch.poll();
        let endpoint = watch.current().map(|r| r.pub_endpoint.clone());
        let Some(mut sub) = connect(endpoint).await else {
            tokio::time::sleep(PROBE_POLL).await;
            continue;
        };
        let mut tick = tokio::time::interval(PROBE_POLL);
        while !reached(seen.last().copied(), &until) {
            tokio::select! {
                msg = sub.recv() => {
                    let Ok(msg) = msg else { break };
                    ready.store(true, Ordering::Relaxed);
                    let seq = msg.get(1).and_then(|p| rmp_serde::from_slice::<SeqOnly>(p).ok());
                    if let Some(SeqOnly { seq }) = seq.filter(|s| s.seq > 0) {
                        seen.push(seq);
                    }
                }
                _ = tick.tick() => if watch.poll() {
                    break; // a new primary: resubscribe, as the subscriber does
                },
                changed = until.changed() => if changed.is_err() {
                    return seen;
                },
            }
        }
    }
    seen
}

async fn connect(endpoint: Option<String>) -> Option<zeromq::SubSocket> {
    let endpoint = endpoint?;
    let mut sub = zeromq::SubSocket::new();
    let connected = tokio::time::timeout(Duration::from_secs(1), sub.connect(&endpoint)).await;
    if !matches!(connected, Ok(Ok(()))) || sub.subscribe("").await.is_err() {
        return None;
    }
    Some(sub)
}
