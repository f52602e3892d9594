//! A real, published agent as a grove engine: Claude Code's ACP adapter
//! (npm `@agentclientprotocol/claude-agent-acp`, installed once under
//! `target/test-env/npm`), run offline against the scripted model endpoint
//! `tests/peer/model_stub.py`. Where the machine allows it (root, util-linux),
//! the endpoint, the members and so the agents live in a network namespace
//! that has only loopback; everywhere the agent is told to send nothing
//! non-essential and to reach the model on 127.0.0.1.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The first start of the agent (node, the Claude Code binary) is slow on
/// a cold, busy machine; a turn against the stub takes well under a second.
const TURN: Duration = Duration::from_secs(120);

/// The scripted model endpoint, in its own network namespace when possible.
struct ModelStub {
    child: Child,
    port: u16,
    /// The stub's pid when it holds a loopback-only network namespace.
    netns: Option<u32>,
    log: PathBuf,
}

impl ModelStub {
    fn start(dir: &Path) -> ModelStub {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peer/model_stub.py");
        let port_file = dir.join("model-port");
        // In a namespace of its own, if this machine lets us make one.
        let isolated = Command::new("unshare")
            .args(["--net", "--", "python3", script, "--lo-up"])
            .arg(&port_file)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let (child, netns) = match isolated {
            Ok(mut child) => match wait_port(&port_file, &mut child) {
                Some(_) => {
                    let pid = child.id();
                    (child, Some(pid))
                }
                None => {
                    // No namespace here (not root, or no util-linux).
                    let _ = child.kill();
                    let _ = child.wait();
                    (plain(script, &port_file), None)
                }
            },
            Err(_) => (plain(script, &port_file), None),
        };
        let port = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .expect("the model stub wrote its port");
        ModelStub {
            child,
            port,
            netns,
            log: dir.join("model-port.log"),
        }
    }

