//! The shim of an `acp` engine: the ACP client of its agent. It holds the
//! agent's stdio, so the death of any member — the primary included — never
//! interrupts a turn; the agent's session updates reach whoever is primary
//! through the outbox (`outbox.rs`), and the last turn's stop reason
//! decides how the task ends. A kept session (`--session`) waits idle
//! between turns until a follow-up, `grove close` or its idle timeout.

mod conversation;
mod fs;
pub mod host;
mod outbox;
mod steering;
mod transcript;
mod transport;
mod warm;

use super::open_log;
use super::supervise::{Clock, command, sleep_until, terminate};
use crate::config::Config;
use crate::paths::Workspace;
use crate::protocol::{ExitOutcome, WarmUse, now_ms};
use crate::runs::signals::{self, Control, Signals};
use crate::runs::tree;
use crate::runs::{AcpSpec, ExitRecord, RunFiles, RunRecord, ShimSpec};
pub use crate::store::agent::{IDLE, PERMISSION_REQUEST, TURN_END};
use agent_client_protocol::v1::schema::StopReason;
use conversation::Turn;
use outbox::Outbox;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use steering::Session;

/// How long the conversation may take to end after the agent exited (its
/// last lines are still being read).
const DRAIN: Duration = Duration::from_secs(2);

/// How the turn ended, before it is written as an exit record.
struct Ended {
    outcome: ExitOutcome,
    status: Option<std::process::ExitStatus>,
    message: Option<String>,
}

fn stopped(reason: StopReason) -> (ExitOutcome, &'static str) {
    match reason {
        StopReason::EndTurn => (ExitOutcome::EndTurn, "end_turn"),
        StopReason::Refusal => (ExitOutcome::Refusal, "refusal"),
        StopReason::MaxTokens => (ExitOutcome::MaxTokens, "max_tokens"),
        StopReason::MaxTurnRequests => (ExitOutcome::MaxTurnRequests, "max_turn_requests"),
        StopReason::Cancelled => (ExitOutcome::Cancelled, "cancelled"),
        #[allow(unreachable_patterns)]
        _ => (ExitOutcome::AgentError, "unknown"),
    }
}

/// Runs the agent through one turn and says how it ended. Every update is
/// acknowledged by a primary (or kept in the run dir, if none answered for
/// long) before this returns, so the exit report comes after them.
pub(super) async fn supervise(
    ws: &Workspace,
    spec: &ShimSpec,
    acp: &AcpSpec,
    record: &mut RunRecord,
) -> ExitRecord {
    let mut warm = None;
    let mut exit = converse(ws, spec, acp, record, &mut warm).await;
    // A warm session that broke (its host or shared agent gone, the
    // session refused) fails the task: counted, never rerun cold.
    if matches!(warm, Some(WarmUse::Hit | WarmUse::Started))
        && exit.outcome == ExitOutcome::AgentError
    {
        warm = Some(WarmUse::Failed);
    }
    exit.warm = warm;
    exit
}

