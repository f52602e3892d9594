//! A run of a task, as the primary and its supervisor (`grove shim`) share
//! it: the spec the shim runs, the run and exit records it leaves beside the
//! task's log, and the signals and process-tree control both sides use.
//! The contract between the orchestrator and the shim lives here, below
//! both, so that the scheduler never depends on the shim's RPC client (see
//! docs/design.md, Shim).

pub mod conclusion;
pub mod log;
pub mod signals;
pub mod tree;
pub mod zygote;

pub use signals::SYNC as SYNC_SIGNAL;
pub use tree::{kill_group, kill_leftovers};

use crate::paths::{Workspace, write_replace};
use crate::protocol::{ExitOutcome, TaskExit};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What the primary asks the shim to run (written to the shim's stdin).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimSpec {
    pub task_id: String,
    pub run_id: String,
    pub workspace: PathBuf,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub work_dir: PathBuf,
    pub stdin: Option<String>,
    pub timeout_ms: Option<u64>,
    pub grace_ms: u64,
    /// Set when the engine speaks ACP: the shim is then the agent's ACP
    /// client instead of a byte pipe into the log.
    #[serde(default)]
    pub acp: Option<AcpSpec>,
    /// Record the run's conclusion from its output when it ends.
    #[serde(default)]
    pub conclusion: bool,
    /// Set when the task runs in a worktree of its own: the shim makes it
    /// (or finds it made) and runs the setup before starting the agent.
    #[serde(default)]
    pub worktree: Option<WorktreeRun>,
    /// The epoch of the primary that started the shim (0: unknown). While
    /// `primary.json` still names it, no other primary can have requeued
    /// the run, and the shim skips reading the store (`shim::still_wanted`).
    #[serde(default)]
    pub epoch: u64,
}

/// A worktree to make before the agent starts, and what to do in a new one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorktreeRun {
    pub worktree: crate::protocol::Worktree,
    pub setup: crate::config::Setup,
}

/// The conversation the shim of an `acp` engine holds with its agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcpSpec {
    /// The first turn's prompt, persona prepended.
    pub prompt: String,
    /// The model after alias resolution, when the engine has no flag for
    /// it: the shim selects it through the session's model option.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub permissions: crate::config::PermissionPolicy,
    /// The session stays open after a turn (the task goes idle).
    #[serde(default)]
    pub keep_session: bool,
    /// An idle session is closed after this long (0: never).
    #[serde(default)]
    pub idle_timeout_ms: u64,
    /// A permission request is denied after this long (0: never).
    #[serde(default)]
    pub permission_timeout_ms: u64,
    /// ACP `McpServer`s for `session/new`.
    #[serde(default)]
    pub mcp_servers: Vec<serde_json::Value>,
    /// Add grove's own MCP server (`grove mcp` for this task) to the
    /// session, unless `mcp_servers` already has one named `grove`.
    #[serde(default)]
    pub inject_grove: bool,
    /// The engine is `shared`: the session is opened on the agent host's
    /// agent (started if none runs) instead of an agent of the shim's own.
    #[serde(default)]
    pub shared: bool,
    /// A shared agent stops after this long without a session.
    #[serde(default)]
    pub agent_idle_ms: u64,
    /// A delegated task of a `shared` engine (warm reuse): the host takes
    /// at most this many such sessions at once; beyond it, or when the
    /// host goes away before taking the session, the run gets an agent of
    /// its own. Absent: the engine is not shared or the task not delegated.
    #[serde(default)]
    pub warm_cap: Option<u32>,
}

/// Appended by the shim to its run's file (`.grove/run/<task>.<run>.run.json`,
/// see [`RunFiles::append_run`]) when it starts and again once its agent
/// runs: how a new primary recognises a live run — pid *and* start time — and
/// what to kill if the shim dies without finishing the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub shim_pid: u32,
    pub shim_start: u64,
    pub agent_pid: Option<u32>,
    /// The agent's start time, so that its process group is only killed
    /// while its pid still names it (or nothing).
    #[serde(default)]
    pub agent_start: Option<u64>,
    /// The shim pauses and resumes its agent itself on SIGUSR1 (after
    /// reading the task's row), so that time paused does not count towards
    /// the timeout. Absent in records of older shims: those are paused by
    /// SIGSTOP to the agent's group.
    #[serde(default)]
    pub pauses_itself: bool,
}

