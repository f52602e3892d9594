//! Starting shims by forking a warm `grove shim --zygote` (the shims' fork
//! server) instead of executing this binary once per run (see
//! docs/design.md, Shim: the fork server). Executing the 23 MB binary —
//! loading, relocating, faulting in, tearing down — cost more CPU than the
//! rest of a trivial task's start together; a fork of the small,
//! single-threaded server costs a fraction of it.
//!
//! The protocol, over a `SOCK_SEQPACKET` pair: the primary sends one byte
//! with two descriptors (the spec pipe's read end, the shims' log); the
//! server forks, the child becomes the shim (session, fds, then the shim's
//! own code), and the server answers the child's pid as an `i32` (a
//! negative errno if the fork failed). The server is the shim's parent and
//! reaps it; the primary supervises it like an adopted one, by pid and
//! start time, and learns of its end through a pidfd. The server ends when
//! the primary's end of the pair closes (the primary died or let it go),
//! or after [`IDLE_EXIT`] without a request.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// A server without a request this long exits: an idle workspace keeps no
/// extra process. The next start then begins with a new server.
pub const IDLE_EXIT: Duration = Duration::from_secs(60);

/// How long the primary waits for the server to answer a request; past it
/// the server is taken for broken (stopped, say) and killed.
const ANSWER_WAIT: Duration = Duration::from_secs(2);

/// A shim the server forked: not our child. Its start time pins the pid
/// (the server reaps it, after which the pid may name another process).
pub struct Forked {
    pub pid: u32,
    pub start: Option<u64>,
    /// Opened before the server can reap it, so that its end is noticed
    /// at once even when the pid is gone by the time it is watched.
    pub pidfd: Option<OwnedFd>,
}

enum Server {
    Unstarted,
    Running(Zygote),
    /// Failed twice in a row with a fresh server: every later start is a
    /// spawn of its own, for the life of this process.
    Broken,
}

/// This process's server, started at its first use (a member that never
/// starts a task never has one).
static SERVER: Mutex<Server> = Mutex::new(Server::Unstarted);

/// Starts the shim of one run through the server; `None` when the server
/// cannot be had, and the caller spawns the shim itself
/// ([`super::spawn_shim`]) with a new pipe: `spec` (the read end of the
/// pipe the spec will be written into) may be held by a child forked for a
/// request that was never answered.
pub fn start_shim(exe: &Path, spec: &impl AsRawFd, stderr: &File) -> Option<Forked> {
    let mut server = SERVER.lock().unwrap_or_else(|p| p.into_inner());
    // At most two rounds: the server at hand, then (if it had gone) a new one.
    for _ in 0..2 {
        if let Server::Running(z) = &*server
            && z.has_exited()
        {
            // It ended on its own (idle): a new one, no failure.
            *server = Server::Unstarted;
        }
        let fresh = matches!(*server, Server::Unstarted);
        if fresh {
            match Zygote::spawn(exe, stderr) {
                Ok(z) => *server = Server::Running(z),
                Err(e) => {
                    tracing::warn!("cannot start the shims' fork server ({e}): spawning each");
                    *server = Server::Broken;
                    return None;
                }
            }
        }
        let Server::Running(z) = &mut *server else {
            return None;
        };
        match z.fork(spec.as_raw_fd(), stderr.as_raw_fd()) {
            Ok(pid) => {
                // The server reaps only when it takes the next request,
                // which waits for this lock: the pid is still this shim's.
                let start = crate::proc::start_time(pid);
                let pidfd = crate::proc::pidfd(pid);
                return Some(Forked { pid, start, pidfd });
            }
            Err((e, sent)) => {
                z.stop();
                if fresh {
                    tracing::warn!("the shims' fork server failed ({e}): spawning each");
                    *server = Server::Broken;
                    return None;
                }
                *server = Server::Unstarted;
                // A request that went out may have forked a child that
                // now holds the spec pipe: not sent again (the caller
                // spawns with a pipe of its own; that child reads nothing
                // and ends).
                if sent.0 {
                    tracing::warn!("the shims' fork server failed ({e}): spawning this shim");
                    return None;
                }
                tracing::debug!("the shims' fork server is gone ({e}): starting a new one");
            }
        }
    }
    None
}

/// The running server's pid, for its parent to notice its end: it exits
/// when idle (or is killed), and unreaped it stayed `<defunct>` under an
/// idle primary until its next task's start. `Some(None)` while none
/// runs; `None` while a start holds it (ask again later).
pub fn server_pid() -> Option<Option<u32>> {
    match &*SERVER.try_lock().ok()? {
        Server::Running(z) => Some(Some(z.pid)),
        _ => Some(None),
    }
}

/// Reaps the server if it has exited; never waits (a start holding the
/// server looks itself).
pub fn reap_if_exited() {
    let Ok(mut server) = SERVER.try_lock() else {
        return;
    };
    if let Server::Running(z) = &*server
        && z.has_exited()
    {
        *server = Server::Unstarted;
    }
}

/// Whether a failed request had been sent.
struct Sent(bool);

