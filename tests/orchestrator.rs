//! The orchestrator with real processes: DAG order and the parallel limit,
//! cascades, cancel reaching grandchildren, tasks surviving a SIGKILL of the
//! primary, waits, timeouts, lineage, purge, engines and personas.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// A workspace whose tasks can call `grove` (for `grove progress`).
fn grove_with(config: &str) -> Grove {
    let mut g = Grove::with_config(config);
    let bin_dir = Path::new(BIN).parent().unwrap().display().to_string();
    let path = format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default());
    g.env("PATH", &path);
    g
}

#[test]
fn dag_of_thirty_respects_order_and_max_parallel() {
    let mut g = grove_with("heartbeat_ms = 100\nmax_parallel = 3\n");
    g.serve();
    g.wait_primary();
    let trace = g.dir.path().join("trace.txt");
    let t = trace.display();
    let mut ids: Vec<String> = Vec::new();
    for i in 0..30usize {
        // Each task stamps its own start and end (ns since the epoch).
        let script = format!(
            "echo \"start {i} $(date +%s%N)\" >> {t}; sleep 0.1; echo \"end {i} $(date +%s%N)\" >> {t}"
        );
        let mut args = vec!["spawn".to_string(), script];
        for d in [3usize, 7] {
            if i >= d {
                args.push("--dep".into());
                args.push(ids[i - d].clone());
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ids.push(g.ok(&args));
    }
    let mut wait = vec!["wait", "--timeout", "120"];
    wait.extend(ids.iter().map(String::as_str));
    g.ok(&wait);
    let text = std::fs::read_to_string(&trace).unwrap();
    let mut start = vec![0u128; 30];
    let mut end = vec![0u128; 30];
    let mut points = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let (i, ts): (usize, u128) = (parts[1].parse().unwrap(), parts[2].parse().unwrap());
        if parts[0] == "start" {
            start[i] = ts;
            points.push((ts, 1i32));
        } else {
            end[i] = ts;
            points.push((ts, -1i32));
        }
    }
    for i in 0..30 {
        assert!(start[i] > 0 && end[i] > 0, "task {i} did not run");
        for d in [3usize, 7] {
            if i >= d {
                assert!(
                    start[i] >= end[i - d],
                    "task {i} started before its dependency {}",
                    i - d
                );
            }
        }
    }
    points.sort();
    let mut running = 0;
    let mut peak = 0;
    for (_, delta) in points {
        running += delta;
        peak = peak.max(running);
    }
    assert!(peak <= 3, "{peak} tasks ran at once with max_parallel 3");
    assert!(peak >= 2, "the limit was never approached: peak {peak}");
}

#[test]
fn dependency_failure_cascades_and_wakes_waiters() {
    let mut g = Grove::new();
    g.serve();
    g.wait_primary();
    let a = g.ok(&["spawn", "sleep 0.3; exit 4"]);
    let b = g.ok(&["spawn", "echo b", "--dep", &a]);
    let c = g.ok(&["spawn", "echo c", "--dep", &b]);
    let out = g.run(&["wait", &c, "--timeout", "30"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(show(&g, &a)["exit_code"], 4);
    for id in [&b, &c] {
        let t = show(&g, id);
        assert_eq!(t["status"], "failed");
        assert_eq!(t["failure_reason"], "dependency_failed");
    }
    // A task spawned on an already failed dependency fails at once.
    let d = g.ok(&["spawn", "echo d", "--dep", &a]);
    assert_eq!(show(&g, &d)["failure_reason"], "dependency_failed");
}

#[test]
fn cancel_kills_the_whole_process_group() {
    let mut g = Grove::with_config("heartbeat_ms = 100\nkill_grace_ms = 500\n");
    g.serve();
    g.wait_primary();
    let pids = g.dir.path().join("pids");
    let p = pids.display();
    let id = g.ok(&[
        "spawn",
        &format!("sleep 300 & echo $! >> {p}; (sleep 300 & echo $! >> {p}; wait) & wait"),
    ]);
    let grandchildren: Vec<u32> = wait_for("grandchildren to start", DEADLINE, || {
        let text = std::fs::read_to_string(&pids).ok()?;
        let v: Vec<u32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        (v.len() == 2).then_some(v)
    });
    g.ok(&["cancel", &id]);
    assert_eq!(show(&g, &id)["status"], "cancelled");
    wait_for("every process of the task to die", DEADLINE, || {
        grandchildren
            .iter()
            .all(|p| !grove::proc::running(*p))
            .then_some(())
    });
}

#[test]
fn running_tasks_survive_kill_nine_of_the_primary() {
    let mut g = Grove::with_config("heartbeat_ms = 100\nmax_parallel = 10\n");
    g.serve();
    let (primary, epoch) = g.wait_primary();
    g.serve();
    g.wait_secondaries_at(1, epoch);
    let ids: Vec<String> = (0..10)
        .map(|i| {
            g.ok(&[
                "spawn",
                &format!(
                    "for n in 1 2 3 4 5 6; do echo task {i} line $n; sleep 0.5; done; exit {}",
                    i % 4
                ),
            ])
        })
        .collect();
    for id in &ids {
        wait_status(&g, id, "running");
    }
    g.member_by_pid(primary).signal(libc::SIGKILL);
    g.wait_new_primary(primary, epoch);
    let mut wait = vec!["wait", "--timeout", "60"];
    wait.extend(ids.iter().map(String::as_str));
    g.run(&wait);
    for (i, id) in ids.iter().enumerate() {
        let t = show(&g, id);
        let code = (i % 4) as i64;
        assert_eq!(t["exit_code"], code, "task {i}: {t}");
        assert_eq!(t["status"], if code == 0 { "completed" } else { "failed" });
        let log = std::fs::read_to_string(g.ws.join(format!(".grove/logs/{id}.log"))).unwrap();
        for n in 1..=6 {
            assert!(
                log.contains(&format!("task {i} line {n}\n")),
                "task {i} log: {log}"
            );
        }
    }
}

#[test]
fn waits_any_all_quorum_and_deadline_across_a_failover() {
    let mut g = Grove::new();
    g.serve();
    let (primary, epoch) = g.wait_primary();
    g.serve();
    g.wait_secondaries_at(1, epoch);
    let fast = g.ok(&["spawn", "sleep 0.5"]);
    let slow = g.ok(&["spawn", "sleep 2"]);
    let fails = g.ok(&["spawn", "sleep 1; exit 1"]);
    let waiter = |args: Vec<String>| {
        std::process::Command::new(BIN)
            .args(args)
            .arg("--workspace")
            .arg(&g.ws)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut any = waiter(s(&["wait", "--any", &fast, &slow]));
    let mut all = waiter(s(&["wait", &fast, &slow, &fails]));
    let mut quorum = waiter(s(&["wait", "--quorum", "2", &fast, &slow, &fails]));
    let started = Instant::now();
    let deadline = g.run(&["wait", &slow, "--timeout", "0.2"]);
    assert_eq!(deadline.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(10));
    // The primary dies while everyone waits.
    g.member_by_pid(primary).signal(libc::SIGKILL);
    g.wait_new_primary(primary, epoch);
    let code = |c: &mut std::process::Child| {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.code();
            }
            assert!(Instant::now() < until, "waiter hung");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert_eq!(code(&mut any), Some(0));
    assert_eq!(code(&mut quorum), Some(0));
    assert_eq!(code(&mut all), Some(1), "one task failed");
}

#[test]
fn timeout_fails_with_reason_timeout() {
    let mut g = Grove::with_config("heartbeat_ms = 100\nkill_grace_ms = 300\n");
    g.serve();
    g.wait_primary();
    let id = g.ok(&["spawn", "sleep 30", "--timeout", "0.3"]);
    let t = wait_status(&g, &id, "failed");
    assert_eq!(t["failure_reason"], "timeout");
    let out = g.run(&["spawn", "sleep 30", "--timeout", "0.3", "--wait"]);
    // As `grove run`: 1, not the 143 of grove's SIGTERM (see run.rs,
    // `a_timeout_exits_1_from_run_and_from_spawn_wait_alike`).
    assert_eq!(
        out.status.code(),
        Some(1),
        "stopped by its timeout: {out:?}"
    );
}

#[test]
fn retry_relaunch_resume_lineage_and_purge() {
    let mut g = grove_with("heartbeat_ms = 100\n");
    g.serve();
    g.wait_primary();
    let marker = g.dir.path().join("marker");
    let m = marker.display();
    // Fails until the marker exists.
    let a = g.ok(&["spawn", &format!("test -e {m}")]);
    let b = g.ok(&["spawn", "echo b", "--dep", &a]);
    wait_status(&g, &b, "failed");
    // retry: a new task linked to the old one.
    let retried: Value = serde_json::from_str(&g.ok(&["retry", &a, "--json"])).unwrap();
    assert_eq!(retried["retry_of"], a.as_str());
    assert_eq!(retried["attempt"], 2);
    assert_ne!(retried["id"], a.as_str());
    // relaunch: the same id runs again and its failed dependent is rearmed.
    std::fs::write(&marker, b"").unwrap();
    g.ok(&["relaunch", &a]);
    wait_status(&g, &a, "completed");
    wait_status(&g, &b, "completed");
    // pause / resume of a running task (its shim stops / continues it).
    let r = g.ok(&[
        "spawn",
        "grove progress 10 started; sleep 1; echo resumed-ok",
    ]);
    let running = wait_status(&g, &r, "running");
    let pid = wait_for("agent pid", DEADLINE, || show(&g, &r)["pid"].as_u64()) as u32;
    let _ = running;
    g.ok(&["pause", &r]);
    wait_for("the agent to be stopped", DEADLINE, || {
        (grove::proc::state(pid) == Some('T')).then_some(())
    });
    assert_eq!(show(&g, &r)["status"], "paused");
    g.ok(&["resume", &r]);
    let done = wait_status(&g, &r, "completed");
    assert_eq!(done["progress_pct"], 10);
    // resume of a never-started task with new instructions.
    let blocker = g.ok(&["spawn", "sleep 30"]);
    let p = g.ok(&["spawn", "echo first", "--dep", &blocker]);
    g.ok(&["pause", &p]);
    // A shell task's prompt is a command: instructions would run as
    // commands, and are refused.
    let out = g.run(&["resume", &p, "--instructions", "tidy up"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("shell engine"),
        "{}",
        stderr_of(&out)
    );
    g.ok(&["resume", &p]);
    let t = show(&g, &p);
    assert_eq!(t["status"], "pending");
    assert_eq!(t["prompt"], "echo first");
    g.ok(&["cancel", &blocker]);
    // purge is idempotent and removes the log.
    let log = g.ws.join(format!(".grove/logs/{a}.log"));
    assert!(log.exists());
    g.ok(&["purge", &a]);
    assert!(!log.exists());
    g.ok(&["purge", &a]);
    assert!(g.db().task(&a).unwrap().is_none());
}

#[test]
fn spawn_validation_creates_nothing() {
    let mut g = Grove::with_config(
        "heartbeat_ms = 100\n[engines.ghost]\ncommand = [\"no-such-binary-xyz\", \"{prompt}\"]\n",
    );
    g.serve();
    g.wait_primary();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["spawn", "x", "-e", "claud"], "did you mean 'claude'"),
        (vec!["spawn", "x", "-e", "ghost"], "not on PATH"),
        (vec!["spawn", "x", "--dep", "nope"], "no task nope"),
        (vec!["spawn", "x", "--timeout", "0"], "positive"),
        (
            vec!["spawn", "x", "--persona", "nobody"],
            "no persona 'nobody'",
        ),
        (
            vec!["spawn", "x", "--workdir", "/no/such/dir"],
            "not a directory",
        ),
        (vec!["spawn", "x", "--env", "NOEQUALS"], "KEY=VALUE"),
    ];
    for (args, expect) in cases {
        let out = g.run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    assert!(g.db().tasks(&Default::default()).unwrap().is_empty());
    let out = g.run(&["show", "doesnotexist"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn engine_presets_and_personas_with_fake_agents() {
    let bin = tempfile::tempdir().unwrap();
    for name in ["claude", "gemini", "codex", "opencode", "copilot"] {
        let path = bin.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\necho \"{name} got: $*\"\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut g = Grove::with_config(
        "heartbeat_ms = 100\n[engines.reader]\ncommand = [\"cat\"]\nprompt_via = \"stdin\"\n",
    );
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap()
    );
    g.env("PATH", &path);
    std::fs::create_dir_all(g.ws.join(".grove/personas")).unwrap();
    std::fs::write(
        g.ws.join(".grove/personas/reviewer.md"),
        "You review code.\n",
    )
    .unwrap();
    g.serve();
    g.wait_primary();
    let engines: Vec<Value> = serde_json::from_str(&g.ok(&["engines", "--json"])).unwrap();
    for name in ["claude", "gemini", "codex", "opencode", "copilot", "shell"] {
        let e = engines.iter().find(|e| e["name"] == name).unwrap();
        assert_eq!(e["available"], true, "{e}");
    }
    let id = g.ok(&["spawn", "fix it", "-e", "claude", "-m", "opus", "--wait"]);
    let _ = id;
    let logs: Vec<String> = g
        .db()
        .tasks(&Default::default())
        .unwrap()
        .iter()
        .map(|t| std::fs::read_to_string(g.ws.join(format!(".grove/logs/{}.log", t.id))).unwrap())
        .collect();
    assert!(
        logs[0].contains("claude got: --print fix it --model opus"),
        "{logs:?}"
    );
    for name in ["gemini", "codex", "opencode", "copilot"] {
        let out = g.run(&["spawn", "hello", "-e", name, "--wait", "--json"]);
        assert!(out.status.success(), "{name}: {out:?}");
        let t: Value = serde_json::from_slice(&out.stdout).unwrap();
        let log = std::fs::read_to_string(
            g.ws.join(format!(".grove/logs/{}.log", t["id"].as_str().unwrap())),
        )
        .unwrap();
        assert!(
            log.contains(&format!("{name} got: ")) && log.contains("hello"),
            "{log}"
        );
    }
    assert_eq!(g.ok(&["personas"]), "reviewer");
    let out = g.run(&[
        "spawn",
        "the diff",
        "-e",
        "reader",
        "--persona",
        "reviewer",
        "--wait",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    let log = std::fs::read_to_string(
        g.ws.join(format!(".grove/logs/{}.log", t["id"].as_str().unwrap())),
    )
    .unwrap();
    assert_eq!(log, "You review code.\n\nthe diff");
}

#[test]
fn logs_follow_ends_when_the_task_ends() {
    let mut g = Grove::new();
    g.serve();
    g.wait_primary();
    let id = g.ok(&["spawn", "echo one; sleep 0.5; echo two"]);
    let out = g.ok(&["logs", &id, "--follow"]);
    assert_eq!(out, "one\ntwo");
    assert_eq!(show(&g, &id)["status"], "completed");
    let stats: Value = serde_json::from_str(&g.ok(&["stats", "--json"])).unwrap();
    assert_eq!(stats["counts"]["completed"], 1);
}

/// With one slot, queued tasks start highest priority first, then in the
/// order they were created (the scheduler reads only as many queued rows as
/// there are free slots, so the order must come from the store's query).
#[test]
fn queued_tasks_start_by_priority_then_age() {
    let mut g = grove_with("heartbeat_ms = 100\nmax_parallel = 1\n");
    g.serve();
    g.wait_primary();
    let go = g.dir.path().join("go");
    let trace = g.dir.path().join("order.txt");
    let blocker = g.ok(&[
        "spawn",
        &format!("while [ ! -e {} ]; do sleep 0.05; done", go.display()),
    ]);
    wait_status(&g, &blocker, "running");
    let mut ids = Vec::new();
    for (name, priority) in [("a", "0"), ("b", "5"), ("c", "1"), ("d", "5"), ("e", "-2")] {
        let script = format!("echo {name} >> {}", trace.display());
        ids.push(g.ok(&["spawn", &script, "--priority", priority]));
    }
    std::fs::write(&go, "").unwrap();
    for id in &ids {
        wait_status(&g, id, "completed");
    }
    let order = std::fs::read_to_string(&trace).unwrap();
    assert_eq!(
        order.split_whitespace().collect::<Vec<_>>(),
        ["b", "d", "c", "a", "e"]
    );
}

/// An engine of the user's that hands its prompt to a shell as code gets
/// no words in it, as the `shell` engine does: a spawn that asks for a
/// conclusion runs the command as given (the brief appended used to break
/// it), and a goal or a persona, whose words would run, is refused.
#[test]
fn a_configured_shell_engine_gets_no_words_in_its_prompt() {
    let mut g = Grove::with_config(
        "heartbeat_ms = 100\n[engines.bashy]\ncommand = [\"bash\", \"-c\", \"{prompt}\"]\n",
    );
    g.serve();
    g.wait_primary();
    std::fs::create_dir_all(g.ws.join(".grove/personas")).unwrap();
    std::fs::write(g.ws.join(".grove/personas/chatty.md"), "rm -rf ~\n").unwrap();
    let id = g.ok(&["spawn", "--conclusion", "-e", "bashy", "echo ran as given"]);
    let done = wait_status(&g, &id, "completed");
    assert_eq!(done["conclusion"]["summary"], "ran as given", "{done}");
    let out = g.run(&["goal", "-e", "bashy", "make test"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("needs an agent"),
        "{}",
        stderr_of(&out)
    );
    for engine in ["bashy", "shell"] {
        let out = g.run(&["spawn", "-e", engine, "--persona", "chatty", "echo x"]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
        assert!(
            stderr_of(&out).contains("leave --persona out"),
            "{}",
            stderr_of(&out)
        );
    }
}
