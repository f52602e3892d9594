//! `grove acp`: grove as an Agent Client Protocol (v1) agent on stdio, and
//! at the same time a member of the workspace's grove (primary or secondary,
//! with failover like any other member).
//!
//! stdout carries only protocol messages (newline-delimited JSON-RPC 2.0);
//! logs go to stderr. The read loop never waits for a prompt: each prompt
//! runs as its own local task, so `session/cancel` is read while it runs.
//!
//! Every message in and out is an official ACP type from the
//! `agent-client-protocol-schema` crate (the serde types Zed uses):
//! JSON-RPC envelopes, each method's params and result, session updates,
//! error objects. The connection layer is ours rather than the
//! `agent-client-protocol` crate's: that crate does run on a
//! single-threaded runtime, but it queues outgoing messages on an unbounded
//! channel and reads lines of any length, while this agent must bound both
//! (an editor that stops reading, or sends one endless line, must not grow
//! our memory) and lives inside a grove member's event loop (election,
//! failover, store reads). The framing is ~150 lines (framing.rs).

mod cards;
mod error;
pub mod framing;
mod prompt;
mod relay;
mod session;
mod slash;

use crate::config::Config;
use crate::paths::Workspace;
use crate::protocol::{Method, ReplyBody};
use agent_client_protocol_schema::v1 as schema;
use error::AcpError;
use framing::Out;
use schema::{AgentResponse, RequestId};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

/// One ACP session as this process holds it.
pub struct Session {
    /// The current mode: the engine prompts run with.
    pub engine: String,
    /// Set while a prompt runs: notified by `session/cancel`.
    pub cancel: Option<Rc<Notify>>,
    /// The task that holds this session's conversation with an ACP engine's
    /// agent (a kept session), once one was started or found.
    pub agent_task: Option<String>,
    /// A follower shows the agent's updates in this window now
    /// (`relay::View`).
    pub viewed: std::rc::Rc<std::cell::Cell<bool>>,
}

/// The agent's state, shared with running prompts.
pub struct Agent {
    pub out: Out,
    fixed_workspace: Option<PathBuf>,
    pub ws: Option<Workspace>,
    pub config: Config,
    /// By session id.
    pub sessions: HashMap<String, Session>,
    member: Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>,
    /// Running turns and the tracker of spawned cards; aborted when the
    /// client goes away (the tasks themselves run on in the grove).
    background: JoinSet<()>,
    /// Cards of tasks started by `/spawn`, still to be finished.
    pub spawned: cards::Spawned,
    /// Our requests to the client (permission requests of a relayed
    /// agent) waiting for its response, by request id; bounded by the
    /// agents' own requests, one pending per task at a time.
    pub asked: HashMap<String, tokio::sync::oneshot::Sender<Result<Value, Value>>>,
    next_request: i64,
}

pub type Shared = Rc<RefCell<Agent>>;

impl Agent {
    /// A new id for a request to the client, and where its answer goes.
    pub fn ask(
        &mut self,
    ) -> (
        RequestId,
        tokio::sync::oneshot::Receiver<Result<Value, Value>>,
    ) {
        self.next_request += 1;
        let id = RequestId::Str(format!("grove-{}", self.next_request));
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.asked.insert(request_key(&id), tx);
        (id, rx)
    }

    /// The client answered one of our requests.
    fn answered(&mut self, response: schema::Response<Value, Value>) {
        let (id, result) = match response {
            schema::Response::Result { id, result } => (id, Ok(result)),
            schema::Response::Error { id, error } => (id, Err(error)),
        };
        if let Some(tx) = self.asked.remove(&request_key(&id)) {
            let _ = tx.send(result);
        }
    }

    /// Runs `work` beside the read loop.
    pub fn spawn(&mut self, work: impl Future<Output = ()> + 'static) {
        // Reap what finished, so the set holds only what runs.
        while self.background.try_join_next().is_some() {}
        self.background.spawn_local(work);
    }
}

/// Entry point of `grove acp`. Runs until EOF on stdin or EPIPE on stdout.
pub async fn run(workspace: Option<PathBuf>) -> i32 {
    tokio::task::LocalSet::new()
        .run_until(serve(workspace))
        .await
}

async fn serve(workspace: Option<PathBuf>) -> i32 {
    let (out, rx) = Out::channel();
    let stdout_closed = Rc::new(Notify::new());
    let writer = tokio::task::spawn_local(framing::write_lines(rx, stdout_closed.clone()));
    let agent: Shared = Rc::new(RefCell::new(Agent {
        out: out.clone(),
        fixed_workspace: workspace,
        ws: None,
        config: Config::default(),
        sessions: HashMap::new(),
        member: None,
        background: JoinSet::new(),
        spawned: cards::Spawned::default(),
        asked: HashMap::new(),
        next_request: 0,
    }));
    let mut lines = framing::LineReader::new(tokio::io::stdin());
    loop {
        tokio::select! {
            line = lines.next() => match line {
                framing::Line::Eof => break,
                framing::Line::TooLong => out.fail(RequestId::Null, &AcpError::LineTooLong).await,
                framing::Line::Text(text) => handle_line(&agent, &text).await,
            },
            _ = stdout_closed.notified() => break,
        }
    }
    tracing::info!("acp: input closed; leaving the grove");
    let (member, mut background) = {
        let mut a = agent.borrow_mut();
        (a.member.take(), std::mem::take(&mut a.background))
    };
    background.shutdown().await;
    if let Some((stop, task)) = member {
        let _ = stop.send(true);
        let _ = task.await;
    }
    drop((agent, out));
    let _ = writer.await;
    0
}

/// A message from the client, in the official JSON-RPC envelopes; the
/// params are decoded by method (`Call::decode`).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Incoming {
    Request(schema::Request<Value>),
    Notification(schema::Notification<Value>),
    /// To a request of ours (a relayed permission request).
    Response(schema::Response<Value, Value>),
}

