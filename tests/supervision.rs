//! The shim as a supervisor, with real processes: cancel racing the start
//! of a run, daemons that leave the task's process group and session,
//! the timeout clock while paused, and the parallel limit across pause and
//! resume.

mod common;

use common::*;
use grove::protocol::{EventData, TaskStatus};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A string no other test's processes carry.
fn marker(g: &Grove, what: &str) -> String {
    let tmp = g.dir.path().file_name().unwrap().to_string_lossy();
    format!("{what}-{}", tmp.trim_start_matches('.'))
}

/// Every live process that belongs to a task of this workspace or carries
/// `marker`: agents and their children (they inherit `GROVE_WORKSPACE`),
/// shims (their spec lies under `.grove/run/`), and anything whose command
/// line names the marker. Members and CLI calls match none of these.
fn task_processes(g: &Grove, marker: &str) -> Vec<(u32, String)> {
    let ws = std::fs::canonicalize(&g.ws).unwrap();
    let env_tag = format!("GROVE_WORKSPACE={}", ws.display());
    let run_dir = format!("{}/.grove/run/", ws.display());
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if !grove::proc::running(pid) {
            continue;
        }
        let read = |f: &str| std::fs::read(format!("/proc/{pid}/{f}")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&read("cmdline")).replace('\0', " ");
        let ours = cmdline.contains(marker)
            || cmdline.contains(&run_dir)
            || read("environ")
                .split(|b| *b == 0)
                .any(|v| v == env_tag.as_bytes());
        if ours {
            found.push((pid, cmdline));
        }
    }
    found
}

