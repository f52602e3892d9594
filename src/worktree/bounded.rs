//! A git run that is stopped, with everything it started, when it outlasts
//! a deadline. The board's diff runs in the primary and copies the task's
//! worktree into an index (`git add -A`), which runs the repository's
//! clean filters and fsmonitor hook: configuration the task's agent may
//! write. One that never ends held a board thread and a git process per
//! click, for good (see docs/design.md, Worktrees). The board's merge and
//! discard run git in the user's checkout and the task's worktree under a
//! deadline too (`merge.rs` says where a stop may leave things, and why
//! that is safe).

use std::cell::Cell;
use std::io;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Why a git run ended early: said wherever a stopped run is an error.
pub(crate) const STOPPED: &str = "git did not end in the time allowed and was stopped, with what it started: a clean filter, hook or configuration of the repository that never ends? `grove diff` in a terminal has no deadline";

/// How long git has, once told to stop (SIGTERM), before its group is
/// killed (SIGKILL). git removes its lock files (`index.lock`, a ref's
/// `.lock`) when it is terminated, never when it is killed: a git killed
/// outright would leave every later git in that repository refusing to
/// write. The rest of its group is killed as soon as git has ended.
const TERM_GRACE: Duration = Duration::from_secs(2);

thread_local! {
    /// The deadline of every git this thread starts (see [`within`]).
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Whether a git of the current [`within`] scope was stopped at its
    /// deadline, or not started because the deadline had passed.
    static STOPPED_HERE: Cell<bool> = const { Cell::new(false) };
    /// Whether gits started now run in a process group of their own even
    /// without a deadline (see [`out_of_ctrl_c`]).
    static OWN_GROUP: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every git this thread starts meanwhile in a process group
/// of its own, so that a Ctrl-C in the terminal does not reach it: for the
/// steps that must not stop halfway (`grove merge`'s move of the checkout:
/// a `read-tree` interrupted after it wrote files but before its index
/// left a half-moved checkout). Nothing changes under a deadline's scope,
/// which puts them in their own group anyway.
/// This process ignores SIGINT meanwhile too (gits started then inherit
/// that): killed by a Ctrl-C, it would leave the move to the journal, and
/// its git still writing the checkout after the prompt came back.
pub(crate) fn out_of_ctrl_c<T>(f: impl FnOnce() -> T) -> T {
    // Under a deadline (the board's merge, in the primary) gits have their
    // own group already, and the primary's Ctrl-C stays its own.
    if DEADLINE.get().is_some() {
        return f();
    }
    struct Restore(bool, libc::sigaction);
    impl Drop for Restore {
        fn drop(&mut self) {
            OWN_GROUP.set(self.0);
            // SAFETY: puts back the disposition read below.
            unsafe { libc::sigaction(libc::SIGINT, &self.1, std::ptr::null_mut()) };
        }
    }
    // SAFETY: sigaction(2) with a zeroed struct asking SIG_IGN; the old
    // disposition is written into `old`.
    let old = unsafe {
        let mut ignore: libc::sigaction = std::mem::zeroed();
        ignore.sa_sigaction = libc::SIG_IGN;
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGINT, &ignore, &mut old);
        old
    };
    let _restore = Restore(OWN_GROUP.replace(true), old);
    f()
}

/// Runs `f` with every git this thread starts meanwhile (through [`Git`]:
/// `worktree::git`, `run_to_files`, the diff's streams) stopped at `until`;
/// once `until` has passed, none is started. A scope rather than a
/// parameter, so that no git of the board's diff, merge or discard can be
/// missed, the plumbing ones included (a repository whose configuration
/// includes a FIFO blocks every git). Inside another scope, `until`
/// replaces its deadline until `f` returns, and a stop counts for both.
pub(crate) fn within<T>(until: Instant, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Instant>, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            let stopped = self.0.is_some() && (self.1 || STOPPED_HERE.get());
            DEADLINE.set(self.0);
            STOPPED_HERE.set(stopped);
        }
    }
    let _restore = Restore(DEADLINE.replace(Some(until)), STOPPED_HERE.replace(false));
    f()
}

/// The deadline of the [`within`] scope this thread is in, if any.
pub(crate) fn deadline() -> Option<Instant> {
    DEADLINE.get()
}