/// The server as the primary holds it: its end of the pair, its pid (our
/// child).
struct Zygote {
    sock: OwnedFd,
    pid: u32,
}

impl Zygote {
    fn spawn(exe: &Path, stderr: &File) -> io::Result<Zygote> {
        let mut pair = [0; 2];
        // SAFETY: socketpair fills the two-element array on success.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                pair.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned here.
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
        set_timeout(&ours, libc::SO_RCVTIMEO, ANSWER_WAIT)?;
        set_timeout(&ours, libc::SO_SNDTIMEO, ANSWER_WAIT)?;
        let pid =
            super::spawn_supervisor(exe, &[b"shim", b"--zygote"], theirs.as_raw_fd(), stderr)?;
        Ok(Zygote { sock: ours, pid })
    }

    /// One shim forked: its pid. An error says whether the request went
    /// out: then a child may hold the spec pipe, unknown to us.
    fn fork(&self, spec: RawFd, log: RawFd) -> Result<u32, (io::Error, Sent)> {
        send_fds(self.sock.as_raw_fd(), &[spec, log]).map_err(|e| (e, Sent(false)))?;
        self.answer().map_err(|e| (e, Sent(true)))
    }

    fn answer(&self) -> io::Result<u32> {
        let mut answer = [0u8; 4];
        // SAFETY: reads at most 4 bytes into the array.
        let n = unsafe {
            libc::recv(
                self.sock.as_raw_fd(),
                answer.as_mut_ptr().cast(),
                answer.len(),
                0,
            )
        };
        match n {
            4 => match i32::from_ne_bytes(answer) {
                pid if pid > 0 => Ok(pid as u32),
                e => Err(io::Error::from_raw_os_error(-e)),
            },
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server ended",
            )),
            n if n < 0 => Err(io::Error::last_os_error()),
            _ => Err(io::Error::other("a short answer")),
        }
    }

    /// True when the server exited (reaped now).
    fn has_exited(&self) -> bool {
        // SAFETY: waits for our own child, without blocking.
        let rc = unsafe { libc::waitpid(self.pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
        rc == self.pid as i32 || rc < 0
    }

    /// Kills and reaps a server that failed (it may be stopped, or stuck).
    fn stop(&self) {
        // SAFETY: our own unreaped child: the pid is still the server's.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGKILL);
            libc::waitpid(self.pid as i32, std::ptr::null_mut(), 0);
        }
    }
}

fn set_timeout(sock: &OwnedFd, option: libc::c_int, after: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: after.as_secs() as libc::time_t,
        tv_usec: after.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: passes a timeval of the right size for this option.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Room for the control message of up to [`MAX_FDS`] descriptors.
const MAX_FDS: usize = 2;
#[repr(C)]
union ControlBuf {
    _align: libc::cmsghdr,
    bytes: [u8; 64],
}

/// Sends one byte with `fds` attached (`SCM_RIGHTS`).
pub fn send_fds(sock: RawFd, fds: &[RawFd]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS);
    let mut byte = [b'f'];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = ControlBuf { bytes: [0; 64] };
    let payload = std::mem::size_of_val(fds) as u32;
    // SAFETY: the message header points at live buffers; CMSG_* compute
    // offsets inside `control`, which is large and aligned enough for one
    // header with MAX_FDS descriptors.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.bytes.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(payload) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast(), fds.len());
        if libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives one message of [`send_fds`]: `None` at the end of the stream
/// (the other end closed), else the descriptors it carried (close-on-exec).
pub fn recv_fds(sock: RawFd) -> io::Result<Option<Vec<OwnedFd>>> {
    let mut byte = [0u8];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = ControlBuf { bytes: [0; 64] };
    let mut fds = Vec::new();
    // SAFETY: as in `send_fds`; every descriptor the kernel installed is
    // taken into an OwnedFd exactly once, so none leaks.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.bytes.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of::<ControlBuf>() as _;
        let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if n == 0 && fds.is_empty() {
            return Ok(None);
        }
    }
    Ok(Some(fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn descriptors_cross_the_pair_and_an_end_is_seen() {
        let mut pair = [0; 2];
        // SAFETY: fills the array on success.
        assert_eq!(
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, pair.as_mut_ptr()) },
            0
        );
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
        let (reader, mut writer) = std::io::pipe().unwrap();
        let file = tempfile::tempfile().unwrap();
        send_fds(a.as_raw_fd(), &[reader.as_raw_fd(), file.as_raw_fd()]).unwrap();
        drop(reader);
        let got = recv_fds(b.as_raw_fd()).unwrap().expect("a message");
        assert_eq!(got.len(), 2);
        writer.write_all(b"spec").unwrap();
        drop(writer);
        let mut read = String::new();
        File::from(got.into_iter().next().unwrap())
            .read_to_string(&mut read)
            .unwrap();
        assert_eq!(read, "spec", "the pipe's read end came across");
        drop(a);
        assert!(
            recv_fds(b.as_raw_fd()).unwrap().is_none(),
            "a closed end reads as None"
        );
    }
}
