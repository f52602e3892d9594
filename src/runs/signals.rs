//! The signals a shim obeys, and keeping them from killing it too early.
//!
//! TERM, INT and HUP cancel the run; USR1 says "the task's row changed:
//! read it" (pause or resume). Every one of them kills a process by
//! default, so a shim signalled before its handlers exist would die and
//! orphan its agent, or leave a half-written record behind. The primary
//! therefore starts the shim with them blocked (the mask `posix_spawn`
//! sets in the child, `super::spawn_shim`); they stay pending until the
//! shim has installed its handlers, a cancel that arrived meanwhile is seen
//! by `cancel_pending` before any agent exists, and they are unblocked
//! just before the agent starts (which inherits the mask).

use std::io;
use tokio::signal::unix::{Signal, SignalKind, signal};

const CANCEL: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];
const CONTROL: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1];

/// The signal that tells a shim to read its task's row and pause or resume.
pub const SYNC: libc::c_int = libc::SIGUSR1;

fn set_of(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before sigaddset reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        set
    }
}

fn set_mask(how: libc::c_int, signals: &[libc::c_int]) -> io::Result<()> {
    let set = set_of(signals);
    // SAFETY: pthread_sigmask is async-signal-safe and only reads `set`.
    match unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) } {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// The mask a shim starts with: exactly the control signals blocked,
/// whatever the spawning thread had (`super::spawn_shim`).
pub fn control_set() -> libc::sigset_t {
    set_of(&CONTROL)
}

/// For the `pre_exec` of the other programs the shim's side starts (a
/// worktree's setup command, spawned while the control signals are still
/// blocked; a shared agent's host, and that host's agent): nothing blocked
/// and nothing ignored, as a program expects to start. Both survive exec, and the shim
/// may have inherited ignored signals from whoever started the member (a
/// background job of a script ignores INT and QUIT, `nohup` HUP).
/// Async-signal-safe.
pub fn reset_all_in_child() -> io::Result<()> {
    // Linux numbers signals 1..=64; KILL, STOP and the two glibc keeps for
    // itself refuse the change, which is fine.
    for sig in 1..=64 {
        // SAFETY: resets one disposition in the forked child.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    set_mask(libc::SIG_SETMASK, &[])
}

/// Sets every signal this process inherited as ignored back to its default
/// action (the shim's second step), SIGPIPE aside: std ignores it here and
/// restores it for every child. Ignored dispositions survive `exec`, and
/// the shim may have inherited some from whoever started the member (a
/// background job of a script ignores INT and QUIT, `nohup` HUP); with
/// none left, and nothing blocked when it spawns, the shim starts its agent
/// as a program expects to start without a `pre_exec` (which would force
/// std to fork the shim rather than `posix_spawn` the agent).
pub fn default_the_ignored() {
    for sig in 1..=64 {
        if sig == libc::SIGPIPE {
            continue;
        }
        // SAFETY: reads one disposition into a zeroed struct and, when it
        // is SIG_IGN, sets the default; no handler of ours is involved.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction == libc::SIG_IGN
            {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
}

/// Blocks the control signals in this thread (the shim's first step; a
/// no-op when the primary started it, kept for a shim started by hand).
pub fn block_control() {
    let _ = set_mask(libc::SIG_BLOCK, &CONTROL);
}

/// Lets the control signals through to the installed handlers; any that
/// arrived meanwhile are delivered now.
pub fn unblock_control() {
    let _ = set_mask(libc::SIG_UNBLOCK, &CONTROL);
}

/// True when a cancel is waiting behind the mask.
pub fn cancel_pending() -> bool {
    // SAFETY: sigpending fills the zeroed set; sigismember only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        if libc::sigpending(&mut set) != 0 {
            return false;
        }
        CANCEL.iter().any(|s| libc::sigismember(&set, *s) == 1)
    }
}

/// What a signal asks of the shim.
pub enum Control {
    Cancel,
    /// Read the task's row: paused or resumed.
    Sync,
    /// A child exited (an orphan to reap, or the agent).
    Child,
}

/// Handlers for TERM, INT and HUP: every way a grove process is asked to
/// stop (a member, `grove chaos`, a shim's cancel).
pub struct StopSignals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl StopSignals {
    pub fn install() -> io::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Resolves when one of them arrives.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

/// Resolves on the first TERM, INT or HUP; never, if the handlers cannot
/// be installed (said once in the log).
pub async fn stop_requested() {
    match StopSignals::install() {
        Ok(mut s) => s.recv().await,
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            std::future::pending().await
        }
    }
}

/// Handlers for the control signals and SIGCHLD.
pub struct Signals {
    stop: StopSignals,
    sync: Signal,
    child: Signal,
}

impl Signals {
    pub fn install() -> io::Result<Signals> {
        Ok(Signals {
            stop: StopSignals::install()?,
            sync: signal(SignalKind::from_raw(SYNC))?,
            child: signal(SignalKind::child())?,
        })
    }

    /// The next signal that arrives.
    pub async fn next(&mut self) -> Control {
        tokio::select! {
            _ = self.stop.recv() => Control::Cancel,
            _ = self.sync.recv() => Control::Sync,
            _ = self.child.recv() => Control::Child,
        }
    }
}