/// Whether a git of the [`within`] scope this thread is in was stopped (or
/// not started) at its deadline: then what it was to tell is unknown, and
/// nothing that depends on it may follow.
pub(crate) fn stopped() -> bool {
    DEADLINE.get().is_some() && STOPPED_HERE.get()
}

/// A running git: waited for by [`Git::wait`], or killed and reaped when
/// dropped (stopped early, or an unwind), so that no git is left running or
/// a zombie. With a deadline it runs in a process group of its own (git
/// and the filters and hooks it starts), stopped whole at the deadline;
/// without one it stays in its caller's group, so a Ctrl-C in the
/// terminal of `grove diff` reaches it.
pub(crate) struct Git {
    child: Option<Child>,
    watch: Option<(Arc<Watch>, std::thread::JoinHandle<()>)>,
}

/// Between a git run and the thread that stops it at its deadline.
#[derive(Default)]
struct Watch {
    /// Set, under its lock, once git has exited and before it is reaped:
    /// the group is only ever signalled while its leader's pid is still
    /// ours (a zombie keeps it), never a pid the kernel gave out again.
    ended: Mutex<bool>,
    wake: Condvar,
    killed: AtomicBool,
}

impl Watch {
    fn kill_at(&self, pgid: u32, until: Instant) {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        let mut deadline = until;
        let mut told = false;
        loop {
            // Its leader is not reaped while `ended` is false, nor after
            // it is set until this thread has been joined: the group is
            // still git's whenever it is signalled here.
            if *ended && !told {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if *ended || (told && left.is_zero()) {
                crate::proc::kill_group(pgid, libc::SIGKILL);
                return;
            }
            if left.is_zero() {
                // Asked first, so that git removes its lock files.
                crate::proc::kill_group(pgid, libc::SIGTERM);
                self.killed.store(true, Ordering::Relaxed);
                told = true;
                deadline = Instant::now() + TERM_GRACE;
                continue;
            }
            ended = (self.wake.wait_timeout(ended, left))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Git {
    /// Starts `cmd`, to be stopped at the deadline of the [`within`] scope
    /// it starts in, when there is one. Past that deadline it is not
    /// started: an error of kind `TimedOut`, and the scope is [`stopped`].
    pub(crate) fn spawn(mut cmd: Command) -> io::Result<Git> {
        use std::os::unix::process::CommandExt;
        let Some(until) = DEADLINE.get() else {
            if OWN_GROUP.get() {
                cmd.process_group(0);
            }
            return Ok(Git {
                child: Some(cmd.spawn()?),
                watch: None,
            });
        };
        if Instant::now() >= until {
            STOPPED_HERE.set(true);
            return Err(io::Error::new(io::ErrorKind::TimedOut, STOPPED));
        }
        cmd.process_group(0);
        let mut child = cmd.spawn()?;
        let watch = Arc::new(Watch::default());
        let (pgid, watching) = (child.id(), watch.clone());
        let thread = std::thread::Builder::new()
            .name("grove-git-deadline".into())
            .spawn(move || watching.kill_at(pgid, until));
        match thread {
            Ok(thread) => Ok(Git {
                child: Some(child),
                watch: Some((watch, thread)),
            }),
            Err(e) => {
                // Nobody would stop it: it does not run at all.
                crate::proc::kill_group(pgid, libc::SIGKILL);
                let _ = child.wait();
                Err(e)
            }
        }
    }

    pub(crate) fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("not waited for yet")
    }

    /// Waits for git to end and reaps it: its status, and whether the
    /// deadline stopped it (then the scope is [`stopped`]).
    pub(crate) fn wait(mut self) -> io::Result<(ExitStatus, bool)> {
        let pid = self.child().id();
        if self.watch.is_some() {
            exited(pid)?;
        }
        let killed = self.release();
        if killed {
            STOPPED_HERE.set(true);
        }
        let status = self.child.take().expect("not waited for yet").wait()?;
        Ok((status, killed))
    }

    /// Tells the deadline's thread that git has ended (or is being killed
    /// here) and waits for it: whether it killed the group.
    fn release(&mut self) -> bool {
        let Some((watch, thread)) = self.watch.take() else {
            return false;
        };
        *watch.ended.lock().unwrap_or_else(|e| e.into_inner()) = true;
        watch.wake.notify_all();
        let _ = thread.join();
        watch.killed.load(Ordering::Relaxed)
    }
}

impl Drop for Git {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.watch.is_some() {
            // Not reaped yet, so the group is still git's.
            crate::proc::kill_group(child.id(), libc::SIGKILL);
        }
        let _ = child.kill();
        if self.release() {
            STOPPED_HERE.set(true);
        }
        let _ = child.wait();
    }
}

/// Waits until `pid`, our child, has exited, leaving it to be reaped.
fn exited(pid: u32) -> io::Result<()> {
    loop {
        // SAFETY: waitid fills the zeroed siginfo; WNOWAIT reaps nothing.
        let done = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let flags = libc::WEXITED | libc::WNOWAIT;
            libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags)
        };
        if done == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_run_past_its_deadline_is_stopped_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        let mut cmd = Command::new("sh");
        // A child of its own in the background, as a filter would be.
        cmd.arg("-c")
            .arg(format!("sleep 30 & echo $! > {}; wait", pidfile.display()));
        let started = Instant::now();
        let until = Instant::now() + Duration::from_millis(300);
        let (status, killed) = within(until, || Git::spawn(cmd).unwrap().wait().unwrap());
        assert!(killed && !status.success(), "{status:?}");
        assert!(started.elapsed() < Duration::from_secs(20));
        let grandchild: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Killed with the group; reaped by init (or a subreaper) soon.
        let until = Instant::now() + Duration::from_secs(10);
        while crate::proc::running(grandchild as u32) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !crate::proc::running(grandchild as u32),
            "the background child still runs"
        );
    }

    #[test]
    fn a_stopped_run_is_told_to_end_before_it_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let told = dir.path().join("told");
        // As git does: its lock files removed on SIGTERM, then it ends.
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "trap 'echo yes > {}; exit 1' TERM; sleep 30 & wait",
            told.display()
        ));
        let until = Instant::now() + Duration::from_millis(200);
        let (status, killed, was_stopped) = within(until, || {
            let (status, killed) = Git::spawn(cmd).unwrap().wait().unwrap();
            (status, killed, stopped())
        });
        assert!(killed && was_stopped && !status.success(), "{status:?}");
        assert_eq!(std::fs::read_to_string(&told).unwrap(), "yes\n");
        // One that does not end when told is killed after the grace.
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("trap '' TERM; sleep 30 & wait");
        let started = Instant::now();
        let until = Instant::now() + Duration::from_millis(200);
        let (status, killed) = within(until, || Git::spawn(cmd).unwrap().wait().unwrap());
        assert!(killed && !status.success(), "{status:?}");
        assert!(started.elapsed() < TERM_GRACE + Duration::from_secs(5));
        assert!(!stopped(), "outside any scope");
    }

    #[test]
    fn no_run_starts_past_the_deadline_and_a_stop_counts_for_the_outer_scope() {
        let past = Instant::now();
        let (refused, inner) = within(past + Duration::from_secs(60), || {
            let refused = within(past, || {
                let e = Git::spawn(Command::new("true")).err().expect("not started");
                (e.kind(), stopped())
            });
            (refused, stopped())
        });
        assert_eq!(refused, (io::ErrorKind::TimedOut, true));
        assert!(inner, "the outer scope sees the inner one's stop");
        // A new scope starts unstopped.
        let fresh = within(Instant::now() + Duration::from_secs(60), || {
            let git = Git::spawn(Command::new("true")).unwrap();
            (git.wait().unwrap().1, stopped())
        });
        assert_eq!(fresh, (false, false));
    }

    #[test]
    fn a_run_within_its_deadline_is_not_stopped() {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("exit 3");
        let until = Instant::now() + Duration::from_secs(60);
        let (status, killed) = within(until, || Git::spawn(cmd).unwrap().wait().unwrap());
        assert_eq!((status.code(), killed), (Some(3), false));
        // Outside the scope: no deadline, and the caller's process group.
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("exit 0");
        let git = Git::spawn(cmd).unwrap();
        assert!(git.watch.is_none());
    }
}
