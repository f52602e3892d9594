//! Connection and session setup: `initialize`, `session/new`,
//! `session/load`, `session/set_mode`, `session/cancel`; joining the
//! workspace's grove on the first session.

use super::error::AcpError;
use super::{Session, Shared};
use crate::config::Config;
use crate::protocol::{Method, TaskStatus};
use agent_client_protocol_schema::ProtocolVersion;
use agent_client_protocol_schema::v1 as schema;
use schema::{SessionId, SessionModeState};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;

/// The ACP version this agent speaks (its latest and only one).
const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion::V1;

/// How long a new session waits for some member to become primary.
const PRIMARY_WAIT: Duration = Duration::from_secs(15);

/// The client names the latest version it supports; an agent that does not
/// speak that one answers with its own latest, and the client decides
/// whether it can go on. Version 1 is the only one either side knows.
pub fn initialize(_req: &schema::InitializeRequest) -> schema::InitializeResponse {
    let capabilities = schema::AgentCapabilities::new()
        .load_session(true)
        .prompt_capabilities(
            schema::PromptCapabilities::new()
                .image(false)
                .audio(false)
                .embedded_context(true),
        )
        .mcp_capabilities(schema::McpCapabilities::new().http(false).sse(false));
    schema::InitializeResponse::new(PROTOCOL_VERSION)
        .agent_capabilities(capabilities)
        .auth_methods(Vec::new())
        .agent_info(
            schema::Implementation::new("grove", env!("CARGO_PKG_VERSION"))
                .title("grove".to_string()),
        )
}

pub async fn new_session(
    agent: &Shared,
    req: schema::NewSessionRequest,
) -> Result<schema::NewSessionResponse, AcpError> {
    let cwd = checked_cwd(&req.cwd)?;
    bind_workspace(agent, &cwd)?;
    wait_for_primary(agent).await?;
    let id = uuid::Uuid::new_v4().to_string();
    let record = Method::SessionCreate {
        id: id.clone(),
        cwd: cwd.display().to_string(),
    };
    super::call(agent, record).await?;
    let modes = open_session(agent, &id);
    Ok(schema::NewSessionResponse::new(id).modes(modes))
}

pub async fn load_session(
    agent: &Shared,
    req: schema::LoadSessionRequest,
) -> Result<schema::LoadSessionResponse, AcpError> {
    let cwd = checked_cwd(&req.cwd)?;
    let id = req.session_id;
    bind_workspace(agent, &cwd)?;
    let ws = agent.borrow().ws.clone().ok_or(AcpError::NoWorkspace)?;
    let reader = crate::store::Reader::open(&ws.db_path())?;
    if reader.session_cwd(&id.0)?.is_none() {
        return Err(AcpError::UnknownSession(id.to_string()));
    }
    // History first, then the response (the client shows it as it arrives).
    let upto = reader.last_seq()?;
    super::prompt::replay(agent, &reader, &id, upto).await?;
    open_session(agent, &id.0);
    reattach(agent, &reader, &id, upto)?;
    let modes = open_session(agent, &id.0);
    Ok(schema::LoadSessionResponse::new().modes(modes))
}

/// Takes up the session's agent conversation in this window: its task is
/// the session's, and a turn still running (started by a window that may
/// be gone) is followed to its end from just after the replay; a
/// permission request still waiting is asked here.
fn reattach(
    agent: &Shared,
    reader: &crate::store::Reader,
    id: &SessionId,
    upto: u64,
) -> Result<(), AcpError> {
    let Some(task) = super::relay::live_agent_task(reader, id)? else {
        return Ok(());
    };
    let mut a = agent.borrow_mut();
    if let Some(s) = a.sessions.get_mut(&*id.0) {
        s.agent_task = Some(task.id.clone());
        s.engine = task.spec.engine.clone();
    }
    if task.status == TaskStatus::Waiting
        && let Some(request) =
            reader.last_agent_update(&task.id, crate::store::agent::PERMISSION_REQUEST)?
    {
        let (asker, session, task_id) = (agent.clone(), id.clone(), task.id.clone());
        a.spawn(async move {
            super::relay::ask_pending(&asker, &session, &task_id, &request).await;
        });
    }
    // Not when this window follows the session already: its own prompt
    // (a reload of a thread whose turn runs) or an earlier load's follower.
    let prompting = a.sessions.get(&*id.0).is_some_and(|s| s.cancel.is_some());
    drop(a);
    if matches!(task.status, TaskStatus::Running | TaskStatus::Waiting)
        && !prompting
        && let Some(view) = super::relay::View::take(agent, id)
    {
        let (follower, session) = (agent.clone(), id.clone());
        let following = super::relay::Following::Loaded(view);
        agent.borrow_mut().spawn(async move {
            super::relay::follow(&follower, &session, &task.id, upto + 1, following).await;
        });
    }
    Ok(())
}