async fn converse(
    ws: &Workspace,
    spec: &ShimSpec,
    acp: &AcpSpec,
    record: &mut RunRecord,
    warm: &mut Option<WarmUse>,
) -> ExitRecord {
    let finish = |e: Ended| ExitRecord {
        run_id: spec.run_id.clone(),
        outcome: e.outcome,
        exit_code: e.status.and_then(|s| s.code()),
        signal: e
            .status
            .and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s)),
        message: e.message,
        finished_at: now_ms(),
        conclusion: None,
        warm: None,
    };
    let spawn_error = |m: String| {
        finish(Ended {
            outcome: ExitOutcome::SpawnError,
            status: None,
            message: Some(m),
        })
    };
    let mut signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => return spawn_error(format!("cannot install signal handlers: {e}")),
    };
    let (log, confined) = match prepare(ws, spec) {
        Ok(x) => x,
        Err(m) => return spawn_error(m),
    };
    if signals::cancel_pending() {
        return finish(Ended {
            outcome: ExitOutcome::Cancelled,
            status: None,
            message: Some("cancelled before the agent started".into()),
        });
    }
    // A cancel from here on reaches the handlers and is seen once the
    // agent runs. Before the start: an own agent inherits this thread's
    // mask (std keeps it) and must start with nothing blocked.
    signals::unblock_control();
    let started = match (acp.shared, acp.warm_cap) {
        (true, Some(cap)) => warm::warm_agent(ws, spec, acp, record, cap, warm).await,
        (true, None) => shared(ws, spec, acp).await,
        (false, _) => own(ws, spec, record),
    };
    let (mut agent, reader, writer) = match started {
        Ok(x) => x,
        Err(m) => return spawn_error(m),
    };

    let outbox = Arc::new(Outbox::new(
        &spec.task_id,
        &spec.run_id,
        RunFiles::dir(ws).join(format!("{}.{}.outbox", spec.task_id, spec.run_id)),
    ));
    let config = Config::load_client_settings(&ws.state_dir).unwrap_or_default();
    let client = crate::client::Client::new(ws, &config, &format!("shim-{}", spec.task_id));
    let sender = tokio::spawn({
        let outbox = outbox.clone();
        async move { outbox.send_all(client).await }
    });
    let session = new_session(ws, spec, acp, &outbox, log, confined);
    let fatal: transport::Fatal = Arc::default();
    let closed = Arc::new(tokio::sync::Notify::new());
    match warm {
        Some(WarmUse::CapReached) => session
            .tell("warm reuse: the shared agent is at warm_cap; this task has an agent of its own"),
        Some(WarmUse::NoTarget) => session
            .tell("warm reuse: the shared agent went away; this task has an agent of its own"),
        Some(WarmUse::Hit) => session.tell("warm reuse: a new session on the running shared agent"),
        _ => {}
    }
    if let Agent::Shared { pid, log } = &agent {
        session.tell(&format!(
            "shared agent (pid {}; its host's log: {})",
            pid.map(|p| p.to_string())
                .unwrap_or_else(|| "unknown".into()),
            log.display()
        ));
    }
    let lines = agent_client_protocol::Lines::new(
        transport::outgoing(writer),
        transport::incoming(reader, outbox.clone(), fatal.clone(), closed.clone()),
    );
    let turn = Turn {
        work_dir: spec.work_dir.clone(),
        prompt: acp.prompt.clone(),
        model: acp.model.clone(),
        mcp_servers: session_mcp_servers(ws, spec, acp),
    };
    let conversation = tokio::spawn(conversation::converse(lines, session.clone(), turn));
    let talking = conversation.abort_handle();
    let grace = Duration::from_millis(spec.grace_ms);
    let turn = Watched {
        ws,
        spec,
        acp,
        session: &session,
        fatal: &fatal,
        closed: &closed,
        grace,
    };
    let ended = watch(&mut agent, conversation, &turn, &mut signals).await;
    let stop = json_stop(&ended);
    session.note(&format!(
        "turn ended: {}",
        ended.message.as_deref().unwrap_or(stop)
    ));
    // Unless the conversation said it already: its last turn ended and
    // the session was then closed (by a close, the idle timeout, a cancel).
    if !session
        .turn_end_sent
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        outbox.push(
            "turn_end",
            serde_json::json!({"stopReason": stop, "message": ended.message}),
        );
    }
    // The session ended (its last turn, a close, a cancel): so does the
    // agent, unless it is shared: then only our connection closes (the
    // host cancels the session), and the agent serves the other tasks.
    // Its exit status is not the task's: the agent is stopped by us here.
    match &mut agent {
        Agent::Own { child, pgid } => {
            let _ = terminate(child, *pgid, grace).await;
        }
        Agent::Shared { .. } => talking.abort(),
    }
    outbox.close();
    let _ = sender.await;
    outbox.remove_dir();
    let mut exit = finish(ended);
    exit.conclusion = session.run_conclusion(exit.outcome, exit.exit_code, exit.message.as_deref());
    exit
}

/// The agent's command, the task's log and the workdir confinement, or
/// why the run cannot start.
fn prepare(ws: &Workspace, spec: &ShimSpec) -> Result<(std::fs::File, fs::Confined), String> {
    let log = open_log(&RunFiles::log(ws, &spec.task_id)).map_err(|e| e.to_string())?;
    let confined = fs::Confined::new(&spec.work_dir).map_err(|e| {
        format!(
            "cannot resolve the workdir {}: {e}",
            spec.work_dir.display()
        )
    })?;
    Ok((log, confined))
}