    /// The human texts of the model requests so far.
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for ModelStub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn plain(script: &str, port_file: &Path) -> Child {
    let _ = std::fs::remove_file(port_file);
    let mut child = Command::new("python3")
        .arg(script)
        .arg(port_file)
        .stdin(Stdio::null())
        .spawn()
        .expect("start the model stub");
    wait_port(port_file, &mut child).expect("the model stub did not start");
    child
}

/// Waits for the stub to write its port; `None` if it exited first.
fn wait_port(port_file: &Path, child: &mut Child) -> Option<()> {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if port_file.exists() {
            return Some(());
        }
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A workspace whose engine `claude-real` is the real adapter, talking to
/// `stub`, with the given permission policy.
fn workspace(dir: &Path, stub: &ModelStub, permissions: &str) -> Grove {
    let agent = test_env::claude_agent_acp();
    // Inside the test's temp dir, so it goes with it.
    let home = dir.join("agent-home");
    let config_dir = home.join(".claude-config");
    std::fs::create_dir_all(&config_dir).unwrap();
    // Only these variables, as the facts about this agent advise: anything
    // else of the test's environment could change its behaviour (for one,
    // `IS_SANDBOX` makes its Claude Code process exit at session/new).
    let env = [
        format!("PATH={}", std::env::var("PATH").unwrap_or_default()),
        "LANG=C.UTF-8".to_string(),
        format!("ANTHROPIC_BASE_URL=http://127.0.0.1:{}", stub.port),
        "ANTHROPIC_API_KEY=test-key-for-the-stub".to_string(),
        "ANTHROPIC_MODEL=claude-stub-1".to_string(),
        "ANTHROPIC_SMALL_FAST_MODEL=claude-stub-1".to_string(),
        format!("CLAUDE_CONFIG_DIR={}", config_dir.display()),
        format!("HOME={}", home.display()),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1".to_string(),
        "DISABLE_TELEMETRY=1".to_string(),
        "DISABLE_AUTOUPDATER=1".to_string(),
        "MAX_THINKING_TOKENS=0".to_string(),
        "NO_PROXY=127.0.0.1,localhost".to_string(),
    ];
    let mut command = vec!["env".to_string(), "-i".to_string()];
    command.extend(env);
    command.extend(["node".to_string(), agent.display().to_string()]);
    let command: Vec<String> = command.iter().map(|a| format!("{a:?}")).collect();
    let toml = format!(
        "heartbeat_ms = 100\nkill_grace_ms = 2000\n\
         [engines.claude-real]\nkind = \"acp\"\ncommand = [{}]\n\
         permissions = \"{permissions}\"\n",
        command.join(", ")
    );
    let mut g = Grove::with_config(&toml);
    if let Some(pid) = stub.netns {
        g.member_prefix = vec![
            "nsenter".into(),
            format!("--net=/proc/{pid}/ns/net"),
            "--".into(),
        ];
    }
    g
}

/// Waits for the task's status; on a timeout, fails with its row and log.
fn wait_done(g: &Grove, id: &str, status: &str) {
    let until = Instant::now() + TURN;
    while Instant::now() < until {
        if show(g, id)["status"] == status {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "task {id} did not become {status}: {}\nlog:\n{}",
        show(g, id),
        std::fs::read_to_string(g.ws.join(format!(".grove/logs/{id}.log"))).unwrap_or_default()
    );
}

#[test]
fn claude_code_holds_a_text_turn_and_writes_a_file_through_grove() {
    let dir = tempfile::tempdir().unwrap();
    let stub = ModelStub::start(dir.path());
    let mut g = workspace(dir.path(), &stub, "allow_all");
    g.serve();
    g.wait_primary();

    let id = g.ok(&["spawn", "hello there", "-e", "claude-real"]);
    wait_done(&g, &id, "completed");
    let u = updates(&g, &id);
    assert_eq!(
        message_text(&u),
        "Hello from the stub model (hello).",
        "{u:?}"
    );

    let id = g.ok(&[
        "spawn",
        "please write the file notes.txt",
        "-e",
        "claude-real",
    ]);
    wait_done(&g, &id, "completed");
    let written =
        std::fs::read_to_string(g.ws.join("notes.txt")).expect("the agent wrote the file");
    assert_eq!(written, "written by the stub\n");
    let u = updates(&g, &id);
    let tool = u
        .iter()
        .find(|(k, v)| k == "tool_call_update" && v["content"].to_string().contains("\"diff\""))
        .unwrap_or_else(|| panic!("no tool call update with a diff in {u:?}"));
    assert!(tool.1.to_string().contains("notes.txt"), "{tool:?}");
    assert!(message_text(&u).ends_with("The file is written."), "{u:?}");
    assert!(
        stub.requests().iter().any(|r| r["tool_result"] == true),
        "the agent never sent the tool result to the model"
    );
}

#[test]
fn a_kill_9_of_the_primary_mid_turn_does_not_interrupt_claude_code() {
    let dir = tempfile::tempdir().unwrap();
    let stub = ModelStub::start(dir.path());
    let mut g = workspace(dir.path(), &stub, "allow_all");
    let first = g.serve();
    g.wait_primary();
    g.serve();

    // "slowly": the stub streams the reply in 20 pieces, 150 ms apart.
    let id = g.ok(&["spawn", "tell me slowly", "-e", "claude-real"]);
    wait_for("the turn streaming", TURN, || {
        updates(&g, &id)
            .iter()
            .any(|(k, _)| k == "agent_message_chunk")
            .then_some(())
    });
    g.members[first].signal(libc::SIGKILL);
    wait_done(&g, &id, "completed");
    // Every piece stored once, in order: the text is whole, not doubled.
    assert_eq!(
        message_text(&updates(&g, &id)),
        "Hello from the stub model (tell)."
    );
}

/// A started workspace of the real agent under the `ask` policy: every
/// tool call waits for a human.
fn asking(dir: &Path, stub: &ModelStub) -> Grove {
    let mut g = workspace(dir, stub, "ask");
    g.serve();
    g.wait_primary();
    g
}

/// Spawns a Write tool turn and waits until its permission request is
/// pending (`waiting`); returns the task and the request as stored.
fn waiting_write(g: &Grove, file: &str) -> (String, Value) {
    let prompt = format!("please write the file {file}");
    let id = g.ok(&["spawn", &prompt, "-e", "claude-real"]);
    wait_done(g, &id, "waiting");
    let u = updates(g, &id);
    let (_, req) = u
        .iter()
        .find(|(k, _)| k == "permission_request")
        .unwrap_or_else(|| panic!("waiting without a permission request: {u:?}"));
    let options: Vec<&str> = req["request"]["options"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["optionId"].as_str())
        .collect();
    assert!(
        options.contains(&"allow") && options.contains(&"reject"),
        "{req}"
    );
    assert!(req.to_string().contains(file), "{req}");
    (id, req.clone())
}

/// The status of the task's tool call, as its last update says.
fn tool_status(u: &[(String, Value)], tool_call_id: &str) -> String {
    u.iter()
        .rev()
        .filter(|(k, v)| {
            (k == "tool_call" || k == "tool_call_update")
                && v["toolCallId"] == tool_call_id
                && v["status"].is_string()
        })
        .find_map(|(_, v)| v["status"].as_str())
        .unwrap_or("none")
        .to_string()
}

#[test]
fn claude_code_s_permission_request_is_answered_by_grove_approve_from_another_window() {
    let dir = tempfile::tempdir().unwrap();
    let stub = ModelStub::start(dir.path());
    let g = asking(dir.path(), &stub);
    let (id, req) = waiting_write(&g, "approved.txt");
    // Nothing written while the human has not answered.
    assert!(!g.ws.join("approved.txt").exists());
    // `grove approve` runs as a process of its own, as from another window.
    g.ok(&["approve", &id]);
    wait_done(&g, &id, "completed");
    assert_eq!(
        std::fs::read_to_string(g.ws.join("approved.txt")).unwrap(),
        "written by the stub\n"
    );
    let u = updates(&g, &id);
    let (_, answer) = u.iter().find(|(k, _)| k == "permission").unwrap();
    assert_eq!(answer["answer"]["optionId"], "allow", "{answer}");
    assert_eq!(answer["answer"]["by"], "grove approve");
    let call = req["request"]["toolCall"]["toolCallId"].as_str().unwrap();
    assert_eq!(tool_status(&u, call), "completed", "{u:?}");
    assert!(message_text(&u).ends_with("The file is written."), "{u:?}");
}

#[test]
fn grove_deny_fails_claude_code_s_tool_and_its_final_text_still_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let stub = ModelStub::start(dir.path());
    let g = asking(dir.path(), &stub);
    let (id, req) = waiting_write(&g, "refused.txt");
    g.ok(&["deny", &id]);
    // A refused tool is not a failed turn: the agent tells the model, the
    // model answers, the turn ends normally.
    wait_done(&g, &id, "completed");
    assert!(!g.ws.join("refused.txt").exists());
    let u = updates(&g, &id);
    let (_, answer) = u.iter().find(|(k, _)| k == "permission").unwrap();
    assert_eq!(answer["answer"]["optionId"], "reject", "{answer}");
    assert_eq!(answer["answer"]["by"], "grove deny");
    let call = req["request"]["toolCall"]["toolCallId"].as_str().unwrap();
    assert_eq!(tool_status(&u, call), "failed", "{u:?}");
    assert!(
        message_text(&u).ends_with("The write was refused."),
        "{u:?}"
    );
    assert_eq!(u.last().unwrap().1["stopReason"], "end_turn", "{u:?}");
    assert!(
        stub.requests().iter().any(|r| r["tool_error"] == true),
        "the model never got the refusal as an error tool result"
    );
}

#[test]
fn a_follow_up_said_during_claude_code_s_turn_is_its_next_turn() {
    let dir = tempfile::tempdir().unwrap();
    let stub = ModelStub::start(dir.path());
    let g = asking(dir.path(), &stub);
    // "slowly": 20 pieces 150 ms apart, time enough to say something.
    let id = g.ok(&["spawn", "tell me slowly", "-e", "claude-real"]);
    wait_for("the turn streaming", TURN, || {
        (!message_text(&updates(&g, &id)).is_empty()).then_some(())
    });
    g.ok(&["say", &id, "goodbye now"]);
    wait_done(&g, &id, "completed");
    let u = updates(&g, &id);
    assert_eq!(
        message_text(&u),
        "Hello from the stub model (tell).Hello from the stub model (goodbye).",
        "{u:?}"
    );
    let prompts: Vec<&str> = u
        .iter()
        .filter(|(k, _)| k == "prompt")
        .filter_map(|(_, v)| v["text"].as_str())
        .collect();
    assert_eq!(prompts, ["tell me slowly", "goodbye now"]);
    // The same agent session: opened once, two turns ended.
    assert_eq!(u.iter().filter(|(k, _)| k == "session").count(), 1);
    assert_eq!(u.iter().filter(|(k, _)| k == "turn_end").count(), 2);
    assert!(
        stub.requests().iter().any(|r| r["human"] == "goodbye now"),
        "the follow-up never reached the model"
    );
}
