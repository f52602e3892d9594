//! A scripted ACP agent on the official Rust `agent-client-protocol` crate
//! (the agent side), for grove's tests: the second, independent agent beside
//! the Python one (`scripted_agent.py`, on the official Python SDK). Built
//! only in test builds (a `[[bin]]` that requires the `test-hooks` feature),
//! so it never ships in grove. It chooses what to do from the words of the
//! prompt, never from the order of requests:
//!
//!   hello          a thought, then a message in chunks; end_turn
//!   edit NAME      a plan, an `edit` tool call with a diff, the file written
//!                  through the client's fs/write_text_file; end_turn
//!   permission     asks for permission for an `execute` tool call; the tool
//!                  completes when allowed, fails when rejected or cancelled
//!   slow N         streams N chunks, 50 ms apart; honours session/cancel
//!   (session/set_mode accepts the modes default and plan)
//!
//! Every session is held until stdin closes: follow-up prompts are further
//! turns of the same session.

use agent_client_protocol::v1::ConnectionTo;
use agent_client_protocol::v1::schema::{
    AgentCapabilities, CancelNotification, ContentBlock, ContentChunk, CurrentModeUpdate, Diff,
    Implementation, InitializeRequest, InitializeResponse, NewSessionRequest, NewSessionResponse,
    PermissionOption, PermissionOptionKind, Plan, PlanEntry, PlanEntryPriority, PlanEntryStatus,
    PromptRequest, PromptResponse, RequestPermissionOutcome, RequestPermissionRequest, SessionId,
    SessionMode, SessionModeState, SessionNotification, SessionUpdate, SetSessionModeRequest,
    SetSessionModeResponse, StopReason, TextContent, ToolCall, ToolCallContent, ToolCallLocation,
    ToolCallStatus, ToolCallUpdate, ToolCallUpdateFields, ToolKind, WriteTextFileRequest,
};
use agent_client_protocol::{Agent, Client, Error, Lines, Responder, V1};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// One session: where it works and whether its turn was cancelled.
struct Session {
    cwd: PathBuf,
    cancelled: AtomicBool,
}

#[derive(Default)]
struct Sessions(Mutex<HashMap<String, Arc<Session>>>);

