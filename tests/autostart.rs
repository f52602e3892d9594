//! Members nobody started by hand: autostart (one member, however many
//! commands race; a member that dies at once is reported at once, with its
//! error), idle exit of an autostarted member, and `grove stop`.

mod common;

use common::*;
use std::process::{Command, Output, Stdio};

/// Runs a command with autostart on (the harness turns it off).
fn run_autostart(g: &Grove, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--workspace")
        .arg(&g.ws)
        .env_remove("GROVE_NO_AUTOSTART")
        .stdin(Stdio::null())
        .output()
        .expect("run grove")
}

/// The pid named by autostart's notice, if this command started a member.
fn started_pid(out: &Output) -> Option<u32> {
    let err = String::from_utf8_lossy(&out.stderr);
    let rest = err.split("in the background (pid ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Kills the members autostart started, whatever the test's outcome.
struct Reap(Vec<u32>);

impl Drop for Reap {
    fn drop(&mut self) {
        for pid in &self.0 {
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
    }
}

fn task_status(g: &Grove, id: &str) -> Option<String> {
    Some(g.db().task(id).ok()??.status.as_str().to_string())
}

#[test]
fn a_member_that_dies_at_once_is_reported_at_once_with_its_error() {
    let g = Grove::new();
    // A store the member cannot open: it exits as soon as it tries.
    std::fs::write(g.ws.join(".grove/grove.db"), vec![b'x'; 4096]).unwrap();
    let out = run_autostart(&g, &["spawn", "true"]);
    let _reap = Reap(started_pid(&out).into_iter().collect());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("exited at once"), "{err}");
    // The member's own words, not just a pointer to its log.
    assert!(err.contains("not a database"), "{err}");
}

#[test]
fn racing_commands_start_exactly_one_member() {
    let g = Grove::new();
    let outs: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| run_autostart(&g, &["spawn", "true"])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let pids: Vec<u32> = outs.iter().filter_map(started_pid).collect();
    let _reap = Reap(pids.clone());
    for out in &outs {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(pids.len(), 1, "members started: {pids:?}");
    let (primary, _) = g.wait_primary();
    assert_eq!(primary, pids[0]);
    g.ok(&["stop"]);
}

#[test]
fn an_autostarted_member_stays_while_needed_then_exits_when_idle() {
    let g = Grove::with_config("heartbeat_ms = 100\nautostart_idle_exit_ms = 1000\n");
    // The task outlasts the idle period: the member must stay for it.
    let out = run_autostart(&g, &["spawn", "sleep 2"]);
    let pid = started_pid(&out).expect("a member was started");
    let _reap = Reap(vec![pid]);
    assert!(out.status.success());
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // Only a member records the end of the run: the member was still there.
    wait_for("the task to complete", DEADLINE, || {
        (task_status(&g, &id)? == "completed").then_some(())
    });
    // Then, with nothing to do, it leaves on its own (gracefully).
    wait_for("the idle member to exit", DEADLINE, || {
        (!grove::proc::running(pid)).then_some(())
    });
    let log = std::fs::read_to_string(g.ws.join(".grove/serve.log")).unwrap();
    assert!(log.contains("idle for"), "{log}");
    assert!(log.contains("handed over"), "{log}");
    assert_eq!(g.run(&["status"]).status.code(), Some(3));
}

#[test]
fn stop_stops_every_member_and_hands_nothing_over() {
    let mut g = Grove::new();
    for _ in 0..3 {
        g.serve();
    }
    let (_, epoch) = g.wait_primary();
    g.wait_secondaries_at(2, epoch);
    let id = g.ok(&["spawn", "sleep 60"]);
    let agent = wait_for("the task to run", DEADLINE, || {
        let t = g.db().task(&id).ok()??;
        (t.status.as_str() == "running").then_some(t.pid?)
    });
    let out = g.ok(&["stop"]);
    assert!(out.starts_with("stopped 3 members"), "{out}");
    for m in &mut g.members {
        assert!(
            m.wait_exit(DEADLINE).is_some_and(|s| s.success()),
            "member {} did not exit cleanly",
            m.pid
        );
    }
    // Nobody took over: the epoch is the same and no promotion was logged.
    assert_eq!(g.db().epoch().unwrap(), epoch);
    for m in &g.members {
        assert!(!m.stderr().contains("promoting"), "{}", m.stderr());
    }
    assert_eq!(g.run(&["status"]).status.code(), Some(3));
    // The task ran on through it; the next member adopts it.
    assert!(grove::proc::running(agent), "the agent was stopped");
    let again = g.ok(&["stop"]);
    assert!(again.starts_with("no member was running"), "{again}");
    g.serve();
    g.wait_primary();
    assert_eq!(task_status(&g, &id).as_deref(), Some("running"));
    g.ok(&["cancel", &id]);
    wait_for("the agent to be killed", DEADLINE, || {
        (!grove::proc::running(agent)).then_some(())
    });
}

/// A task that runs `grove spawn` where no member runs autostarts one, as
/// its descendant; the task's shim kills every process of the task when it
/// ends, and once killed that member too, with the task it had just been
/// given. A member is spared, with its tasks: it serves the workspace.
#[test]
fn a_member_a_task_autostarted_outlives_the_task() {
    let mut g = Grove::with_config("heartbeat_ms = 100\n");
    let m = g.serve();
    g.wait_primary();
    let marker = g.dir.path().join("child-ran");
    let prompt = format!(
        "while [ ! -e {go} ]; do sleep 0.05; done; env -u GROVE_NO_AUTOSTART {bin} spawn --workspace {ws} 'sleep 1; echo ran > {marker}' > {go}.id 2> {go}.err",
        go = g.dir.path().join("go").display(),
        bin = BIN,
        ws = g.ws.display(),
        marker = marker.display(),
    );
    let t = g.task_create(&prompt);
    wait_for("the task to run", DEADLINE, || {
        (task_status(&g, &t).as_deref() == Some("running")).then_some(())
    });
    // Its member stops; the task goes on, then runs `grove spawn`.
    g.members[m].signal(libc::SIGTERM);
    g.members[m].wait_exit(DEADLINE).expect("the member stops");
    std::fs::write(g.dir.path().join("go"), "").unwrap();
    let err_file = g.dir.path().join("go.err");
    let said = wait_for("the task's grove spawn to autostart", DEADLINE, || {
        let said = std::fs::read_to_string(&err_file).ok()?;
        said.contains("in the background").then_some(said)
    });
    let member = said
        .split("in the background (pid ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok());
    let _reap = Reap(member.into_iter().collect());
    // The task has ended (its shim killed what was left of it); the member
    // it started still runs, and so does the child it was given.
    wait_for("the task to end", DEADLINE, || {
        (task_status(&g, &t).as_deref() == Some("completed")).then_some(())
    });
    wait_for("the child to run to its end", DEADLINE, || {
        marker.exists().then_some(())
    });
    let _ = run_autostart(&g, &["stop"]);
}

/// A member that does not exit after SIGTERM (stopped with SIGSTOP) is
/// named, and `grove stop` exits 1; the other members are stopped all the
/// same, the primary included. Continued, the member takes its SIGTERM.
#[test]
fn stop_stops_every_member_it_can_and_names_the_one_that_would_not() {
    let mut g = Grove::new();
    g.serve();
    let (primary, epoch) = g.wait_primary();
    g.serve();
    g.wait_secondaries_at(1, epoch);
    let stuck = g
        .members
        .iter()
        .map(|m| m.pid)
        .find(|p| *p != primary)
        .unwrap();
    g.member_by_pid(stuck).signal(libc::SIGSTOP);
    let out = g.run(&["stop"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("pid {stuck} did not stop")), "{err}");
    assert!(
        stdout_of(&out).contains(&primary.to_string()),
        "{}",
        stdout_of(&out)
    );
    assert!(
        g.member_by_pid(primary).wait_exit(DEADLINE).is_some(),
        "the primary was left running"
    );
    let m = g.member_by_pid(stuck);
    m.signal(libc::SIGCONT);
    assert!(
        m.wait_exit(DEADLINE).is_some(),
        "the stopped member never took its SIGTERM"
    );
}