/// Whether the message has an `id` member (a notification has none).
fn has_id(text: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Id {
        id: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_str::<Id>(text).is_ok_and(|m| m.id.is_some())
}

fn request_key(id: &RequestId) -> String {
    serde_json::to_string(id).unwrap_or_default()
}

/// The requests this agent serves, each with its official params type.
/// (The schema's `ClientRequest` also lists methods grove does not serve,
/// such as `session/list` or `logout`, and is non-exhaustive: routing on it
/// would need arms that cannot happen.)
enum Call {
    Initialize(Box<schema::InitializeRequest>),
    Authenticate(schema::AuthenticateRequest),
    NewSession(schema::NewSessionRequest),
    LoadSession(schema::LoadSessionRequest),
    SetMode(schema::SetSessionModeRequest),
    Prompt(schema::PromptRequest),
}

impl Call {
    fn decode(method: &str, params: Option<Value>) -> Result<Call, AcpError> {
        fn params_of<T: DeserializeOwned>(method: &'static str, v: Value) -> Result<T, AcpError> {
            serde_json::from_value(v).map_err(|source| AcpError::Params { method, source })
        }
        let names = &schema::AGENT_METHOD_NAMES;
        // Absent params decode like `{}`: types whose fields are all
        // optional still decode, the others name the missing field.
        let v = params.unwrap_or_else(|| Value::Object(Default::default()));
        Ok(match method {
            m if m == names.initialize => Call::Initialize(params_of(names.initialize, v)?),
            m if m == names.authenticate => Call::Authenticate(params_of(names.authenticate, v)?),
            m if m == names.session_new => Call::NewSession(params_of(names.session_new, v)?),
            m if m == names.session_load => Call::LoadSession(params_of(names.session_load, v)?),
            m if m == names.session_set_mode => {
                Call::SetMode(params_of(names.session_set_mode, v)?)
            }
            m if m == names.session_prompt => Call::Prompt(params_of(names.session_prompt, v)?),
            other => return Err(AcpError::MethodNotFound(other.to_string())),
        })
    }
}

async fn handle_line(agent: &Shared, text: &str) {
    let out = agent.borrow().out.clone();
    let msg = match serde_json::from_str::<Incoming>(text) {
        Ok(m) => m,
        Err(e) if e.is_data() => return out.fail(RequestId::Null, &AcpError::NotJsonRpc).await,
        Err(e) => return out.fail(RequestId::Null, &AcpError::Parse(e)).await,
    };
    match msg {
        Incoming::Request(r) => match Call::decode(&r.method, r.params) {
            Ok(call) => dispatch(agent, r.id, call).await,
            Err(e) => out.fail(r.id, &e).await,
        },
        // A request whose id is neither a string, an integer nor null
        // reads as a notification: its sender would wait for ever.
        Incoming::Notification(_) if has_id(text) => {
            out.fail(RequestId::Null, &AcpError::BadRequestId).await
        }
        Incoming::Notification(n) => notification(agent, &n.method, n.params),
        Incoming::Response(r) => agent.borrow_mut().answered(r),
    }
}

/// Runs one request and answers it.
async fn dispatch(agent: &Shared, id: RequestId, call: Call) {
    let out = agent.borrow().out.clone();
    // The session to tell about the slash commands, once it knows its id.
    let mut advertise = None;
    let result = match call {
        Call::Initialize(r) => Ok(AgentResponse::InitializeResponse(session::initialize(&r))),
        Call::Authenticate(r) => {
            // No auth method is advertised: nothing to check.
            tracing::debug!("acp: authenticate with {} accepted", r.method_id);
            Ok(AgentResponse::AuthenticateResponse(Default::default()))
        }
        Call::NewSession(r) => session::new_session(agent, r).await.map(|resp| {
            advertise = Some(resp.session_id.clone());
            AgentResponse::NewSessionResponse(resp)
        }),
        Call::LoadSession(r) => {
            let sid = r.session_id.clone();
            session::load_session(agent, r).await.map(|resp| {
                advertise = Some(sid);
                AgentResponse::LoadSessionResponse(resp)
            })
        }
        Call::SetMode(r) => session::set_mode(agent, r)
            .await
            .map(AgentResponse::SetSessionModeResponse),
        // Answered when the turn ends.
        Call::Prompt(r) => return prompt::start(agent, id, r).await,
    };
    match result {
        Ok(v) => out.respond(id, v).await,
        Err(e) => out.fail(id, &e).await,
    }
    if let Some(sid) = advertise {
        let commands = slash::available_commands();
        out.update(
            &sid,
            schema::SessionUpdate::AvailableCommandsUpdate(commands),
        )
        .await;
    }
}

/// Notifications: only `session/cancel` means something; others are
/// ignored, as JSON-RPC has no way to refuse them.
fn notification(agent: &Shared, method: &str, params: Option<Value>) {
    if method != schema::AGENT_METHOD_NAMES.session_cancel {
        return;
    }
    match serde_json::from_value::<schema::CancelNotification>(params.unwrap_or_default()) {
        Ok(n) => session::cancel(agent, &n.session_id),
        Err(e) => tracing::warn!("acp: ignoring a session/cancel with invalid params: {e}"),
    }
}

/// Calls the primary over RPC (a fresh client follows any failover).
pub async fn call(agent: &Shared, method: Method) -> Result<ReplyBody, AcpError> {
    let (ws, config) = {
        let a = agent.borrow();
        (a.ws.clone().ok_or(AcpError::NoWorkspace)?, a.config.clone())
    };
    let mut client = crate::client::Client::new(&ws, &config, "acp");
    Ok(client.call(method).await?)
}
