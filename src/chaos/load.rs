//! What the clients do and saw: writers that resend each request with its
//! own id until acknowledged, and the acknowledgements they collected.

use super::*;

use crate::client::{Client, ClientError};
use crate::paths::Workspace;
use crate::protocol::{ErrorCode, Method, NewTask, ReplyBody};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// What the clients saw

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A pending task behind the blocker: a pure write, no process.
    Write,
    /// A real short shell task with a known exit code.
    Shell,
    /// The write the kill loop sends right after killing a primary.
    Probe,
    /// The never-finishing task every write depends on.
    Blocker,
}

/// One acknowledged write: the client holds this reply, so the store must
/// hold the task.
#[derive(Debug, Clone)]
pub(super) struct Ack {
    pub(super) request_id: String,
    pub(super) task_id: String,
    pub(super) kind: Kind,
    pub(super) expect_exit: Option<i32>,
}

/// State shared by the client threads and the kill loop.
#[derive(Default)]
pub(super) struct Shared {
    pub(super) stop: AtomicBool,
    pub(super) acks: Mutex<Vec<Ack>>,
    /// Writes refused for good or never acknowledged, with why.
    pub(super) failures: Mutex<Vec<String>>,
    /// Writes the crash guard refused after at least two primaries ended
    /// while they were in flight: what it is built to do, since a `kill -9`
    /// from outside cannot be told from a crash (see docs/design.md,
    /// Crash guard); listed, not failed.
    pub(super) guarded: Mutex<Vec<String>>,
}

