//! `grove acp`: grove as an Agent Client Protocol (v1) agent on stdio, and
//! at the same time a member of the workspace's grove (primary or secondary,
//! with failover like any other member).
//!
//! stdout carries only protocol messages (newline-delimited JSON-RPC 2.0);
//! logs go to stderr. The read loop never waits for a prompt: each prompt
//! runs as its own local task, so `session/cancel` is read while it runs.
//!
//! Why the JSON-RPC layer is hand-written rather than the official
//! `agent-client-protocol` crate's agent side: that crate (v5) owns the
//! connection's dispatch loop and runs callbacks inside it, while this agent
//! must live inside a grove member's event loop (election, failover, store
//! reads) on a single-threaded runtime. The framing is ~100 lines; the
//! message shapes follow the ACP v1 schema and are checked by the tests with
//! the official Python client (pydantic-validated) and by deserializing
//! every message into the official Rust schema types that Zed uses.

pub mod framing;
mod prompt;

use crate::config::Config;
use crate::paths::Workspace;
use crate::protocol::Method;
use serde_json::{Value, json};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tokio::sync::{Notify, mpsc, watch};

/// JSON-RPC error codes.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;

/// The ACP protocol version this agent speaks.
const PROTOCOL_VERSION: u64 = 1;

/// Where outgoing messages go (the stdout writer task).
#[derive(Clone)]
pub struct Out(mpsc::UnboundedSender<Value>);

impl Out {
    pub fn respond(&self, id: &Value, result: Value) {
        let _ = self
            .0
            .send(json!({"jsonrpc": "2.0", "id": id, "result": result}));
    }

    pub fn error(&self, id: &Value, code: i64, message: impl Into<String>) {
        let _ = self.0.send(json!({
            "jsonrpc": "2.0", "id": id,
            "error": {"code": code, "message": message.into()},
        }));
    }

    /// A `session/update` notification.
    pub fn update(&self, session: &str, update: Value) {
        let _ = self.0.send(json!({
            "jsonrpc": "2.0", "method": "session/update",
            "params": {"sessionId": session, "update": update},
        }));
    }

    pub fn say(&self, session: &str, text: &str) {
        self.update(
            session,
            json!({"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": text}}),
        );
    }
}

/// One ACP session as this process holds it.
pub struct Session {
    pub engine: String,
    /// Set while a prompt runs: notified by `session/cancel`.
    pub cancel: Option<Rc<Notify>>,
}

/// The agent's state, shared with running prompts.
pub struct Agent {
    pub out: Out,
    fixed_workspace: Option<PathBuf>,
    pub ws: Option<Workspace>,
    pub config: Config,
    pub sessions: HashMap<String, Session>,
    member: Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>,
}

pub type Shared = Rc<RefCell<Agent>>;

/// Entry point of `grove acp`. Runs until EOF on stdin or EPIPE on stdout.
pub async fn run(workspace: Option<PathBuf>) -> i32 {
    tokio::task::LocalSet::new()
        .run_until(serve(workspace))
        .await
}

async fn serve(workspace: Option<PathBuf>) -> i32 {
    let (tx, rx) = mpsc::unbounded_channel();
    let stdout_closed = Rc::new(Notify::new());
    let writer = tokio::task::spawn_local(framing::write_lines(rx, stdout_closed.clone()));
    let agent: Shared = Rc::new(RefCell::new(Agent {
        out: Out(tx),
        fixed_workspace: workspace,
        ws: None,
        config: Config::default(),
        sessions: HashMap::new(),
        member: None,
    }));
    let mut lines = framing::LineReader::new(tokio::io::stdin());
    loop {
        tokio::select! {
            line = lines.next() => match line {
                framing::Line::Eof => break,
                framing::Line::TooLong => {
                    let out = agent.borrow().out.clone();
                    out.error(&Value::Null, PARSE_ERROR, "line exceeds the 16 MiB limit");
                }
                framing::Line::Text(text) => handle_line(&agent, &text).await,
            },
            _ = stdout_closed.notified() => break,
        }
    }
    tracing::info!("acp: input closed; leaving the grove");
    let member = agent.borrow_mut().member.take();
    if let Some((stop, task)) = member {
        let _ = stop.send(true);
        let _ = task.await;
    }
    drop(agent);
    let _ = writer.await;
    0
}

