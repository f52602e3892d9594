//! What the conversation's handlers and the shim's watch share: where
//! updates go, the permission request waiting for a human, and the
//! steering of the session from any window — controls read from the store
//! (answers, follow-ups, modes, close), a pause that cancels the turn but
//! keeps the session, and the phase that says whether the timeout clock
//! runs (only during a turn that waits for nobody).

use super::fs::Confined;
use super::outbox::Outbox;
use super::transcript::Transcript;
use crate::config::PermissionPolicy;
use crate::protocol::{ControlKind, INTERRUPT_RUNNING};
use agent_client_protocol::v1::schema::{
    PermissionOption, PermissionOptionKind, RequestPermissionOutcome, RequestPermissionRequest,
    RequestPermissionResponse, SelectedPermissionOutcome,
};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;
use tokio::time::Instant;

/// What a resumed turn is asked when the resume gave no instructions.
pub const CONTINUE: &str = "Continue where you stopped.";

pub struct Session {
    pub outbox: std::sync::Arc<Outbox>,
    pub transcript: Mutex<Transcript>,
    pub fs: Confined,
    pub policy: PermissionPolicy,
    /// The session stays open after a turn (`spawn --session`).
    pub keep: bool,
    /// Each turn's end carries the conclusion block of its message (the
    /// task asked for one; a goal decides on it).
    pub conclude: bool,
    /// The permission requests that wait for a human: the one reported
    /// (pending), then those the agent asked meanwhile, in order.
    asks: Mutex<Asks>,
    pub controls: Controls,
    /// Follow-up prompts (`grove say`, a resume's instructions) for when
    /// the current turn ends.
    pub followups: Mutex<VecDeque<String>>,
    /// Modes to switch to (`grove mode`), in order.
    pub modes: Mutex<VecDeque<String>>,
    /// Woken when a mode was asked for.
    pub steer: Notify,
    /// Asks the running turn to end through `session/cancel` (a pause, a
    /// cancel, the timeout); a turn only obeys while `interrupting()`.
    pub interrupt: Notify,
    /// Woken between turns: a follow-up, a close, a resume.
    pub wake: Notify,
    /// Woken when the phase changed (the watch recomputes its clocks).
    pub changed: Notify,
    /// The task's row says paused: no turn runs until it is resumed.
    paused: AtomicBool,
    /// A turn is running (between its prompt and its stop reason).
    in_turn: AtomicBool,
    /// The running turn's prompt, which an interrupt may name.
    turn_text: Mutex<Option<String>>,
    /// The running turn is being cut short by an interrupt: the session
    /// goes on after it (see [`Session::interrupt_turn`]).
    interrupted: AtomicBool,
    /// The last turn's end was reported (the session then waited).
    pub turn_end_sent: AtomicBool,
    /// A turn was cut short by a pause: the resume continues it.
    resume_pending: AtomicBool,
    /// The session ends after the current turn (close, cancel, idle timeout).
    closing: AtomicBool,
    /// Since when a kept session has waited for a follow-up.
    idle_since: Mutex<Option<Instant>>,
}

/// Where the task's steering controls are read from, and the seq of the
/// last one read (each is applied once).
pub struct Controls {
    pub db: PathBuf,
    pub task_id: String,
    pub run_id: String,
    pub last: Mutex<u64>,
}

impl Controls {
    /// Whether the task awaits its children (`task.await`): its session
    /// stays open after the turn, to be resumed with their results, even
    /// when it does not keep it otherwise. Unreadable counts as no.
    fn awaiting(&self) -> bool {
        crate::store::Reader::open(&self.db)
            .and_then(|r| r.is_awaiting(&self.task_id))
            .unwrap_or(false)
    }
}

