//! Facts about local processes, read from `/proc` and `kill(pid, 0)`.

use std::collections::{HashMap, HashSet};

/// Starts `cmd` in a session of its own (`setsid` between fork and exec):
/// it leaves our terminal and process group, so it outlives us and a
/// terminal hang-up or a signal to our group does not reach it. A failed
/// `setsid` fails the spawn rather than start a process that would die
/// with us.
pub fn in_new_session(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends `sig` to the process group `pgid`; never to group 0 or 1, which
/// kill(2) would read as our own group or every process we may signal.
pub fn kill_group(pgid: u32, sig: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) takes no pointers.
        unsafe { libc::kill(-(pgid as i32), sig) };
    }
}

/// True when a process with this pid exists (zombies included).
pub fn alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // Signal 0 checks existence and permission without delivering anything.
    let rc = unsafe { libc::kill(pid as i32, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The fields of `/proc/<pid>/stat` that grove uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    /// `R`, `S`, `T` for stopped, `Z` for a zombie...
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
    pub session: u32,
    /// Clock ticks since boot: together with the pid it names one process
    /// for good.
    pub start: u64,
    /// CPU time used (user + system), in clock ticks.
    pub cpu_ticks: u64,
}

pub fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &text)
}

fn parse_stat(pid: u32, text: &str) -> Option<Stat> {
    // The command name is in parentheses and may contain spaces and ')':
    // skip past the last ')' before splitting. The fields after it start at
    // #3 (state); ppid is #4, pgrp #5, session #6, utime #14, stime #15,
    // starttime #22.
    let f: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    Some(Stat {
        pid,
        state: f.first()?.chars().next()?,
        ppid: field(4)? as u32,
        pgrp: field(5)? as u32,
        session: field(6)? as u32,
        start: field(22)?,
        cpu_ticks: field(14)? + field(15)?,
    })
}

/// The single-letter state of a process (`R`, `S`, `T` for stopped, `Z`...).
pub fn state(pid: u32) -> Option<char> {
    stat(pid).map(|s| s.state)
}

/// Start time of a process in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`).
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.start)
}

/// When a process started, in Unix milliseconds (boot time plus its start
/// time since boot; the boot time is known to the second).
pub fn started_at_ms(pid: u32) -> Option<u64> {
    let ticks = start_time(pid)?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(btime * 1000 + ticks * 1000 / hz as u64)
}

/// The process's command line arguments (empty if unreadable).
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A member is alive if its pid exists and is not a zombie.
pub fn running(pid: u32) -> bool {
    alive(pid) && state(pid) != Some('Z')
}

/// Whether `pid` runs and, when `start` is given, is the process that
/// started then (not a later one given the same pid): one read of its
/// `stat` for both, as the orchestrator asks of every run on every pass.
pub fn running_as(pid: u32, start: Option<u64>) -> bool {
    match start {
        Some(start) => stat(pid).is_some_and(|s| s.state != 'Z' && s.start == start),
        None => running(pid),
    }
}

/// Every process `/proc` shows, zombies included, in one pass.
pub fn all() -> Vec<Stat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
        .collect()
}

/// The descendants of `root` (children, theirs, and so on), zombies
/// included, from one snapshot of `/proc`.
pub fn descendants(root: u32) -> Vec<Stat> {
    descendants_in(root, &all())
}

/// The descendants of `root` that belong to it: grove members (`grove
/// serve` of this very binary) and everything below them left out. A
/// task that runs `grove spawn` where no member runs autostarts one, as
/// its descendant: a workspace's member, with tasks of its own, that must
/// outlive the task which happened to start it (see docs/design.md,
/// Shim).
pub fn descendants_but_members(root: u32) -> Vec<Stat> {
    let all = all();
    let mine = descendants_in(root, &all);
    let ours = exe_path("/proc/self/exe");
    let members: Vec<u32> = (mine.iter())
        .filter(|p| p.state != 'Z' && is_grove_member(p.pid, ours.as_deref()))
        .map(|p| p.pid)
        .collect();
    if members.is_empty() {
        return mine;
    }
    let spared: HashSet<u32> = (members.iter())
        .flat_map(|m| descendants_in(*m, &all).into_iter().map(|p| p.pid))
        .chain(members.iter().copied())
        .collect();
    mine.into_iter()
        .filter(|p| !spared.contains(&p.pid))
        .collect()
}