async fn handle_line(agent: &Shared, text: &str) {
    let out = agent.borrow().out.clone();
    let msg: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return out.error(&Value::Null, PARSE_ERROR, format!("parse error: {e}")),
    };
    let Some(obj) = msg.as_object() else {
        return out.error(
            &Value::Null,
            INVALID_REQUEST,
            "a message must be a JSON object",
        );
    };
    let id = obj.get("id").cloned();
    let Some(method) = obj.get("method").and_then(Value::as_str) else {
        if obj.contains_key("result") || obj.contains_key("error") {
            return; // a response to a request we never send: ignore
        }
        return out.error(&id.unwrap_or(Value::Null), INVALID_REQUEST, "no method");
    };
    let params = obj.get("params").cloned().unwrap_or(Value::Null);
    let Some(id) = id else {
        // Notifications: only cancel means something; others are ignored.
        if method == "session/cancel"
            && let Some(s) = params.get("sessionId").and_then(Value::as_str)
        {
            cancel(agent, s);
        }
        return;
    };
    let result = match method {
        "initialize" => Ok(initialize(&params)),
        "authenticate" => Ok(json!({})),
        "session/new" => new_session(agent, &params).await,
        "session/load" => load_session(agent, &params).await,
        "session/set_mode" => set_mode(agent, &params),
        "session/prompt" => {
            return prompt::start(agent, id, &params);
        }
        _ => Err((METHOD_NOT_FOUND, format!("method not found: {method}"))),
    };
    match result {
        Ok(v) => out.respond(&id, v),
        Err((code, message)) => out.error(&id, code, message),
    }
    if method == "session/new" || method == "session/load" {
        // Advertised once the client knows the session id.
        let session = agent
            .borrow()
            .sessions
            .keys()
            .find(|k| params.get("sessionId").and_then(Value::as_str) == Some(k.as_str()))
            .cloned();
        if let Some(s) = session.or_else(|| last_session_id(agent)) {
            out.update(&s, prompt::available_commands());
        }
    }
}

fn last_session_id(agent: &Shared) -> Option<String> {
    agent.borrow().sessions.keys().last().cloned()
}

pub type RpcResult = Result<Value, (i64, String)>;

fn invalid(message: impl Into<String>) -> (i64, String) {
    (INVALID_PARAMS, message.into())
}

fn initialize(params: &Value) -> Value {
    let asked = params
        .get("protocolVersion")
        .and_then(Value::as_u64)
        .unwrap_or(PROTOCOL_VERSION);
    json!({
        "protocolVersion": asked.min(PROTOCOL_VERSION),
        "agentCapabilities": {
            "loadSession": true,
            "promptCapabilities": {"image": false, "audio": false, "embeddedContext": true},
            "mcpCapabilities": {"http": false, "sse": false},
        },
        "authMethods": [],
        "agentInfo": {"name": "grove", "title": "grove", "version": env!("CARGO_PKG_VERSION")},
    })
}

/// Binds this process to a workspace (on the first session) and joins its
/// grove as a member.
fn bind_workspace(agent: &Shared, cwd: &Path) -> Result<(), (i64, String)> {
    let mut a = agent.borrow_mut();
    if let Some(ws) = &a.ws {
        let cwd = std::fs::canonicalize(cwd).unwrap_or_else(|_| cwd.to_path_buf());
        if !cwd.starts_with(&ws.root) {
            return Err(invalid(format!(
                "this grove agent serves {}; {} is outside it (start another `grove acp` there)",
                ws.root.display(),
                cwd.display()
            )));
        }
        return Ok(());
    }
    let root = a
        .fixed_workspace
        .clone()
        .unwrap_or_else(|| cwd.to_path_buf());
    let ws = Workspace::resolve(&root).map_err(|e| invalid(e.to_string()))?;
    let config = Config::load(&ws.state_dir).map_err(|e| invalid(e.to_string()))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let opts = crate::node::NodeOptions {
        ws: ws.clone(),
        config: config.clone(),
        kind: "acp",
        idle_exit: None,
        events_log: None,
    };
    let task = tokio::task::spawn_local(async move {
        if let Err(e) = crate::node::serve_until(opts, stop_rx).await {
            tracing::error!("acp: the grove member stopped: {e}");
        }
    });
    a.ws = Some(ws);
    a.config = config;
    a.member = Some((stop_tx, task));
    Ok(())
}