impl Shared {
    pub(super) fn ack(&self, ack: Ack) {
        self.acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ack);
    }
    pub(super) fn acked(&self) -> usize {
        self.acks.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
    pub(super) fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub(super) fn fail(&self, what: String) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(what);
    }
    pub(super) fn guard(&self, what: String) {
        self.guarded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(what);
    }
    pub(super) fn guarded(&self) -> Vec<String> {
        self.guarded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    pub(super) fn failures(&self) -> Vec<String> {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Sends `method` under `id` until a primary answers, resending the SAME id
/// across failovers and client errors: the ledger makes that safe, and it is
/// exactly what grove promises clients. A refusal recorded in the ledger is
/// final (resending gets it again); `unavailable` and `internal` are not.
pub(super) async fn call_until_acked(
    client: &mut Client,
    id: &str,
    method: Method,
    give_up: Duration,
) -> Result<ReplyBody, String> {
    let until = Instant::now() + give_up;
    let first_epoch = client.epoch();
    loop {
        let err = match client.call_with_id(id, method.clone()).await {
            Ok(body) => return Ok(body),
            Err(ClientError::Refused(e)) if crate::store::crash_guard::is_poison_refusal(&e) => {
                // Not connected before: no proof of how many ended.
                let ended = match first_epoch {
                    0 => 0,
                    first => client.epoch().saturating_sub(first),
                };
                return Err(format!("{POISONED}{ended} primaries ended meanwhile): {e}"));
            }
            Err(ClientError::Refused(e))
                if !matches!(e.code, ErrorCode::Unavailable | ErrorCode::Internal) =>
            {
                return Err(format!("refused: {e}"));
            }
            Err(e) => e,
        };
        if Instant::now() >= until {
            return Err(format!(
                "not acknowledged within {} s (last error: {err})",
                give_up.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How [`call_until_acked`] starts a crash guard's refusal, followed by the
/// number of primaries that ended while the write was in flight.
pub(super) const POISONED: &str = "refused by the crash guard (";

/// A write tagged with its own request id, so that the store can be asked
/// how many times each request was applied.
pub(super) fn tagged(prompt: String, id: &str, dependencies: Vec<String>) -> NewTask {
    NewTask {
        prompt,
        tags: vec!["chaos".into(), id.to_string()],
        dependencies,
        ..Default::default()
    }
}

/// Creates a task under `id` (retried with that id) and records the ack.
pub(super) async fn create(
    client: &mut Client,
    shared: &Shared,
    id: &str,
    task: NewTask,
    kind: Kind,
    expect_exit: Option<i32>,
) -> Result<String, String> {
    match call_until_acked(client, id, Method::TaskCreate(task), WRITE_GIVE_UP).await? {
        ReplyBody::Task(t) => {
            shared.ack(Ack {
                request_id: id.to_string(),
                task_id: t.id.clone(),
                kind,
                expect_exit,
            });
            Ok(t.id)
        }
        other => Err(format!("unexpected reply to task.create: {other:?}")),
    }
}

/// What one client thread writes.
#[derive(Clone)]
pub(super) enum Load {
    Pending { blocker: String },
    Shell,
}

/// One client thread: its own runtime, its own client, writing until told
/// to stop — and finishing (acknowledging) the write in flight when told.
pub(super) fn start_client(
    ws: &Workspace,
    config: &crate::config::Config,
    name: String,
    load: Load,
    seed: u64,
    shared: Arc<Shared>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let client = Client::new(ws, config, &format!("chaos-{name}"));
    std::thread::Builder::new()
        .name(format!("chaos-{name}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => return shared.fail(format!("{name}: no runtime: {e}")),
            };
            runtime.block_on(client_loop(client, name, load, Rng(seed), shared));
        })
}

/// Writes one task after another, each under a fresh request id; pending
/// writes go fast, shell tasks slower so that a few run at any time.
pub(super) async fn client_loop(
    mut client: Client,
    name: String,
    load: Load,
    mut rng: Rng,
    shared: Arc<Shared>,
) {
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        n += 1;
        let id = format!("chaos-{name}-{n}");
        let (task, kind, expect, pace) = match &load {
            Load::Pending { blocker } => (
                tagged(format!("chaos write {id}"), &id, vec![blocker.clone()]),
                Kind::Write,
                None,
                WRITE_PACE,
            ),
            Load::Shell => {
                let code = rng.below(3) as i32;
                let script = format!("echo {RUN_MARK}; sleep 0.2; exit {code}");
                (
                    tagged(script, &id, vec![]),
                    Kind::Shell,
                    Some(code),
                    SHELL_PACE,
                )
            }
        };
        match create(&mut client, &shared, &id, task, kind, expect).await {
            Err(e) if guarded_after_kills(&e) => shared.guard(format!("{id}: {e}")),
            Err(e) => shared.fail(format!("{id}: {e}")),
            Ok(_) => {}
        }
        tokio::time::sleep(pace).await;
    }
}

/// Whether `e` is the crash guard's refusal of a write that was in flight
/// while at least two primaries ended (it counts one crash per primary
/// that died with the write in its batch, and refuses at two).
fn guarded_after_kills(e: &str) -> bool {
    e.strip_prefix(POISONED)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|ended| ended >= 2)
}

/// Waits for the client threads; a thread still busy after the deadline is
/// reported (it cannot be killed, and the process exits anyway).
pub(super) async fn join_clients(handles: Vec<std::thread::JoinHandle<()>>, shared: &Shared) {
    let until = Instant::now() + WRITE_GIVE_UP + DEADLINE;
    for h in handles {
        while !h.is_finished() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !h.is_finished() {
            let name = h.thread().name().unwrap_or("?").to_string();
            shared.fail(format!(
                "client thread {name} did not finish its last write"
            ));
        } else if h.join().is_err() {
            shared.fail("a client thread panicked".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_guard_refusal_after_two_ended_primaries_is_excused() {
        let refusal = |ended: u64| format!("{POISONED}{ended} primaries ended meanwhile): x");
        assert!(guarded_after_kills(&refusal(2)));
        assert!(guarded_after_kills(&refusal(5)));
        assert!(!guarded_after_kills(&refusal(1)), "one kill proves nothing");
        assert!(!guarded_after_kills(&refusal(0)));
        assert!(!guarded_after_kills("refused: invalid params"));
        assert!(!guarded_after_kills(
            "not acknowledged within 30 s (last error: x)"
        ));
    }
}
