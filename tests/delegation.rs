//! Durable awaits, end to end: an ACP agent (the scripted agent on the
//! official Python ACP SDK) finds grove's MCP server in its `session/new`,
//! spawns children and awaits a quorum of them through it (the official
//! MCP Python SDK as the client), and ends its turn; it is resumed once,
//! with the children's conclusions, across `kill -9`s of the primary.
//! Real processes throughout.

mod common;

use common::*;
use serde_json::Value;

/// A shell child that ends when the test creates `go_NAME`, with a
/// conclusion block in its output.
fn child(name: &str) -> String {
    format!(
        "while [ ! -e go_{name} ]; do sleep 0.02; done; \
         echo '<grove:conclusion>{{\"status\":\"success\",\"summary\":\"child {name} done\"}}</grove:conclusion>'"
    )
}

fn awaits(g: &Grove, all: bool) -> Vec<Value> {
    let mut args = vec!["awaits", "--json"];
    if all {
        args.push("--all");
    }
    serde_json::from_str::<Value>(&g.ok(&args))
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn resumptions(g: &Grove) -> Vec<String> {
    std::fs::read_to_string(g.ws.join("resumed.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_parent_awaits_a_quorum_and_is_resumed_once_across_failovers() {
    let mut g = Grove::scripted_acp("allow_all", "");
    g.serve();
    g.serve();
    g.wait_primary();
    let plan = serde_json::json!({
        "children": [child("a"), child("b"), child("c")],
        "policy": "quorum",
        "quorum": 2,
    });
    std::fs::write(g.ws.join("delegate.json"), plan.to_string()).unwrap();
    let parent = g.ok(&["spawn", "delegate", "-e", "scripted"]);
    // The agent spawned three children through grove's MCP server, awaited
    // two of them and ended its turn: the one-turn task stays idle.
    let pending = wait_for("the parent's await", DEADLINE, || {
        let list = awaits(&g, false);
        (list.len() == 1).then(|| list[0].clone())
    });
    assert_eq!(pending["parent_id"], parent.as_str());
    assert_eq!(pending["quorum"], 2);
    let children: Vec<String> = (pending["children"].as_array().unwrap().iter())
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(children.len(), 3);
    for c in &children {
        assert_eq!(show(&g, c)["parent_id"], parent.as_str());
    }
    wait_status(&g, &parent, "idle");

    // Between the await and the completions.
    common::kill_primary(&mut g);
    std::fs::write(g.ws.join("go_a"), "").unwrap();
    wait_status(&g, &children[0], "completed");
    assert!(resumptions(&g).is_empty(), "resumed after one child");
    assert_eq!(awaits(&g, false).len(), 1, "still pending after one child");
    std::fs::write(g.ws.join("go_b"), "").unwrap();
    wait_status(&g, &children[1], "completed");
    // Between the completions and the resumption: the await fired in the
    // second child's commit; the new primary must not fire it again.
    common::kill_primary(&mut g);
    wait_for("the parent resumed", DEADLINE, || {
        (!resumptions(&g).is_empty()).then_some(())
    });
    wait_status(&g, &parent, "completed");
    let settled = awaits(&g, true);
    assert_eq!(settled.len(), 1, "{settled:?}");
    assert_eq!(settled[0]["state"], "satisfied");

    // The third child ends later: nothing more happens to the parent.
    std::fs::write(g.ws.join("go_c"), "").unwrap();
    wait_status(&g, &children[2], "completed");
    let resumed = resumptions(&g);
    assert_eq!(resumed.len(), 1, "resumed exactly once: {resumed:?}");
    let text = &resumed[0];
    for (c, name) in children.iter().zip(["a", "b"]) {
        assert!(
            text.contains(&format!("[delegated-result {c} completed]")),
            "{text}"
        );
        assert!(text.contains(&format!("child {name} done")), "{text}");
    }
    assert!(
        !text.contains(&format!("[delegated-result {}", children[2])),
        "{text}"
    );
    let show_parent = show(&g, &parent);
    assert_eq!(show_parent["status"], "completed", "{show_parent}");
    // The results went into the parent's open session: one live
    // injection, counted in the firing's commit, so once across the kills.
    let stats: Value = serde_json::from_str(&g.ok(&["stats", "--json"])).unwrap();
    assert_eq!(stats["delegation"]["live_injections"], 1, "{stats}");
    assert_eq!(stats["delegation"]["resurrections"], 0, "{stats}");
}

#[test]
fn an_await_is_cancelled_counts_any_end_and_expires_at_its_deadline() {
    let mut g = Grove::scripted_acp("allow_all", "");
    g.serve();
    g.wait_primary();
    let delegate = |g: &Grove, plan: Value| -> (String, Vec<String>) {
        std::fs::write(g.ws.join("delegate.json"), plan.to_string()).unwrap();
        let parent = g.ok(&["spawn", "delegate", "-e", "scripted"]);
        let pending = wait_for("the parent's await", DEADLINE, || {
            awaits(g, false)
                .into_iter()
                .find(|a| a["parent_id"] == parent.as_str())
        });
        let children = (pending["children"].as_array().unwrap().iter())
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        wait_status(g, &parent, "idle");
        (parent, children)
    };

    // A cancelled await resumes nobody; cancelling twice finds nothing.
    let (parent, children) = delegate(&g, serde_json::json!({ "children": [child("x")] }));
    // Idle only until its await fires: a wait for it has not ended.
    let out = g.run(&["wait", &parent, "--timeout", "0.5"]);
    assert!(
        !out.status.success(),
        "grove wait took an awaiting parent for finished: {out:?}"
    );
    let out = g.run(&["awaits", "--cancel", &parent]);
    assert!(out.status.success(), "{out:?}");
    assert!(awaits(&g, false).is_empty());
    // Its turn had ended; with nothing left to await, its session ends.
    wait_status(&g, &parent, "completed");
    let out = g.run(&["awaits", "--cancel", &parent]);
    assert!(!out.status.success(), "a second cancel finds nothing");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no pending await"),
        "{out:?}"
    );
    std::fs::write(g.ws.join("go_x"), "").unwrap();
    wait_status(&g, &children[0], "completed");
    assert!(
        resumptions(&g).is_empty(),
        "a cancelled await resumes nobody"
    );

    // Any end counts: a cancelled child satisfies "any".
    let plan = serde_json::json!({ "children": [child("never")], "policy": "any" });
    let (parent, children) = delegate(&g, plan);
    g.ok(&["cancel", &children[0]]);
    wait_for("the parent resumed", DEADLINE, || {
        (resumptions(&g).len() == 1).then_some(())
    });
    let text = &resumptions(&g)[0];
    assert!(
        text.contains(&format!("[delegated-result {} cancelled]", children[0])),
        "{text}"
    );
    wait_status(&g, &parent, "completed");

    // The deadline passes with one of two ended: resumed with what arrived,
    // told who still runs.
    let plan = serde_json::json!({
        "children": [child("y"), child("never2")],
        "policy": "all",
        "timeout_seconds": 1.5,
    });
    let (parent, children) = delegate(&g, plan);
    std::fs::write(g.ws.join("go_y"), "").unwrap();
    wait_for("the parent resumed at the deadline", DEADLINE, || {
        (resumptions(&g).len() == 2).then_some(())
    });
    let text = &resumptions(&g)[1];
    assert!(text.contains("deadline passed"), "{text}");
    assert!(
        text.contains(&format!("[delegated-result {} completed]", children[0])),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "Still running (the deadline passed before they ended): {}",
            children[1]
        )),
        "{text}"
    );
    wait_status(&g, &parent, "completed");
    let settled = awaits(&g, true);
    assert!(
        settled
            .iter()
            .any(|a| a["parent_id"] == parent.as_str() && a["state"] == "expired"),
        "{settled:?}"
    );
    g.ok(&["cancel", &children[1]]);
}