/// Waits until some primary (maybe this very process) answers.
async fn wait_for_primary(agent: &Shared) -> Result<(), (i64, String)> {
    let (ws, config) = {
        let a = agent.borrow();
        (
            a.ws.clone().ok_or_else(|| invalid("no workspace"))?,
            a.config.clone(),
        )
    };
    let mut client = crate::client::Client::new(&ws, &config, "acp");
    crate::client::wait_for_primary(&mut client, std::time::Duration::from_secs(15))
        .await
        .map(|_| ())
        .map_err(|e| (INTERNAL_ERROR, e.to_string()))
}

fn cwd_param(params: &Value) -> Result<PathBuf, (i64, String)> {
    let cwd = params
        .get("cwd")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("cwd is required"))?;
    let path = PathBuf::from(cwd);
    if !path.is_absolute() || !path.is_dir() {
        return Err(invalid(format!(
            "cwd must be an absolute directory, got {cwd}"
        )));
    }
    Ok(path)
}

fn modes(agent: &Agent, current: &str) -> Value {
    let available: Vec<Value> = agent
        .config
        .engines
        .iter()
        .filter(|(_, e)| crate::orchestrator::engines::find_binary(&e.command[0]).is_some())
        .map(|(name, e)| json!({"id": name, "name": name, "description": e.command.join(" ")}))
        .collect();
    json!({"currentModeId": current, "availableModes": available})
}

async fn new_session(agent: &Shared, params: &Value) -> RpcResult {
    let cwd = cwd_param(params)?;
    bind_workspace(agent, &cwd)?;
    wait_for_primary(agent).await?;
    let id = uuid::Uuid::new_v4().to_string();
    let record = Method::SessionCreate {
        id: id.clone(),
        cwd: cwd.display().to_string(),
    };
    prompt::call(agent, record)
        .await
        .map_err(|e| (INTERNAL_ERROR, e))?;
    let mut a = agent.borrow_mut();
    let engine = a.config.default_engine.clone();
    let modes = modes(&a, &engine);
    a.sessions.insert(
        id.clone(),
        Session {
            engine,
            cancel: None,
        },
    );
    Ok(json!({"sessionId": id, "modes": modes}))
}

async fn load_session(agent: &Shared, params: &Value) -> RpcResult {
    let cwd = cwd_param(params)?;
    let id = params
        .get("sessionId")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("sessionId is required"))?
        .to_string();
    bind_workspace(agent, &cwd)?;
    let ws = agent
        .borrow()
        .ws
        .clone()
        .ok_or_else(|| invalid("no workspace"))?;
    let reader = crate::store::Reader::open(&ws.db_path()).map_err(|e| invalid(e.to_string()))?;
    if reader
        .session_cwd(&id)
        .map_err(|e| invalid(e.to_string()))?
        .is_none()
    {
        return Err(invalid(format!("unknown session {id}")));
    }
    // History first, then the response (the client shows it as it arrives).
    prompt::replay(agent, &reader, &id).map_err(|e| (INTERNAL_ERROR, e))?;
    let mut a = agent.borrow_mut();
    let engine = a.config.default_engine.clone();
    let modes = modes(&a, &engine);
    a.sessions.entry(id).or_insert(Session {
        engine,
        cancel: None,
    });
    Ok(json!({"modes": modes}))
}

fn set_mode(agent: &Shared, params: &Value) -> RpcResult {
    let session = params
        .get("sessionId")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("sessionId is required"))?;
    let mode = params
        .get("modeId")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("modeId is required"))?;
    let mut a = agent.borrow_mut();
    if !a.config.engines.contains_key(mode) {
        return Err(invalid(format!("no mode (engine) {mode}")));
    }
    let out = a.out.clone();
    let s = a
        .sessions
        .get_mut(session)
        .ok_or_else(|| invalid(format!("unknown session {session}")))?;
    s.engine = mode.to_string();
    out.update(
        session,
        json!({"sessionUpdate": "current_mode_update", "currentModeId": mode}),
    );
    Ok(json!({}))
}

fn cancel(agent: &Shared, session: &str) {
    if let Some(n) = agent
        .borrow()
        .sessions
        .get(session)
        .and_then(|s| s.cancel.clone())
    {
        n.notify_one();
    }
}
