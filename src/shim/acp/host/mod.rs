//! `grove agent-host`: one agent process of a `shared` ACP engine, serving
//! the sessions of several tasks. Each task keeps its own `grove shim`
//! (the orchestrator adopts and kills runs by shim pid as for any task);
//! the shims connect to the host's Unix socket instead of starting an
//! agent (`start.rs`), and the host relays JSON-RPC between them and the
//! agent (`route.rs`: ids rewritten, a session's messages to the shim that
//! opened it).
//!
//! The host sends `initialize` to the agent once and gives each shim the
//! agent's answer. A shim that disconnects (its task ended or was
//! cancelled, or it died) has its sessions cancelled (`session/cancel`);
//! the agent goes on serving the others. The host stops — and with it the
//! agent's process group — after `agent_idle_ms` without a shim, or when
//! the agent exits (every shim then sees its connection close and fails
//! its task with that). Every queue is bounded: a shim that stops reading
//! (its outbox is full while no primary answers) stops the host reading
//! the agent, so nothing is ever dropped.
//!
//! Warm reuse: a delegated task's shim opens its connection with a grove
//! line asking for a warm session under a cap (`route.rs::Router::warm`);
//! the host counts such shims while they are connected and refuses one
//! past the cap (it answers, then closes), so that the shim can run the
//! task on an agent of its own instead.

mod route;
pub mod start;

use super::transport::{MAX_LINE, read_line};
use route::{ClientId, Out, Router};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, mpsc};

/// Lines waiting for one reader (the agent, or one shim).
const QUEUE: usize = 64;
/// How long an agent may take to answer `initialize` (here, and in a shim
/// with an agent of its own): one that never answers held its task's slot
/// for good.
pub const INIT_WAIT: Duration = Duration::from_secs(60);
/// When a shim holds the start lock as the idle period ends: look again.
const LOCK_RETRY: Duration = Duration::from_millis(50);

/// What `grove agent-host` is started with (by `start.rs`).
#[derive(Debug, Clone, clap::Args)]
pub struct HostArgs {
    /// The workspace: the agent's working directory.
    #[arg(long)]
    pub workspace: PathBuf,
    /// Where to listen.
    #[arg(long)]
    pub socket: PathBuf,
    /// The start lock that shims hold while they connect.
    #[arg(long)]
    pub lock: PathBuf,
    /// Stop after this long without a shim.
    #[arg(long)]
    pub idle_ms: u64,
    /// The agent's command.
    #[arg(last = true, required = true)]
    pub argv: Vec<String>,
}

/// The routing state and where each line is written.
struct Hub {
    router: Mutex<Router>,
    clients: Mutex<HashMap<ClientId, mpsc::Sender<String>>>,
    agent: mpsc::Sender<String>,
    /// A shim connected or left.
    changed: Notify,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Router> {
        self.router.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes each line where it goes, waiting for room (backpressure); a
    /// shim that is gone simply does not get it.
    async fn deliver(&self, outs: Vec<Out>) {
        for out in outs {
            match out {
                Out::Agent(line) => {
                    let _ = self.agent.send(line).await;
                }
                Out::Client(c, line) => {
                    let tx = self
                        .clients
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&c)
                        .cloned();
                    if let Some(tx) = tx {
                        let _ = tx.send(line).await;
                    }
                }
            }
        }
    }
}

/// Entry point of `grove agent-host`. Returns the process exit code.
pub async fn run(args: &HostArgs) -> i32 {
    match serve(args).await {
        Ok(()) => 0,
        Err(m) => {
            errln!("grove agent-host: {m}");
            1
        }
    }
}

async fn serve(args: &HostArgs) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    // The shim that started us holds the start lock: no host listens here.
    // The agent first, and which it is on disk before anyone can connect:
    // every shim can name the agent that serves it.
    let mut agent = spawn_agent(args)?;
    let pgid = agent.id().unwrap_or(0);
    errln!("grove agent-host: agent {} started: {:?}", pgid, args.argv);
    let _ = crate::paths::write_replace(
        &start::info_path(&args.socket),
        json!({"host_pid": std::process::id(), "agent_pid": pgid})
            .to_string()
            .as_bytes(),
    );
    let _ = std::fs::remove_file(&args.socket);
    let result = match UnixListener::bind(&args.socket) {
        Ok(listener) => {
            let _ = std::fs::set_permissions(&args.socket, std::fs::Permissions::from_mode(0o600));
            relay(args, &listener, &mut agent).await
        }
        Err(e) => Err(format!("cannot listen on {}: {e}", args.socket.display())),
    };
    if result.is_err() {
        remove_files(args);
    }
    crate::runs::kill_group(pgid, libc::SIGKILL);
    let _ = agent.wait().await;
    result
}

