//! The ACP conversation itself, on the official `agent-client-protocol`
//! crate (client side): initialize with a file-system capability confined
//! to the workdir, open a session in the workdir, run the turn, and turn
//! every message of the agent into an update for the outbox and the
//! transcript. Permission requests are answered by the engine's policy.

use super::fs::Confined;
use super::outbox::Outbox;
use super::transcript::Transcript;
use crate::config::PermissionPolicy;
use crate::protocol::ControlKind;
use agent_client_protocol::v1::schema::{
    CancelNotification, ClientCapabilities, ContentBlock, FileSystemCapabilities, Implementation,
    InitializeRequest, NewSessionRequest, PermissionOption, PermissionOptionKind, PromptRequest,
    ReadTextFileRequest, ReadTextFileResponse, RequestPermissionOutcome, RequestPermissionRequest,
    RequestPermissionResponse, SelectedPermissionOutcome, SessionNotification,
    SetSessionModeRequest, StopReason, TextContent, WriteTextFileRequest, WriteTextFileResponse,
};
use agent_client_protocol::{Agent, Client, ConnectTo, Error as AcpError};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// What the conversation's handlers share.
pub struct Session {
    pub outbox: Arc<Outbox>,
    pub transcript: Mutex<Transcript>,
    pub fs: Confined,
    pub policy: PermissionPolicy,
    /// The permission request that waits for a human, if any.
    pub pending: Mutex<Option<Pending>>,
    /// Woken when a request starts waiting (the timeout clock stops).
    pub asked: Notify,
    pub controls: Controls,
    /// Follow-up prompts (`grove say`) for when the current turn ends.
    pub followups: Mutex<VecDeque<String>>,
    /// Modes to switch to (`grove mode`), in order.
    pub modes: Mutex<VecDeque<String>>,
    /// Woken when a mode was asked for.
    pub steer: Notify,
}

/// Where the task's steering controls are read from, and the seq of the
/// last one applied (each is applied once).
pub struct Controls {
    pub db: PathBuf,
    pub task_id: String,
    pub run_id: String,
    pub last: Mutex<u64>,
}

/// A permission request the policy did not answer: it waits, without
/// holding the connection's dispatch loop, for `grove approve`/`deny`.
pub struct Pending {
    options: Vec<PermissionOption>,
    tool_call_id: String,
    respond: Respond,
}

type Respond = Box<dyn FnOnce(RequestPermissionResponse) + Send>;

impl Session {
    /// One update: into the transcript, then the outbox.
    pub fn record(&self, kind: &str, update: Value) {
        self.transcript
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .update(kind, &update);
        self.outbox.push(kind, update);
    }

    pub fn note(&self, text: &str) {
        self.transcript
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .note(text);
    }

    fn on_update(&self, n: SessionNotification) {
        let update = serde_json::to_value(&n.update).unwrap_or(Value::Null);
        let kind = update["sessionUpdate"]
            .as_str()
            .unwrap_or("unknown")
            .to_string();
        self.record(&kind, update);
    }

    fn on_permission(&self, req: &RequestPermissionRequest, respond: Respond) {
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
        // Pending before the request is reported: an answer can only be
        // given once the store has it, and must then find it here.
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(Pending {
            options: req.options.clone(),
            tool_call_id: tool_call_id.clone(),
            respond,
        });
        self.note(&format!(
            "permission asked for tool {tool_call_id} {title}: waiting for grove approve / grove deny"
        ));
        self.outbox
            .push_now(super::PERMISSION_REQUEST, json!({"request": request}));
        self.asked.notify_one();
    }