/// The agent the conversation talks to: the shim's own child, or the
/// shared agent behind its host's socket.
enum Agent {
    Own {
        child: tokio::process::Child,
        pgid: u32,
    },
    Shared {
        pid: Option<u32>,
        log: std::path::PathBuf,
    },
}

impl Agent {
    /// The agent's exit; never, for a shared agent (its connection's end
    /// says it is gone).
    async fn exited(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self {
            Agent::Own { child, .. } => child.wait().await,
            Agent::Shared { .. } => std::future::pending().await,
        }
    }

    fn pgid(&self) -> u32 {
        match self {
            Agent::Own { pgid, .. } => *pgid,
            Agent::Shared { .. } => 0,
        }
    }
}

type Reader = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
type Writer = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;

/// Starts the agent as the shim's child, in a process group of its own;
/// the shim becomes the subreaper of whatever it leaves behind.
fn own(
    ws: &Workspace,
    spec: &ShimSpec,
    record: &mut RunRecord,
) -> Result<(Agent, Reader, Writer), String> {
    tree::become_subreaper();
    let mut cmd = command(ws, spec, true)?;
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", spec.argv[0]))?;
    let (Some(pgid), Some(stdin), Some(stdout)) =
        (child.id(), child.stdin.take(), child.stdout.take())
    else {
        return Err("agent vanished".into());
    };
    record.agent_pid = Some(pgid);
    record.agent_start = crate::proc::start_time(pgid);
    let _ = RunFiles::append_run(ws, &spec.task_id, &spec.run_id, record);
    Ok((
        Agent::Own { child, pgid },
        Box::new(stdout),
        Box::new(stdin),
    ))
}

/// Connects to the engine's shared agent (starting its host if none
/// runs). The run record names no agent: what the orchestrator kills
/// when this run ends or its shim dies must never be the shared agent.
async fn shared(
    ws: &Workspace,
    spec: &ShimSpec,
    acp: &AcpSpec,
) -> Result<(Agent, Reader, Writer), String> {
    let c = host::start::connect(ws, spec, acp).await?;
    Ok(on_host(c.stream, c.agent_pid, c.log))
}

fn on_host(
    stream: tokio::net::UnixStream,
    pid: Option<u32>,
    log: std::path::PathBuf,
) -> (Agent, Reader, Writer) {
    let (r, w) = stream.into_split();
    (Agent::Shared { pid, log }, Box::new(r), Box::new(w))
}

/// The conversation's shared state: where updates go, the transcript, the
/// file-system capability, the permission policy and the controls to read.
fn new_session(
    ws: &Workspace,
    spec: &ShimSpec,
    acp: &AcpSpec,
    outbox: &Arc<Outbox>,
    log: std::fs::File,
    confined: fs::Confined,
) -> Arc<Session> {
    let controls = steering::Controls {
        db: ws.db_path(),
        task_id: spec.task_id.clone(),
        run_id: spec.run_id.clone(),
        last: Mutex::new(0),
    };
    Arc::new(Session::new(
        outbox.clone(),
        transcript::Transcript::new(log),
        confined,
        acp.permissions,
        acp.keep_session,
        spec.conclusion,
        controls,
    ))
}

fn json_stop(e: &Ended) -> &'static str {
    match e.outcome {
        ExitOutcome::EndTurn => "end_turn",
        ExitOutcome::Refusal => "refusal",
        ExitOutcome::MaxTokens => "max_tokens",
        ExitOutcome::MaxTurnRequests => "max_turn_requests",
        ExitOutcome::Cancelled => "cancelled",
        ExitOutcome::Timeout => "timeout",
        _ => "error",
    }
}

type Conversation = tokio::task::JoinHandle<Result<StopReason, String>>;

/// The agent exited before its turn ended.
fn died(status: Option<std::process::ExitStatus>, fatal: &transport::Fatal) -> Ended {
    let fatal = fatal.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ended {
        outcome: ExitOutcome::AgentError,
        status,
        message: Some(fatal.unwrap_or_else(|| {
            format!(
                "the agent exited mid-turn ({})",
                status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "status unknown".into())
            )
        })),
    }
}