/// Appended to the run's file when the run ends ([`RunFiles::append_exit`]);
/// shims of older versions wrote it to `.grove/run/<task>.<run>.exit.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub run_id: String,
    pub outcome: ExitOutcome,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub message: Option<String>,
    pub finished_at: u64,
    /// The run's conclusion, when its task records one.
    #[serde(default)]
    pub conclusion: Option<crate::protocol::Conclusion>,
    /// How the run got a warm agent, when it was a delegated run of a
    /// `shared` engine.
    #[serde(default)]
    pub warm: Option<crate::protocol::WarmUse>,
}

impl ExitRecord {
    pub fn to_exit(&self, task_id: &str) -> TaskExit {
        TaskExit {
            id: task_id.to_string(),
            run_id: self.run_id.clone(),
            outcome: self.outcome,
            exit_code: self.exit_code,
            signal: self.signal,
            message: self.message.clone(),
            conclusion: self.conclusion.clone(),
            warm: self.warm,
        }
    }
}

/// File locations of a task's runs.
pub struct RunFiles;

impl RunFiles {
    pub fn dir(ws: &Workspace) -> PathBuf {
        ws.state_dir.join("run")
    }
    /// Where shims of older versions were handed their spec: removed with
    /// the task.
    pub fn spec(ws: &Workspace, task: &str) -> PathBuf {
        Self::dir(ws).join(format!("{task}.spec.json"))
    }
    pub fn run(ws: &Workspace, task: &str, run_id: &str) -> PathBuf {
        Self::dir(ws).join(format!("{task}.{run_id}.run.json"))
    }
    pub fn exit(ws: &Workspace, task: &str, run_id: &str) -> PathBuf {
        Self::dir(ws).join(format!("{task}.{run_id}.exit.json"))
    }
    pub fn log(ws: &Workspace, task: &str) -> PathBuf {
        ws.logs_dir().join(format!("{task}.log"))
    }
    /// Every shim's stderr, one file for the workspace (lines name their
    /// task): a file per task was an inode created on every task start.
    pub fn shim_log(ws: &Workspace) -> PathBuf {
        Self::dir(ws).join("shims.log")
    }
    /// Where shims of older versions logged: removed with the task.
    fn old_shim_log(ws: &Workspace, task: &str) -> PathBuf {
        Self::dir(ws).join(format!("{task}.shim.log"))
    }

    /// Opens the shims' log for appending (0600), moving it aside to
    /// `shims.log.old` first once it holds [`SHIM_LOG_LIMIT`] bytes, so it
    /// stays bounded. Shims write to it only when something went wrong.
    pub fn open_shim_log(ws: &Workspace) -> std::io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = Self::shim_log(ws);
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
        };
        let file = open()?;
        if file.metadata()?.len() < SHIM_LOG_LIMIT {
            return Ok(file);
        }
        std::fs::rename(&path, path.with_extension("log.old"))?;
        open()
    }

    /// The run's latest record (the last one its shim appended).
    /// Whether run `run_id` of `task` is still going, whatever its task's
    /// row says: a cancelled or deleted task's processes get the kill grace
    /// and may write on meanwhile. Its shim lives until every process of
    /// the run is gone and its exit record is written.
    pub fn still_going(ws: &Workspace, task: &str, run_id: Option<&str>) -> bool {
        let Some(run) = run_id else { return false };
        let Some(record) = Self::read_run(ws, task, run) else {
            return false;
        };
        Self::read_exit(ws, task, run).is_none()
            && crate::proc::running_as(record.shim_pid, Some(record.shim_start))
    }

    pub fn read_run(ws: &Workspace, task: &str, run_id: &str) -> Option<RunRecord> {
        let bytes = std::fs::read(Self::run(ws, task, run_id)).ok()?;
        records::<RunRecord>(&bytes).last()
    }

    /// How the run ended, once its shim appended it (or, from a shim of an
    /// older version, wrote its own exit file).
    pub fn read_exit(ws: &Workspace, task: &str, run_id: &str) -> Option<ExitRecord> {
        let appended = std::fs::read(Self::run(ws, task, run_id))
            .ok()
            .and_then(|bytes| records::<ExitLine>(&bytes).last());
        match appended {
            Some(line) => Some(line.exit),
            None => serde_json::from_slice(&std::fs::read(Self::exit(ws, task, run_id)).ok()?).ok(),
        }
    }

    /// Appends the run record, without fsync: it matters only while its
    /// shim runs (a new primary adopts a live shim by it); a power loss
    /// ends the shim too, and the page cache outlives any process crash.
    pub fn append_run(
        ws: &Workspace,
        task: &str,
        run_id: &str,
        record: &RunRecord,
    ) -> std::io::Result<()> {
        append_line(&Self::run(ws, task, run_id), record, false)
    }

    /// Appends the exit record, synced when `sync`: it is the only trace
    /// of how a run ended until a primary has recorded it, and after a
    /// power loss the store's last commits may be gone too (it commits with
    /// `synchronous = NORMAL`): a missing exit record would turn a finished
    /// run into a `lost` one. The shim syncs it unless the primary that
    /// started the run still serves, which records the end at once and
    /// syncs the store's WAL right after (see docs/design.md, Durable run ends).
    pub fn append_exit(
        ws: &Workspace,
        task: &str,
        run_id: &str,
        exit: &ExitRecord,
        sync: bool,
    ) -> std::io::Result<()> {
        append_line(&Self::run(ws, task, run_id), &ExitLineRef { exit }, sync)
    }

    /// Task ids are generated hex; anything else must never reach a path.
    pub fn is_safe_id(task: &str) -> bool {
        !task.is_empty() && task.len() <= 64 && task.chars().all(|c| c.is_ascii_alphanumeric())
    }

    /// Removes a deleted task's log (and an older grove's shim log): how
    /// many there were. Its run records stay until a purge of its id: the
    /// orchestrator still reads a stopped run's exit record to drop it
    /// (without one it takes the run for lost and cannot clean up after
    /// it).
    pub fn remove_logs(ws: &Workspace, task: &str) -> usize {
        if !Self::is_safe_id(task) {
            return 0;
        }
        [Self::log(ws, task), Self::old_shim_log(ws, task)]
            .iter()
            .filter(|p| std::fs::remove_file(p).is_ok())
            .count()
    }

    /// Removes every file of a task (purge): how many there were. Missing
    /// files are fine.
    pub fn remove_all(ws: &Workspace, task: &str) -> usize {
        if !Self::is_safe_id(task) {
            return 0;
        }
        let mut removed = Self::remove_logs(ws, task);
        let mut remove = |p: &Path| removed += usize::from(std::fs::remove_file(p).is_ok());
        remove(&Self::spec(ws, task));
        if let Ok(entries) = std::fs::read_dir(Self::dir(ws)) {
            let prefix = format!("{task}.");
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    remove(&e.path());
                }
            }
        }
        removed
    }
}