    /// Applies the task's controls written since the last one applied:
    /// permission answers at once, follow-ups queued for the turn's end.
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
                    let mode = ctl.text.unwrap_or_default();
                    self.modes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_back(mode);
                    self.steer.notify_one();
                    continue;
                }
                ControlKind::Say => {
                    let text = ctl.text.unwrap_or_default();
                    self.note(&format!("follow-up queued: {text}"));
                    self.followups
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_back(text);
                    continue;
                }
            };
            if !self.answer(Some(ctl.kind), ctl.option.as_deref(), by) {
                self.note(&format!("{by}: no permission request is pending; ignored"));
            }
        }
    }

    /// The next follow-up, after reading the controls once more (one may
    /// have been written while the turn was ending).
    fn next_followup(&self) -> Option<String> {
        self.apply_controls();
        self.followups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }

    /// Whether a permission request waits for a human.
    pub fn waiting(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Answers the pending request (`None`: the turn is being cancelled);
    /// false when none is pending.
    pub fn answer(&self, kind: Option<ControlKind>, option: Option<&str>, by: &str) -> bool {
        let Some(p) = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return false;
        };
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
            Some(ControlKind::Say | ControlKind::Mode) | None => None,
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
        true
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

/// What the conversation is asked to do.
pub struct Turn {
    pub work_dir: PathBuf,
    pub prompt: String,
    pub model: Option<String>,
}

fn protocol_error(what: &str, e: AcpError) -> String {
    format!("{what}: {e}")
}

/// Runs the conversation over `transport` until the turn ends; `cancel`
/// sends `session/cancel` and waits for the agent to end the turn.
pub async fn converse(
    transport: impl ConnectTo<Client> + 'static,
    session: Arc<Session>,
    turn: Turn,
    cancel: Arc<Notify>,
) -> Result<StopReason, String> {
    let (s1, s2, s3, s4) = (
        session.clone(),
        session.clone(),
        session.clone(),
        session.clone(),
    );
    let result = Client
        .v1()
        .name("grove")
        .on_receive_notification(
            async move |n: SessionNotification, _cx| {
                s1.on_update(n);
                Ok(())
            },
            agent_client_protocol::on_receive_notification!(),
        )
        .on_receive_request(
            async move |req: RequestPermissionRequest, responder, _cx| {
                s2.on_permission(
                    &req,
                    Box::new(move |answer| {
                        // The agent may be gone; the turn's end says so.
                        let _ = responder.respond(answer);
                    }),
                );
                Ok(())
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |req: ReadTextFileRequest, responder, _cx| match s3
                .fs
                .read(&req.path, req.line, req.limit)
            {
                Ok(text) => responder.respond(ReadTextFileResponse::new(text)),
                Err(m) => {
                    s3.note(&format!("refused fs/read_text_file: {m}"));
                    responder.respond_with_error(AcpError::new(-32602, m))
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |req: WriteTextFileRequest, responder, _cx| match s4
                .fs
                .write(&req.path, &req.content)
            {
                Ok(()) => responder.respond(WriteTextFileResponse::new()),
                Err(m) => {
                    s4.note(&format!("refused fs/write_text_file: {m}"));
                    responder.respond_with_error(AcpError::new(-32602, m))
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        .connect_with(transport, async move |cx| {
            run_turn(cx, session, turn, cancel).await
        })
        .await;
    match result {
        Ok(r) => r,
        Err(e) => Err(protocol_error("the ACP connection failed", e)),
    }
}

async fn run_turn(
    cx: agent_client_protocol::v1::ConnectionTo<Agent>,
    session: Arc<Session>,
    turn: Turn,
    cancel: Arc<Notify>,
) -> Result<Result<StopReason, String>, AcpError> {
    let fs = FileSystemCapabilities::new()
        .read_text_file(true)
        .write_text_file(true);
    let init = InitializeRequest::new(agent_client_protocol::schema::ProtocolVersion::V1)
        .client_capabilities(ClientCapabilities::new().fs(fs))
        .client_info(Implementation::new("grove", env!("CARGO_PKG_VERSION")));
    let info = match cx.send_request(init).block_task().await {
        Ok(i) => i,
        Err(e) => return Ok(Err(protocol_error("initialize failed", e))),
    };
    session.record(
        "initialized",
        serde_json::to_value(&info).unwrap_or(Value::Null),
    );
    let new = match cx
        .send_request(NewSessionRequest::new(turn.work_dir.clone()))
        .block_task()
        .await
    {
        Ok(n) => n,
        Err(e) => return Ok(Err(protocol_error("session/new failed", e))),
    };
    session.record("session", serde_json::to_value(&new).unwrap_or(Value::Null));
    if let Some(model) = &turn.model {
        session.note(&format!(
            "model {model}: passed to the agent only through its command line or its own configuration"
        ));
    }
    let id = new.session_id.clone();
    let mut text = turn.prompt;
    loop {
        let stop = match prompt(&cx, &session, &id, &text, &cancel).await {
            Ok(stop) => stop,
            Err(e) => return Ok(Err(protocol_error("session/prompt failed", e))),
        };
        // A follow-up said during the turn is the next turn, in the same
        // session; the task ends after the last one.
        match (stop, session.next_followup()) {
            (StopReason::EndTurn, Some(next)) => {
                session
                    .outbox
                    .push("turn_end", json!({"stopReason": "end_turn"}));
                text = next;
            }
            _ => return Ok(Ok(stop)),
        }
    }
}

/// One turn: the prompt, then its stop reason; `cancel` sends
/// `session/cancel` and the turn ends as the agent ends it.
async fn prompt(
    cx: &agent_client_protocol::v1::ConnectionTo<Agent>,
    session: &Session,
    id: &agent_client_protocol::v1::schema::SessionId,
    text: &str,
    cancel: &Notify,
) -> Result<StopReason, AcpError> {
    session
        .transcript
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .prompt(text);
    session.outbox.push("prompt", json!({"text": text}));
    let request = PromptRequest::new(
        id.clone(),
        vec![ContentBlock::Text(TextContent::new(text.to_string()))],
    );
    let sent = cx.send_request(request).block_task();
    tokio::pin!(sent);
    loop {
        tokio::select! {
            r = &mut sent => return r.map(|r| r.stop_reason),
            _ = session.steer.notified() => set_modes(cx, session, id).await,
            _ = cancel.notified() => {
                // The agent ends the turn with `cancelled`; the shim kills
                // the process tree if it does not within the grace.
                let _ = cx.send_notification(CancelNotification::new(id.clone()));
                return sent.await.map(|r| r.stop_reason);
            }
        }
    }
}

/// Sends the modes asked for (`session/set_mode`); a mode the agent
/// refuses is noted in the transcript and the turn goes on.
async fn set_modes(
    cx: &agent_client_protocol::v1::ConnectionTo<Agent>,
    session: &Session,
    id: &agent_client_protocol::v1::schema::SessionId,
) {
    loop {
        let next = session
            .modes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        let Some(mode) = next else { return };
        let request = SetSessionModeRequest::new(id.clone(), mode.clone());
        match cx.send_request(request).block_task().await {
            Ok(_) => session.note(&format!("mode {mode} asked (grove mode)")),
            Err(e) => session.note(&format!("the agent refused mode {mode}: {e}")),
        }
    }
}
