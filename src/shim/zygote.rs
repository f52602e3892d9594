//! `grove shim --zygote`: the shims' fork server (see `runs::zygote` for
//! the protocol and docs/design.md, Shim: the fork server). Started by a
//! primary like a shim (its own session, the control signals blocked,
//! stderr on the shims' log), with its end of the pair as fd 0. It stays
//! single-threaded so that a fork copies a consistent process: no runtime,
//! no tracing, no other thread ever runs here, only in the children.

use crate::runs::zygote::{IDLE_EXIT, recv_fds};
use std::os::fd::{AsRawFd, OwnedFd};

/// The fd the pair arrives on.
const SOCK: i32 = 0;

/// Serves fork requests until the primary's end closes or none came for
/// [`IDLE_EXIT`]. Each child runs `shim` (the shim's whole life, reading
/// its spec from stdin) and exits with its code.
pub fn serve(shim: fn() -> i32) -> i32 {
    // Its command line is every forked shim's too: the names (`ps -e`,
    // `top`) tell them apart.
    set_name(c"grove-zygote");
    loop {
        let mut poll = libc::pollfd {
            fd: SOCK,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one pollfd we own.
        let ready = unsafe { libc::poll(&mut poll, 1, IDLE_EXIT.as_millis() as i32) };
        if ready == 0 {
            return 0;
        }
        if ready < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            errln!("grove shim --zygote: {}", std::io::Error::last_os_error());
            return 1;
        }
        let fds = match recv_fds(SOCK) {
            Ok(Some(fds)) => fds,
            // The primary's end closed: it died or let us go.
            Ok(None) => return 0,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                errln!("grove shim --zygote: {e}");
                return 1;
            }
        };
        // Only now: the primary sends a request after it has read the
        // last shim's start time and opened its pidfd, so no shim is
        // reaped (its pid freed) before that.
        reap_ended();
        let answer = match <[OwnedFd; 2]>::try_from(fds) {
            Ok([spec, log]) => fork_shim(spec, log, shim),
            Err(_) => -libc::EINVAL,
        };
        // SAFETY: sends 4 bytes from a live array.
        let bytes = answer.to_ne_bytes();
        unsafe { libc::send(SOCK, bytes.as_ptr().cast(), 4, libc::MSG_NOSIGNAL) };
    }
}

/// Forks one shim: its pid, or a negative errno.
fn fork_shim(spec: OwnedFd, log: OwnedFd, shim: fn() -> i32) -> i32 {
    // SAFETY: this process has one thread, so the child starts with every
    // lock free and every structure consistent.
    match unsafe { libc::fork() } {
        -1 => -std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
        0 => {
            // The child: what `runs::spawn_shim` has the kernel do, then
            // the shim. The fds received are above 2 (0-2 are taken here).
            // SAFETY: setsid and dup2 on fds we own; the pair's end (fd 0)
            // is replaced by the spec pipe, so no shim holds it.
            let ok = unsafe {
                libc::setsid() >= 0
                    && libc::dup2(log.as_raw_fd(), 2) == 2
                    && libc::dup2(spec.as_raw_fd(), SOCK) == SOCK
            };
            drop((spec, log));
            set_name(c"grove-shim");
            if !ok {
                // SAFETY: leaves the child at once, without running
                // anything of the server's.
                unsafe { libc::_exit(2) };
            }
            std::process::exit(shim())
        }
        pid => pid,
    }
}

/// Reaps the shims that ended; called when a request arrives (see there).
/// Until then an ended shim stays a zombie; when the server exits, init
/// reaps those left.
fn reap_ended() {
    loop {
        // SAFETY: reaps any ended child without blocking.
        let rc = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if rc <= 0 {
            return;
        }
    }
}

/// This process's name (its `comm`, 15 bytes at most).
fn set_name(name: &std::ffi::CStr) {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of ours.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}
