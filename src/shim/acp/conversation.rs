//! The ACP conversation itself, on the official `agent-client-protocol`
//! crate (client side): initialize with a file-system capability confined
//! to the workdir, open a session in the workdir (with the configured MCP
//! servers), choose the model through the session's model option, run the
//! turns, and turn every message of the agent into an update for the
//! outbox and the transcript. Steering (`steering.rs`) decides what
//! follows a turn.

use super::steering::{Next, Session};
use agent_client_protocol::v1::schema::{
    CancelNotification, ClientCapabilities, ContentBlock, FileSystemCapabilities, Implementation,
    InitializeRequest, McpServer, NewSessionRequest, NewSessionResponse, PromptRequest,
    ReadTextFileRequest, ReadTextFileResponse, RequestPermissionRequest, SessionId,
    SessionNotification, SetSessionConfigOptionRequest, SetSessionModeRequest, StopReason,
    TextContent, WriteTextFileRequest, WriteTextFileResponse,
};
use agent_client_protocol::{Agent, Client, ConnectTo, Error as AcpError};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

type Connection = agent_client_protocol::v1::ConnectionTo<Agent>;

/// What the conversation is asked to do.
pub struct Turn {
    pub work_dir: PathBuf,
    pub prompt: String,
    pub model: Option<String>,
    /// ACP `McpServer` JSON for `session/new`.
    pub mcp_servers: Vec<Value>,
}

fn protocol_error(what: &str, e: AcpError) -> String {
    format!("{what}: {e}")
}

impl Session {
    fn on_update(&self, n: SessionNotification) {
        let update = serde_json::to_value(&n.update).unwrap_or(Value::Null);
        let kind = update["sessionUpdate"]
            .as_str()
            .unwrap_or("unknown")
            .to_string();
        self.record(&kind, update);
    }
}

/// Runs the conversation over `transport` until its last turn ends; the
/// session's `interrupt` sends `session/cancel` and waits for the agent
/// to end the turn.
pub async fn converse(
    transport: impl ConnectTo<Client> + 'static,
    session: Arc<Session>,
    turn: Turn,
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
            run_turns(cx, session, turn).await
        })
        .await;
    match result {
        Ok(r) => r,
        Err(e) => Err(protocol_error("the ACP connection failed", e)),
    }
}

async fn run_turns(
    cx: Connection,
    session: Arc<Session>,
    turn: Turn,
) -> Result<Result<StopReason, String>, AcpError> {
    let id = match open(&cx, &session, &turn).await {
        Ok(id) => id,
        Err(m) => return Ok(Err(m)),
    };
    let mut text = turn.prompt;
    loop {
        session.set_turn(Some(&text));
        let stop = prompt(&cx, &session, &id, &text).await;
        session.set_turn(None);
        let (stop, kept) = match stop {
            Ok(stop) => stop,
            Err(e) => return Ok(Err(protocol_error("session/prompt failed", e))),
        };
        // A turn cut short by a pause or an interrupt is not the task's
        // end (even when it was resumed before the agent ended it); any
        // other stop reason but end_turn is (refusal, max_tokens, a cancel).
        let kept = stop == StopReason::Cancelled && kept;
        if stop != StopReason::EndTurn && !kept {
            return Ok(Ok(stop));
        }
        // Said at once (whoever follows the turn sees it end), before the
        // session waits for what comes next.
        session
            .outbox
            .push(super::TURN_END, session.turn_end(&stop));
        session.turn_end_sent.store(true, Ordering::SeqCst);
        match session.between_turns().await {
            Next::Turn(next) => text = next,
            Next::End => return Ok(Ok(StopReason::EndTurn)),
        }
    }
}

/// `initialize` and `session/new`, then the model; the session's id, or
/// why the conversation cannot go on.
async fn open(cx: &Connection, session: &Session, turn: &Turn) -> Result<SessionId, String> {
    let fs = FileSystemCapabilities::new()
        .read_text_file(true)
        .write_text_file(true);
    let init = InitializeRequest::new(agent_client_protocol::schema::ProtocolVersion::V1)
        .client_capabilities(ClientCapabilities::new().fs(fs))
        .client_info(Implementation::new("grove", env!("CARGO_PKG_VERSION")));
    let answer = tokio::time::timeout(super::host::INIT_WAIT, cx.send_request(init).block_task());
    let info = answer
        .await
        .map_err(|_| {
            format!(
                "the agent did not answer initialize in {:?}",
                super::host::INIT_WAIT
            )
        })?
        .map_err(|e| protocol_error("initialize failed", e))?;
    let info = serde_json::to_value(&info).unwrap_or(Value::Null);
    session.record("initialized", info.clone());
    let servers = mcp_servers(session, &info, &turn.mcp_servers);
    let request = NewSessionRequest::new(turn.work_dir.clone()).mcp_servers(servers);
    let new = cx
        .send_request(request)
        .block_task()
        .await
        .map_err(|e| protocol_error("session/new failed", e))?;
    session.record("session", serde_json::to_value(&new).unwrap_or(Value::Null));
    if let Some(model) = &turn.model {
        choose_model(cx, session, &new, model).await?;
    }
    Ok(new.session_id)
}

