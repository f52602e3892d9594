//! Test harness: real `grove` processes on a temporary workspace.
//!
//! Every wait is a poll with a deadline; nothing sleeps and hopes. Every
//! process started here is killed when the harness drops, even when the
//! test fails.

#![allow(dead_code)]

pub mod scripted;
pub mod test_env;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_grove");

/// Generous: CI machines are shared and slow.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct Member {
    pub child: Child,
    pub pid: u32,
    pub events_log: PathBuf,
    pub stderr_log: PathBuf,
}

impl Member {
    /// Seqs of durable events this member received, in arrival order.
    pub fn seqs(&self) -> Vec<u64> {
        read_event_log(&self.events_log)
            .iter()
            .filter_map(|v| v["seq"].as_u64())
            .collect()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.pid as i32, sig) };
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

pub struct Grove {
    pub dir: tempfile::TempDir,
    pub ws: PathBuf,
    pub members: Vec<Member>,
    extra_env: Vec<(String, String)>,
    counter: usize,
    /// Runs members through this command first (e.g. `nsenter --net=…`, so
    /// that they and the agents their shims start share a network
    /// namespace); it must exec `grove` in place, keeping the pid.
    pub member_prefix: Vec<String>,
}

impl Grove {
    /// A fresh workspace with fast heartbeats.
    pub fn new() -> Grove {
        Grove::with_config("heartbeat_ms = 100\n")
    }

    /// A workspace whose engine `scripted` is the scripted ACP agent on the
    /// Python SDK (tests/acp_agents/scripted_agent.py), answering permission
    /// requests by `permissions`; `settings` are more top-level lines.
    pub fn scripted_acp(permissions: &str, settings: &str) -> Grove {
        let python = test_env::python();
        let agent = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/acp_agents/scripted_agent.py"
        );
        Grove::with_config(&format!(
            "heartbeat_ms = 100\nkill_grace_ms = 2000\n{settings}[engines.scripted]\nkind = \"acp\"\n\
             command = [\"{}\", \"{agent}\"]\npermissions = \"{permissions}\"\n",
            python.display()
        ))
    }

    pub fn with_config(toml: &str) -> Grove {
        let dir = tempfile::tempdir().expect("tempdir");
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(ws.join(".grove")).expect("mkdir");
        std::fs::write(ws.join(".grove/grove.toml"), toml).expect("config");
        // The user's config dir holds the projects registry, where every
        // member registers its workspace: each test has its own.
        let config_home = dir.path().join("config");
        Grove {
            extra_env: vec![("XDG_CONFIG_HOME".into(), config_home.display().to_string())],
            dir,
            ws,
            members: Vec::new(),
            counter: 0,
            member_prefix: Vec::new(),
        }
    }

    pub fn env(&mut self, k: &str, v: &str) {
        self.extra_env.push((k.into(), v.into()));
    }

    /// No longer sets `k` for the commands and members started from now.
    pub fn unset_env(&mut self, k: &str) {
        self.extra_env.retain(|(name, _)| name != k);
    }

    /// Starts `grove serve` and returns its index in `members`.
    pub fn serve(&mut self) -> usize {
        self.counter += 1;
        let events_log = self
            .dir
            .path()
            .join(format!("events-{}.jsonl", self.counter));
        let stderr_log = self.dir.path().join(format!("member-{}.log", self.counter));
        let stderr = std::fs::File::create(&stderr_log).expect("log file");
        let mut cmd = match self.member_prefix.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(BIN);
                cmd
            }
            None => Command::new(BIN),
        };
        cmd.arg("serve")
            .arg("--workspace")
            .arg(&self.ws)
            .arg("--events-log")
            .arg(&events_log)
            .env("GROVE_LOG", "grove=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn grove serve");
        let pid = child.id();
        self.members.push(Member {
            child,
            pid,
            events_log,
            stderr_log,
        });
        self.members.len() - 1
    }

    pub fn member_by_pid(&mut self, pid: u32) -> &mut Member {
        self.members
            .iter_mut()
            .find(|m| m.pid == pid)
            .expect("no member with that pid")
    }

    /// Runs a CLI command on this workspace.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .arg("--workspace")
            .arg(&self.ws)
            // Members started behind the harness's back would outlive it.
            .env("GROVE_NO_AUTOSTART", "1")
            .stdin(Stdio::null());
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd.output().expect("run grove")
    }

    /// Runs a CLI command and insists on success; returns trimmed stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "grove {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn status(&self) -> Value {
        let out = self.run(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// The primary's RPC endpoint, as `grove status` shows it.
    pub fn rpc_endpoint(&self) -> String {
        self.status()["primary"]["rpc_endpoint"]
            .as_str()
            .expect("a primary's rpc endpoint")
            .to_string()
    }

    /// Waits until `grove status` shows a healthy primary and returns its pid.
    pub fn wait_primary(&self) -> (u32, u64) {
        let s = wait_for("a healthy primary", DEADLINE, || {
            let s = self.status();
            (s["state"] == "ok").then_some(s)
        });
        (
            s["primary"]["pid"].as_u64().unwrap() as u32,
            s["primary"]["epoch"].as_u64().unwrap(),
        )
    }

    /// Waits for a primary other than `old_pid` with a higher epoch.
    pub fn wait_new_primary(&self, old_pid: u32, old_epoch: u64) -> (u32, u64) {
        wait_for("a new primary", DEADLINE, || {
            let s = self.status();
            let pid = s["primary"]["pid"].as_u64()? as u32;
            let epoch = s["primary"]["epoch"].as_u64()?;
            (s["state"] == "ok" && pid != old_pid && epoch > old_epoch).then_some((pid, epoch))
        })
    }

    /// Waits until `n` secondaries are registered at `epoch`.
    pub fn wait_secondaries_at(&self, n: usize, epoch: u64) {
        wait_for(
            &format!("{n} secondaries at epoch {epoch}"),
            DEADLINE,
            || {
                let s = self.status();
                let secs = s["secondaries"].as_array()?;
                let at = secs
                    .iter()
                    .filter(|m| m["epoch"].as_u64() == Some(epoch))
                    .count();
                (at >= n).then_some(())
            },
        );
    }

    pub fn db(&self) -> grove::store::Reader {
        grove::store::Reader::open(&self.ws.join(".grove/grove.db")).expect("open store")
    }

    pub fn task_create(&self, prompt: &str) -> String {
        self.ok(&["task", "create", prompt])
    }
}