fn wait_no_task_processes(g: &Grove, marker: &str, after: &str) {
    let until = Instant::now() + DEADLINE;
    loop {
        let left = task_processes(g, marker);
        if left.is_empty() {
            return;
        }
        if Instant::now() > until {
            panic!("{} processes survived {after}: {left:?}", left.len());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn temp_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().contains(".tmp-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn cancel_right_after_spawn_leaves_no_process_and_no_temp_file() {
    let mut g = Grove::with_config("heartbeat_ms = 100\nmax_parallel = 8\nkill_grace_ms = 500\n");
    g.serve();
    g.wait_primary();
    let mark = marker(&g, "leak");
    // Two commands, so that `sh` stays and its command line keeps the marker.
    let script = format!("sleep 120; : {mark}");
    let mut ids = Vec::new();
    for _ in 0..200 {
        let id = g.ok(&["spawn", &script]);
        g.ok(&["cancel", &id]);
        ids.push(id);
    }
    wait_no_task_processes(&g, &mark, "200 cancels right after spawn");
    for id in &ids {
        assert_eq!(show(&g, id)["status"], "cancelled", "task {id}");
    }
    let tmp = temp_files(&g.ws.join(".grove/run"));
    assert!(tmp.is_empty(), "temp files left behind: {tmp:?}");
}

/// A task that leaves a daemon behind: a double fork, the grandchild in a
/// session (and process group) of its own.
fn daemonizing(mark: &str, then: &str) -> String {
    format!("(setsid sh -c 'sleep 300; : {mark}' &); {then}")
}

fn wait_daemon(g: &Grove, mark: &str) {
    wait_for("the daemon to start", DEADLINE, || {
        task_processes(g, mark)
            .iter()
            .any(|(_, cmd)| cmd.starts_with(&format!("sh -c sleep 300; : {mark}")))
            .then_some(())
    });
}

#[test]
fn cancel_timeout_and_exit_kill_setsid_daemons() {
    let mut g = Grove::with_config("heartbeat_ms = 100\nkill_grace_ms = 300\n");
    g.serve();
    g.wait_primary();

    let mark = marker(&g, "dmn-cancel");
    let id = g.ok(&["spawn", &daemonizing(&mark, "sleep 300")]);
    wait_daemon(&g, &mark);
    g.ok(&["cancel", &id]);
    wait_no_task_processes(&g, &mark, "cancel");

    let mark = marker(&g, "dmn-timeout");
    let id = g.ok(&["spawn", &daemonizing(&mark, "sleep 300"), "--timeout", "1"]);
    wait_daemon(&g, &mark);
    let t = wait_status(&g, &id, "failed");
    assert_eq!(t["failure_reason"], "timeout");
    wait_no_task_processes(&g, &mark, "a timeout");

    // A task that ends by itself takes its daemons with it too.
    let mark = marker(&g, "dmn-exit");
    let id = g.ok(&["spawn", &daemonizing(&mark, "true")]);
    wait_status(&g, &id, "completed");
    wait_no_task_processes(&g, &mark, "the task's own exit");
}

#[test]
fn time_spent_paused_does_not_count_towards_the_timeout() {
    let mut g = Grove::with_config("heartbeat_ms = 100\nkill_grace_ms = 300\n");
    g.serve();
    g.wait_primary();
    // About 1.2 s of its own work against a 2 s timeout.
    let id = g.ok(&[
        "spawn",
        "echo started; sleep 0.4; sleep 0.4; sleep 0.4; echo finished",
        "--timeout",
        "2",
    ]);
    let log = g.ws.join(format!(".grove/logs/{id}.log"));
    wait_for("the task to start", DEADLINE, || {
        std::fs::read_to_string(&log)
            .ok()?
            .contains("started")
            .then_some(())
    });
    let pid = wait_for("agent pid", DEADLINE, || show(&g, &id)["pid"].as_u64()) as u32;
    g.ok(&["pause", &id]);
    wait_for("the agent to be stopped", DEADLINE, || {
        (grove::proc::state(pid) == Some('T')).then_some(())
    });
    // The pause itself lasts longer than the whole timeout.
    let resume_at = Instant::now() + Duration::from_secs(3);
    while Instant::now() < resume_at {
        let t = show(&g, &id);
        assert_eq!(t["status"], "paused", "the task ended while paused: {t}");
        std::thread::sleep(Duration::from_millis(100));
    }
    g.ok(&["resume", &id]);
    let t = wait_for("the task to end", DEADLINE, || {
        let t = show(&g, &id);
        matches!(t["status"].as_str(), Some("completed" | "failed")).then_some(t)
    });
    assert_eq!(t["status"], "completed", "{t}");
    assert!(std::fs::read_to_string(&log).unwrap().contains("finished"));
}

/// Replays the event log: the most tasks that ever held a slot at once
/// (running, or paused with a live run), and the most that ran at once.
fn peak_slots(g: &Grove) -> (usize, usize) {
    let events = g.db().events_from(1, 100_000).unwrap();
    let mut tasks: HashMap<String, (TaskStatus, bool)> = HashMap::new();
    let (mut slots, mut running) = (0, 0);
    for e in events {
        match e.data {
            EventData::TaskCreated { task } | EventData::TaskUpdated { task } => {
                tasks.insert(task.id, (task.status, task.run_id.is_some()));
            }
            EventData::TaskDeleted { id } => {
                tasks.remove(&id);
            }
            _ => continue,
        }
        let held = tasks
            .values()
            .filter(|(s, run)| *s == TaskStatus::Running || (*s == TaskStatus::Paused && *run))
            .count();
        let run = tasks
            .values()
            .filter(|(s, _)| *s == TaskStatus::Running)
            .count();
        slots = slots.max(held);
        running = running.max(run);
    }
    (slots, running)
}

#[test]
fn a_paused_task_keeps_its_slot() {
    let mut g = Grove::with_config("heartbeat_ms = 100\nmax_parallel = 1\nkill_grace_ms = 300\n");
    g.serve();
    g.wait_primary();
    let go = g.dir.path().join("go");
    let script = format!("until [ -e {} ]; do sleep 0.05; done", go.display());
    let a = g.ok(&["spawn", &script]);
    let b = g.ok(&["spawn", &script]);
    wait_status(&g, &a, "running");
    let pid = wait_for("agent pid", DEADLINE, || show(&g, &a)["pid"].as_u64()) as u32;
    assert_eq!(show(&g, &b)["status"], "queued");
    g.ok(&["pause", &a]);
    // Stopping the agent and scheduling happen in the same pass of the
    // orchestrator: once it is stopped, B had its chance to start.
    wait_for("the agent to be stopped", DEADLINE, || {
        (grove::proc::state(pid) == Some('T')).then_some(())
    });
    g.ok(&["resume", &a]);
    wait_for("the agent to run again", DEADLINE, || {
        (grove::proc::state(pid) != Some('T')).then_some(())
    });
    assert_eq!(show(&g, &a)["status"], "running");
    assert_eq!(show(&g, &b)["status"], "queued", "B took A's slot");
    std::fs::write(&go, b"").unwrap();
    g.ok(&["wait", &a, &b, "--timeout", "30"]);
    assert_eq!(peak_slots(&g), (1, 1), "max_parallel 1 was exceeded");
}

/// The run record of a task's current run, once its agent has started.
fn run_record(g: &Grove, id: &str) -> Value {
    wait_for("the run record with the agent", DEADLINE, || {
        let dir = g.ws.join(".grove/run");
        std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name.starts_with(id) && name.ends_with(".run.json")) {
                return None;
            }
            let v = read_run_record(&e.path())?;
            v["agent_pid"].is_u64().then_some(v)
        })
    })
}