/// Whether `pid` runs grove (this binary's path, whichever build of it:
/// an upgrade replaces the file under running processes) as a member, or
/// as a part a member started that outlives its parent there: a shim (the
/// fork server's shims, orphaned when it exits idle) or a shared agent's
/// host. Such processes serve a workspace, not the run they happen to be
/// below (see `descendants_but_members`).
fn is_grove_member(pid: u32, ours: Option<&str>) -> bool {
    let theirs = exe_path(&format!("/proc/{pid}/exe"));
    let same_binary = ours.is_some_and(|ours| theirs.as_deref() == Some(ours));
    same_binary
        && cmdline(pid)
            .get(1)
            .is_some_and(|a| matches!(a.as_str(), "serve" | "shim" | "agent-host"))
}

/// The executable a `/proc/PID/exe` link names, without the ` (deleted)`
/// the kernel adds once the file was replaced (an upgrade).
fn exe_path(link: &str) -> Option<String> {
    let l = std::fs::read_link(link)
        .ok()?
        .to_string_lossy()
        .into_owned();
    Some(
        l.strip_suffix(" (deleted)")
            .map(str::to_string)
            .unwrap_or(l),
    )
}

fn descendants_in(root: u32, all: &[Stat]) -> Vec<Stat> {
    let mut children: HashMap<u32, Vec<&Stat>> = HashMap::new();
    for s in all {
        children.entry(s.ppid).or_default().push(s);
    }
    // A work list, and a visited set: the snapshot is not atomic, so a pid
    // reused while it was taken could make the parent links loop.
    let mut seen = HashSet::from([root]);
    let mut todo = vec![root];
    let mut out = Vec::new();
    while let Some(pid) = todo.pop() {
        for kid in children.get(&pid).into_iter().flatten() {
            if seen.insert(kid.pid) {
                out.push(**kid);
                todo.push(kid.pid);
            }
        }
    }
    out
}

/// Live (non-zombie) processes whose session id is `sid`.
pub fn in_session(sid: u32) -> Vec<Stat> {
    all()
        .into_iter()
        .filter(|s| s.session == sid && s.state != 'Z')
        .collect()
}

/// True when `pid` still names the process that had `start`, or names no
/// process at all. Either way a process group or session with that id can
/// only hold that process's descendants: the kernel does not reuse a pid
/// while a group or session of that id has a member.
pub fn same_or_gone(pid: u32, start: Option<u64>) -> bool {
    match start_time(pid) {
        None => true,
        now => start.is_some() && now == start,
    }
}