impl Drop for Grove {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.child.kill();
            let _ = m.child.wait();
        }
        // Task supervisors run in sessions of their own and would outlive
        // the test: kill every run's process group and shim.
        if let Ok(entries) = std::fs::read_dir(self.ws.join(".grove/run")) {
            for e in entries.flatten() {
                if !e.file_name().to_string_lossy().ends_with(".run.json") {
                    continue;
                }
                let Some(v) = read_run_record(&e.path()) else {
                    continue;
                };
                if let Some(agent) = v["agent_pid"].as_i64() {
                    unsafe { libc::kill(-(agent as i32), libc::SIGKILL) };
                }
                if let Some(shim) = v["shim_pid"].as_i64() {
                    unsafe { libc::kill(shim as i32, libc::SIGKILL) };
                }
            }
        }
        if std::thread::panicking() {
            for m in &self.members {
                eprintln!("---- member pid {} ----\n{}", m.pid, m.stderr());
            }
        }
    }
}

/// Polls `f` every 20 ms until it returns `Some`, or panics at the deadline.
/// The latest run record in a run's file (`run/<task>.<run>.run.json`):
/// the shim appends one JSON line per record, and its exit line after.
pub fn read_run_record(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v.get("shim_pid").is_some())
}

pub fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > until {
            panic!("timed out after {within:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn read_event_log(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Asserts that `seqs` is one contiguous run with no gap and no duplicate.
pub fn assert_contiguous(seqs: &[u64], who: &str) {
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "{who}: gap or duplicate in {seqs:?}");
    }
}

/// Resident memory of a process in KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `grove show ID --json`.
pub fn show(g: &Grove, id: &str) -> Value {
    serde_json::from_str(&g.ok(&["show", id, "--json"])).expect("show --json prints JSON")
}

/// Waits until the task has `status`; returns its `show --json`.
pub fn wait_status(g: &Grove, id: &str, status: &str) -> Value {
    wait_for(&format!("task {id} {status}"), DEADLINE, || {
        let t = show(g, id);
        (t["status"] == status).then_some(t)
    })
}

/// The task's stored agent updates as (kind, ACP JSON), in seq order.
pub fn updates(g: &Grove, id: &str) -> Vec<(String, Value)> {
    g.db()
        .events_from(1, 1_000_000)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.data {
            grove::protocol::EventData::TaskAgentUpdate {
                id: i, kind, acp, ..
            } if i == id => Some((kind, serde_json::from_str(&acp).unwrap())),
            _ => None,
        })
        .collect()
}

/// The agent's message text, its chunks joined.
pub fn message_text(updates: &[(String, Value)]) -> String {
    updates
        .iter()
        .filter(|(k, _)| k == "agent_message_chunk")
        .filter_map(|(_, u)| u["content"]["text"].as_str())
        .collect()
}

/// `kill -9` of the primary, the wait for the next one, and a new member in
/// place of the dead one (so that the next kill has a successor too).
pub fn kill_primary(g: &mut Grove) {
    let (pid, epoch) = g.wait_primary();
    g.member_by_pid(pid).signal(libc::SIGKILL);
    g.wait_new_primary(pid, epoch);
    g.serve();
}

/// A finished command's stdout, as text.
pub fn stdout_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A finished command's stderr, as text.
pub fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