#[test]
fn a_shim_killed_with_sigkill_takes_its_agent_with_it() {
    let mut g = Grove::with_config("heartbeat_ms = 100\n");
    g.serve();
    g.wait_primary();
    let mark = marker(&g, "orphan");
    let id = g.ok(&["spawn", &format!("sleep 300; : {mark}")]);
    let rec = run_record(&g, &id);
    wait_for("the agent's child", DEADLINE, || {
        task_processes(&g, &mark)
            .iter()
            .any(|(_, cmd)| cmd.starts_with("sleep 300"))
            .then_some(())
    });
    unsafe { libc::kill(rec["shim_pid"].as_u64().unwrap() as i32, libc::SIGKILL) };
    let t = wait_status(&g, &id, "failed");
    assert_eq!(t["failure_reason"], "lost");
    wait_no_task_processes(&g, &mark, "the death of their shim");
}

#[test]
fn a_new_primary_resumes_a_task_paused_under_the_old_one() {
    let mut g = Grove::with_config("heartbeat_ms = 100\nkill_grace_ms = 300\n");
    g.serve();
    let (primary, epoch) = g.wait_primary();
    g.serve();
    g.wait_secondaries_at(1, epoch);
    let id = g.ok(&[
        "spawn",
        "echo started; sleep 0.5; echo finished",
        "--timeout",
        "20",
    ]);
    let pid = wait_for("agent pid", DEADLINE, || show(&g, &id)["pid"].as_u64()) as u32;
    g.ok(&["pause", &id]);
    wait_for("the agent to be stopped", DEADLINE, || {
        (grove::proc::state(pid) == Some('T')).then_some(())
    });
    g.member_by_pid(primary).signal(libc::SIGKILL);
    g.wait_new_primary(primary, epoch);
    assert_eq!(show(&g, &id)["status"], "paused");
    g.ok(&["resume", &id]);
    wait_status(&g, &id, "completed");
}

#[test]
fn the_agent_starts_with_no_signal_blocked_or_ignored() {
    // grep started directly, not through a shell, which might reset what
    // it inherited.
    let mut g = Grove::with_config(
        "heartbeat_ms = 100\n[engines.probe]\ncommand = [\"grep\", \"-E\", \"{prompt}\", \"/proc/self/status\"]\n",
    );
    g.serve();
    g.wait_primary();
    // The shim runs with its control signals blocked until it can handle
    // them; none of that may reach the agent (a blocked TERM would make
    // every cancel wait for the KILL). Nor may signals ignored by whoever
    // started the member.
    let id = g.ok(&["spawn", "-e", "probe", "^Sig(Blk|Ign)"]);
    wait_status(&g, &id, "completed");
    let log = std::fs::read_to_string(g.ws.join(format!(".grove/logs/{id}.log"))).unwrap();
    let mask = |name: &str| {
        let line = log.lines().find(|l| l.starts_with(name)).expect(name);
        u64::from_str_radix(line[name.len()..].trim(), 16).unwrap()
    };
    assert_eq!(mask("SigBlk:"), 0, "{log}");
    // The standard signals (1..=31); glibc keeps 32 and 33 to itself.
    assert_eq!(mask("SigIgn:") & 0x7fff_ffff, 0, "{log}");
}

/// The shims' fork server: a child of the primary that forks the shims.
/// The shim it forked is supervised like a spawned one (it runs in a
/// session of its own and is not the server's session), and when the
/// primary is killed the server ends (its end of the pair closes) while the
/// shim runs on and its task completes under the next primary.
#[test]
fn the_fork_server_ends_with_its_primary_and_its_shims_live_on() {
    let mut g = Grove::with_config("heartbeat_ms = 100\n");
    g.serve();
    let (primary, epoch) = g.wait_primary();
    g.serve();
    g.wait_secondaries_at(1, epoch);
    let id = g.ok(&["spawn", "sleep 1; echo survived"]);
    let rec = run_record(&g, &id);
    let shim = rec["shim_pid"].as_u64().unwrap() as u32;
    let stat = |pid: u32| grove::proc::stat(pid).expect("a live process");
    let server = stat(shim).ppid;
    let cmdline = |pid: u32| {
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
            .replace('\0', " ")
    };
    assert!(
        cmdline(server).contains("shim --zygote") && stat(server).ppid == primary,
        "the shim was forked by the primary's fork server: parent {server} ({})",
        cmdline(server)
    );
    assert_eq!(
        stat(shim).session,
        shim,
        "the shim leads a session of its own"
    );

    g.member_by_pid(primary).signal(libc::SIGKILL);
    wait_for("the fork server to end with its primary", DEADLINE, || {
        (!grove::proc::running(server)).then_some(())
    });
    g.wait_new_primary(primary, epoch);
    let t = wait_status(&g, &id, "completed");
    assert_eq!(t["exit_code"], 0);
    assert!(g.ok(&["logs", &id]).contains("survived"));
}

