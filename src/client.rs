//! The RPC client every non-primary uses to write: secondaries, front ends
//! and the CLI (DEALER → the primary's ROUTER; see docs/design.md, Following).
//!
//! It follows failovers on its own: when `primary.json` names a new primary
//! while a request is unanswered, it recreates its DEALER (the `zeromq`
//! crate's DEALER never reconnects by itself) and resends the request with
//! the **same id**, so the primary's ledger applies it exactly once.
//!
//! It never hangs: a primary that does not answer `ping` within
//! `probe_timeout` (or a write within `rpc_timeout`) is reported unresponsive
//! with what is known about its process.

use crate::config::Config;
use crate::paths::Workspace;
use crate::primary_record::{PrimaryRecord, PrimaryWatch};
use crate::protocol::{
    ErrorCode, MAX_FRAME_BYTES, Method, PROTOCOL_VERSION, Reply, ReplyBody, RequestRef, WireError,
    decode, encode,
};
use bytes::Bytes;
use std::time::{Duration, Instant};
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

/// While a failover is under way, how often a client re-checks whether one
/// is still expected (the new record itself wakes it at once).
const RECHECK: Duration = Duration::from_millis(20);
/// Where the kernel cannot tell us that a process ended (no pidfd), how
/// often its pid is checked while we wait on it.
const PID_POLL: Duration = Duration::from_millis(20);
/// Pause after a send failed before connecting again.
const SEND_RETRY: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The primary answered with an error.
    #[error("{0}")]
    Refused(WireError),
    /// No member of the grove is running (or none became primary in time).
    #[error("no grove primary is running for {workspace}{detail}")]
    NoPrimary { workspace: String, detail: String },
    /// The primary exists but does not answer.
    #[error("primary unresponsive: {0}")]
    Unresponsive(String),
    #[error("bus error: {0}")]
    Bus(String),
}

impl ClientError {
    /// True when grove itself is unreachable (CLI exit code 3).
    pub fn is_unavailable(&self) -> bool {
        match self {
            ClientError::Refused(e) => e.code == ErrorCode::Unavailable,
            _ => true,
        }
    }
}

struct Connection {
    dealer: zeromq::DealerSocket,
    /// Resolves when the primary's process ends.
    exit: crate::proc::ExitWatch,
    probed: bool,
}

/// A fresh request id for a write. Time-ordered (UUIDv7), so that the
/// ledger, whose key it is, grows at its right edge: a random key puts every
/// write's reply on its own B-tree page, and group commit then writes one
/// WAL page per write instead of sharing pages (see docs/design.md, Store).
/// Task ids stay random: users type their prefixes.
pub fn new_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub struct Client {
    ws: Workspace,
    rpc_timeout: Duration,
    probe_timeout: Duration,
    failover_wait: Duration,
    instance_id: String,
    watch: PrimaryWatch,
    conn: Option<Connection>,
    max_epoch_seen: u64,
}