/// Holds the session in this process (in the default mode unless it is
/// already held) and returns its modes.
fn open_session(agent: &Shared, id: &str) -> SessionModeState {
    let mut a = agent.borrow_mut();
    let engine = a.config.default_engine.clone();
    let session = a.sessions.entry(id.to_string()).or_insert(Session {
        engine,
        cancel: None,
        agent_task: None,
        viewed: Default::default(),
    });
    let current = session.engine.clone();
    SessionModeState::new(current, offered_modes(&a.config))
}

/// The modes offered: the engines whose command is installed here.
fn offered_modes(config: &Config) -> Vec<schema::SessionMode> {
    config
        .engines
        .iter()
        .filter(|(_, e)| crate::orchestrator::engines::find_binary(&e.command[0]).is_some())
        .map(|(name, e)| {
            schema::SessionMode::new(name.clone(), name.clone()).description(e.command.join(" "))
        })
        .collect()
}

/// Only an offered mode is accepted: a prompt in a mode whose engine is not
/// installed could only fail.
pub async fn set_mode(
    agent: &Shared,
    req: schema::SetSessionModeRequest,
) -> Result<schema::SetSessionModeResponse, AcpError> {
    let mode = req.mode_id.0.to_string();
    let out = {
        let mut a = agent.borrow_mut();
        let offered: Vec<String> = offered_modes(&a.config)
            .into_iter()
            .map(|m| m.id.0.to_string())
            .collect();
        if !offered.contains(&mode) {
            return Err(AcpError::ModeNotOffered {
                asked: mode,
                offered,
            });
        }
        let out = a.out.clone();
        let session = a
            .sessions
            .get_mut(&*req.session_id.0)
            .ok_or_else(|| AcpError::UnknownSession(req.session_id.to_string()))?;
        session.engine = mode;
        out
    };
    let update = schema::CurrentModeUpdate::new(req.mode_id);
    out.update(
        &req.session_id,
        schema::SessionUpdate::CurrentModeUpdate(update),
    )
    .await;
    Ok(schema::SetSessionModeResponse::new())
}

pub fn cancel(agent: &Shared, session: &SessionId) {
    if let Some(n) = agent
        .borrow()
        .sessions
        .get(&*session.0)
        .and_then(|s| s.cancel.clone())
    {
        n.notify_one();
    }
}

fn checked_cwd(cwd: &Path) -> Result<PathBuf, AcpError> {
    if !cwd.is_absolute() || !cwd.is_dir() {
        return Err(AcpError::BadCwd(cwd.to_path_buf()));
    }
    Ok(cwd.to_path_buf())
}

/// Binds this process to a workspace (on the first session) and joins its
/// grove as a member.
fn bind_workspace(agent: &Shared, cwd: &Path) -> Result<(), AcpError> {
    let mut a = agent.borrow_mut();
    if let Some(ws) = &a.ws {
        let cwd = std::fs::canonicalize(cwd).unwrap_or_else(|_| cwd.to_path_buf());
        if !cwd.starts_with(&ws.root) {
            return Err(AcpError::OutsideWorkspace {
                root: ws.root.clone(),
                cwd,
            });
        }
        return Ok(());
    }
    let root = a
        .fixed_workspace
        .clone()
        .unwrap_or_else(|| cwd.to_path_buf());
    let ws = crate::paths::Workspace::resolve(&root)?;
    let config = Config::load(&ws.state_dir)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let opts = crate::node::NodeOptions {
        ws: ws.clone(),
        config: config.clone(),
        kind: "acp",
        idle_exit: None,
        events_log: None,
    };
    let task = tokio::task::spawn_local(async move {
        if let Err(e) =
            crate::loop_watch::watched("member", crate::node::serve_until(opts, stop_rx)).await
        {
            tracing::error!("acp: the grove member stopped: {e}");
        }
    });
    a.ws = Some(ws);
    a.config = config;
    a.member = Some((stop_tx, task));
    Ok(())
}

/// Waits until some primary (maybe this very process) answers.
async fn wait_for_primary(agent: &Shared) -> Result<(), AcpError> {
    let (ws, config) = {
        let a = agent.borrow();
        (a.ws.clone().ok_or(AcpError::NoWorkspace)?, a.config.clone())
    };
    let mut client = crate::client::Client::new(&ws, &config, "acp");
    crate::client::wait_for_primary(&mut client, PRIMARY_WAIT).await?;
    Ok(())
}