/// The connection to the shared agent broke before the session ended:
/// its host stopped because the agent exited (or the host was killed).
fn shared_gone(
    r: Result<Result<StopReason, String>, tokio::task::JoinError>,
    fatal: &transport::Fatal,
    pid: Option<u32>,
    log: &std::path::Path,
) -> Ended {
    let said = fatal.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let why = match r {
        Ok(Err(m)) => m,
        Ok(Ok(_)) => "the session ended".into(),
        Err(e) => e.to_string(),
    };
    Ended {
        outcome: ExitOutcome::AgentError,
        status: None,
        message: Some(format!(
            "the shared agent (pid {}) exited or its host stopped mid-turn: {}; see {}",
            pid.map(|p| p.to_string())
                .unwrap_or_else(|| "unknown".into()),
            said.unwrap_or(why),
            log.display()
        )),
    }
}

/// The MCP servers of the session: the configured ones, and grove's own
/// (`grove mcp` run as this task, so that what the agent spawns is this
/// task's child and `await` resumes this session) unless turned off or
/// configured under the name `grove` already.
fn session_mcp_servers(ws: &Workspace, spec: &ShimSpec, acp: &AcpSpec) -> Vec<serde_json::Value> {
    let mut servers = acp.mcp_servers.clone();
    if acp.inject_grove && !servers.iter().any(|s| s["name"] == "grove") {
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "grove".into());
        let root = ws.root.display().to_string();
        servers.insert(
            0,
            serde_json::json!({
                "name": "grove",
                "command": exe,
                "args": ["mcp"],
                "env": [
                    {"name": "GROVE_TASK_ID", "value": spec.task_id},
                    {"name": "GROVE_RUN_ID", "value": spec.run_id},
                    {"name": "GROVE_WORKSPACE", "value": root},
                ],
            }),
        );
    }
    servers
}

/// What the watch of a conversation refers to.
struct Watched<'a> {
    ws: &'a Workspace,
    spec: &'a ShimSpec,
    acp: &'a AcpSpec,
    session: &'a Session,
    fatal: &'a transport::Fatal,
    /// The agent's lines ended (see `transport::incoming`).
    closed: &'a tokio::sync::Notify,
    grace: Duration,
}

impl Watched<'_> {
    /// Ends the turn and the session through the protocol, then waits for
    /// the conversation up to the grace.
    async fn cancel_turn(&self, conversation: &mut Conversation, by: &str) {
        self.session.cancel(by);
        let _ = tokio::time::timeout(self.grace, conversation).await;
    }

    /// When the idle session is closed, if it is idle and has a timeout.
    fn idle_expiry(&self) -> Option<tokio::time::Instant> {
        let limit = Duration::from_millis(self.acp.idle_timeout_ms);
        (!limit.is_zero())
            .then(|| self.session.idle_since())
            .flatten()
            .map(|since| since + limit)
    }

    /// When the pending permission request is denied, if one waits and
    /// requests time out.
    fn permission_expiry(&self) -> Option<tokio::time::Instant> {
        let limit = Duration::from_millis(self.acp.permission_timeout_ms);
        (!limit.is_zero())
            .then(|| self.session.waiting_since())
            .flatten()
            .map(|since| since + limit)
    }

    /// A control was written, or the task was paused or resumed: reads
    /// both from the store.
    fn sync(&self) {
        self.session.apply_controls();
        match super::supervise::wants_paused(self.ws, self.spec) {
            Ok(Some(paused)) => self.session.set_paused(paused),
            Ok(None) => {}
            Err(e) => errln!("grove shim: cannot read the task to pause or resume it: {e}"),
        }
    }
}

/// How a turn ended, from the conversation's result: a stop reason of the
/// agent, or the broken connection (with the transport's own account of
/// it when it has one: non-JSON output, a closed stdout).
fn why_it_ended(
    r: Result<Result<StopReason, String>, tokio::task::JoinError>,
    fatal: &transport::Fatal,
) -> Ended {
    let broken = |m: String| Ended {
        outcome: ExitOutcome::AgentError,
        status: None,
        message: Some(
            fatal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or(m),
        ),
    };
    match r {
        Ok(Ok(reason)) => {
            let (outcome, name) = stopped(reason);
            Ended {
                outcome,
                status: None,
                message: (outcome != ExitOutcome::EndTurn)
                    .then(|| format!("the agent stopped: {name}")),
            }
        }
        Ok(Err(m)) => broken(m),
        Err(e) => broken(format!("the conversation failed: {e}")),
    }
}