/// A permission request the policy did not answer: it waits, without
/// holding the connection's dispatch loop, for `grove approve`/`deny` (or
/// the permission timeout).
pub struct Pending {
    /// Its number in the session (from 1), in its `permission_request`
    /// update: an answer names it, so a late answer cannot land on the
    /// next request.
    ask: u64,
    /// The request as the agent sent it (reported when its turn comes).
    request: Value,
    title: String,
    options: Vec<PermissionOption>,
    tool_call_id: String,
    respond: Respond,
    since: Instant,
}

/// The most permission requests that wait behind the pending one. ACP lets
/// an agent ask several at once (tools run in parallel); they are put to
/// the human one at a time, so that each answer names one request. Beyond
/// this an agent asks in a loop: the extra ones are cancelled.
const MAX_WAITING_ASKS: usize = 64;

/// The session's permission requests waiting for a human.
#[derive(Default)]
struct Asks {
    pending: Option<Pending>,
    later: VecDeque<Pending>,
    /// The last request's number.
    last: u64,
}

pub type Respond = Box<dyn FnOnce(RequestPermissionResponse) + Send>;

/// What comes after a turn.
pub enum Next {
    Turn(String),
    End,
}

impl Session {
    pub fn new(
        outbox: std::sync::Arc<Outbox>,
        transcript: Transcript,
        fs: Confined,
        policy: PermissionPolicy,
        keep: bool,
        conclude: bool,
        controls: Controls,
    ) -> Session {
        Session {
            outbox,
            transcript: Mutex::new(transcript),
            fs,
            policy,
            keep,
            conclude,
            asks: Mutex::default(),
            controls,
            followups: Mutex::default(),
            modes: Mutex::default(),
            steer: Notify::new(),
            interrupt: Notify::new(),
            wake: Notify::new(),
            changed: Notify::new(),
            paused: AtomicBool::new(false),
            in_turn: AtomicBool::new(false),
            turn_text: Mutex::new(None),
            interrupted: AtomicBool::new(false),
            turn_end_sent: AtomicBool::new(false),
            resume_pending: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            idle_since: Mutex::new(None),
        }
    }

    fn transcript(&self) -> std::sync::MutexGuard<'_, Transcript> {
        self.transcript.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One update: into the transcript, then the outbox.
    pub fn record(&self, kind: &str, update: Value) {
        self.transcript().update(kind, &update);
        self.outbox.push(kind, update);
    }

    pub fn note(&self, text: &str) {
        self.transcript().note(text);
    }

    /// A note that also goes to the store, for whoever watches the task.
    pub fn tell(&self, text: &str) {
        self.note(text);
        self.outbox.push("note", json!({"text": text}));
    }

    /// The ending turn's `turn_end` update: its stop reason and, when the
    /// task asked for one and the turn ended normally, the conclusion of
    /// its message (an ACP turn has no exit code: a turn without a block
    /// concludes as synthesized, which never completes a goal).
    pub fn turn_end(&self, stop: &agent_client_protocol::v1::schema::StopReason) -> Value {
        use crate::protocol::ExitOutcome;
        let ended = *stop == agent_client_protocol::v1::schema::StopReason::EndTurn;
        if !(self.conclude && ended) {
            return json!({ "stopReason": stop });
        }
        let con = crate::runs::conclusion::from_output(
            self.transcript().turn_text(),
            ExitOutcome::EndTurn,
            None,
        );
        json!({ "stopReason": stop, "conclusion": con })
    }

    /// The run's conclusion, when the task asked for one: from the agent's
    /// message in the last turn, never from the log, which is grove's
    /// transcript (its prompt with the brief, its `## ...` notes) and
    /// would be quoted as the summary of an agent that wrote no block.
    /// A last turn that ended well with no message (tools only) leaves
    /// the task an earlier turn's conclusion (None; the store makes one
    /// from the status when there is none); one that did not end well
    /// concludes failed, quoting why it ended (`message`: an agent that
    /// crashed says so), never keeping an earlier turn's success.
    pub fn run_conclusion(
        &self,
        outcome: crate::protocol::ExitOutcome,
        exit_code: Option<i32>,
        message: Option<&str>,
    ) -> Option<crate::protocol::Conclusion> {
        use crate::protocol::ExitOutcome;
        if !self.conclude {
            return None;
        }
        let text = self.transcript().turn_text().to_string();
        let text = match (text.trim().is_empty(), outcome) {
            (false, _) => text,
            (true, ExitOutcome::EndTurn) => return None,
            (true, _) => message.unwrap_or_default().to_string(),
        };
        Some(crate::runs::conclusion::from_output(
            &text, outcome, exit_code,
        ))
    }