/// The primary's fork server, found as the parent of a shim it forked.
fn fork_server_of(g: &Grove, task: &str) -> u32 {
    let shim = run_record(g, task)["shim_pid"].as_u64().unwrap() as u32;
    grove::proc::stat(shim).expect("the shim runs").ppid
}

/// A neighbour kills the fork server, or stops it: the next task still
/// starts (a killed server is replaced; a stopped one is given up after
/// its answer's deadline and the shim spawned), and nothing is left behind.
#[test]
fn tasks_start_when_the_fork_server_is_killed_or_stopped() {
    let mut g = Grove::with_config("heartbeat_ms = 100\n");
    g.serve();
    let (primary, _) = g.wait_primary();
    let mark = marker(&g, "zygote");
    let first = g.ok(&["spawn", &format!("sleep 2; : {mark}")]);
    let server = fork_server_of(&g, &first);
    assert_ne!(server, primary, "the first shim came from a fork server");
    unsafe { libc::kill(server as i32, libc::SIGKILL) };
    let second = g.ok(&["spawn", &format!("sleep 2; : {mark}")]);
    let replaced = fork_server_of(&g, &second);
    assert!(
        replaced != server && replaced != primary,
        "a new server forked the second shim"
    );
    unsafe { libc::kill(replaced as i32, libc::SIGSTOP) };
    let third = g.ok(&["spawn", &format!("echo third; : {mark}")]);
    for id in [&first, &second, &third] {
        assert_eq!(wait_status(&g, id, "completed")["exit_code"], 0);
    }
    assert!(g.ok(&["logs", &third]).contains("third"));
    wait_for("the stopped server to be killed", DEADLINE, || {
        (!grove::proc::running(replaced)).then_some(())
    });
    wait_no_task_processes(&g, &mark, "every task's end");
}

/// The fork server exits when idle (or is killed); the primary, its
/// parent, reaps it at once: an idle primary kept it `<defunct>` until its
/// next task's start.
#[test]
fn an_ended_fork_server_is_reaped_while_the_primary_is_idle() {
    let mut g = Grove::with_config("heartbeat_ms = 100\n");
    g.serve();
    g.wait_primary();
    let go = g.dir.path().join("go");
    let script = format!("while [ ! -e {} ]; do sleep 0.05; done", go.display());
    let id = g.ok(&["spawn", &script]);
    wait_status(&g, &id, "running");
    let server = fork_server_of(&g, &id);
    std::fs::write(&go, "").unwrap();
    wait_status(&g, &id, "completed");
    unsafe { libc::kill(server as i32, libc::SIGKILL) };
    wait_for("the ended fork server reaped", DEADLINE, || {
        (!std::path::Path::new(&format!("/proc/{server}")).exists()).then_some(())
    });
    // The next task gets a new server.
    let next = g.ok(&["spawn", "echo next"]);
    assert_eq!(wait_status(&g, &next, "completed")["exit_code"], 0);
}

/// A run's end that cannot be saved when it comes (someone holds the
/// store's write lock past the writer's busy timeout; a full disk does the
/// same) is saved once the store can be written again: the task does not
/// stay `running` with no process, holding its slot, for good.
#[test]
fn a_run_end_that_cannot_be_saved_at_once_is_saved_later() {
    let mut g = Grove::new();
    g.serve();
    g.wait_primary();
    let go = g.dir.path().join("go");
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.05; done; exit 7",
        go.display()
    );
    let id = g.ok(&["spawn", &script]);
    wait_status(&g, &id, "running");
    let locker = rusqlite::Connection::open(g.ws.join(".grove/grove.db")).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    std::fs::write(&go, "").unwrap();
    // Each write (and the store's upkeep) waits out the busy timeout (10 s).
    wait_for("the end's write to fail", Duration::from_secs(120), || {
        g.members[0]
            .stderr()
            .contains("trying again until it is saved")
            .then_some(())
    });
    assert_eq!(show(&g, &id)["status"], "running");
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);
    let t = wait_status(&g, &id, "failed");
    assert_eq!(t["exit_code"], 7, "{t}");
}
