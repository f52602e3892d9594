//! Delegation into another workspace: the projects registry (every member
//! registers its workspace; `grove projects` lists, marks stale entries,
//! forgets), and a task spawned with a project — through MCP from inside a
//! task, and from the CLI — runs in that workspace's grove while its proxy
//! here, an ordinary child of the caller, follows it: output, result and
//! conclusion flow back, and cancelling the proxy cancels the task there
//! and the tasks it spawned there.
//! A directory that others can write or own is never delegated to, and a
//! chain of delegations across workspaces meets `max_delegation_depth`
//! as one inside a workspace does.
//! Real processes: two workspaces' members, shims, `grove delegate-run`,
//! and the official MCP Python SDK as the client.

mod common;

use common::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

/// Two workspaces sharing one user config dir (so one registry); the
/// second is named `other` in its config, and a member runs in each.
fn two_workspaces() -> (Grove, Grove) {
    two_workspaces_with("", "")
}

/// [`two_workspaces`], with more config lines for each.
fn two_workspaces_with(here: &str, there: &str) -> (Grove, Grove) {
    let mut here = Grove::with_config(&format!("heartbeat_ms = 100\n{here}"));
    let mut there = Grove::with_config(&format!("heartbeat_ms = 100\nname = \"other\"\n{there}"));
    let registry = here.dir.path().join("config");
    there.env("XDG_CONFIG_HOME", registry.to_str().unwrap());
    here.serve();
    there.serve();
    here.wait_primary();
    there.wait_primary();
    (here, there)
}