/// A pidfd of `pid`: it names that process for good, even once the pid
/// is reused. `None` where pidfds are not available.
pub fn pidfd(pid: u32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    if pid == 0 || pid > i32::MAX as u32 {
        return None;
    }
    // SAFETY: pidfd_open returns a new descriptor we then own, or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Blocks until the process `pid` started at `start` has ended, or until
/// `until`; true when it ended. Off any runtime (a command with nothing
/// else to do): the blocking counterpart of [`ExitWatch`], on a pidfd, or
/// a check every 20 ms where there is none.
pub fn wait_gone(pid: u32, start: Option<u64>, until: std::time::Instant) -> bool {
    use std::os::fd::AsRawFd;
    // Opened, then checked: the pidfd then names the process that had
    // that start time, not a later one with its pid.
    let fd = pidfd(pid);
    loop {
        if !running_as(pid, start) {
            return true;
        }
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        let Some(fd) = &fd else {
            std::thread::sleep(left.min(std::time::Duration::from_millis(20)));
            continue;
        };
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, for the call's duration. A signal
        // (EINTR) or a timeout goes round the loop again.
        unsafe { libc::poll(&mut p, 1, ms) };
    }
}

/// Notices the end of another process without polling: a pidfd becomes
/// readable when its process exits (zombie or reaped). Where pidfds are not
/// available (kernels before 5.3, fd limit) it falls back to checking
/// `running` on a timer.
pub struct ExitWatch {
    pid: u32,
    fd: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
    fallback: std::time::Duration,
}

impl ExitWatch {
    /// Must be called inside a tokio runtime (the pidfd joins its reactor).
    pub fn new(pid: u32, fallback: std::time::Duration) -> ExitWatch {
        ExitWatch::with_pidfd(pid, pidfd(pid), fallback)
    }

    /// With a pidfd opened earlier (while the pid was known to be the
    /// process's), or `None` to watch on the timer.
    pub fn with_pidfd(
        pid: u32,
        pidfd: Option<std::os::fd::OwnedFd>,
        fallback: std::time::Duration,
    ) -> ExitWatch {
        let fd = pidfd.and_then(|owned| {
            // SAFETY: the AsyncFd owns the descriptor, so it stays open
            // for as long as it is registered.
            unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    owned,
                    tokio::io::Interest::READABLE,
                )
            }
            .ok()
        });
        ExitWatch { pid, fd, fallback }
    }

    /// Resolves once the process has ended (at once if it already had).
    pub async fn exited(&self) {
        if let Some(fd) = &self.fd
            && fd.readable().await.is_ok()
        {
            return;
        }
        while running(self.pid) {
            tokio::time::sleep(self.fallback).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_gone_returns_when_the_process_ends_or_the_time_is_up() {
        let mut long = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = long.id();
        let soon = std::time::Instant::now() + std::time::Duration::from_millis(50);
        assert!(!wait_gone(pid, start_time(pid), soon), "it still runs");
        let mut short = std::process::Command::new("sleep")
            .arg("0.1")
            .spawn()
            .unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        assert!(wait_gone(short.id(), start_time(short.id()), until));
        let _ = short.wait();
        let _ = long.kill();
        let _ = long.wait();
    }

    #[test]
    fn self_is_alive_with_a_start_time() {
        let me = std::process::id();
        assert!(alive(me));
        assert!(running(me));
        assert!(start_time(me).is_some());
        let started = started_at_ms(me).unwrap();
        let now = crate::protocol::now_ms();
        assert!(
            started <= now + 2000 && now - started < 3_600_000,
            "{started} vs {now}"
        );
        assert!(!cmdline(me).is_empty());
        assert!(matches!(state(me), Some('R') | Some('S')));
        assert!(same_or_gone(me, start_time(me)));
        assert!(!same_or_gone(me, start_time(me).map(|s| s + 1)));
    }

    #[tokio::test]
    async fn exit_watch_wakes_when_the_process_ends() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let watch = ExitWatch::new(child.id(), std::time::Duration::from_secs(3600));
        assert!(watch.fd.is_some(), "pidfd_open should work in tests");
        let early = tokio::time::timeout(std::time::Duration::from_millis(50), watch.exited());
        assert!(early.await.is_err(), "still running");
        child.kill().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), watch.exited())
            .await
            .expect("the exit was noticed");
        child.wait().unwrap();
    }

    #[test]
    fn running_as_names_a_process_by_its_start_and_not_a_zombie() {
        let me = std::process::id();
        let start = start_time(me);
        assert!(running_as(me, start));
        assert!(running_as(me, None));
        assert!(!running_as(me, start.map(|s| s + 1)), "a later process");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let (pid, child_start) = (child.id(), start_time(child.id()));
        // Until it is reaped an ended child is a zombie: not running.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while state(pid) != Some('Z') && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(state(pid), Some('Z'));
        assert!(!running_as(pid, child_start));
        assert!(!running_as(pid, None));
        child.wait().unwrap();
        assert!(!running_as(pid, child_start));
    }

    #[test]
    fn pid_zero_and_huge_are_not_alive() {
        assert!(!alive(0));
        assert!(!alive(u32::MAX));
    }

    #[test]
    fn stat_survives_odd_command_names() {
        let line = "42 (a) b (c) S 7 42 40 0 -1 4194560 0 0 0 0 3 4 0 0 20 0 1 0 12345 0 0";
        let s = parse_stat(42, line).unwrap();
        assert_eq!((s.state, s.ppid, s.pgrp, s.session), ('S', 7, 42, 40));
        assert_eq!(s.start, 12345);
        assert_eq!(s.cpu_ticks, 7);
    }

    #[test]
    fn descendants_follow_every_generation_and_survive_loops() {
        let p = |pid, ppid| Stat {
            pid,
            state: 'S',
            ppid,
            pgrp: pid,
            session: pid,
            start: 0,
            cpu_ticks: 0,
        };
        let all = [
            p(10, 1),
            p(11, 10),
            p(12, 11),
            p(13, 1),
            p(20, 21),
            p(21, 20),
        ];
        let mut d: Vec<u32> = descendants_in(10, &all).iter().map(|s| s.pid).collect();
        d.sort();
        assert_eq!(d, [11, 12]);
        assert_eq!(descendants_in(20, &all).len(), 1);
    }

    #[test]
    fn our_own_child_is_a_descendant() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id();
        assert!(descendants(me).iter().any(|s| s.pid == child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