impl Client {
    pub fn new(ws: &Workspace, config: &Config, instance_id: &str) -> Self {
        Client {
            ws: ws.clone(),
            rpc_timeout: config.rpc_timeout(),
            probe_timeout: config.probe_timeout(),
            failover_wait: config.failover_wait(),
            instance_id: instance_id.to_string(),
            watch: PrimaryWatch::new(ws),
            conn: None,
            max_epoch_seen: 0,
        }
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Epoch of the primary this client currently talks to (0 if none yet).
    pub fn epoch(&self) -> u64 {
        self.max_epoch_seen
    }

    /// Calls a method with a fresh request id ([`new_request_id`]).
    pub async fn call(&mut self, method: Method) -> Result<ReplyBody, ClientError> {
        self.call_with_id(&new_request_id(), method).await
    }

    /// Calls a method with the caller's request id: calling again with the
    /// same id after an error is safe, the write is applied at most once.
    pub async fn call_with_id(
        &mut self,
        id: &str,
        method: Method,
    ) -> Result<ReplyBody, ClientError> {
        let mut frame = self.frame(id, &method);
        check_size(&frame, &method)?;
        let started = Instant::now();
        let is_ping = matches!(method, Method::Ping {});
        loop {
            self.ensure_connected(started).await?;
            // Probe a fresh connection with a ping first, so that a hung
            // primary is reported after `probe_timeout`, not `rpc_timeout`.
            if !is_ping && !self.conn.as_ref().is_some_and(|c| c.probed) {
                let probe_id = uuid::Uuid::new_v4().to_string();
                let probe = self.frame(&probe_id, &Method::Ping {});
                match self.exchange(&probe_id, &probe, self.probe_timeout).await {
                    Outcome::Reply(_) => {
                        if let Some(c) = self.conn.as_mut() {
                            c.probed = true
                        }
                    }
                    Outcome::PrimaryChanged => continue,
                    // Nothing was sent but the ping.
                    Outcome::TimedOut => return Err(self.unresponsive(self.probe_timeout)),
                }
            }
            let timeout = if is_ping {
                self.probe_timeout
            } else {
                self.rpc_timeout
            };
            // Connecting may have raised the epoch the request must carry.
            if frame.epoch_seen != self.max_epoch_seen {
                frame = self.frame(id, &method);
            }
            match self.exchange(id, &frame, timeout).await {
                Outcome::Reply(r) => return r.into_result().map_err(ClientError::Refused),
                // Writes are safe to resend (the ledger dedupes them), pings
                // are harmless; a test hook must hit one primary only.
                #[cfg(feature = "test-hooks")]
                Outcome::PrimaryChanged if matches!(method, Method::DebugStall { .. }) => {
                    return Err(ClientError::Bus("the primary changed".into()));
                }
                Outcome::PrimaryChanged => continue,
                Outcome::TimedOut => return Err(unanswered(self.unresponsive(timeout), &method)),
            }
        }
    }

    /// The request encoded once, as it is sent (and resent) while the epoch
    /// it carries stays the one seen.
    fn frame(&self, id: &str, method: &Method) -> Frame {
        let request = RequestRef {
            v: PROTOCOL_VERSION,
            id,
            from: &self.instance_id,
            epoch_seen: self.max_epoch_seen,
            method,
        };
        Frame {
            epoch_seen: self.max_epoch_seen,
            bytes: Bytes::from(encode(&request)),
        }
    }

    /// Makes sure we hold a DEALER connected to the primary named by
    /// `primary.json`, waiting up to `failover_wait` for one to appear.
    async fn ensure_connected(&mut self, started: Instant) -> Result<(), ClientError> {
        let failover_deadline = started + self.failover_wait;
        loop {
            if self.watch.poll_if_told() {
                self.conn = None;
            }
            if self.conn.is_some() {
                return Ok(());
            }
            let step = match self.watch.current().cloned() {
                Some(rec) if rec.pid_alive() && rec.epoch >= self.max_epoch_seen => {
                    self.connect_to(&rec, failover_deadline).await
                }
                other => self.without_primary(other.as_ref(), failover_deadline),
            };
            match step {
                Step::Connected => return Ok(()),
                Step::Fail(e) => return Err(e),
                Step::StartOver => continue,
                Step::Wait => {}
            }
            // The next primary's record wakes us at once; meanwhile re-check
            // now and then whether one is still expected.
            let recheck = RECHECK.min(failover_deadline.saturating_duration_since(Instant::now()));
            tokio::select! {
                _ = self.watch.notified() => {}
                _ = tokio::time::sleep(recheck) => {}
            }
        }
    }

    /// One attempt to connect to the live primary `rec` names.
    async fn connect_to(&mut self, rec: &PrimaryRecord, failover_deadline: Instant) -> Step {
        let connected = self.connect(rec).await;
        if self.watch.current() != Some(rec) {
            return Step::StartOver; // replaced while connecting
        }
        match connected {
            Ok((dealer, exit)) => {
                self.max_epoch_seen = rec.epoch;
                self.conn = Some(Connection {
                    dealer,
                    exit,
                    probed: false,
                });
                Step::Connected
            }
            // The socket accepts but nobody completes the ZMTP handshake:
            // the process is alive but stuck (unless it was replaced).
            Err(ConnectError::TimedOut) if !self.watch.poll() => {
                Step::Fail(self.unresponsive(self.probe_timeout))
            }
            Err(ConnectError::Failed(e)) if Instant::now() >= failover_deadline => {
                Step::Fail(ClientError::Bus(format!(
                    "cannot connect to the primary at {}: {e}",
                    rec.rpc_endpoint
                )))
            }
            Err(_) => Step::Wait,
        }
    }

    /// No record, or its process is gone: a failover is under way (wait
    /// for it, up to the deadline), or no member runs at all.
    fn without_primary(&self, gone: Option<&PrimaryRecord>, failover_deadline: Instant) -> Step {
        if Instant::now() < failover_deadline && self.failover_expected() {
            return Step::Wait;
        }
        if self.someone_holds_lock() {
            return Step::Fail(ClientError::Unresponsive(format!(
                "a member holds the election lock but published no primary within {} ms",
                self.failover_wait.as_millis()
            )));
        }
        let detail = match gone {
            Some(r) => format!(
                " (primary.json names pid {} of epoch {}, which is gone)",
                r.pid, r.epoch
            ),
            None => String::new(),
        };
        Step::Fail(ClientError::NoPrimary {
            workspace: self.ws.root.display().to_string(),
            detail,
        })
    }

    fn someone_holds_lock(&self) -> bool {
        crate::election::is_held(&self.ws.lock_path()).unwrap_or(false)
    }

    /// Whether a primary should appear soon: someone holds the lock (and is
    /// promoting), or some registered member still runs (its lock waiter
    /// wakes the instant the old primary died).
    fn failover_expected(&self) -> bool {
        if self.someone_holds_lock() {
            return true;
        }
        crate::store::Reader::open(&self.ws.db_path())
            .and_then(|r| r.members())
            .map(|members| members.iter().any(|m| crate::proc::running(m.pid)))
            .unwrap_or(false)
    }

    /// Connects a DEALER, giving up early when the primary dies or is
    /// replaced meanwhile (a kill can land between our liveness check and
    /// the handshake; waiting out the timeout would slow every failover).
    async fn connect(
        &mut self,
        rec: &PrimaryRecord,
    ) -> Result<(zeromq::DealerSocket, crate::proc::ExitWatch), ConnectError> {
        let exit = crate::proc::ExitWatch::new(rec.pid, PID_POLL);
        let mut dealer = zeromq::DealerSocket::new();
        let result = {
            let connecting = dealer.connect(&rec.rpc_endpoint);
            tokio::pin!(connecting);
            let deadline = tokio::time::sleep(self.probe_timeout);
            tokio::pin!(deadline);
            let gone = || ConnectError::Failed("the primary went away".into());
            loop {
                tokio::select! {
                    r = &mut connecting => break r.map_err(|e| ConnectError::Failed(e.to_string())),
                    _ = &mut deadline => break Err(ConnectError::TimedOut),
                    _ = exit.exited() => break Err(gone()),
                    _ = self.watch.notified() => {
                        if self.watch.poll() {
                            break Err(gone());
                        }
                    }
                }
            }
        };
        result.map(|()| (dealer, exit))
    }

    /// Sends one request and waits for its reply, watching for a failover:
    /// the primary's exit, or a new `primary.json`, ends the wait at once.
    async fn exchange(&mut self, id: &str, frame: &Frame, timeout: Duration) -> Outcome {
        let Some(conn) = self.conn.as_mut() else {
            return Outcome::PrimaryChanged;
        };
        if conn
            .dealer
            .send(ZmqMessage::from(frame.bytes.clone()))
            .await
            .is_err()
        {
            // The peer went away: pause briefly so that a primary that
            // keeps refusing cannot spin us, then reconnect (or fail over).
            self.conn = None;
            tokio::time::sleep(SEND_RETRY).await;
            return Outcome::PrimaryChanged;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Some(Connection { dealer, exit, .. }) = self.conn.as_mut() else {
                return Outcome::PrimaryChanged;
            };
            tokio::select! {
                msg = dealer.recv() => {
                    let Ok(msg) = msg else {
                        self.conn = None;
                        return Outcome::PrimaryChanged;
                    };
                    let Some(payload) = msg.iter().last() else { continue };
                    let Ok(reply) = decode::<Reply>(payload) else {
                        tracing::warn!("dropping an unreadable reply");
                        continue;
                    };
                    if reply.id != id {
                        continue; // the late answer to an earlier attempt
                    }
                    if reply.epoch < self.max_epoch_seen {
                        tracing::warn!(epoch = reply.epoch, "ignoring a reply from an older epoch");
                        continue;
                    }
                    self.max_epoch_seen = reply.epoch;
                    return Outcome::Reply(Box::new(reply));
                }
                _ = exit.exited() => {
                    self.conn = None;
                    return Outcome::PrimaryChanged;
                }
                _ = self.watch.notified() => {
                    if self.watch.poll() {
                        self.conn = None;
                        return Outcome::PrimaryChanged;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return Outcome::TimedOut,
            }
        }
    }

    fn unresponsive(&self, waited: Duration) -> ClientError {
        let Some(rec) = self.watch.current() else {
            return ClientError::Unresponsive(format!("no reply within {} ms", waited.as_millis()));
        };
        let mut what = format!(
            "primary pid {} (epoch {}) did not answer within {} ms",
            rec.pid,
            rec.epoch,
            waited.as_millis()
        );
        if crate::proc::state(rec.pid) == Some('T') {
            what.push_str("; the process is stopped (SIGSTOP?)");
        }
        what.push_str(
            "; its watchdog restarts it if its loop is hung, then a secondary takes over",
        );
        ClientError::Unresponsive(what)
    }
}

/// What one look at `primary.json` leads to.
enum Step {
    Connected,
    Fail(ClientError),
    /// The record changed meanwhile: look again at once.
    StartOver,
    /// Wait for the record to change (or the next re-check).
    Wait,
}

enum ConnectError {
    TimedOut,
    Failed(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::TimedOut => f.write_str("connect timed out"),
            ConnectError::Failed(e) => f.write_str(e),
        }
    }
}

/// A request ready to send, and the epoch it carries.
struct Frame {
    epoch_seen: u64,
    bytes: Bytes,
}

/// Refuses, before anything is sent, a request the primary would refuse
/// as `too_large`: it is never applied, and saying so here names its size
/// and what to do. Measured as if it carried the largest epoch, so that
/// connecting to a newer primary cannot make it too large.
fn check_size(frame: &Frame, method: &Method) -> Result<(), ClientError> {
    let size = frame.bytes.len() - uint_len(frame.epoch_seen) + uint_len(u64::MAX);
    if size <= MAX_FRAME_BYTES {
        return Ok(());
    }
    Err(ClientError::Refused(WireError::new(
        ErrorCode::TooLarge,
        format!(
            "the {} request is {size} bytes, more than the {MAX_FRAME_BYTES} bytes (1 MiB) one request may carry; \
put large inputs (prompt text, environment values) in a file in the workspace and refer to it instead",
            method.name()
        ),
    )))
}

/// Bytes of an unsigned integer in MessagePack, as `encode` writes it (the
/// shortest form).
fn uint_len(v: u64) -> usize {
    match v {
        0..=0x7f => 1,
        0x80..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// A write that was sent but not answered may still be applied when its
/// primary recovers: said so, since the user's next step depends on it.
fn unanswered(e: ClientError, method: &Method) -> ClientError {
    match e {
        ClientError::Unresponsive(what)
            if !matches!(method.route(), crate::protocol::Route::Local(_)) =>
        {
            ClientError::Unresponsive(format!(
                "{what}; the {} was sent and may still be applied when it answers: check (grove list, grove show) before sending it again",
                method.name()
            ))
        }
        other => other,
    }
}

enum Outcome {
    Reply(Box<Reply>),
    PrimaryChanged,
    TimedOut,
}

/// Pings until some primary answers (a member may still be starting or a
/// failover under way), for at most `within`.
pub async fn wait_for_primary(
    client: &mut Client,
    within: Duration,
) -> Result<crate::protocol::PrimaryInfo, ClientError> {
    let until = Instant::now() + within;
    loop {
        match ping(client).await {
            Ok(info) => return Ok(info),
            Err(e) if Instant::now() > until => return Err(e),
            Err(_) => tokio::time::sleep(PRIMARY_RETRY).await,
        }
    }
}

/// Convenience for one-shot tools: the primary's view of itself.
pub async fn ping(client: &mut Client) -> Result<crate::protocol::PrimaryInfo, ClientError> {
    match client.call(Method::Ping {}).await? {
        ReplyBody::Pong(info) => Ok(info),
        other => Err(ClientError::Bus(format!(
            "unexpected reply to ping: {other:?}"
        ))),
    }
}

/// How soon `wait_for_primary` pings again: a member that is starting
/// answers within milliseconds of binding.
const PRIMARY_RETRY: Duration = Duration::from_millis(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unanswered_write_says_it_may_still_be_applied() {
        let hung = || ClientError::Unresponsive("primary pid 7 did not answer".into());
        let write = Method::TaskCancel { id: "t1".into() };
        let said = unanswered(hung(), &write).to_string();
        assert!(said.contains("did not answer"), "{said}");
        assert!(
            said.contains("task.cancel was sent and may still be applied"),
            "{said}"
        );
        // A ping changes nothing: nothing to apply.
        let said = unanswered(hung(), &Method::Ping {}).to_string();
        assert!(!said.contains("may still be applied"), "{said}");
        // Other errors pass through.
        let refused = ClientError::Bus("gone".into());
        assert!(!unanswered(refused, &write).to_string().contains("applied"));
    }

    /// A request is measured as it would be with the largest epoch, from
    /// the frame actually sent (whatever epoch it carries): on both sides
    /// of the bound.
    #[test]
    fn the_size_checked_is_the_size_with_the_largest_epoch() {
        let task = |n: usize| {
            Method::TaskCreate(crate::protocol::NewTask {
                prompt: "x".repeat(n),
                ..Default::default()
            })
        };
        let encoded = |method: &Method, epoch_seen: u64| {
            encode(&RequestRef {
                v: PROTOCOL_VERSION,
                id: "r1",
                from: "me",
                epoch_seen,
                method,
            })
        };
        // Past 65,535 bytes the prompt's length prefix no longer grows.
        let overhead = encoded(&task(70_000), u64::MAX).len() - 70_000;
        for epoch_seen in [0, 127, 128, 300, 70_000, 1 << 40] {
            for largest in [MAX_FRAME_BYTES - 1, MAX_FRAME_BYTES, MAX_FRAME_BYTES + 1] {
                let method = task(largest - overhead);
                assert_eq!(encoded(&method, u64::MAX).len(), largest);
                let frame = Frame {
                    epoch_seen,
                    bytes: Bytes::from(encoded(&method, epoch_seen)),
                };
                let checked = check_size(&frame, &method);
                assert_eq!(
                    checked.is_ok(),
                    largest <= MAX_FRAME_BYTES,
                    "{epoch_seen} {largest}"
                );
                if let Err(ClientError::Refused(e)) = checked {
                    assert!(e.message.contains(&format!("is {largest} bytes")), "{e:?}");
                }
            }
        }
    }
}