fn projects(g: &Grove) -> Vec<Value> {
    let out = g.ok(&["projects", "--json"]);
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The tasks of `g` as `list --json` shows them.
fn tasks(g: &Grove) -> Vec<Value> {
    serde_json::from_str::<Value>(&g.ok(&["list", "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn members_register_their_workspaces_and_stale_entries_can_be_forgotten() {
    let (here, there) = two_workspaces();
    let listed = projects(&here);
    let other = listed.iter().find(|p| p["name"] == "other").expect("other");
    assert_eq!(
        other["path"],
        there.ws.canonicalize().unwrap().to_str().unwrap()
    );
    assert_eq!(other["running"], true);
    assert_eq!(other["stale"], false);
    assert!(listed.iter().any(|p| p["name"] == "ws"), "{listed:?}");
    // An entry whose workspace is gone is shown as stale, and forgotten.
    let dir = here.dir.path().join("config/grove/projects");
    std::fs::write(
        dir.join("00000000deadbeef.json"),
        r#"{"id": "00000000deadbeef", "name": "gone", "path": "/nonexistent/gone"}"#,
    )
    .unwrap();
    let gone = projects(&here)
        .into_iter()
        .find(|p| p["name"] == "gone")
        .expect("listed");
    assert_eq!(
        (gone["stale"].clone(), gone["running"].clone()),
        (true.into(), false.into())
    );
    let refused = here.run(&["spawn", "echo x", "--project", "gone"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--forget"));
    // A directory inside a workspace is no other project: no grove is
    // started there, and the workspace above is named. `/` is none.
    let inside = there.ws.join("src");
    std::fs::create_dir_all(&inside).unwrap();
    let refused = here.run(&[
        "spawn",
        "echo x",
        "--project",
        &inside.display().to_string(),
    ]);
    let err = String::from_utf8_lossy(&refused.stderr).to_string();
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(err.contains("is inside the workspace"), "{err}");
    assert!(!inside.join(".grove").exists(), "a grove was made inside");
    let refused = here.run(&["spawn", "echo x", "--project", "/"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(!std::path::Path::new("/.grove/grove.db").exists());
    here.ok(&["projects", "--forget", "00000000deadbeef"]);
    assert!(projects(&here).iter().all(|p| p["name"] != "gone"));
    assert_eq!(
        here.run(&["projects", "--forget", "00000000deadbeef"])
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn a_child_delegated_to_another_workspace_through_mcp_reports_back() {
    let (here, there) = two_workspaces();
    let parent = here.ok(&["spawn", "sleep 300"]);
    let registry = here.dir.path().join("config");
    let mut cmd = Command::new(test_env::python());
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/mcp/mcp_client.py"
    ))
    .arg(BIN)
    .arg(&here.ws)
    .arg("projects")
    .env("GROVE_NO_AUTOSTART", "1")
    .env("GROVE_TASK_ID", &parent)
    .env("OTHER_PROJECT", "other")
    .env("XDG_CONFIG_HOME", &registry);
    let out = cmd.output().expect("run the MCP client");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && stdout.contains(" passed, 0 failed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let child: Value = stdout
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("the client prints the child's id");
    let child = child["child"].as_str().unwrap();
    // The task there knows where it was delegated from.
    let here_root = here.ws.canonicalize().unwrap();
    let reference = format!("{}#{child}", here_root.display());
    let theirs = tasks(&there);
    let remote = theirs
        .iter()
        .find(|t| t["env"]["GROVE_PARENT_REF"] == reference.as_str())
        .unwrap_or_else(|| panic!("no task there delegated by {reference}: {theirs:?}"));
    assert_eq!(remote["status"], "completed");
    assert_eq!(remote["conclusion"]["summary"], "done there");
    // The proxy here is the parent's child.
    assert_eq!(show(&here, child)["parent_id"], parent.as_str());
    here.ok(&["cancel", &parent]);
    // A conclusion grove made up there (no block) is made up here too,
    // not passed off as the agent's report.
    let args = [
        "spawn",
        "--conclusion",
        "--project",
        "other",
        "echo plain words",
    ];
    let plain = here.ok(&args);
    let done = wait_status(&here, &plain, "completed");
    let c = &done["conclusion"];
    assert_eq!(c["source"], "synthesized", "{done}");
    assert_eq!(c["summary"], "plain words", "{done}");
}

/// An ACP agent there that wrote no block concludes with its message,
/// there and here alike: not with the transcript the proxy copied.
#[test]
fn a_delegated_acp_agent_without_a_block_concludes_with_its_message_here_too() {
    let agent = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/acp_agents/scripted_agent.py"
    );
    let scripted = format!(
        "[engines.scripted]\nkind = \"acp\"\ncommand = [\"{}\", \"{agent}\"]\npermissions = \"allow_all\"\n",
        test_env::python().display()
    );
    let (here, _there) = two_workspaces_with("", &scripted);
    let args = [
        "spawn",
        "--conclusion",
        "--project",
        "other",
        "-e",
        "scripted",
        "hello",
    ];
    let proxy = here.ok(&args);
    let done = wait_status(&here, &proxy, "completed");
    let c = &done["conclusion"];
    assert_eq!(c["source"], "synthesized", "{done}");
    assert_eq!(c["summary"], "Hello world", "{done}");
}

#[test]
fn cancelling_the_proxy_cancels_the_task_in_the_other_workspace() {
    let (here, there) = two_workspaces();
    let proxy = here.ok(&["spawn", "sleep 300", "--project", "other"]);
    let remote = wait_for("the task there to run", DEADLINE, || {
        tasks(&there)
            .into_iter()
            .find(|t| t["prompt"] == "sleep 300" && t["status"] == "running")
    });
    let remote = remote["id"].as_str().unwrap().to_string();
    wait_status(&here, &proxy, "running");
    // The task there spawned a task of its own there.
    let registry = here.dir.path().join("config");
    let out = as_agent(&there, &registry, &remote, &["spawn", "sleep 301"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let below = stdout_of(&out).trim().to_string();
    wait_status(&there, &below, "running");
    here.ok(&["cancel", &proxy]);
    wait_status(&here, &proxy, "cancelled");
    wait_status(&there, &remote, "cancelled");
    // So is the work it spawned there, which only served the proxy.
    wait_status(&there, &below, "cancelled");
    // Two tasks there: the proxy's run created its task once.
    assert_eq!(tasks(&there).len(), 2);
}

/// A CLI command on `g`'s workspace as the agent of `task` runs it
/// (`GROVE_TASK_ID` set, the shared registry of [`two_workspaces`] in
/// `registry`).
fn as_agent(g: &Grove, registry: &Path, task: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--workspace")
        .arg(&g.ws)
        .env("GROVE_NO_AUTOSTART", "1")
        .env("GROVE_TASK_ID", task)
        .env("XDG_CONFIG_HOME", registry)
        .output()
        .expect("run grove")
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The task of `g` delegated by task `by` of the workspace at `from`, once
/// it runs.
fn delegated_task(g: &Grove, from: &Grove, by: &str) -> String {
    let reference = format!("{}#{by}", from.ws.canonicalize().unwrap().display());
    let t = wait_for(
        &format!("the task delegated by {by} to run"),
        DEADLINE,
        || {
            tasks(g).into_iter().find(|t| {
                t["env"]["GROVE_PARENT_REF"] == reference.as_str() && t["status"] == "running"
            })
        },
    );
    t["id"].as_str().unwrap().to_string()
}

/// A workspace that other users can write (or that another user owns) is
/// never delegated to: a grove started or joined there would run what its
/// `.grove` configures, as this user. Refused at the spawn, with the path
/// and why, whether named by path or from the registry, its `.grove` too;
/// refused again when the proxy's run starts, and nothing is made there.
#[test]
fn delegation_to_a_directory_others_can_write_is_refused() {
    let (here, there) = two_workspaces();
    let refused = |project: &str, names: &Path, why: &str| {
        let out = here.run(&["spawn", "echo x", "--project", project]);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("cannot delegate") && err.contains(&format!("{}: {why}", names.display())),
            "{err}"
        );
    };
    // A directory every user can write, named by its path.
    let open = here.dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let open = open.canonicalize().unwrap();
    refused(
        open.to_str().unwrap(),
        &open,
        "it is writable by every user",
    );
    // A registered workspace opened up since it registered.
    let there_root = there.ws.canonicalize().unwrap();
    let mode = std::fs::metadata(&there_root).unwrap().permissions().mode() & 0o7777;
    chmod(&there_root, 0o777);
    refused("other", &there_root, "it is writable by every user");
    chmod(&there_root, mode);
    // A workspace of ours whose `.grove` every user can write.
    let guarded = here.dir.path().join("guarded");
    std::fs::create_dir_all(guarded.join(".grove")).unwrap();
    chmod(&guarded, 0o755);
    chmod(&guarded.join(".grove"), 0o777);
    let guarded = guarded.canonicalize().unwrap();
    refused(
        guarded.to_str().unwrap(),
        &guarded.join(".grove"),
        "it is writable by every user",
    );
    // A workspace of ours in a directory every user can write (not
    // sticky): another user could swap it between the check and the use.
    let shared = here.dir.path().join("shared");
    std::fs::create_dir_all(shared.join("mine")).unwrap();
    chmod(&shared.join("mine"), 0o755);
    chmod(&shared, 0o777);
    let shared = shared.canonicalize().unwrap();
    refused(
        shared.join("mine").to_str().unwrap(),
        &shared,
        "it is writable by every user",
    );
    if unsafe { libc::geteuid() } == 0 {
        // Another user's directory (chown needs root).
        let foreign = here.dir.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        chmod(&foreign, 0o755);
        std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
        let foreign = foreign.canonicalize().unwrap();
        refused(
            foreign.to_str().unwrap(),
            &foreign,
            "it is owned by uid 65534",
        );
        assert!(!foreign.join(".grove").exists());
    }
    assert!(tasks(&here).is_empty(), "a refused delegation left a proxy");
    // A task of the `delegate` engine made by hand skips the spawn's
    // check: its run checks again, and fails saying why.
    let by_hand = here.ok(&[
        "spawn",
        "-e",
        "delegate",
        "--env",
        &format!("GROVE_DELEGATE_PROJECT={}", open.display()),
        "echo x",
    ]);
    let ended = wait_for("the hand-made proxy to end", DEADLINE, || {
        let t = show(&here, &by_hand);
        ["completed", "failed", "cancelled"]
            .contains(&t["status"].as_str()?)
            .then_some(t)
    });
    let log = here.ok(&["logs", &by_hand]);
    assert_eq!(ended["status"], "failed", "{log}");
    assert!(
        log.contains(&format!("{}: it is writable by every user", open.display())),
        "{log}"
    );
    assert!(!open.join(".grove").exists(), "grove was started there");
    assert_eq!(
        std::fs::read_dir(guarded.join(".grove")).unwrap().count(),
        0,
        "something was made in the open .grove"
    );
    // A directory of ours that nobody else can write is delegated to.
    let proxy = here.ok(&[
        "spawn",
        "echo fine there",
        "--project",
        there_root.to_str().unwrap(),
    ]);
    wait_status(&here, &proxy, "completed");
    let theirs = tasks(&there);
    assert!(
        theirs
            .iter()
            .any(|t| t["prompt"] == "echo fine there" && t["status"] == "completed"),
        "{theirs:?}"
    );
}

/// Two workspaces delegating back and forth count one depth: a task
/// delegated from another workspace stands at its proxy's level there, so
/// the chain top → proxy (here) → task there → proxy (there) → task here
/// is at the limit (2), and the last task can spawn nothing more, here or
/// in the other workspace, with a refusal that names where the levels
/// came from.
#[test]
fn a_delegation_chain_across_workspaces_meets_the_same_depth_limit() {
    let depth = "max_delegation_depth = 2\n";
    let (here, there) = two_workspaces_with(depth, depth);
    let registry = here.dir.path().join("config");
    let top = here.ok(&["spawn", "sleep 300"]);
    let spawned = |g: &Grove, by: &str, args: &[&str]| {
        let out = as_agent(g, &registry, by, args);
        assert!(out.status.success(), "{}", stderr_of(&out));
        stdout_of(&out).trim().to_string()
    };
    let here_path = here.ws.canonicalize().unwrap();
    let first_proxy = spawned(&here, &top, &["spawn", "sleep 300", "--project", "other"]);
    let there_task = delegated_task(&there, &here, &first_proxy);
    let second_proxy = spawned(
        &there,
        &there_task,
        &[
            "spawn",
            "sleep 300",
            "--project",
            here_path.to_str().unwrap(),
        ],
    );
    let back_here = delegated_task(&here, &there, &second_proxy);
    let there_ref = format!(
        "{}#{second_proxy}",
        there.ws.canonicalize().unwrap().display()
    );
    for args in [
        &["spawn", "echo one level too deep"][..],
        &["spawn", "echo one level too deep", "--project", "other"],
    ] {
        let out = as_agent(&here, &registry, &back_here, args);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "delegation too deep: task {back_here} is already 2 levels below a top-level task"
            )) && err.contains(&there_ref)
                && err.contains("max_delegation_depth is 2"),
            "{args:?}: {err}"
        );
    }
    // Nothing was made by the refusals; the chain's tasks run on.
    assert_eq!(tasks(&here).len(), 3, "{:?}", tasks(&here));
    there.ok(&["cancel", &second_proxy]);
    wait_status(&here, &back_here, "cancelled");
    here.ok(&["cancel", "--tree", &top]);
    wait_status(&there, &there_task, "cancelled");
}

/// A task delegated from deeper than the other workspace allows is
/// refused there, as a child that deep would be: the proxy fails, saying
/// why, and nothing runs there.
#[test]
fn a_delegation_deeper_than_the_other_workspace_allows_is_refused_there() {
    let (here, there) = two_workspaces_with("", "max_delegation_depth = 1\n");
    let registry = here.dir.path().join("config");
    let top = here.ok(&["spawn", "sleep 300"]);
    let out = as_agent(&here, &registry, &top, &["spawn", "sleep 300"]);
    let child = stdout_of(&out).trim().to_string();
    let out = as_agent(
        &here,
        &registry,
        &child,
        &["spawn", "echo x", "--project", "other"],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    let proxy = stdout_of(&out).trim().to_string();
    let ended = wait_for("the proxy to end", DEADLINE, || {
        let t = show(&here, &proxy);
        ["completed", "failed", "cancelled"]
            .contains(&t["status"].as_str()?)
            .then_some(t)
    });
    let log = here.ok(&["logs", &proxy]);
    assert_eq!(ended["status"], "failed", "{log}");
    let reference = format!("{}#{proxy}", here.ws.canonicalize().unwrap().display());
    assert!(
        log.contains(&format!(
            "delegation too deep: this task was delegated from {reference} at 2 levels below a top-level task there, and max_delegation_depth is 1 here"
        )),
        "{log}"
    );
    assert!(tasks(&there).is_empty(), "{:?}", tasks(&there));
    here.ok(&["cancel", "--tree", &top]);
}

/// An agent that runs grove in another workspace itself (`cd ../other &&
/// grove spawn`), not through `--project`, still delegates: what it
/// creates there inherits its level and names it, so the limit holds
/// however an agent reaches another workspace.
#[test]
fn an_agent_running_grove_in_another_workspace_carries_its_depth_there() {
    let (here, there) = two_workspaces_with("", "max_delegation_depth = 1\n");
    let registry = here.dir.path().join("config");
    let here_path = here.ws.canonicalize().unwrap();
    // A command in `there` as the agent of `task` of `here` runs it.
    let from_here = |task: &str, args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .arg("--workspace")
            .arg(&there.ws)
            .env("GROVE_NO_AUTOSTART", "1")
            .env("GROVE_TASK_ID", task)
            .env("GROVE_WORKSPACE", &here_path)
            .env("XDG_CONFIG_HOME", &registry)
            .output()
            .expect("run grove")
    };
    let top = here.ok(&["spawn", "sleep 300"]);
    let out = from_here(&top, &["spawn", "sleep 300"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let first = stdout_of(&out).trim().to_string();
    let t = tasks(&there)
        .into_iter()
        .find(|t| t["id"] == first.as_str())
        .expect("the task there");
    assert_eq!(
        t["env"]["GROVE_PARENT_REF"],
        format!("{}#{top}", here_path.display()),
        "{t}"
    );
    assert_eq!(t["env"]["GROVE_DELEGATION_DEPTH"], "1", "{t}");
    // One level is all `there` allows: that task may not delegate further.
    let out = as_agent(&there, &registry, &first, &["spawn", "echo too deep"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("delegation too deep") && err.contains("max_delegation_depth is 1"),
        "{err}"
    );
    // A child here (level 1) reaching `there` directly is level 2: refused.
    let child = stdout_of(&as_agent(&here, &registry, &top, &["spawn", "sleep 300"]))
        .trim()
        .to_string();
    let out = from_here(&child, &["spawn", "echo too deep"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("delegation too deep") && err.contains("at 2 levels"),
        "{err}"
    );
    assert_eq!(tasks(&there).len(), 1, "{:?}", tasks(&there));
    there.ok(&["cancel", &first]);
    here.ok(&["cancel", "--tree", &top]);
}

/// A chain that comes back: a task here delegates to the other workspace,
/// whose task delegates back here, both with `max_parallel = 1`. The
/// proxies only follow their tasks there and lend their slots meanwhile;
/// before, the proxy here held the only slot and the task that came back
/// queued behind it for good.
#[test]
fn a_delegation_that_comes_back_to_a_full_workspace_runs() {
    let one = "max_parallel = 1\n";
    let (here, _there) = two_workspaces_with(one, one);
    let here_path = here.ws.canonicalize().unwrap();
    let back = format!(
        "'{BIN}' spawn --project '{}' --wait 'echo deep'",
        here_path.display()
    );
    let script = format!("'{BIN}' spawn --project other --wait \"{back}\"");
    let top = here.ok(&["spawn", &script]);
    let done = wait_status(&here, &top, "completed");
    assert_eq!(done["exit_code"], 0, "{done}");
    let deep = tasks(&here)
        .into_iter()
        .find(|t| t["prompt"] == "echo deep")
        .expect("the task that came back");
    assert_eq!(deep["status"], "completed", "{deep}");
}
