//! The shim's side of a shared agent: connect to the host that serves the
//! engine's command and environment, or start it — race-free: the first
//! shim takes the start lock, looks again, starts the host and connects
//! before it lets go, so concurrent shims find one host, never two.

use crate::paths::Workspace;
use crate::runs::{AcpSpec, ShimSpec};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::UnixStream;

/// How long a new host may take to listen.
const START_WAIT: Duration = Duration::from_secs(10);
/// Between two looks for the new host's socket (only while starting one).
const START_POLL: Duration = Duration::from_millis(10);

/// A connection to the shared agent's host.
pub struct Connected {
    pub stream: UnixStream,
    /// The agent's pid, as the host recorded it.
    pub agent_pid: Option<u32>,
    /// The host's log (its stderr and the agent's).
    pub log: PathBuf,
    /// No host ran: this shim started it.
    pub started: bool,
}

/// The agents' files are named by a hash of what makes an agent: its
/// command and environment (FNV-1a, 64 bits). Sockets live in the
/// workspace's private socket dir (0700, ours), whose path is short enough
/// for a Unix socket wherever the workspace is.
fn key(spec: &ShimSpec) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |s: &str| {
        for b in s.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for a in &spec.argv {
        eat(a);
    }
    eat("\u{1}env");
    for (k, v) in &spec.env {
        eat(k);
        eat(v);
    }
    format!("{h:016x}")
}

fn socket_path(ws: &Workspace, spec: &ShimSpec) -> PathBuf {
    ws.socket_dir.join(format!("agent-{}.sock", key(spec)))
}

/// Where the host says which agent it runs (`{host_pid, agent_pid}`).
pub fn info_path(socket: &Path) -> PathBuf {
    socket.with_extension("json")
}

fn log_path(ws: &Workspace, spec: &ShimSpec) -> PathBuf {
    crate::runs::RunFiles::dir(ws).join(format!("agent-{}.log", key(spec)))
}

/// Connects to the engine's shared agent, starting its host if none runs.
pub async fn connect(ws: &Workspace, spec: &ShimSpec, acp: &AcpSpec) -> Result<Connected, String> {
    ws.ensure_socket_dir().map_err(|e| e.to_string())?;
    let socket = socket_path(ws, spec);
    let lock_path = socket.with_extension("lock");
    let lock = crate::paths::open_private(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    // Held until connected: the host stops only when it can take the lock
    // and sees no connection pending, so it never stops under us.
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
    let log = log_path(ws, spec);
    let (stream, started) = match try_connect(&socket).await? {
        Some(s) => (s, false),
        None => (start(ws, spec, acp, &socket, &lock_path, &log).await?, true),
    };
    drop(lock);
    let agent_pid = std::fs::read(info_path(&socket))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["agent_pid"].as_u64())
        .map(|p| p as u32);
    Ok(Connected {
        stream,
        agent_pid,
        log,
        started,
    })
}

/// The host's socket, if one listens; never one another user placed.
async fn try_connect(socket: &Path) -> Result<Option<UnixStream>, String> {
    let meta = match std::fs::symlink_metadata(socket) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", socket.display())),
    };
    if !meta.file_type().is_socket() || meta.uid() != crate::trust::euid() {
        return Err(format!(
            "refusing {}: it is not a socket of {} (remove it)",
            socket.display(),
            crate::trust::describe_uid(crate::trust::euid())
        ));
    }
    let stream = match UnixStream::connect(socket).await {
        Ok(s) => s,
        // A host that died without removing its socket.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(None),
        Err(e) => return Err(format!("cannot connect to {}: {e}", socket.display())),
    };
    match stream.peer_cred() {
        Ok(c) if c.uid() == crate::trust::euid() => Ok(Some(stream)),
        _ => Err(format!(
            "refusing {}: its listener is not this user's",
            socket.display()
        )),
    }
}

/// Starts the host in a session of its own (it outlives this shim and
/// the primary) and waits until it listens.
async fn start(
    ws: &Workspace,
    spec: &ShimSpec,
    acp: &AcpSpec,
    socket: &Path,
    lock: &Path,
    log: &Path,
) -> Result<UnixStream, String> {
    let _ = std::fs::remove_file(socket);
    let stderr = super::super::super::open_log(log)
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let exe = std::fs::read_link("/proc/self/exe").map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("agent-host")
        .arg("--workspace")
        .arg(&ws.root)
        .arg("--socket")
        .arg(socket)
        .arg("--lock")
        .arg(lock)
        .arg("--idle-ms")
        .arg(acp.agent_idle_ms.to_string())
        .arg("--")
        .args(&spec.argv)
        .envs(&spec.env)
        .env_remove("GROVE_TASK_ID")
        .current_dir(&ws.root)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr);
    crate::proc::in_new_session(&mut cmd);
    // SAFETY: signal and pthread_sigmask are async-signal-safe. The host
    // must not inherit the shim's blocked control signals.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(
            &mut cmd,
            crate::runs::signals::reset_all_in_child,
        );
    }
    let mut host = cmd
        .spawn()
        .map_err(|e| format!("cannot start the shared agent's host: {e}"))?;
    let until = tokio::time::Instant::now() + START_WAIT;
    loop {
        if let Some(s) = try_connect(socket).await? {
            return Ok(s);
        }
        if let Ok(Some(status)) = host.try_wait() {
            return Err(format!(
                "the shared agent's host exited at once ({status}): see {}",
                log.display()
            ));
        }
        if tokio::time::Instant::now() > until {
            return Err(format!(
                "the shared agent's host did not listen within {START_WAIT:?}: see {}",
                log.display()
            ));
        }
        tokio::time::sleep(START_POLL).await;
    }
}