/// Waits for the conversation to end, the agent to die, the timeout or a
/// cancel; the timeout clock runs only during a turn that waits for nobody
/// (not while a permission request waits for a human, not while idle or
/// paused).
async fn watch(
    agent: &mut Agent,
    mut conversation: Conversation,
    w: &Watched<'_>,
    signals: &mut Signals,
) -> Ended {
    let (spec, fatal) = (w.spec, w.fatal);
    let mut clock = Clock {
        left: spec.timeout_ms.map(Duration::from_millis),
        since: Some(tokio::time::Instant::now()),
    };
    let why = |r| why_it_ended(r, fatal);
    let mut idle_closed = false;
    loop {
        if w.session.clock_runs() {
            clock.resume();
        } else {
            clock.pause();
        }
        tokio::select! {
            r = &mut conversation => {
                if matches!(r, Ok(Ok(_))) {
                    let mut ended = why(r);
                    if idle_closed {
                        ended.message = Some(format!(
                            "session closed after {} ms idle (idle_timeout_ms)",
                            w.acp.idle_timeout_ms
                        ));
                    }
                    return ended;
                }
                // The connection broke: when it is because the agent died,
                // say so (its exit is seen a moment after its stdout closes).
                // An agent that exits cleanly once we gave up on it (we
                // closed its stdin) did not die: our reason stands.
                if let Agent::Shared { pid, log } = agent {
                    return shared_gone(r, fatal, *pid, log);
                }
                return match tokio::time::timeout(DRAIN, agent.exited()).await {
                    Ok(Ok(status)) if status.success() => why(r),
                    Ok(status) => died(status.ok(), fatal),
                    Err(_) => why(r),
                };
            }
            status = agent.exited() => {
                // Its last lines may still be in the pipe.
                let r = tokio::time::timeout(DRAIN, &mut conversation).await;
                let status = status.ok();
                return match r {
                    Ok(Ok(Ok(reason))) => Ended { status, ..why(Ok(Ok(reason))) },
                    _ => {
                        conversation.abort();
                        died(status, fatal)
                    }
                };
            }
            // A shared agent's host went away (the agent died, or wrote
            // what is not ACP) while the session waited between turns,
            // when the conversation reads nothing: its own agent's exit
            // says so for an agent of the task's own, above.
            _ = w.closed.notified(), if matches!(agent, Agent::Shared { .. }) => {
                let r = match tokio::time::timeout(DRAIN, &mut conversation).await {
                    Ok(r) => r,
                    Err(_) => {
                        conversation.abort();
                        Ok(Err("its connection closed".to_string()))
                    }
                };
                if matches!(r, Ok(Ok(_))) {
                    return why(r);
                }
                if let Agent::Shared { pid, log } = agent {
                    return shared_gone(r, fatal, *pid, log);
                }
            }
            _ = w.session.changed.notified() => {}
            _ = sleep_until(clock.expiry()) => {
                w.cancel_turn(&mut conversation, "timeout").await;
                return Ended {
                    outcome: ExitOutcome::Timeout,
                    status: None,
                    message: Some(format!("timed out after {} ms", spec.timeout_ms.unwrap_or(0))),
                };
            }
            _ = sleep_until(w.idle_expiry()) => {
                idle_closed = true;
                w.session.close("idle_timeout_ms");
            }
            _ = sleep_until(w.permission_expiry()) => {
                let by = format!(
                    "permission_timeout_ms: nobody answered for {} ms",
                    w.acp.permission_timeout_ms
                );
                w.session.answer(Some(crate::protocol::ControlKind::Deny), None, None, &by);
            }
            control = signals.next() => match control {
                Control::Cancel => {
                    w.cancel_turn(&mut conversation, "grove cancel").await;
                    return Ended {
                        outcome: ExitOutcome::Cancelled,
                        status: None,
                        message: Some("cancelled".into()),
                    };
                }
                Control::Sync => w.sync(),
                Control::Child => tree::reap_orphans(agent.pgid()),
            },
        }
    }
}
