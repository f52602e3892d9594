//! Autostart (like gpg-agent): a command that needs a grove member where
//! none runs starts a background `grove serve` for the workspace, says so
//! once on stderr, and proceeds. `--no-autostart` turns it off.

use super::{CliError, Context};
use crate::client::ClientError;
use crate::protocol::{Method, ReplyBody};
use std::time::Duration;

impl Context {
    /// Calls `method` on the primary, starting a member first if none runs.
    /// With `request_id`, a retry is applied at most once.
    pub async fn call(
        &self,
        method: Method,
        request_id: Option<&str>,
    ) -> Result<ReplyBody, CliError> {
        let mut client = self.client();
        let id = request_id
            .map(str::to_string)
            .unwrap_or_else(crate::client::new_request_id);
        match client.call_with_id(&id, method.clone()).await {
            Err(ClientError::NoPrimary { .. }) if self.autostart => {
                self.start_member().await?;
                let mut client = self.client();
                Ok(client.call_with_id(&id, method).await?)
            }
            other => Ok(other?),
        }
    }

    /// Makes sure a member runs (for commands that only read or follow).
    pub async fn ensure_member(&self) -> Result<(), CliError> {
        let mut client = self.client();
        match crate::client::ping(&mut client).await {
            Err(ClientError::NoPrimary { .. }) if self.autostart => self.start_member().await,
            _ => Ok(()),
        }
    }

    /// Keeps a member running while a command waits for tasks (`run`,
    /// `wait`, `spawn --wait`, `logs -f`): run beside the wait, it returns
    /// only when waiting has become hopeless, with the error to exit with.
    /// It is woken by `primary.json` changing (inotify) and by the
    /// primary's exit (a pidfd), and pings a running primary every 5 s.
    /// A wait follows the bus and the store, both of which a new primary
    /// serves again; with no member left at all (the last one stopped,
    /// killed, or its `.grove` deleted) nothing would ever end the wait.
    /// So once the workspace has gone [`NO_PRIMARY_GRACE`] without a
    /// primary (far longer than a failover), a member is started as
    /// autostart does (the tasks' shims outlived the old one and report to
    /// the new), or without autostart the command says so and exits 3. A
    /// primary that exists but does not answer for [`UNRESPONSIVE_GIVE_UP`]
    /// (stopped, stuck), and a store replaced or gone, end the wait too.
    pub async fn keep_member(&self) -> CliError {
        use std::time::Instant;
        let mut client = self.client();
        let mut watch = crate::primary_record::PrimaryWatch::new(&self.ws);
        // The store the wait reads: a `.grove` deleted and rebuilt by the
        // members holds none of the tasks waited for, and no event of the
        // new one will ever end the wait.
        let store = store_identity(&self.ws.db_path());
        let mut silent_since: Option<Instant> = None;
        let mut started = 0;
        // When the last member this wait started came up: one that stays
        // up a while resets the count of restarts.
        let mut started_at: Option<Instant> = None;
        loop {
            watch.poll();
            if let Some(e) = self.store_lost(store) {
                return e;
            }
            // Its process runs: not `same_process_runs`, whose check of the
            // start time against the boot time moves with this VM's clock
            // (a stopped primary was taken for gone now and then). A pid
            // reused meanwhile is a primary that does not answer, below.
            let running = (watch.current()).filter(|r| r.pid_alive()).map(|r| r.pid);
            if let Some(pid) = running {
                if started_at.is_some_and(|at| at.elapsed() >= STAYED_UP) {
                    (started, started_at) = (0, None);
                }
                let exit = crate::proc::ExitWatch::new(pid, PING_EVERY);
                tokio::select! {
                    _ = exit.exited() => {}
                    _ = watch.next_change() => {}
                    _ = tokio::time::sleep(PING_EVERY) => {
                        match crate::client::ping(&mut client).await {
                            Ok(_) => silent_since = None,
                            Err(e) => {
                                let silent = *silent_since.get_or_insert_with(Instant::now);
                                if silent.elapsed() >= UNRESPONSIVE_GIVE_UP {
                                    return CliError::Unavailable(format!(
                                        "stopped waiting: the primary has not answered for {} s ({e}); the tasks' runs go on: wait again once it answers",
                                        UNRESPONSIVE_GIVE_UP.as_secs()
                                    ));
                                }
                            }
                        }
                    }
                }
                continue;
            }
            silent_since = None;
            // No primary: a failover names a new one within milliseconds.
            let appeared = tokio::time::timeout(NO_PRIMARY_GRACE, async {
                loop {
                    watch.next_change().await;
                    watch.poll();
                    if watch.current().is_some_and(|r| r.pid_alive()) {
                        return;
                    }
                }
            })
            .await
            .is_ok();
            if appeared {
                continue;
            }
            if let Some(e) = self.store_lost(store) {
                return e;
            }
            if !self.autostart {
                return CliError::Unavailable(format!(
                    "no grove member runs for {} any more (it was stopped or killed); the tasks' runs go on and their ends are kept: start one (`grove serve`) and wait again",
                    self.ws.root.display()
                ));
            }
            if started == MAX_RESTARTS {
                return CliError::Unavailable(format!(
                    "stopped waiting: the members started for {} kept going away ({MAX_RESTARTS} started); see {}",
                    self.ws.root.display(),
                    self.ws.state_dir.join("serve.log").display()
                ));
            }
            if let Err(e) = self.start_member().await {
                return e;
            }
            started += 1;
            started_at = Some(Instant::now());
            client = self.client();
        }
    }