/// An exit record as a line of the run's file: named, so that it is never
/// taken for a run record (nor one for it).
#[derive(Deserialize)]
struct ExitLine {
    exit: ExitRecord,
}

#[derive(Serialize)]
struct ExitLineRef<'a> {
    exit: &'a ExitRecord,
}

/// A run's records, one JSON value per line, oldest first. The file is
/// only ever appended to, each line with one `write` (see [`append_line`]),
/// so a reader racing a write sees a prefix of the last line at worst:
/// JSON values are self-delimiting, so that prefix does not parse and is
/// skipped. A file from an older shim holds one value without a newline.
fn records<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> impl Iterator<Item = T> + '_ {
    bytes
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice(line).ok())
}

/// Appends `value` and a newline to `path` in one `write` (0600, created
/// if missing, never through a symlink). One file per run, appended to,
/// rather than a temp file renamed over it per record: on ext4 every file
/// created is an inode allocated under the run directory's lock, and
/// without a journal ext4 skips every inode freed in the last minute on
/// the way (see docs/design.md, Orchestrator).
fn append_line<T: Serialize>(path: &Path, value: &T, sync: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(&line)?;
    if sync {
        file.sync_data()?;
    }
    Ok(())
}

/// Size at which `run/shims.log` is moved aside (one older file is kept).
pub const SHIM_LOG_LIMIT: u64 = 4 * 1024 * 1024;

/// Writes a file atomically without fsync (an ACP run's update batches,
/// which matter only while their shim lives).
pub fn write_json_volatile<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    write_replace(path, &bytes)
}

/// Starts `grove shim -` the way every shim must start: in a session
/// of its own (it outlives the primary and its terminal), with exactly its
/// control signals blocked until it handles them (a cancel right after the
/// start must not kill it before it can kill its agent), SIGPIPE at its
/// default as std gives every child, stdin on `spec` (a pipe the caller
/// writes the run's spec into: a spec file was one more inode created per
/// task start), stdout on `/dev/null`, stderr into `stderr`. Returns its
/// pid; the caller reaps it.
///
/// Through `posix_spawn`, which glibc runs as `clone(CLONE_VM |
/// CLONE_VFORK)`: a fork of the primary would copy its page tables only for
/// the exec to throw them away again, which cost more than the shim's own
/// start. No code of ours runs in the child; glibc's `setsid`, mask and
/// dup2 steps stand in for what a `pre_exec` would do.
pub fn spawn_shim(
    exe: &Path,
    spec: &std::io::PipeReader,
    stderr: &std::fs::File,
) -> std::io::Result<u32> {
    use std::os::fd::AsRawFd;
    spawn_supervisor(exe, &[b"shim", b"-"], spec.as_raw_fd(), stderr)
}

