//! CPU time of a process's threads, read from `/proc/<pid>/task/*/schedstat`
//! (nanoseconds on a CPU), so that a throughput row can say where the
//! machine's cores went: the primary's event loop, its store thread, or
//! the benchmark's own clients (which share the same cores).

use std::collections::BTreeMap;

/// The name [`ThreadCpu`] gives a process's main thread.
pub const MAIN: &str = "main";

/// CPU nanoseconds per thread name (threads of one name summed).
#[derive(Debug, Default, Clone)]
pub struct ThreadCpu(BTreeMap<String, u64>);

impl ThreadCpu {
    /// The threads of `pid` now; empty where `/proc` is unreadable.
    pub fn of(pid: u32) -> ThreadCpu {
        let mut out = BTreeMap::new();
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return ThreadCpu(out);
        };
        for entry in dir.flatten() {
            let path = entry.path();
            // The main thread carries the binary's name, whatever it is.
            let name = if entry.file_name().to_str() == Some(&pid.to_string()) {
                MAIN.to_string()
            } else {
                std::fs::read_to_string(path.join("comm")).unwrap_or_default()
            };
            let ns = std::fs::read_to_string(path.join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
            *out.entry(name.trim().to_string()).or_default() += ns;
        }
        ThreadCpu(out)
    }

    /// Nanoseconds of threads named `name` spent since `before`.
    pub fn since(&self, before: &ThreadCpu, name: &str) -> u64 {
        let now = self.0.get(name).copied().unwrap_or(0);
        now.saturating_sub(before.0.get(name).copied().unwrap_or(0))
    }

    /// CPU nanoseconds of this whole process so far, ended threads included
    /// (which `/proc/self/task` no longer lists).
    pub fn own_process() -> u64 {
        // SAFETY: getrusage only fills the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
            return 0;
        }
        let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
        ns(usage.ru_utime) + ns(usage.ru_stime)
    }

    /// Nanoseconds of all threads spent since `before`.
    pub fn all_since(&self, before: &ThreadCpu) -> u64 {
        let now: u64 = self.0.values().sum();
        now.saturating_sub(before.0.values().sum())
    }
}
