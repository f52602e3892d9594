//! `grove run`: one task followed to its end, with real processes — a
//! shell task and the scripted ACP agent in each output format, exit codes
//! (the task's own, and grove's 125/126/127/130 kept apart), Ctrl-C.

mod common;

use common::{BIN, DEADLINE, Grove, show, wait_for};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

/// `grove run ARGS` on the workspace, to its end.
fn run(g: &Grove, args: &[&str]) -> Output {
    let mut all = vec!["run"];
    all.extend(args);
    g.run(&all)
}

use common::{stderr_of as stderr, stdout_of as stdout};

/// The JSON objects of a stream-json run, one per line.
fn json_lines(o: &Output) -> Vec<Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn scripted() -> Grove {
    let mut g = Grove::scripted_acp("ask", "");
    g.serve();
    g.wait_primary();
    g
}

fn shell() -> Grove {
    let mut g = Grove::with_config("heartbeat_ms = 100\nkill_grace_ms = 5000\n");
    g.serve();
    g.wait_primary();
    g
}

#[test]
fn a_shell_task_streams_its_output_in_each_format_and_passes_its_exit_code() {
    let g = shell();
    let script = "printf 'one\\n'; printf 'two\\n' >&2; exit 3";

    let o = run(&g, &[script]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(stdout(&o), "one\ntwo\n");
    assert!(stderr(&o).contains("exit code 3"), "{}", stderr(&o));
    // Into a pipe the bytes go as written: no line ending is added.
    let o = run(&g, &["printf abc"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "abc");

    // A task's own 125, 126 and 130 are its exit codes, not grove's
    // verdicts: said as such.
    for code in [125, 126, 130] {
        let o = run(&g, &[&format!("exit {code}")]);
        assert_eq!(o.status.code(), Some(code), "{}", stderr(&o));
        let said = stderr(&o);
        assert!(said.contains(&format!("exit code {code}")), "{said}");
        assert!(
            !said.contains("could not start") && !said.contains("lost"),
            "{said}"
        );
    }

    let o = run(&g, &["--output-format", "stream-json", script]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let lines = json_lines(&o);
    let output: String = lines
        .iter()
        .filter(|l| l["type"] == "output")
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert_eq!(output, "one\ntwo\n");
    let statuses: Vec<&str> = lines
        .iter()
        .filter(|l| l["type"] == "status")
        .map(|l| l["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.first(), Some(&"queued"), "{statuses:?}");
    assert!(statuses.contains(&"running"), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&"failed"), "{statuses:?}");
    let result = lines.last().unwrap();
    assert_eq!(result["type"], "result", "{result}");
    assert_eq!(result["exit_code"], 3, "{result}");
    assert_eq!(result["output"], "one\ntwo\n", "{result}");

    let o = run(&g, &["--output-format", "json", "echo fine"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let result: Value = serde_json::from_slice(&o.stdout).expect("one JSON document");
    assert_eq!(result["status"], "completed", "{result}");
    assert_eq!(result["exit_code"], 0, "{result}");
    assert_eq!(result["engine"], "shell", "{result}");
    assert_eq!(result["output"], "fine\n", "{result}");
    assert!(result["duration_ms"].is_u64(), "{result}");
    assert!(result["conclusion"].is_null(), "{result}");
    let id = result["task_id"].as_str().unwrap();
    assert_eq!(show(&g, id)["status"], "completed");

    // A conclusion asked for is in the result.
    let block =
        r#"echo '<grove:conclusion>{"status":"success","summary":"all good"}</grove:conclusion>'"#;
    let o = run(&g, &["--conclusion", "--output-format", "json", block]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let result: Value = serde_json::from_slice(&o.stdout).expect("one JSON document");
    let c = &result["conclusion"];
    assert_eq!(c["status"], "success", "{result}");
    assert_eq!(c["summary"], "all good", "{result}");
    assert_eq!(c["source"], "reported", "{result}");
}

#[test]
fn an_acp_agent_streams_its_message_and_tool_calls_in_each_format() {
    let g = scripted();

    let o = run(&g, &["-e", "scripted", "hello"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "Hello world\n");

    let o = run(&g, &["-e", "scripted", "edit f.txt"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    let tool = "[tool] Write f.txt (edit) completed";
    assert!(text.lines().any(|l| l == tool), "{text}");
    assert!(text.ends_with("edited\n"), "{text}");

    let o = run(
        &g,
        &["-e", "scripted", "--output-format", "stream-json", "hello"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lines = json_lines(&o);
    let updates: Vec<&Value> = lines
        .iter()
        .filter(|l| l["type"] == "agent_update")
        .collect();
    assert!(updates.iter().any(|u| u["kind"] == "prompt"), "{lines:?}");
    let said: String = updates
        .iter()
        .filter(|u| u["kind"] == "agent_message_chunk")
        .map(|u| u["update"]["content"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(said, "Hello world");
    assert!(lines.iter().any(|l| l["status"] == "running"), "{lines:?}");
    let result = lines.last().unwrap();
    assert_eq!(result["type"], "result", "{result}");
    assert_eq!(result["message"], "Hello world", "{result}");

    let o = run(&g, &["-e", "scripted", "--output-format", "json", "hello"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let result: Value = serde_json::from_slice(&o.stdout).expect("one JSON document");
    assert_eq!(result["status"], "completed", "{result}");
    assert_eq!(result["message"], "Hello world", "{result}");
    assert_eq!(result["engine"], "scripted", "{result}");
    assert_eq!(result["model"], Value::Null, "{result}");
    assert!(result["output"].is_null(), "{result}");
}

#[test]
fn yolo_allows_every_permission_request_of_the_run() {
    let g = scripted();
    let o = run(&g, &["-e", "scripted", "--yolo", "permission"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("[tool] Run make (execute) completed"),
        "{text}"
    );
    assert!(text.ends_with("ran make\n"), "{text}");
}

#[test]
fn a_missing_engine_or_binary_is_127_and_an_agent_that_cannot_start_is_126() {
    let mut g = Grove::with_config(
        "heartbeat_ms = 100\n\
         [engines.ghost]\nkind = \"cli\"\ncommand = [\"grove-no-such-agent-binary\", \"{prompt}\"]\n\
         [engines.dies]\nkind = \"acp\"\ncommand = [\"sh\", \"-c\", \"echo dying >&2; exit 5\"]\n",
    );
    g.serve();
    g.wait_primary();

    let o = run(&g, &["-e", "nosuch", "hi"]);
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
    assert!(stderr(&o).contains("no engine 'nosuch'"), "{}", stderr(&o));

    let o = run(&g, &["-e", "ghost", "hi"]);
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("'grove-no-such-agent-binary', which is not on PATH"),
        "{}",
        stderr(&o)
    );
    // Refused before anything was created.
    assert_eq!(g.ok(&["list", "--json"]), "[]");

    let o = run(&g, &["-e", "dies", "hi"]);
    assert_eq!(o.status.code(), Some(126), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("engine 'dies' could not start task"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_agent_that_crashes_mid_turn_fails_the_run_with_its_exit_code() {
    let g = scripted();
    let o = run(&g, &["-e", "scripted", "crash"]);
    // The scripted agent exits with status 3 once its turn has begun.
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("about to crash"), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("agent_error") && stderr(&o).contains("exited mid-turn"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_run_in_its_own_worktree() {
    let g = shell();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(&g.ws)
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@grove.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@grove.invalid")
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::write(g.ws.join(".gitignore"), ".grove/\n").unwrap();
    git(&["add", ".gitignore"]);
    git(&["commit", "-q", "-m", "start"]);
    let o = run(&g, &["--worktree", "pwd"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let dir = stdout(&o);
    assert!(dir.contains("/.grove/worktrees/"), "{dir}");
}

/// A `grove run` in the background, its stderr collected line by line.
struct Background {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Background {
    fn start(g: &Grove, args: &[&str], env: &[(&str, &str)]) -> Background {
        let mut child = Command::new(BIN)
            .arg("run")
            .args(args)
            .arg("--workspace")
            .arg(&g.ws)
            .env("GROVE_NO_AUTOSTART", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start grove run");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let collected = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = collected.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Background { child, stderr }
    }

    fn interrupt(&self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
    }

    fn said(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn wait_said(&self, what: &str) {
        wait_for(&format!("grove run to say '{what}'"), DEADLINE, || {
            self.said().contains(what).then_some(())
        });
    }

    fn exit_code(&mut self) -> Option<i32> {
        wait_for("grove run to exit", DEADLINE, || {
            self.child.try_wait().unwrap()
        })
        .code()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The only task of the workspace, once it runs: (id, the pid of its process).
fn running_task(g: &Grove) -> (String, u32) {
    wait_for("the task to run", DEADLINE, || {
        let tasks: Value = serde_json::from_str(&g.ok(&["list", "--json"])).unwrap();
        let t = tasks.as_array()?.first()?.clone();
        let pid = t["pid"].as_u64().filter(|_| t["status"] == "running")?;
        Some((t["id"].as_str()?.to_string(), pid as u32))
    })
}

fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

#[test]
fn ctrl_c_cancels_the_task_waits_for_its_processes_and_exits_130() {
    let g = shell();
    let mut bg = Background::start(&g, &["sleep 300"], &[]);
    let (id, pid) = running_task(&g);
    bg.interrupt();
    assert_eq!(bg.exit_code(), Some(130), "{}", bg.said());
    // Exited only once the task's processes were gone.
    assert!(gone(pid), "process {pid} of the task outlived grove run");
    assert_eq!(show(&g, &id)["status"], "cancelled");
    assert!(
        bg.said().contains(&format!("cancelling task {id}")),
        "{}",
        bg.said()
    );
}

#[test]
fn ctrl_c_before_the_task_id_is_known_still_cancels_the_task() {
    let g = shell();
    let env = [("GROVE_TEST_RUN_CREATED_STALL_MS", "2000")];
    let mut bg = Background::start(&g, &["sleep 300"], &env);
    // The task exists; grove run has not taken the reply that names it.
    bg.wait_said("test hook: task created");
    bg.interrupt();
    assert_eq!(bg.exit_code(), Some(130), "{}", bg.said());
    let tasks: Value = serde_json::from_str(&g.ok(&["list", "--json"])).unwrap();
    let tasks = tasks.as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0]["status"], "cancelled", "{tasks:?}");
}

#[test]
fn a_second_ctrl_c_exits_at_once_and_leaves_the_task_cancelling() {
    let g = shell();
    // The task ignores SIGTERM: its end waits for the kill grace (5 s).
    let mut bg = Background::start(&g, &["trap '' TERM; sleep 300"], &[]);
    let (id, pid) = running_task(&g);
    bg.interrupt();
    bg.wait_said("cancelling task");
    common::wait_status(&g, &id, "cancelled");
    bg.interrupt();
    assert_eq!(bg.exit_code(), Some(130), "{}", bg.said());
    assert!(bg.said().contains("still being cancelled"), "{}", bg.said());
    // The kill grace ends it all the same.
    wait_for("the task's process to be killed", DEADLINE, || {
        gone(pid).then_some(())
    });
}

#[test]
fn grove_failing_is_125_whatever_the_task_would_have_done() {
    // No member runs and none may be started (the harness forbids autostart).
    let g = Grove::new();
    let o = run(&g, &["exit 0"]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(stderr(&o).starts_with("grove: "), "{}", stderr(&o));
}

/// A run whose last member goes away (killed, stopped) does not wait for
/// an end nobody would record: without autostart it says so (125, grove
/// failed); with it, it starts a member, which adopts the task, and ends
/// with the task's own exit code.
#[test]
fn a_run_whose_last_member_is_gone_says_so_or_starts_one() {
    let g = shell();
    let mut bg = Background::start(&g, &["sleep 2; exit 7"], &[]);
    let (id, _) = running_task(&g);
    g.members[0].signal(libc::SIGKILL);
    assert_eq!(bg.exit_code(), Some(125), "{}", bg.said());
    assert!(bg.said().contains("no grove member runs"), "{}", bg.said());
    // `wait` and `logs -f` alike: unavailable (3), not a wait forever.
    for args in [["wait", id.as_str()], ["logs", "-f"]] {
        let mut args = args.to_vec();
        if args[0] == "logs" {
            args.push(&id);
        }
        let out = g.run(&args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("no grove member runs"),
            "{}",
            stderr(&out)
        );
    }

    let g = shell();
    let mut child = Command::new(BIN)
        .args(["run", "sleep 2; exit 7", "--workspace"])
        .arg(&g.ws)
        .env_remove("GROVE_NO_AUTOSTART")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start grove run");
    running_task(&g);
    g.ok(&["stop"]);
    let status = wait_for("grove run to exit", DEADLINE, || child.try_wait().unwrap());
    let mut said = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut said).unwrap();
    // Whatever happens, the member it started goes.
    let _ = g.run(&["stop"]);
    assert_eq!(status.code(), Some(7), "{said}");
    assert!(said.contains("started `grove serve`"), "{said}");
}

/// `grove run ... | head -1`: the reader goes away; `grove run` exits 141
/// (as a writer killed by SIGPIPE), never 0, which says the task
/// completed, and says the task goes on; the task does, to its own end.
#[test]
fn a_closed_stdout_exits_141_and_the_task_goes_on() {
    let g = shell();
    let go = g.ws.join("go");
    let script = format!(
        "echo first; while [ ! -e '{}' ]; do sleep 0.02; done; echo second; exit 9",
        go.display()
    );
    let mut child = Command::new(BIN)
        .args(["run", "-q", &script, "--workspace"])
        .arg(&g.ws)
        .env("GROVE_NO_AUTOSTART", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start grove run");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first, "first\n");
    drop(out);
    std::fs::write(&go, "").unwrap();
    let status = wait_for("grove run to exit", DEADLINE, || child.try_wait().unwrap());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(141), "{err}");
    let (_, id) = err.split_once("task ").expect("names the task");
    let id: String = id.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    assert!(err.contains("goes on"), "{err}");
    let t = common::wait_status(&g, &id, "failed");
    assert_eq!(t["exit_code"], 9, "{t}");
}

/// A timeout stops the task with grove's SIGTERM: `grove run` and
/// `spawn --wait` both exit 1 for it, never the 143 of that signal (which
/// would read as a command that killed itself).
#[test]
fn a_timeout_exits_1_from_run_and_from_spawn_wait_alike() {
    let g = shell();
    let o = run(&g, &["--timeout", "1", "sleep 30"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let o = g.run(&["spawn", "--wait", "--timeout", "1", "sleep 30"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("timeout"), "{}", stderr(&o));
}

/// What a task wrote reaches a terminal as text and colours only: an
/// escape sequence that sets the window's title or clears the screen is
/// dropped (the output may come from whatever an agent read). Into a
/// pipe it goes byte for byte. The terminal is a pty, opened by Python's
/// `pty` module.
#[test]
fn a_tasks_escape_sequences_reach_a_terminal_only_as_colours() {
    let g = shell();
    let script = r"printf 'a\033]0;evil title\007b\033[31mc\033[0m\033[2Jd\n'";
    let id = g.ok(&["spawn", script]);
    g.ok(&["wait", &id]);
    let piped = g.run(&["logs", &id]).stdout;
    assert!(
        piped.windows(2).any(|w| w == b"\x1b]"),
        "a pipe gets the bytes as written: {piped:?}"
    );
    let on_terminal = Command::new(common::test_env::python())
        .args([
            "-c",
            "import pty, sys; pty.spawn(sys.argv[1:])",
            BIN,
            "logs",
        ])
        .arg(&id)
        .arg("--workspace")
        .arg(&g.ws)
        .env("GROVE_NO_AUTOSTART", "1")
        .stdin(Stdio::null())
        .output()
        .expect("grove logs on a pty");
    let shown = String::from_utf8_lossy(&on_terminal.stdout);
    assert!(shown.contains("ab\x1b[31mc\x1b[0md"), "{shown:?}");
    assert!(
        !shown.contains("\x1b]") && !shown.contains("evil") && !shown.contains("\x1b[2J"),
        "{shown:?}"
    );
}