/// The configured MCP servers the agent can take: an HTTP server only when
/// it says it supports them (a left-out server is said, never silent).
fn mcp_servers(session: &Session, info: &Value, wanted: &[Value]) -> Vec<McpServer> {
    let http = info["agentCapabilities"]["mcpCapabilities"]["http"]
        .as_bool()
        .unwrap_or(false);
    let mut out = Vec::new();
    for server in wanted {
        let name = server["name"].as_str().unwrap_or("?");
        if server["type"] == "http" && !http {
            session.tell(&format!(
                "MCP server {name} left out: the agent does not take HTTP MCP servers"
            ));
            continue;
        }
        match serde_json::from_value::<McpServer>(server.clone()) {
            Ok(s) => out.push(s),
            Err(e) => session.tell(&format!("MCP server {name} left out: {e}")),
        }
    }
    out
}

/// Selects `model` through the session's model option (ACP session config
/// options, category `model`): its value id or name, case-insensitively.
/// An agent that offers no such option or value fails the task with the
/// values it does offer: a task never runs on another model silently.
async fn choose_model(
    cx: &Connection,
    session: &Session,
    new: &NewSessionResponse,
    model: &str,
) -> Result<(), String> {
    let options = serde_json::to_value(&new.config_options).unwrap_or(Value::Null);
    let Some(option) = options
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["category"] == "model" && o["type"] == "select")
    else {
        return Err(format!(
            "cannot select model {model}: the agent offers no session model option, and its engine has no model_args to pass it on the command line"
        ));
    };
    let values = select_values(&option["options"]);
    let Some((value, _)) = values
        .iter()
        .find(|(id, name)| id.eq_ignore_ascii_case(model) || name.eq_ignore_ascii_case(model))
    else {
        let offered: Vec<&str> = values.iter().map(|(id, _)| id.as_str()).collect();
        return Err(format!(
            "the agent offers no model '{model}'; it offers: {}",
            offered.join(", ")
        ));
    };
    let config_id = option["id"].as_str().unwrap_or_default().to_string();
    let request =
        SetSessionConfigOptionRequest::new(new.session_id.clone(), config_id, value.as_str());
    cx.send_request(request)
        .block_task()
        .await
        .map_err(|e| protocol_error(&format!("selecting model {value} failed"), e))?;
    session.tell(&format!(
        "model {value} selected through the session's model option"
    ));
    Ok(())
}

/// The (value id, name) pairs of a select option, grouped or not.
fn select_values(options: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for o in options.as_array().into_iter().flatten() {
        if let Some(group) = o["options"].as_array() {
            out.extend(select_values(&Value::Array(group.clone())));
        } else if let Some(id) = o["value"].as_str() {
            let name = o["name"].as_str().unwrap_or(id);
            out.push((id.to_string(), name.to_string()));
        }
    }
    out
}

/// One turn: the prompt, then its stop reason and whether a pause or an
/// interrupt (not a close) cut it short. An interrupt (a pause, an
/// editor's cancel, a cancel, the timeout) sends
/// `session/cancel` and the turn ends as the agent ends it; modes asked
/// meanwhile are sent as they come.
async fn prompt(
    cx: &Connection,
    session: &Session,
    id: &SessionId,
    text: &str,
) -> Result<(StopReason, bool), AcpError> {
    session.prompted(text);
    session.turn_end_sent.store(false, Ordering::SeqCst);
    let request = PromptRequest::new(
        id.clone(),
        vec![ContentBlock::Text(TextContent::new(text.to_string()))],
    );
    let sent = cx.send_request(request).block_task();
    tokio::pin!(sent);
    loop {
        tokio::select! {
            r = &mut sent => return r.map(|r| (r.stop_reason, false)),
            _ = session.steer.notified() => set_modes(cx, session, id).await,
            _ = session.interrupt.notified() => {
                if session.interrupting() {
                    let kept = !session.closing();
                    // The shim kills the process tree if the agent does
                    // not end the turn within the grace.
                    let _ = cx.send_notification(CancelNotification::new(id.clone()));
                    return sent.await.map(|r| (r.stop_reason, kept));
                }
            }
        }
    }
}

/// Sends the modes asked for (`session/set_mode`); a mode the agent
/// refuses is noted in the transcript and the turn goes on.
async fn set_modes(cx: &Connection, session: &Session, id: &SessionId) {
    while let Some(mode) = session.next_mode() {
        let request = SetSessionModeRequest::new(id.clone(), mode.clone());
        match cx.send_request(request).block_task().await {
            Ok(_) => session.note(&format!("mode {mode} asked (grove mode)")),
            Err(e) => session.note(&format!("the agent refused mode {mode}: {e}")),
        }
    }
}