/// A kept-session child that ended its turn and waits, idle, for a
/// follow-up has ended for an await, as it has for `grove wait`: the
/// parent is resumed with its result at once, not at the deadline (an
/// hour by default). An idle child that awaits children of its own has
/// not (the `an_await_is_cancelled...` test above holds `wait` to that).
#[test]
fn an_await_counts_an_idle_kept_session_child_as_ended() {
    let mut g = Grove::scripted_acp("allow_all", "");
    g.serve();
    g.wait_primary();
    let plan = serde_json::json!({
        "children": [{"prompt": "hello", "engine": "scripted", "keep_session": true}],
        "timeout_seconds": 600,
    });
    std::fs::write(g.ws.join("delegate.json"), plan.to_string()).unwrap();
    let parent = g.ok(&["spawn", "delegate", "-e", "scripted"]);
    wait_for("the parent resumed", DEADLINE, || {
        (resumptions(&g).len() == 1).then_some(())
    });
    let text = &resumptions(&g)[0];
    assert!(text.contains("the await is satisfied"), "{text}");
    let settled = awaits(&g, true);
    let this = (settled.iter())
        .find(|a| a["parent_id"] == parent.as_str())
        .expect("the parent's await");
    assert_eq!(this["state"], "satisfied", "{settled:?}");
    let child = this["children"][0].as_str().unwrap();
    assert!(
        text.contains(&format!("[delegated-result {child} idle]")),
        "{text}"
    );
    g.ok(&["close", child]);
}