fn spawn_agent(args: &HostArgs) -> Result<tokio::process::Child, String> {
    let (program, rest) = args.argv.split_first().ok_or("empty command")?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(rest)
        .current_dir(&args.workspace)
        .env_remove("GROVE_TASK_ID")
        .env("GROVE_WORKSPACE", &args.workspace)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: signal and pthread_sigmask are async-signal-safe.
    unsafe {
        cmd.pre_exec(crate::runs::signals::reset_all_in_child);
    }
    cmd.spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))
}

/// `initialize` once, then the relay until the agent exits or nobody
/// used it for the idle period.
async fn relay(
    args: &HostArgs,
    listener: &UnixListener,
    agent: &mut tokio::process::Child,
) -> Result<(), String> {
    let (Some(stdin), Some(stdout)) = (agent.stdin.take(), agent.stdout.take()) else {
        return Err("the agent's stdio is missing".into());
    };
    let mut out = BufReader::new(stdout);
    let (tx, rx) = mpsc::channel::<String>(QUEUE);
    tokio::spawn(write_lines(stdin, rx));
    let init = initialize(&tx, &mut out).await?;
    let hub = Arc::new(Hub {
        router: Mutex::new(Router::new(init)),
        clients: Mutex::default(),
        agent: tx,
        changed: Notify::new(),
    });
    let mut reader = tokio::spawn(read_agent(out, hub.clone()));
    let idle = Duration::from_millis(args.idle_ms);
    let mut empty_since = Some(tokio::time::Instant::now());
    let mut next_client: ClientId = 0;
    loop {
        let expiry = empty_since.map(|t| t + idle);
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    next_client += 1;
                    admit(&hub, next_client, stream);
                }
            }
            r = &mut reader => {
                let why = r.unwrap_or_else(|e| format!("the relay failed: {e}"));
                errln!("grove agent-host: {why}");
                // Still our socket (shims connect to it rather than start
                // another host): shims that come from now on start a new one.
                remove_files(args);
                // The agent may well live on (it wrote what is not ACP, or
                // closed only its stdout): the caller kills its group, and
                // our exit closes every shim's connection, which fails its
                // task. Waiting for it here hung every session on it.
                let status = match agent.try_wait() {
                    Ok(Some(s)) => format!("the agent exited ({s})"),
                    _ => "stopping the agent".to_string(),
                };
                errln!("grove agent-host: {status}; every session ends");
                return Ok(());
            }
            _ = hub.changed.notified() => {}
            _ = super::super::supervise::sleep_until(expiry) => {
                match idle_exit(args, listener) {
                    IdleCheck::Exit => {
                        errln!("grove agent-host: no task for {} ms; stopping the agent", args.idle_ms);
                        return Ok(());
                    }
                    IdleCheck::Busy => {
                        empty_since = Some(tokio::time::Instant::now() + LOCK_RETRY - idle);
                        continue;
                    }
                    IdleCheck::Pending(stream) => {
                        next_client += 1;
                        admit(&hub, next_client, stream);
                    }
                }
            }
        }
        let clients = hub.lock().clients();
        empty_since = match (clients, empty_since) {
            (0, Some(t)) => Some(t),
            (0, None) => Some(tokio::time::Instant::now()),
            _ => None,
        };
    }
}

/// Sends `initialize` (file-system capability on, as each shim would) and
/// returns the agent's result, kept for every shim.
async fn initialize(
    tx: &mpsc::Sender<String>,
    out: &mut BufReader<tokio::process::ChildStdout>,
) -> Result<Value, String> {
    let request = json!({
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {
            "protocolVersion": 1,
            "clientCapabilities": {"fs": {"readTextFile": true, "writeTextFile": true}},
            "clientInfo": {"name": "grove", "version": env!("CARGO_PKG_VERSION")},
        }
    });
    tx.send(request.to_string())
        .await
        .map_err(|_| "the agent's stdin closed before initialize")?;
    let answer = async {
        loop {
            let line = read_line(out)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("the agent exited before answering initialize")?;
            let Ok(msg) = serde_json::from_str::<Value>(&line) else {
                let shown: String = line.chars().take(200).collect();
                return Err(format!(
                    "the agent wrote what is not ACP on its stdout: {shown:?}"
                ));
            };
            if msg["id"] == 0 && msg.get("method").is_none() {
                return match msg.get("result") {
                    Some(r) => Ok(r.clone()),
                    None => Err(format!("initialize failed: {}", msg["error"])),
                };
            }
        }
    };
    tokio::time::timeout(INIT_WAIT, answer)
        .await
        .map_err(|_| format!("the agent did not answer initialize in {INIT_WAIT:?}"))?
}