    pub fn prompted(&self, text: &str) {
        self.transcript().prompt(text);
        self.outbox.push("prompt", json!({"text": text}));
    }

    pub fn on_permission(&self, req: &RequestPermissionRequest, respond: Respond) {
        let request = serde_json::to_value(req).unwrap_or(Value::Null);
        if let Some(id) = decide(self.policy, req) {
            let answer = json!({"outcome": "selected", "optionId": id, "by": "policy"});
            self.record("permission", json!({"request": request, "answer": answer}));
            respond(RequestPermissionResponse::new(
                RequestPermissionOutcome::Selected(SelectedPermissionOutcome::new(id)),
            ));
            return;
        }
        let tool_call_id = req.tool_call.tool_call_id.to_string();
        let title = request["toolCall"]["title"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let mut asks = self.lock_asks();
        asks.last += 1;
        let ask = Pending {
            ask: asks.last,
            request,
            title,
            options: req.options.clone(),
            tool_call_id,
            respond,
            since: Instant::now(),
        };
        // Behind those already waiting, also while one was just answered
        // and the next is about to be put (see `answer`).
        if asks.pending.is_none() && asks.later.is_empty() {
            self.report(&mut asks, ask);
        } else if asks.later.len() < MAX_WAITING_ASKS {
            self.note(&format!(
                "permission asked for tool {} {}: waits behind request {}",
                ask.tool_call_id,
                ask.title,
                asks.pending.as_ref().map_or(0, |p| p.ask)
            ));
            asks.later.push_back(ask);
        } else {
            drop(asks);
            self.note(&format!(
                "permission asked for tool {} while {MAX_WAITING_ASKS} requests wait: cancelled",
                ask.tool_call_id
            ));
            (ask.respond)(RequestPermissionResponse::new(
                RequestPermissionOutcome::Cancelled,
            ));
        }
    }

    fn lock_asks(&self) -> std::sync::MutexGuard<'_, Asks> {
        self.asks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `ask` the pending request and reports it. Pending before it is
    /// reported: an answer can only be given once the store has it, and
    /// must then find it here.
    fn report(&self, asks: &mut Asks, mut ask: Pending) {
        ask.since = Instant::now();
        self.note(&format!(
            "permission asked for tool {} {} (request {}): waiting for grove approve / grove deny",
            ask.tool_call_id, ask.title, ask.ask
        ));
        let update = json!({"request": ask.request, "ask": ask.ask});
        asks.pending = Some(ask);
        self.outbox.push_now(super::PERMISSION_REQUEST, update);
        self.changed.notify_one();
    }

    /// Applies the task's controls written since the last one read:
    /// permission answers at once, follow-ups and a close for the turn's
    /// end, modes during the turn.
    pub fn apply_controls(&self) {
        let c = &self.controls;
        let mut last = c.last.lock().unwrap_or_else(|p| p.into_inner());
        let read =
            crate::store::Reader::open(&c.db).and_then(|r| r.controls_after(&c.task_id, *last));
        let controls = match read {
            Ok(list) => list,
            Err(e) => {
                errln!("grove shim: cannot read the task's controls: {e}");
                return;
            }
        };
        for ctl in controls {
            *last = ctl.seq;
            if ctl.run_id != c.run_id {
                continue;
            }
            let by = match ctl.kind {
                ControlKind::Approve => "grove approve",
                ControlKind::Deny => "grove deny",
                ControlKind::Mode => {
                    self.lock_modes().push_back(ctl.text.unwrap_or_default());
                    self.steer.notify_one();
                    continue;
                }
                ControlKind::Say => {
                    let text = ctl.text.unwrap_or_default();
                    self.note(&format!("follow-up queued: {text}"));
                    self.lock_followups().push_back(text);
                    self.wake.notify_one();
                    continue;
                }
                ControlKind::Close => {
                    self.close("grove close");
                    continue;
                }
                ControlKind::Interrupt => {
                    let running = ctl.option.as_deref() == Some(INTERRUPT_RUNNING);
                    self.interrupt_turn(ctl.text.as_deref().unwrap_or_default(), running);
                    continue;
                }
            };
            self.answer(Some(ctl.kind), ctl.option.as_deref(), ctl.ask, by);
        }
    }

    fn lock_modes(&self) -> std::sync::MutexGuard<'_, VecDeque<String>> {
        self.modes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_followups(&self) -> std::sync::MutexGuard<'_, VecDeque<String>> {
        self.followups.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn next_mode(&self) -> Option<String> {
        self.lock_modes().pop_front()
    }

    /// The session ends after the current turn (at once, between turns).
    pub fn close(&self, by: &str) {
        if !self.closing.swap(true, Ordering::SeqCst) {
            self.note(&format!("session closing ({by})"));
        }
        self.wake.notify_one();
    }

    /// Ends the turn and the session: the waiting requests are answered
    /// `cancelled` first, as ACP asks of a client that cancels.
    pub fn cancel(&self, by: &str) {
        self.cancel_asks(by);
        self.close(by);
        self.interrupt.notify_one();
    }

    /// A turn with prompt `text` starts (`None`: it ended).
    pub fn set_turn(&self, text: Option<&str>) {
        let mut current = self.turn_text.lock().unwrap_or_else(|p| p.into_inner());
        *current = text.map(str::to_string);
        // An interrupt meant for the turn before is not this one's.
        self.interrupted.store(false, Ordering::SeqCst);
        self.in_turn.store(text.is_some(), Ordering::SeqCst);
    }

    /// An editor cancelled its prompt `text` (`task.control interrupt`;
    /// `running`: the editor saw its turn begin). A prompt still queued is
    /// withdrawn; the running turn is cut short (`session/cancel`) only when
    /// it is that prompt's. Unlike a pause, the session then goes on as
    /// after any turn: to its next follow-up, or idle, holding no slot. A
    /// pause kept the slot, so every cancel in an editor held one until
    /// nothing could start. (The shim's runtime is single-threaded: a
    /// follow-up leaves the queue and begins its turn in one step, so it is
    /// always one or the other here.)
    pub fn interrupt_turn(&self, text: &str, running: bool) {
        let mut queued = self.lock_followups();
        if !running && let Some(i) = queued.iter().position(|q| q == text) {
            queued.remove(i);
            drop(queued);
            if !self.in_turn.load(Ordering::SeqCst) {
                // A resume's continuation was asked for with this prompt;
                // and a follow-up to an idle session had made it running
                // in the store: it is reported idle again.
                self.resume_pending.store(false, Ordering::SeqCst);
                self.set_idle(false);
            }
            self.note(&format!("follow-up withdrawn (interrupt): {text}"));
            self.wake.notify_one();
            return;
        }
        drop(queued);
        let current = self.turn_text.lock().unwrap_or_else(|p| p.into_inner());
        let runs = self.in_turn.load(Ordering::SeqCst);
        let named = current.as_deref() == Some(text);
        drop(current);
        if !(runs && named) {
            self.note("interrupt: that prompt neither runs nor waits; nothing to do");
            return;
        }
        self.note("interrupted: the turn is cancelled, the session kept");
        self.cancel_asks("grove interrupt");
        self.interrupted.store(true, Ordering::SeqCst);
        self.interrupt.notify_one();
        self.changed.notify_one();
    }

    /// The task was paused (true) or resumed (false), as its row says.
    pub fn set_paused(&self, paused: bool) {
        if self.paused.swap(paused, Ordering::SeqCst) == paused {
            return;
        }
        if paused {
            // The agent holds live streams: its turn is cancelled through
            // the protocol, never by SIGSTOP; the session is kept.
            self.note("paused: the turn is cancelled, the session kept");
            self.cancel_asks("grove pause");
            if self.in_turn.load(Ordering::SeqCst) {
                self.resume_pending.store(true, Ordering::SeqCst);
            }
            self.interrupt.notify_one();
        } else {
            self.note("resumed");
            self.wake.notify_one();
        }
        self.changed.notify_one();
    }

    /// Whether the running turn must end now (paused, interrupted, or
    /// closing by a cancel): a stale interrupt is ignored.
    pub fn interrupting(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
            || self.interrupted.load(Ordering::SeqCst)
            || self.closing.load(Ordering::SeqCst)
    }

    /// Whether the session ends after the current turn.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Whether the timeout clock runs: during a turn that waits for nobody.
    pub fn clock_runs(&self) -> bool {
        !self.paused.load(Ordering::SeqCst) && !self.waiting() && self.idle_since().is_none()
    }

    pub fn idle_since(&self) -> Option<Instant> {
        *self.idle_since.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_idle(&self, idle: bool) {
        let mut since = self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        if idle != since.is_some() {
            *since = idle.then(Instant::now);
            self.changed.notify_one();
        }
    }

    /// Waits for what comes after a turn: the next follow-up, a resume, or
    /// the session's end. A kept session reports itself idle while it
    /// waits, with the last control it has read, so that the store can tell
    /// a stale report from a current one.
    pub async fn between_turns(&self) -> Next {
        loop {
            // Read before the controls: an await fires by writing the
            // parent's follow-up and retiring itself in one commit, so
            // either the await is still seen here or its follow-up is
            // among the controls read next — never neither.
            let awaiting = !self.keep && self.controls.awaiting();
            self.apply_controls();
            if self.closing.load(Ordering::SeqCst) {
                self.set_idle(false);
                return Next::End;
            }
            if !self.paused.load(Ordering::SeqCst) {
                let next = self.lock_followups().pop_front();
                if let Some(text) = next {
                    self.resume_pending.store(false, Ordering::SeqCst);
                    self.set_idle(false);
                    return Next::Turn(text);
                }
                if self.resume_pending.swap(false, Ordering::SeqCst) {
                    return Next::Turn(CONTINUE.to_string());
                }
                if !self.keep && !awaiting {
                    return Next::End;
                }
                if self.idle_since().is_none() {
                    let seen = *self.controls.last.lock().unwrap_or_else(|p| p.into_inner());
                    self.note(if awaiting {
                        "idle: awaiting the results of delegated tasks"
                    } else {
                        "idle: waiting for grove say or grove close"
                    });
                    self.outbox
                        .push_now(super::IDLE, json!({"controlsSeen": seen}));
                    self.set_idle(true);
                }
            }
            self.wake.notified().await;
        }
    }

    /// Whether a permission request waits for a human.
    pub fn waiting(&self) -> bool {
        self.lock_asks().pending.is_some()
    }

    /// When the pending request was put to the human, if one waits.
    pub fn waiting_since(&self) -> Option<Instant> {
        self.lock_asks().pending.as_ref().map(|p| p.since)
    }

    /// Answers every waiting request `cancelled` (the turn is being
    /// cancelled).
    fn cancel_asks(&self, by: &str) {
        let mut asks = self.lock_asks();
        let all: Vec<Pending> = asks
            .pending
            .take()
            .into_iter()
            .chain(asks.later.drain(..))
            .collect();
        drop(asks);
        for p in all {
            self.respond(p, None, None, by);
        }
    }

    /// Answers the pending request, when it is request `ask` (given), and
    /// puts the next waiting one to the human. An answer for another
    /// request (a late one, from a shim's view) is ignored with a note.
    pub fn answer(
        &self,
        kind: Option<ControlKind>,
        option: Option<&str>,
        ask: Option<u64>,
        by: &str,
    ) {
        let mut asks = self.lock_asks();
        let Some(p) = asks.pending.take_if(|p| ask.is_none_or(|a| a == p.ask)) else {
            let now = asks.pending.as_ref().map(|p| p.ask);
            drop(asks);
            self.note(&match (ask, now) {
                (Some(a), Some(n)) => {
                    format!("{by}: answers request {a}, but request {n} is pending; ignored")
                }
                _ => format!("{by}: no permission request is pending; ignored"),
            });
            return;
        };
        drop(asks);
        // The answer's update goes out before the next request's, so that
        // the store sees the task run again, then wait again.
        self.respond(p, kind, option, by);
        let mut asks = self.lock_asks();
        if asks.pending.is_none()
            && let Some(next) = asks.later.pop_front()
        {
            self.report(&mut asks, next);
        }
    }

    /// Gives request `p` its answer (`kind` `None`: cancelled).
    fn respond(&self, p: Pending, kind: Option<ControlKind>, option: Option<&str>, by: &str) {
        let find = |kinds: &[PermissionOptionKind]| {
            option
                .and_then(|o| p.options.iter().find(|x| x.option_id.to_string() == o))
                .or_else(|| {
                    kinds
                        .iter()
                        .find_map(|k| p.options.iter().find(|x| x.kind == *k))
                })
                .map(|x| x.option_id.to_string())
        };
        let chosen = match kind {
            Some(ControlKind::Approve) => find(&[
                PermissionOptionKind::AllowOnce,
                PermissionOptionKind::AllowAlways,
            ]),
            Some(ControlKind::Deny) => find(&[
                PermissionOptionKind::RejectOnce,
                PermissionOptionKind::RejectAlways,
            ]),
            Some(
                ControlKind::Say | ControlKind::Mode | ControlKind::Close | ControlKind::Interrupt,
            )
            | None => None,
        };
        let answer = match &chosen {
            Some(id) => json!({"outcome": "selected", "optionId": id, "by": by}),
            None => json!({"outcome": "cancelled", "by": by}),
        };
        self.record(
            "permission",
            json!({"request": {"toolCall": {"toolCallId": p.tool_call_id}}, "answer": answer}),
        );
        let outcome = match chosen {
            Some(id) => RequestPermissionOutcome::Selected(SelectedPermissionOutcome::new(id)),
            None => RequestPermissionOutcome::Cancelled,
        };
        (p.respond)(RequestPermissionResponse::new(outcome));
        self.changed.notify_one();
    }
}

/// The option the policy picks by itself, if any: the narrowest allow
/// option when the policy allows this kind of tool. Anything else waits
/// for a human.
fn decide(policy: PermissionPolicy, req: &RequestPermissionRequest) -> Option<String> {
    let tool = serde_json::to_value(&req.tool_call).unwrap_or(Value::Null);
    let looks_only = matches!(
        tool["kind"].as_str(),
        Some("read" | "search" | "fetch" | "think")
    );
    let allow = match policy {
        PermissionPolicy::AllowAll => true,
        PermissionPolicy::AllowReads => looks_only,
        PermissionPolicy::Ask => false,
    };
    if !allow {
        return None;
    }
    let kinds = [
        PermissionOptionKind::AllowOnce,
        PermissionOptionKind::AllowAlways,
    ];
    kinds.iter().find_map(|k| {
        req.options
            .iter()
            .find(|o| o.kind == *k)
            .map(|o| o.option_id.to_string())
    })
}
