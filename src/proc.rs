//! Facts about local processes, read from `/proc` and `kill(pid, 0)`.

/// True when a process with this pid exists (zombies included).
pub fn alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // Signal 0 checks existence and permission without delivering anything.
    let rc = unsafe { libc::kill(pid as i32, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The single-letter state of a process (`R`, `S`, `T` for stopped, `Z`...).
pub fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: skip past
    // the last ')' before splitting.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

/// Start time of a process in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`): together with the pid it names one process for good.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the ')' the fields start at #3 (state); starttime is #22.
    rest.split_whitespace().nth(19)?.parse().ok()
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn pid_zero_and_huge_are_not_alive() {
        assert!(!alive(0));
        assert!(!alive(u32::MAX));
    }
}