/// [`spawn_shim`] for any `grove` command line `args` that starts like a
/// shim (the shims' fork server, `zygote`), with `stdin` as its fd 0.
fn spawn_supervisor(
    exe: &Path,
    args: &[&[u8]],
    stdin: std::os::fd::RawFd,
    stderr: &std::fs::File,
) -> std::io::Result<u32> {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let c = |b: &[u8]| CString::new(b).map_err(std::io::Error::other);
    let argv = std::iter::once(exe.as_os_str().as_bytes())
        .chain(args.iter().copied())
        .map(c)
        .collect::<std::io::Result<Vec<_>>>()?;
    // The environment as std sees it (its own lock guards `environ`).
    let envs = std::env::vars_os()
        .map(|(k, v)| c(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut argv_p: Vec<*mut libc::c_char> = argv.iter().map(|a| a.as_ptr() as *mut _).collect();
    argv_p.push(std::ptr::null_mut());
    let mut envp: Vec<*mut libc::c_char> = envs.iter().map(|e| e.as_ptr() as *mut _).collect();
    envp.push(std::ptr::null_mut());
    let null = c(b"/dev/null")?;
    let check = |rc: libc::c_int| match rc {
        0 => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(e)),
    };
    // SAFETY: the attribute and file-action objects are initialised before
    // use and destroyed on every path; every pointer handed to
    // `posix_spawn` (argv, envp, paths) outlives the call, which copies
    // what it needs before returning.
    unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        check(libc::posix_spawn_file_actions_init(&mut actions))?;
        if let Err(e) = check(libc::posix_spawnattr_init(&mut attr)) {
            libc::posix_spawn_file_actions_destroy(&mut actions);
            return Err(e);
        }
        let mut pid: libc::pid_t = 0;
        let result = (|| {
            // dup2 clears close-on-exec on the copy. The log's and the
            // pipe's fds may be 0, 1 or 2 (a primary started with them
            // closed): each is first copied above 2, so that no dup2 onto
            // 0-2 closes one still to be copied.
            let (log, pipe) = (high_fd(stderr.as_raw_fd())?, high_fd(stdin)?);
            check(libc::posix_spawn_file_actions_adddup2(
                &mut actions,
                log.0,
                2,
            ))?;
            check(libc::posix_spawn_file_actions_adddup2(
                &mut actions,
                pipe.0,
                0,
            ))?;
            check(libc::posix_spawn_file_actions_addopen(
                &mut actions,
                1,
                null.as_ptr(),
                libc::O_WRONLY,
                0,
            ))?;
            let mask = signals::control_set();
            check(libc::posix_spawnattr_setsigmask(&mut attr, &mask))?;
            let mut default: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut default);
            libc::sigaddset(&mut default, libc::SIGPIPE);
            check(libc::posix_spawnattr_setsigdefault(&mut attr, &default))?;
            let flags = libc::POSIX_SPAWN_SETSID
                | libc::POSIX_SPAWN_SETSIGMASK as libc::c_short
                | libc::POSIX_SPAWN_SETSIGDEF as libc::c_short;
            check(libc::posix_spawnattr_setflags(&mut attr, flags))?;
            check(libc::posix_spawn(
                &mut pid,
                argv[0].as_ptr(),
                &actions,
                &attr,
                argv_p.as_ptr(),
                envp.as_ptr(),
            ))
        })();
        libc::posix_spawnattr_destroy(&mut attr);
        libc::posix_spawn_file_actions_destroy(&mut actions);
        result.map(|()| pid as u32)
    }
}

/// An fd above 2 for `fd`: itself, or a close-on-exec copy (closed on drop).
fn high_fd(fd: std::os::fd::RawFd) -> std::io::Result<HighFd> {
    if fd > 2 {
        return Ok(HighFd(fd, false));
    }
    // SAFETY: F_DUPFD_CLOEXEC on an fd we hold; the copy is ours to close.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if copy < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(HighFd(copy, true))
}

/// See [`high_fd`]: `.1` says whether `.0` is a copy of ours.
struct HighFd(std::os::fd::RawFd, bool);

