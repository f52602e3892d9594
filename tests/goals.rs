//! `grove goal`: an objective pursued over iterations, with real processes —
//! the scripted ACP agent (iterations are turns of one session) and a
//! scripted CLI agent (iterations are runs), each way a goal ends, each
//! output format, `kill -9` of the primary mid-goal, Ctrl-C, and the exit
//! codes of a missing engine and a crashing agent.

mod common;

use common::{BIN, DEADLINE, Grove, wait_for};
use serde_json::Value;
use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The result document's fields, exactly (the seed's goal result).
const RESULT_FIELDS: [&str; 10] = [
    "blocked_reason",
    "iteration",
    "max_duration_seconds",
    "max_iterations",
    "next_step",
    "objective",
    "progress",
    "response",
    "session_id",
    "status",
];

fn goal(g: &Grove, args: &[&str]) -> Output {
    let mut all = vec!["goal"];
    all.extend(args);
    g.run(&all)
}

use common::{stderr_of as stderr, stdout_of as stdout};

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", stdout(o), stderr(o)))
}

fn scripted() -> Grove {
    let mut g = Grove::scripted_acp("allow_all", "");
    g.serve();
    g.wait_primary();
    g
}

/// The iterations the scripted agent ran, in order (one line each).
fn iterations(g: &Grove) -> Vec<u32> {
    std::fs::read_to_string(g.ws.join("goals.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

fn goals_json(g: &Grove) -> Vec<Value> {
    let v: Value = serde_json::from_str(&g.ok(&["goals", "--all", "--json"])).unwrap();
    v.as_array().unwrap().clone()
}

#[test]
fn an_acp_agent_reaches_its_objective_in_three_turns_in_each_output_format() {
    let g = scripted();
    // json: exactly the result document.
    let o = goal(
        &g,
        &[
            "-e",
            "scripted",
            "goal:reach3 ship it",
            "--output-format",
            "json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let doc = json(&o);
    let mut keys: Vec<&str> = doc
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort();
    assert_eq!(keys, RESULT_FIELDS, "{doc}");
    assert_eq!(doc["status"], "completed", "{doc}");
    assert_eq!(doc["iteration"], 3, "{doc}");
    assert_eq!(doc["max_iterations"], 20, "{doc}");
    assert_eq!(doc["max_duration_seconds"], 3600.0, "{doc}");
    assert_eq!(doc["progress"], 99.0, "{doc}");
    assert_eq!(doc["response"], "iteration 3 of reach3", "{doc}");
    assert_eq!(doc["objective"], "goal:reach3 ship it", "{doc}");
    assert_eq!(iterations(&g), [1, 2, 3]);
    // One session: the three turns went to the same task, which completed
    // once the goal closed its session.
    let id = doc["session_id"].as_str().unwrap();
    let task = common::wait_status(&g, id, "completed");
    assert_eq!(task["keep_session"], true, "{task}");
    assert!(
        stderr(&o).contains("iteration 3 of at most 20"),
        "{}",
        stderr(&o)
    );

    // stream-json: every line JSON, the goal's changes, the result last.
    std::fs::remove_file(g.ws.join("goals.log")).unwrap();
    let o = goal(
        &g,
        &[
            "-e",
            "scripted",
            "goal:reach3 again",
            "--output-format",
            "stream-json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let goal_iterations: Vec<u64> = lines
        .iter()
        .filter(|l| l["type"] == "goal" && l["goal"]["status"] == "running")
        .map(|l| l["goal"]["iteration"].as_u64().unwrap())
        .collect();
    assert_eq!(goal_iterations, [1, 2, 3], "{lines:?}");
    assert!(
        lines.iter().any(|l| l["type"] == "agent_update"),
        "{lines:?}"
    );
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "result", "{last}");
    assert_eq!(last["status"], "completed", "{last}");
    assert_eq!(last.as_object().unwrap().len(), RESULT_FIELDS.len() + 1);

    // text: the agent's words, each turn on its own line.
    let o = goal(&g, &["-e", "scripted", "goal:reach3 once more"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    for n in 1..=3 {
        assert!(
            text.lines()
                .any(|l| l == format!("working on iteration {n}")),
            "{text}"
        );
    }
    assert!(
        stderr(&o).contains("completed after 3 iterations"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_goal_whose_progress_stops_rising_ends_stalled() {
    let g = scripted();
    let o = goal(
        &g,
        &[
            "-e",
            "scripted",
            "goal:stall",
            "--stall-after",
            "2",
            "--output-format",
            "json",
        ],
    );
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let doc = json(&o);
    assert_eq!(doc["status"], "stalled", "{doc}");
    // The first report sets the best (10); two more without passing it.
    assert_eq!(doc["iteration"], 3, "{doc}");
    assert_eq!(iterations(&g), [1, 2, 3]);
    // The agent was told it was stalling before the goal stopped it.
    let id = doc["session_id"].as_str().unwrap();
    let log = g.ok(&["logs", id]);
    assert!(
        log.contains("Progress has not advanced for 1 iteration"),
        "{log}"
    );
}

#[test]
fn a_blocked_report_ends_the_goal_with_its_reason() {
    let g = scripted();
    let o = goal(
        &g,
        &["-e", "scripted", "goal:blocked", "--output-format", "json"],
    );
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let doc = json(&o);
    assert_eq!(doc["status"], "blocked", "{doc}");
    assert_eq!(doc["iteration"], 1, "{doc}");
    assert_eq!(doc["blocked_reason"], "need the deploy key", "{doc}");
    assert!(stderr(&o).contains("need the deploy key"), "{}", stderr(&o));
    let listed = goals_json(&g);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["status"], "blocked");
    // `grove show` shows the goal beside its task.
    let shown = g.ok(&["show", doc["session_id"].as_str().unwrap()]);
    assert!(shown.contains("goal:       blocked"), "{shown}");
}

#[test]
fn max_duration_times_the_goal_out_and_cancels_the_running_turn() {
    let g = scripted();
    let o = goal(
        &g,
        &[
            "-e",
            "scripted",
            "goal:forever",
            "--max-duration",
            "3s",
            "--output-format",
            "json",
        ],
    );
    assert_eq!(o.status.code(), Some(124), "{}", stderr(&o));
    let doc = json(&o);
    assert_eq!(doc["status"], "timeout", "{doc}");
    assert_eq!(doc["max_duration_seconds"], 3.0, "{doc}");
    let id = doc["session_id"].as_str().unwrap();
    assert_eq!(common::show(&g, id)["status"], "cancelled");
    assert!(!iterations(&g).is_empty());
}

/// A `grove goal` in the background.
struct Background {
    child: Child,
}

impl Background {
    fn start(g: &Grove, args: &[&str]) -> Background {
        let child = Command::new(BIN)
            .arg("goal")
            .args(args)
            .arg("--workspace")
            .arg(&g.ws)
            .env("GROVE_NO_AUTOSTART", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start grove goal");
        Background { child }
    }

    /// Its exit code, stdout and stderr, once it exits.
    fn finish(mut self, within: Duration) -> (Option<i32>, String, String) {
        let status = wait_for("grove goal to exit", within, || {
            self.child.try_wait().unwrap()
        });
        let (mut out, mut err) = (String::new(), String::new());
        let _ = self.child.stdout.take().unwrap().read_to_string(&mut out);
        let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
        (status.code(), out, err)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn kill_9_of_the_primary_mid_goal_continues_it_and_runs_no_iteration_twice() {
    let mut g = Grove::scripted_acp("allow_all", "");
    g.serve();
    g.serve();
    g.wait_primary();
    let bg = Background::start(
        &g,
        &["-e", "scripted", "goal:gated", "--output-format", "json"],
    );
    // Mid-iteration 1: the primary dies while the agent works.
    wait_for("iteration 1 to start", DEADLINE, || {
        (iterations(&g) == [1]).then_some(())
    });
    common::kill_primary(&mut g);
    std::fs::write(g.ws.join("release-1"), "").unwrap();
    // Iteration 2 was given by the new primary; it dies too.
    wait_for("iteration 2 to start", DEADLINE, || {
        (iterations(&g) == [1, 2]).then_some(())
    });
    common::kill_primary(&mut g);
    std::fs::write(g.ws.join("release-2"), "").unwrap();
    let (code, out, err) = bg.finish(DEADLINE * 2);
    assert_eq!(code, Some(0), "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    assert_eq!(doc["status"], "completed", "{doc}");
    assert_eq!(doc["iteration"], 2, "{doc}");
    assert_eq!(iterations(&g), [1, 2], "an iteration ran twice");
}

#[test]
fn ctrl_c_cancels_the_goal() {
    let g = scripted();
    let bg = Background::start(&g, &["-e", "scripted", "goal:forever"]);
    wait_for("the goal to start", DEADLINE, || {
        (!iterations(&g).is_empty()).then_some(())
    });
    unsafe { libc::kill(bg.child.id() as i32, libc::SIGINT) };
    let (code, _, err) = bg.finish(DEADLINE);
    assert_eq!(code, Some(130), "{err}");
    let listed = goals_json(&g);
    assert_eq!(listed[0]["status"], "cancelled", "{listed:?}");
}

/// A CLI agent: reads its prompt (the last argument), finds the iteration
/// number grove gave it, records the prompt, and concludes as `reach3`.
const CLI_AGENT: &str = r#"
import json, re, sys
prompt = sys.argv[-1]
m = re.search(r"iteration (\d+) of at most", prompt)
n = int(m.group(1)) if m else 1
with open("prompts.log", "a") as f:
    f.write(json.dumps(prompt) + "\n")
con = {"status": "success" if n >= 3 else "partial", "summary": f"run {n}",
       "progress": 33 * n, "next_step": f"run {n + 1}"}
import time
time.sleep(0.3)
print(f"run {n} working")
print("<grove:conclusion>" + json.dumps(con) + "</grove:conclusion>")
"#;

#[test]
fn a_cli_engine_iterates_in_runs_each_given_the_last_conclusion() {
    let python = common::test_env::python();
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("cli_agent.py");
    std::fs::write(&agent, CLI_AGENT).unwrap();
    let mut g = Grove::with_config(&format!(
        "heartbeat_ms = 100\n[engines.cliagent]\nkind = \"cli\"\ncommand = [\"{}\", \"{}\", \"{{prompt}}\"]\n",
        python.display(),
        agent.display()
    ));
    g.serve();
    g.wait_primary();
    let bg = Background::start(
        &g,
        &[
            "-e",
            "cliagent",
            "reach the third run",
            "--output-format",
            "json",
        ],
    );
    // `grove wait` on the goal's task: its task ends once per iteration,
    // but the wait lasts until the goal has ended.
    let id = wait_for("the goal to exist", DEADLINE, || {
        goals_json(&g)
            .first()
            .map(|g| g["id"].as_str().unwrap().to_string())
    });
    g.ok(&["wait", &id]);
    assert_eq!(
        goals_json(&g)[0]["status"],
        "completed",
        "wait returned mid-goal"
    );
    let (code, out, err) = bg.finish(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    assert_eq!(doc["status"], "completed", "{doc}");
    assert_eq!(doc["iteration"], 3, "{doc}");
    let prompts: Vec<String> = std::fs::read_to_string(g.ws.join("prompts.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(prompts.len(), 3, "{prompts:?}");
    // Every run has the objective; the third carries the second's
    // conclusion, not the first's (the prompt does not pile up).
    assert!(prompts.iter().all(|p| p.starts_with("reach the third run")));
    assert!(
        prompts[2].contains("\"summary\":\"run 2\""),
        "{}",
        prompts[2]
    );
    assert!(
        !prompts[2].contains("\"summary\":\"run 1\""),
        "{}",
        prompts[2]
    );
    // The task ran three times under one id.
    let id = doc["session_id"].as_str().unwrap();
    let task = common::show(&g, id);
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["keep_session"], false, "{task}");
}

#[test]
fn a_missing_engine_or_program_exits_127_and_a_crashing_agent_fails_the_goal() {
    let python = common::test_env::python();
    let agent = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/acp_agents/scripted_agent.py"
    );
    let mut g = Grove::with_config(&format!(
        "heartbeat_ms = 100\n[engines.scripted]\nkind = \"acp\"\ncommand = [\"{}\", \"{agent}\"]\n\
         permissions = \"allow_all\"\n[engines.ghost]\nkind = \"acp\"\ncommand = [\"/nonexistent/ghost-agent\"]\n",
        python.display()
    ));
    g.serve();
    g.wait_primary();
    let o = goal(&g, &["-e", "nosuch", "anything"]);
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
    assert!(stderr(&o).contains("nosuch"), "{}", stderr(&o));
    let o = goal(&g, &["-e", "ghost", "anything"]);
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
    assert!(stderr(&o).contains("ghost-agent"), "{}", stderr(&o));
    assert!(goals_json(&g).is_empty(), "nothing was created");

    let o = goal(
        &g,
        &["-e", "scripted", "goal:crash", "--output-format", "json"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let doc = json(&o);
    assert_eq!(doc["status"], "failed", "{doc}");
    let why = doc["response"].as_str().unwrap();
    assert!(why.contains("failed"), "{doc}");
    assert!(
        stderr(&o).contains("failed after 1 iteration"),
        "{}",
        stderr(&o)
    );

    // The shell engine cannot pursue a goal: a usage error that says why.
    let o = goal(&g, &["-e", "shell", "make test"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("needs an agent"), "{}", stderr(&o));
    // Bad limits are usage errors.
    let o = goal(&g, &["-e", "scripted", "x", "--max-duration", "soon"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = goal(&g, &["-e", "scripted", "x", "--max-iterations", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
