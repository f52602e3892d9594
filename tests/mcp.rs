//! `grove mcp` driven by the official MCP Python SDK (PyPI `mcp`): every
//! tool listed with a valid schema and called, bad arguments refused as tool
//! errors; delegation from inside a task (parent and children, the fan-out
//! limit, the caller's own progress and conclusion, its slot lent while it
//! waits); conclusions, overrides and `cancel --tree` from the CLI.

mod common;

use common::*;
use std::process::Command;

/// Runs tests/mcp/mcp_client.py SCENARIO against `g`; returns its stdout.
fn client(g: &Grove, scenario: &str, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(test_env::python());
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/mcp/mcp_client.py"
    ))
    .arg(BIN)
    .arg(&g.ws)
    .arg(scenario)
    .env("GROVE_NO_AUTOSTART", "1")
    .env_remove("GROVE_TASK_ID");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the MCP client");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && stdout.contains(" passed, 0 failed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn official_python_client_lists_validates_and_calls_every_tool() {
    let mut g = Grove::new();
    g.serve();
    g.wait_primary();
    client(&g, "tools", &[]);
}

#[test]
fn a_task_delegates_through_mcp_within_its_fan_out() {
    let mut g = Grove::with_config("heartbeat_ms = 100\nmax_children = 2\n");
    g.serve();
    g.wait_primary();
    let parent = g.ok(&["spawn", "sleep 60"]);
    let out = client(&g, "children", &[("GROVE_TASK_ID", &parent)]);
    let ids: serde_json::Value = out
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("the client prints the children's ids");
    let slow = ids["slow"].as_str().unwrap();
    let listed: serde_json::Value =
        serde_json::from_str(&g.ok(&["list", "--parent", &parent, "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    let shown = g.ok(&["show", &parent]);
    assert!(
        shown.contains("children:") && shown.contains(&slow[..12]),
        "{shown}"
    );
    assert!(shown.contains("concluded: partial (reported)"), "{shown}");
    // The parent and its unfinished child go; the finished child stays.
    let out = g.ok(&["cancel", "--tree", &parent]);
    assert!(out.contains(&parent) && out.contains(slow), "{out}");
    wait_status(&g, slow, "cancelled");
    wait_status(&g, &parent, "cancelled");
    assert_eq!(
        show(&g, ids["quick"].as_str().unwrap())["status"],
        "completed"
    );
}

/// A parent blocked in `wait` lends its `max_parallel` slot: under
/// `max_parallel = 1` its child used to queue behind it until the wait
/// timed out. After the wait it holds its slot again.
#[test]
fn a_parent_waiting_through_mcp_lends_its_slot_to_its_child() {
    let mut g = Grove::with_config("heartbeat_ms = 100\nmax_parallel = 1\n");
    g.serve();
    g.wait_primary();
    let parent = g.ok(&["spawn", "sleep 60"]);
    let running = wait_status(&g, &parent, "running");
    let run = running["run_id"].as_str().unwrap();
    let inside = [("GROVE_TASK_ID", parent.as_str()), ("GROVE_RUN_ID", run)];
    let out = client(&g, "lend", &inside);
    let ids: serde_json::Value = out
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("the client prints the children's ids");
    let later = ids["later"].as_str().unwrap();
    assert_eq!(
        show(&g, later)["status"],
        "queued",
        "the slot was taken back"
    );
    let events = g.ok(&["events"]);
    assert!(
        events.contains("lent its slot") && events.contains("took its slot back"),
        "{events}"
    );
    g.ok(&["cancel", &parent]);
    wait_status(&g, later, "completed");
}

/// The same through the command line: a shell task that runs
/// `grove spawn --wait` lends its slot to the task it spawned.
#[test]
fn a_task_waiting_through_the_cli_lends_its_slot() {
    let mut g = Grove::with_config("heartbeat_ms = 100\nmax_parallel = 1\n");
    g.serve();
    g.wait_primary();
    let script = format!("'{BIN}' spawn --wait 'echo the child ran' && echo parent done");
    let parent = g.ok(&["spawn", &script]);
    let done = wait_status(&g, &parent, "completed");
    assert_eq!(done["exit_code"], 0, "{done}");
    let children: serde_json::Value =
        serde_json::from_str(&g.ok(&["list", "--parent", &parent, "--json"])).unwrap();
    assert_eq!(children[0]["status"], "completed", "{children}");
    let log = g.ok(&["logs", &parent]);
    assert!(log.contains("parent done"), "{log}");
}

/// The slot a waiting parent lends goes to its child, not to an older
/// task queued ahead of it (which used to run in it while the child
/// queued on): the child starts before the older task.
#[test]
fn a_lent_slot_goes_to_the_child_not_to_an_older_queued_task() {
    let mut g = Grove::with_config("heartbeat_ms = 100\nmax_parallel = 1\n");
    g.serve();
    g.wait_primary();
    let go = g.ws.join("go");
    let script = format!(
        "while [ ! -e '{}' ]; do sleep 0.05; done; '{BIN}' spawn --wait 'echo the child ran' && echo parent done",
        go.display()
    );
    let parent = g.ok(&["spawn", &script]);
    wait_status(&g, &parent, "running");
    let older = g.ok(&["spawn", "true"]);
    assert_eq!(show(&g, &older)["status"], "queued");
    std::fs::write(&go, "").unwrap();
    let done = wait_status(&g, &parent, "completed");
    assert_eq!(done["exit_code"], 0, "{done}");
    let older = wait_status(&g, &older, "completed");
    let children: serde_json::Value =
        serde_json::from_str(&g.ok(&["list", "--parent", &parent, "--json"])).unwrap();
    let child = &children[0];
    assert_eq!(child["status"], "completed", "{children}");
    let started = |t: &serde_json::Value| t["started_at"].as_u64().expect("started_at");
    assert!(
        started(child) < started(&older),
        "the child started after the older task: {child} {older}"
    );
}

/// A loan lasts 30 s unless renewed: the waiter renews it while it waits
/// (seen in the store, without waiting out a loan), so the second child
/// still starts when the first ends.
#[test]
fn a_waiting_task_renews_the_loan_of_its_slot() {
    let mut g = Grove::with_config("heartbeat_ms = 100\nmax_parallel = 1\n");
    g.serve();
    g.wait_primary();
    let script = format!(
        "a=$('{BIN}' spawn 'while [ ! -e go ]; do sleep 0.05; done') && \
         b=$('{BIN}' spawn 'echo second') && '{BIN}' wait \"$a\" \"$b\""
    );
    let parent = g.ok(&["spawn", &script]);
    let until = || -> Option<i64> {
        let db = rusqlite::Connection::open(g.ws.join(".grove/grove.db")).ok()?;
        db.query_row("SELECT MAX(until) FROM slot_loans", [], |r| r.get(0))
            .ok()
            .flatten()
    };
    let first = wait_for("the parent's loan", DEADLINE, until);
    wait_for(
        "the loan's renewal",
        std::time::Duration::from_secs(60),
        || until().filter(|u| *u >= first + 5_000),
    );
    std::fs::write(g.ws.join("go"), "").unwrap();
    let done = wait_status(&g, &parent, "completed");
    assert_eq!(done["exit_code"], 0, "{done}");
    let children: serde_json::Value =
        serde_json::from_str(&g.ok(&["list", "--parent", &parent, "--json"])).unwrap();
    assert_eq!(children.as_array().unwrap().len(), 2, "{children}");
    for c in children.as_array().unwrap() {
        assert_eq!(c["status"], "completed", "{children}");
    }
}

/// A `grove wait` stopped in the middle (SIGTERM: `timeout 60 grove wait`
/// in a script) takes its slot back before it exits: the task works on,
/// and its loan must not count on until it lapses.
#[test]
fn a_wait_stopped_in_the_middle_takes_its_slot_back() {
    let mut g = Grove::with_config("heartbeat_ms = 100\nmax_parallel = 1\n");
    g.serve();
    g.wait_primary();
    let script = format!(
        "a=$('{BIN}' spawn 'while [ ! -e go ]; do sleep 0.05; done') && \
         {{ '{BIN}' wait \"$a\" & echo $! > waiter.pid; wait; }}; \
         while [ ! -e done ]; do sleep 0.05; done"
    );
    let parent = g.ok(&["spawn", &script]);
    let loans = || -> Option<i64> {
        let db = rusqlite::Connection::open(g.ws.join(".grove/grove.db")).ok()?;
        db.query_row("SELECT COUNT(*) FROM slot_loans", [], |r| r.get(0))
            .ok()
    };
    wait_for("the parent's loan", DEADLINE, || loans().filter(|n| *n > 0));
    let waiter: i32 = wait_for("the waiter's pid", DEADLINE, || {
        std::fs::read_to_string(g.ws.join("waiter.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    unsafe { libc::kill(waiter, libc::SIGTERM) };
    wait_for("the loan taken back", DEADLINE, || {
        loans().filter(|n| *n == 0)
    });
    assert_eq!(show(&g, &parent)["status"], "running");
    std::fs::write(g.ws.join("go"), "").unwrap();
    std::fs::write(g.ws.join("done"), "").unwrap();
    wait_status(&g, &parent, "completed");
}

#[test]
fn delegation_depth_is_limited() {
    let mut g = Grove::with_config("heartbeat_ms = 100\nmax_delegation_depth = 1\n");
    g.serve();
    g.wait_primary();
    let top = g.ok(&["spawn", "sleep 60"]);
    let mut inside = Grove::with_config("");
    inside.ws = g.ws.clone();
    inside.env("GROVE_TASK_ID", &top);
    let child = inside.ok(&["spawn", "sleep 60"]);
    assert_eq!(show(&g, &child)["parent_id"], top.as_str());
    inside = Grove::with_config("");
    inside.ws = g.ws.clone();
    inside.env("GROVE_TASK_ID", &child);
    let out = inside.run(&["spawn", "echo grandchild"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("max_delegation_depth is 1"), "{err}");
    g.ok(&["cancel", "--tree", &top]);
}

/// The last block wins; a malformed one is kept as such with why; none is
/// synthesized from the output's tail and exit code.
#[test]
fn conclusions_block_malformed_and_none() {
    let mut g = Grove::new();
    g.serve();
    g.wait_primary();
    let conclude = |script: &str| {
        let out = g.run(&["spawn", "--conclusion", "--wait", script]);
        let id = String::from_utf8_lossy(&out.stderr)
            .lines()
            .find_map(|l| l.strip_prefix("spawned ").map(str::to_string))
            .expect("spawned ID on stderr");
        show(&g, &id)["conclusion"].clone()
    };
    let c = conclude(
        r#"echo '<grove:conclusion>{"status":"failed","summary":"first"}</grove:conclusion>'; echo '<grove:conclusion>{"status":"partial","summary":"second","artifacts":["a.txt"],"follow_up":["more"],"confidence":0.25}</grove:conclusion>'"#,
    );
    assert_eq!(c["source"], "reported", "{c}");
    assert_eq!(c["status"], "partial");
    assert_eq!(c["summary"], "second");
    assert_eq!(c["artifacts"], serde_json::json!(["a.txt"]));
    assert_eq!(c["confidence"], 0.25);
    let c = conclude(r#"echo '<grove:conclusion>{"status":"done"}</grove:conclusion>'; exit 4"#);
    assert_eq!(c["source"], "malformed", "{c}");
    assert_eq!(c["status"], "failed");
    assert!(c["error"].as_str().unwrap().contains("status"), "{c}");
    assert!(
        c["summary"]
            .as_str()
            .unwrap()
            .contains("exited with code 4"),
        "{c}"
    );
    let c = conclude("echo built 3 crates");
    assert_eq!(c["source"], "synthesized", "{c}");
    assert_eq!(c["status"], "success");
    assert_eq!(c["summary"], "built 3 crates");
    // Without --conclusion (and no parent) a task records none.
    let plain: serde_json::Value =
        serde_json::from_str(&g.ok(&["spawn", "--wait", "--json", "echo plain"])).unwrap();
    assert_eq!(plain["status"], "completed");
    assert!(plain["conclusion"].is_null(), "{plain}");
}

/// retry tells a (non-shell) agent why the last attempt failed; relaunch and
/// resume take overrides, and an invalid one changes nothing.
#[test]
fn retry_notice_and_overrides() {
    let mut g = Grove::with_config(
        "heartbeat_ms = 100\n[engines.echoer]\ncommand = [\"sh\", \"-c\", \"printf '%s\\\\n' \\\"$0\\\"; exit 3\", \"{prompt}\"]\n",
    );
    g.serve();
    g.wait_primary();
    let out = g.run(&["spawn", "-e", "echoer", "--wait", "do the thing"]);
    assert_eq!(out.status.code(), Some(3));
    let first = String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("spawned ").map(str::to_string))
        .unwrap();
    let out = g.run(&["retry", &first, "--wait", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let second: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let prompt = second["prompt"].as_str().unwrap();
    assert!(
        prompt.starts_with("[grove: attempt 1 of this task ended failed (exit_code), exit code 3")
            && prompt.ends_with("do the thing"),
        "{prompt}"
    );
    // An unknown engine or a bad timeout: refused, the task unchanged.
    let out = g.run(&["relaunch", &first, "-e", "no-such-engine"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = g.run(&["relaunch", &first, "--timeout", "0"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(show(&g, &first)["engine"], "echoer");
    assert_eq!(show(&g, &first)["status"], "failed");
    // A new engine and prompt: the same id runs them.
    g.ok(&[
        "relaunch",
        &first,
        "-e",
        "shell",
        "--prompt",
        "echo relaunched",
        "--timeout",
        "30",
        "--wait",
    ]);
    let t = show(&g, &first);
    assert_eq!(
        (t["engine"].as_str(), t["status"].as_str()),
        (Some("shell"), Some("completed"))
    );
    assert_eq!(t["timeout_ms"], 30_000);
    // resume refuses a new engine; takes tags.
    let long = g.ok(&["spawn", "sleep 60"]);
    g.ok(&["pause", &long]);
    g.ok(&["resume", &long, "--tag", "again"]);
    assert_eq!(show(&g, &long)["tags"], serde_json::json!(["again"]));
    g.ok(&["cancel", &long]);
}