impl Drop for HighFd {
    fn drop(&mut self) {
        if self.1 {
            // SAFETY: a copy made by `high_fd`, closed once.
            unsafe { libc::close(self.0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn record(agent_pid: Option<u32>) -> RunRecord {
        RunRecord {
            run_id: "r1".into(),
            shim_pid: 42,
            shim_start: 7,
            agent_pid,
            agent_start: None,
            pauses_itself: true,
        }
    }

    fn exit() -> ExitRecord {
        ExitRecord {
            run_id: "r1".into(),
            outcome: ExitOutcome::Exited,
            exit_code: Some(0),
            signal: None,
            message: None,
            finished_at: 1,
            conclusion: None,
            warm: None,
        }
    }

    #[test]
    fn a_runs_file_gives_its_latest_record_and_its_exit_even_mid_write() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::resolve(dir.path()).unwrap();
        std::fs::create_dir_all(RunFiles::dir(&ws)).unwrap();
        assert_eq!(RunFiles::read_run(&ws, "t1", "r1"), None);
        RunFiles::append_run(&ws, "t1", "r1", &record(None)).unwrap();
        RunFiles::append_run(&ws, "t1", "r1", &record(Some(99))).unwrap();
        assert_eq!(RunFiles::read_run(&ws, "t1", "r1"), Some(record(Some(99))));
        assert_eq!(RunFiles::read_exit(&ws, "t1", "r1"), None);
        // A reader racing the exit's write sees part of its line: skipped.
        let path = RunFiles::run(&ws, "t1", "r1");
        let whole = std::fs::read(&path).unwrap();
        let line = serde_json::to_vec(&ExitLineRef { exit: &exit() }).unwrap();
        std::fs::write(&path, [&whole[..], &line[..line.len() / 2]].concat()).unwrap();
        assert_eq!(RunFiles::read_exit(&ws, "t1", "r1"), None);
        assert_eq!(RunFiles::read_run(&ws, "t1", "r1"), Some(record(Some(99))));
        std::fs::write(&path, whole).unwrap();
        RunFiles::append_exit(&ws, "t1", "r1", &exit(), true).unwrap();
        assert_eq!(RunFiles::read_exit(&ws, "t1", "r1"), Some(exit()));
        // The exit line is not a run record.
        assert_eq!(RunFiles::read_run(&ws, "t1", "r1"), Some(record(Some(99))));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_files_of_an_older_shim_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::resolve(dir.path()).unwrap();
        std::fs::create_dir_all(RunFiles::dir(&ws)).unwrap();
        let run = serde_json::to_vec(&record(Some(5))).unwrap();
        std::fs::write(RunFiles::run(&ws, "t1", "r1"), run).unwrap();
        assert_eq!(RunFiles::read_run(&ws, "t1", "r1"), Some(record(Some(5))));
        assert_eq!(RunFiles::read_exit(&ws, "t1", "r1"), None);
        let old_exit = serde_json::to_vec(&exit()).unwrap();
        std::fs::write(RunFiles::exit(&ws, "t1", "r1"), old_exit).unwrap();
        assert_eq!(RunFiles::read_exit(&ws, "t1", "r1"), Some(exit()));
    }

    #[test]
    fn a_run_file_is_never_written_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::resolve(dir.path()).unwrap();
        std::fs::create_dir_all(RunFiles::dir(&ws)).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "").unwrap();
        std::os::unix::fs::symlink(&elsewhere, RunFiles::run(&ws, "t1", "r1")).unwrap();
        assert!(RunFiles::append_run(&ws, "t1", "r1", &record(None)).is_err());
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"");
    }

    #[test]
    fn the_shims_log_is_appended_to_and_moved_aside_at_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::resolve(dir.path()).unwrap();
        std::fs::create_dir_all(RunFiles::dir(&ws)).unwrap();
        let path = RunFiles::shim_log(&ws);
        RunFiles::open_shim_log(&ws)
            .unwrap()
            .write_all(b"one\n")
            .unwrap();
        RunFiles::open_shim_log(&ws)
            .unwrap()
            .write_all(b"two\n")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // At the limit: the full file becomes `shims.log.old`, a new one starts.
        let full = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        full.set_len(SHIM_LOG_LIMIT).unwrap();
        RunFiles::open_shim_log(&ws)
            .unwrap()
            .write_all(b"three\n")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
        let old = path.with_extension("log.old");
        assert_eq!(std::fs::metadata(old).unwrap().len(), SHIM_LOG_LIMIT);
    }
}