    /// Why the store a wait began with is of no more use: replaced (`.grove`
    /// deleted and made anew), or gone (and starting a member would make an
    /// empty one). `None` while it is the same file, or there was none.
    fn store_lost(&self, was: Option<(u64, u64)>) -> Option<CliError> {
        let was = was?;
        let why = match store_identity(&self.ws.db_path()) {
            Some(is) if is == was => return None,
            Some(_) => {
                "was replaced (its .grove deleted and made anew): the tasks waited for are not in it"
            }
            None => "is gone (its .grove deleted): the tasks waited for went with it",
        };
        Some(CliError::Unavailable(format!(
            "the workspace's store ({}) {why}",
            self.ws.db_path().display()
        )))
    }

    /// Starts one background member, unless another command started one
    /// meanwhile: the first to take `.grove/autostart.lock` starts it and
    /// holds the lock until it is up (or dead); the others then find it.
    async fn start_member(&self) -> Result<(), CliError> {
        self.ws
            .ensure_state_dir()
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let _lock = self.autostart_lock().await?;
        let mut client = self.client();
        if crate::client::ping(&mut client).await.is_ok() {
            return Ok(()); // another command started it while we waited
        }
        let (mut child, log) = self.spawn_member()?;
        errln!(
            "grove: no member was running for {}; started `grove serve` in the background (pid {}, log {}). Use --no-autostart to prevent this.{}",
            self.ws.root.display(),
            child.id(),
            log.describe(),
            self.grove_above()
        );
        let until = std::time::Instant::now() + COME_UP_WITHIN;
        loop {
            // Watch the child: one that exits at once (a store it cannot
            // open, say) is reported now, with what it said.
            if let Ok(Some(status)) = child.try_wait() {
                return Err(member_died(status, &log));
            }
            let probe = tokio::time::timeout(POLL_PING, crate::client::ping(&mut client)).await;
            if let Ok(Ok(_)) = probe {
                return Ok(());
            }
            if std::time::Instant::now() >= until {
                return Err(CliError::Unavailable(format!(
                    "the background member (pid {}) did not come up within {} s; see {}",
                    child.id(),
                    COME_UP_WITHIN.as_secs(),
                    log.describe()
                )));
            }
            tokio::time::sleep(START_POLL).await;
        }
    }

    /// Takes `.grove/autostart.lock`, waiting while another command starts
    /// a member. `None` when the lock file cannot be opened (a state dir we
    /// cannot write: the member will fail too, and say why).
    async fn autostart_lock(&self) -> Result<Option<std::fs::File>, CliError> {
        let path = self.ws.state_dir.join("autostart.lock");
        let Ok(file) = crate::paths::open_private(&path) else {
            return Ok(None);
        };
        let until = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Some(file)),
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < until => {
                    tokio::time::sleep(START_POLL).await;
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(CliError::Unavailable(format!(
                        "another grove command has been starting a member for 30 s ({} is held)",
                        path.display()
                    )));
                }
                Err(std::fs::TryLockError::Error(_)) => return Ok(None),
            }
        }
    }

    /// Starts `grove serve --exit-when-idle` in a session of its own, its
    /// stderr appended to `.grove/serve.log` (or, if that cannot be opened,
    /// to a temporary file, so that its error can still be reported).
    fn spawn_member(&self) -> Result<(std::process::Child, MemberLog), CliError> {
        let log = MemberLog::open(self.ws.state_dir.join("serve.log"))?;
        let exe = std::env::current_exe().map_err(|e| CliError::Failed(e.to_string()))?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("serve")
            .arg("--exit-when-idle")
            .arg("--workspace")
            .arg(&self.ws.root)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log.writer()?);
        // A session of its own keeps the member alive when this terminal
        // goes away.
        crate::proc::in_new_session(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| CliError::Failed(format!("cannot start grove serve: {e}")))?;
        Ok((child, log))
    }
}