/// The agent's lines, routed; returns why they ended.
async fn read_agent(mut out: BufReader<tokio::process::ChildStdout>, hub: Arc<Hub>) -> String {
    loop {
        match read_line(&mut out).await {
            Ok(Some(line)) if line.trim().is_empty() => {}
            Ok(Some(line)) => {
                if serde_json::from_str::<serde::de::IgnoredAny>(&line).is_err() {
                    let shown: String = line.chars().take(200).collect();
                    return format!("the agent wrote what is not ACP on its stdout: {shown:?}");
                }
                let outs = hub.lock().agent_line(&line);
                hub.deliver(outs).await;
            }
            Ok(None) => return "the agent closed its stdout".into(),
            Err(e) => return e.to_string(),
        }
    }
}

async fn write_lines<W: tokio::io::AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<String>) {
    while let Some(line) = rx.recv().await {
        let ok = w.write_all(line.as_bytes()).await.is_ok()
            && w.write_all(b"\n").await.is_ok()
            && w.flush().await.is_ok();
        if !ok {
            return;
        }
    }
}

/// A shim connected: counted at once (so that the idle period cannot end
/// while it is being served), then served on its own task.
fn admit(hub: &Arc<Hub>, id: ClientId, stream: UnixStream) {
    // Only our own user's processes: the socket dir is private already.
    let ours = stream
        .peer_cred()
        .is_ok_and(|c| c.uid() == crate::trust::euid());
    if !ours {
        errln!("grove agent-host: refused a connection from another user");
        return;
    }
    let (r, w) = stream.into_split();
    let (tx, rx) = mpsc::channel::<String>(QUEUE);
    hub.clients
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, tx);
    hub.lock().connected(id);
    tokio::spawn(write_lines(w, rx));
    let hub = hub.clone();
    tokio::spawn(async move {
        let mut r = BufReader::new(r);
        let mut first = true;
        loop {
            match read_line(&mut r).await {
                Ok(Some(line)) if std::mem::take(&mut first) && warm_cap(&line).is_some() => {
                    let cap = warm_cap(&line).unwrap_or(0);
                    let (admitted, answer) = hub.lock().warm(id, cap);
                    hub.deliver(vec![Out::Client(id, answer)]).await;
                    if !admitted {
                        break;
                    }
                }
                Ok(Some(line)) => {
                    let outs = hub.lock().client_line(id, &line);
                    hub.deliver(outs).await;
                }
                Ok(None) => break,
                Err(e) => {
                    errln!(
                        "grove agent-host: connection {id}: {e} (lines are at most {MAX_LINE} bytes)"
                    );
                    break;
                }
            }
        }
        hub.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let outs = hub.lock().gone(id);
        hub.deliver(outs).await;
        hub.changed.notify_one();
    });
}

/// A delegated task's shim opens with `{"grove":"warm","cap":N}` (before
/// any ACP message) to ask for a warm session under the cap.
fn warm_cap(line: &str) -> Option<u64> {
    let v: Value = serde_json::from_str(line).ok()?;
    (v["grove"] == "warm").then(|| v["cap"].as_u64()).flatten()
}

enum IdleCheck {
    Exit,
    /// A shim holds the start lock: it is connecting.
    Busy,
    /// A shim connected just before the lock was taken.
    Pending(UnixStream),
}

/// Whether the idle host may stop. Shims connect only while they hold the
/// start lock, so with the lock held and no connection pending, none can
/// arrive before the socket is gone: a shim never connects to a host that
/// is stopping.
fn idle_exit(args: &HostArgs, listener: &UnixListener) -> IdleCheck {
    use std::os::fd::{AsRawFd, FromRawFd};
    let Ok(lock) = crate::paths::open_private(&args.lock) else {
        return IdleCheck::Exit;
    };
    if lock.try_lock().is_err() {
        return IdleCheck::Busy;
    }
    // SAFETY: a non-blocking accept on our listener's fd; a new fd is ours.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    };
    if fd >= 0 {
        // SAFETY: fd was just returned by accept4 and is owned by no one else.
        let std = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
        if let Ok(stream) = UnixStream::from_std(std) {
            return IdleCheck::Pending(stream);
        }
        return IdleCheck::Busy;
    }
    remove_files(args);
    IdleCheck::Exit
}

fn remove_files(args: &HostArgs) {
    let _ = std::fs::remove_file(&args.socket);
    let _ = std::fs::remove_file(start::info_path(&args.socket));
}