impl Sessions {
    fn get(&self, id: &SessionId) -> Option<Arc<Session>> {
        self.0.lock().unwrap().get(&id.to_string()).cloned()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let sessions = Arc::new(Sessions::default());
    let (s_new, s_prompt, s_cancel) = (sessions.clone(), sessions.clone(), sessions.clone());
    let result = Agent
        .v1()
        .name("rust-scripted-agent")
        .on_receive_request(
            async move |init: InitializeRequest, responder, _cx| {
                responder.respond(
                    InitializeResponse::new(init.protocol_version)
                        .agent_capabilities(AgentCapabilities::new())
                        .agent_info(Implementation::new("rust-scripted-agent", "1")),
                )
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |req: NewSessionRequest, responder, _cx| {
                let mut all = s_new.0.lock().unwrap();
                let id = format!("r{}", all.len() + 1);
                all.insert(
                    id.clone(),
                    Arc::new(Session {
                        cwd: req.cwd,
                        cancelled: AtomicBool::new(false),
                    }),
                );
                let modes = SessionModeState::new(
                    "default",
                    vec![
                        SessionMode::new("default", "Default"),
                        SessionMode::new("plan", "Plan"),
                    ],
                );
                responder.respond(NewSessionResponse::new(id).modes(modes))
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |req: SetSessionModeRequest, responder, cx| {
                let mode = req.mode_id.to_string();
                if mode != "default" && mode != "plan" {
                    return responder.respond_with_error(Error::invalid_params());
                }
                update(&cx, &req.session_id, mode_update(&mode))?;
                responder.respond(SetSessionModeResponse::new())
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_notification(
            async move |n: CancelNotification, _cx| {
                if let Some(s) = s_cancel.get(&n.session_id) {
                    s.cancelled.store(true, Ordering::SeqCst);
                }
                Ok(())
            },
            agent_client_protocol::on_receive_notification!(),
        )
        .on_receive_request(
            async move |req: PromptRequest, responder, cx| {
                let Some(session) = s_prompt.get(&req.session_id) else {
                    return responder.respond_with_error(Error::invalid_params());
                };
                // The turn runs outside the dispatch loop: it waits for the
                // client's answers (permission, file writes) and must still
                // see a session/cancel.
                let turn_cx = cx.clone();
                cx.spawn(async move { turn(turn_cx, session, req, responder).await })
            },
            agent_client_protocol::on_receive_request!(),
        )
        .connect_to(stdio())
        .await;
    if let Err(e) = result {
        eprintln!("rust-scripted-agent: {e}");
        std::process::exit(1);
    }
}

/// The agent's stdin and stdout as lines, on tokio (the crate's own
/// `Stdio` needs its `stdio` feature, which grove does not turn on).
fn stdio() -> Lines<
    impl futures::Sink<String, Error = std::io::Error> + Send + 'static,
    impl futures::Stream<Item = std::io::Result<String>> + Send + 'static,
> {
    let incoming = futures::stream::unfold(
        BufReader::new(tokio::io::stdin()).lines(),
        |mut lines| async move {
            match lines.next_line().await {
                Ok(Some(line)) => Some((Ok(line), lines)),
                Ok(None) => None,
                Err(e) => Some((Err(e), lines)),
            }
        },
    );
    let outgoing = futures::sink::unfold(tokio::io::stdout(), |mut out, line: String| async move {
        out.write_all(line.as_bytes()).await?;
        out.write_all(b"\n").await?;
        out.flush().await?;
        Ok::<_, std::io::Error>(out)
    });
    Lines::new(outgoing, incoming)
}

fn update(cx: &ConnectionTo<Client>, id: &SessionId, u: SessionUpdate) -> Result<(), Error> {
    cx.send_notification(SessionNotification::new(id.clone(), u))
}

fn text(t: &str) -> ContentChunk {
    ContentChunk::new(ContentBlock::Text(TextContent::new(t.to_string())))
}

fn mode_update(mode: &str) -> SessionUpdate {
    SessionUpdate::CurrentModeUpdate(CurrentModeUpdate::new(mode.to_string()))
}

fn status(id: &str, status: ToolCallStatus) -> SessionUpdate {
    SessionUpdate::ToolCallUpdate(ToolCallUpdate::new(
        id.to_string(),
        ToolCallUpdateFields::new().status(status),
    ))
}

async fn turn(
    cx: ConnectionTo<Client>,
    session: Arc<Session>,
    req: PromptRequest,
    responder: Responder<PromptResponse, V1>,
) -> Result<(), Error> {
    session.cancelled.store(false, Ordering::SeqCst);
    let prompt: Vec<String> = req
        .prompt
        .iter()
        .filter_map(|b| match b {
            ContentBlock::Text(t) => Some(t.text.clone()),
            _ => None,
        })
        .collect();
    let prompt = prompt.join(" ");
    let words: Vec<&str> = prompt.split_whitespace().collect();
    let after = |w: &str| {
        words
            .iter()
            .position(|x| *x == w)
            .and_then(|i| words.get(i + 1))
            .copied()
    };
    let sid = &req.session_id;
    let say = |t: &str| update(&cx, sid, SessionUpdate::AgentMessageChunk(text(t)));
    let stop = if words.contains(&"hello") {
        update(&cx, sid, SessionUpdate::AgentThoughtChunk(text("greeting")))?;
        for w in ["Hel", "lo ", "wor", "ld"] {
            say(w)?;
        }
        StopReason::EndTurn
    } else if let Some(name) = after("edit") {
        edit(&cx, sid, &session, name).await?;
        say("edited")?;
        StopReason::EndTurn
    } else if words.contains(&"permission") {
        permission(&cx, sid, &session).await?
    } else if let Some(n) = after("slow") {
        let n: usize = n.parse().unwrap_or(10);
        let mut stop = StopReason::EndTurn;
        for i in 0..n {
            if session.cancelled.load(Ordering::SeqCst) {
                stop = StopReason::Cancelled;
                break;
            }
            say(&format!("c{i} "))?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop
    } else {
        say(&format!("unknown script: {prompt}"))?;
        StopReason::EndTurn
    };
    responder.respond(PromptResponse::new(stop))
}

/// A plan, an `edit` tool call with its diff, the file written through the
/// client, the call completed.
async fn edit(
    cx: &ConnectionTo<Client>,
    sid: &SessionId,
    session: &Session,
    name: &str,
) -> Result<(), Error> {
    let path = session.cwd.join(name);
    let entry = PlanEntry::new(
        "write the file",
        PlanEntryPriority::Medium,
        PlanEntryStatus::InProgress,
    );
    update(cx, sid, SessionUpdate::Plan(Plan::new(vec![entry])))?;
    let call = ToolCall::new("t1", format!("Write {name}"))
        .kind(ToolKind::Edit)
        .status(ToolCallStatus::Pending)
        .locations(vec![ToolCallLocation::new(path.clone())]);
    update(cx, sid, SessionUpdate::ToolCall(call))?;
    let diff =
        ToolCallContent::Diff(Diff::new(path.clone(), "new\n").old_text("old\n".to_string()));
    update(
        cx,
        sid,
        SessionUpdate::ToolCallUpdate(ToolCallUpdate::new(
            "t1".to_string(),
            ToolCallUpdateFields::new()
                .status(ToolCallStatus::InProgress)
                .content(vec![diff]),
        )),
    )?;
    let written = cx
        .send_request(WriteTextFileRequest::new(sid.clone(), path, "new\n"))
        .block_task()
        .await;
    let done = match written {
        Ok(_) => ToolCallStatus::Completed,
        Err(_) => ToolCallStatus::Failed,
    };
    update(cx, sid, status("t1", done))
}

/// Asks for permission to run a command; the tool completes when allowed.
async fn permission(
    cx: &ConnectionTo<Client>,
    sid: &SessionId,
    session: &Session,
) -> Result<StopReason, Error> {
    let call = ToolCall::new("t2", "Run make")
        .kind(ToolKind::Execute)
        .status(ToolCallStatus::Pending);
    update(cx, sid, SessionUpdate::ToolCall(call))?;
    let options = vec![
        PermissionOption::new("allow", "Allow once", PermissionOptionKind::AllowOnce),
        PermissionOption::new("reject", "Reject", PermissionOptionKind::RejectOnce),
    ];
    let tool = ToolCallUpdate::new(
        "t2".to_string(),
        ToolCallUpdateFields::new()
            .title("Run make".to_string())
            .kind(ToolKind::Execute),
    );
    let answer = cx
        .send_request(RequestPermissionRequest::new(sid.clone(), tool, options))
        .block_task()
        .await?;
    let allowed = matches!(
        &answer.outcome,
        RequestPermissionOutcome::Selected(s) if s.option_id.to_string() == "allow"
    );
    let done = if allowed {
        ToolCallStatus::Completed
    } else {
        ToolCallStatus::Failed
    };
    update(cx, sid, status("t2", done))?;
    if session.cancelled.load(Ordering::SeqCst) {
        return Ok(StopReason::Cancelled);
    }
    let said = if allowed {
        "ran make"
    } else {
        "did not run make"
    };
    update(cx, sid, SessionUpdate::AgentMessageChunk(text(said)))?;
    Ok(StopReason::EndTurn)
}