/// The most members one waiting command starts in a row: one that keeps
/// going away is not fixed by starting more.
const MAX_RESTARTS: u32 = 3;

/// How long a member started by a waiting command must stay up for the
/// count of restarts to start over.
const STAYED_UP: Duration = Duration::from_secs(60);

/// The store file's identity (device, inode), when it exists.
fn store_identity(db: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(db).ok().map(|m| (m.dev(), m.ino()))
}

/// How long a waiting command lets the workspace go without a primary
/// before it starts one (or gives up): a failover takes milliseconds, a
/// handover a few more.
const NO_PRIMARY_GRACE: Duration = Duration::from_secs(2);

/// How often a waiting command pings a primary whose process runs: a
/// ping wakes it, the record does not.
const PING_EVERY: Duration = Duration::from_secs(5);

/// How long a primary may not answer a waiting command's pings before it
/// stops waiting: several times the watchdog that ends a stuck member.
const UNRESPONSIVE_GIVE_UP: Duration = Duration::from_secs(20);

/// How long one readiness probe may take before the child is checked again.
const POLL_PING: Duration = Duration::from_millis(500);

/// Where the background member's stderr goes, and where its output for this
/// start begins.
struct MemberLog {
    file: std::fs::File,
    path: Option<std::path::PathBuf>,
    start: u64,
}

impl MemberLog {
    fn open(path: std::path::PathBuf) -> Result<MemberLog, CliError> {
        use std::io::Seek;
        let opened = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path);
        let (mut file, path) = match opened {
            Ok(f) => (f, Some(path)),
            Err(_) => (
                tempfile::tempfile().map_err(|e| {
                    CliError::Failed(format!("cannot open {}: {e}", path.display()))
                })?,
                None,
            ),
        };
        let start = file.seek(std::io::SeekFrom::End(0)).unwrap_or(0);
        Ok(MemberLog { file, path, start })
    }

    fn writer(&self) -> Result<std::fs::File, CliError> {
        self.file
            .try_clone()
            .map_err(|e| CliError::Failed(format!("cannot duplicate the log file: {e}")))
    }

    fn describe(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => "a temporary file (the state dir is not writable)".into(),
        }
    }

    /// What the member wrote since it started (its last lines).
    fn tail(&self) -> String {
        use std::io::{Read, Seek};
        let mut text = String::new();
        let mut f = &self.file;
        if f.seek(std::io::SeekFrom::Start(self.start)).is_ok() {
            let _ = f.take(64 * 1024).read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }
}

/// The error for a background member that exited before it served.
fn member_died(status: std::process::ExitStatus, log: &MemberLog) -> CliError {
    let said = log.tail();
    let said = if said.is_empty() {
        "(it printed nothing)".to_string()
    } else {
        said
    };
    let message = format!(
        "the background `grove serve` exited at once ({status}):\n{said}\n(full log: {})",
        log.describe()
    );
    // It exits 2 for a workspace or configuration it cannot use.
    if status.code() == Some(super::EXIT_USAGE) {
        CliError::Usage(message)
    } else {
        CliError::Unavailable(message)
    }
}

/// How long a started member may take to answer its first ping (opening
/// and migrating a store, binding): far more than it needs, so that only a
/// stuck one is reported.
const COME_UP_WITHIN: Duration = Duration::from_secs(15);
/// How long a command waits for another one that is starting a member.
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// How often a starting member (or the autostart lock) is looked at: the
/// member's exit is polled with `try_wait`, so this bounds how late a
/// member that died at once is reported.
const START_POLL: Duration = Duration::from_millis(20);
