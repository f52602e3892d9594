//! The command line as a user meets it: what reaches the agent, what a
//! closed pipe does, which mistakes are usage errors (exit 2) and what the
//! messages say, oversized requests, and purge of ids that are not there.

mod common;

use common::*;
use std::process::{Command, Output, Stdio};

const EXIT_USAGE: i32 = 2;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts the exit code and returns stderr.
fn expect_code(out: &Output, code: i32, what: &str) -> String {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit {code}\nstdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
    stderr(out)
}

fn started() -> Grove {
    let mut g = Grove::with_config(
        "heartbeat_ms = 100\n\
         [engines.echoer]\n\
         command = [\"echo\", \"{prompt}\"]\n\
         model_args = [\"--model={model}\"]\n\
         [engines.counter]\n\
         command = [\"sh\", \"-c\", \"wc -c\"]\n\
         prompt_via = \"stdin\"\n",
    );
    g.serve();
    g.wait_primary();
    g
}

fn finished(g: &Grove, id: &str) -> serde_json::Value {
    wait_for("the task to finish", DEADLINE, || {
        let out = g.run(&["show", id, "--json"]);
        let t: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        matches!(
            t["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        )
        .then_some(t)
    })
}

#[test]
fn placeholders_in_inserted_text_reach_the_agent_as_typed() {
    let g = started();
    // The shell engine: `{workdir}` and `{model}` inside the prompt.
    let id = g.ok(&["spawn", "echo \"{workdir} {model}\""]);
    assert_eq!(finished(&g, &id)["status"], "completed");
    assert_eq!(g.ok(&["logs", &id]), "{workdir} {model}");
    // A model that contains a placeholder does not leak the prompt or the
    // work dir, and neither does a prompt that names the model.
    let id = g.ok(&[
        "spawn",
        "-e",
        "echoer",
        "-m",
        "M{workdir}{prompt}",
        "say {model}",
    ]);
    assert_eq!(finished(&g, &id)["status"], "completed");
    assert_eq!(
        g.ok(&["logs", &id]),
        "say {model} --model=M{workdir}{prompt}"
    );
}

/// Runs `grove ARGS` with stdout a pipe whose reader is already gone.
fn run_into_closed_pipe(g: &Grove, args: &[&str]) -> Output {
    let mut fds = [0i32; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    unsafe { libc::close(fds[0]) };
    let write_end =
        unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--workspace")
        .arg(&g.ws)
        .env("GROVE_NO_AUTOSTART", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped());
    cmd.output().expect("run grove")
}

#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let g = started();
    let id = g.ok(&["spawn", "echo some output"]);
    finished(&g, &id);
    let commands: &[&[&str]] = &[
        &["list"],
        &["list", "--json"],
        &["show", &id],
        &["show", &id, "--json"],
        &["status"],
        &["stats"],
        &["logs", &id],
        &["events"],
        &["engines"],
        &["personas", "--json"],
        &["config", "show"],
        &["wait", &id],
        &["completions", "bash"],
    ];
    for args in commands {
        let out = run_into_closed_pipe(&g, args);
        let err = stderr(&out);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "grove {args:?} into a closed pipe: {err}"
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "grove {args:?} into a closed pipe: {err}"
        );
    }
}

#[test]
fn usage_mistakes_exit_2_with_a_message() {
    let g = started();
    let a = g.ok(&["spawn", "true"]);
    finished(&g, &a);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["spawn", "x", "-e", "nope"], "no engine 'nope'"),
        (vec!["spawn", "   "], "prompt is empty"),
        (vec!["task", "create", ""], "prompt is empty"),
        (
            vec!["spawn", "x", "--dep", &a, "--dep", &a[..10]],
            "given twice",
        ),
        (vec!["wait", &a, &a, &a, "--quorum", "3"], "given twice"),
        (
            vec!["wait", &a, "--quorum", "2"],
            "--quorum 2 must be between 1 and",
        ),
        (
            vec!["wait", &a, "--quorum", "0"],
            "--quorum 0 must be between 1 and",
        ),
        (
            vec!["spawn", "x", "--timeout", "-1"],
            "--timeout must be a positive number of seconds",
        ),
        (
            vec!["wait", &a, "--timeout", "-1"],
            "--timeout must be a positive number of seconds",
        ),
        (
            vec!["task", "create", "x", "--timeout", "0"],
            "--timeout must be",
        ),
        (vec!["progress", "101", "--task", &a], "0-100"),
    ];
    for (args, message) in cases {
        let err = expect_code(&g.run(&args), EXIT_USAGE, &format!("{args:?}"));
        assert!(err.contains(message), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn a_reused_request_id_with_another_request_is_a_conflict() {
    let g = started();
    let first = g.ok(&["spawn", "echo one", "--request-id", "deploy-1"]);
    // The same request again: the recorded task, created once.
    assert_eq!(
        g.ok(&["spawn", "echo one", "--request-id", "deploy-1"]),
        first
    );
    // Another request under the same id: refused, never the first answer.
    let out = g.run(&["spawn", "echo two", "--request-id", "deploy-1"]);
    let err = expect_code(&out, EXIT_USAGE, "a reused request id");
    assert!(err.contains("idempotency_conflict"), "{err}");
    assert!(err.contains("deploy-1"), "{err}");
    assert!(stdout(&out).trim().is_empty(), "no task id printed");
    let listed = g.ok(&["list", "--json"]);
    let tasks: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(tasks.len(), 1, "{listed}");
}

#[test]
fn purge_takes_a_full_id_or_a_prefix_that_names_a_task() {
    let g = started();
    // Seventeen ids: at least two share their first hex digit.
    let mut ids = Vec::new();
    for _ in 0..17 {
        ids.push(g.ok(&["task", "create", "true"]));
    }
    let first = wait_for("two ids with the same first digit", DEADLINE, || {
        ids.iter().find_map(|i| {
            (ids.iter().filter(|j| j[..1] == i[..1]).count() > 1).then(|| i[..1].to_string())
        })
    });
    for id in &ids {
        finished(&g, id);
    }
    let err = expect_code(&g.run(&["purge", "%"]), 1, "purge %");
    assert!(err.contains("no task %"), "{err}");
    let err = expect_code(&g.run(&["purge", "_"]), 1, "purge _");
    assert!(err.contains("no task _"), "{err}");
    let err = expect_code(&g.run(&["purge", &first]), EXIT_USAGE, "purge ambiguous");
    assert!(err.contains("matches several tasks"), "{err}");
    let err = expect_code(&g.run(&["purge", "zzz"]), 1, "purge typo");
    assert!(err.contains("no task zzz"), "{err}");
    // Every task is still there.
    let tasks: Vec<serde_json::Value> = serde_json::from_str(&g.ok(&["list", "--json"])).unwrap();
    assert_eq!(tasks.len(), 17);
    // A full id is idempotent: purged, then purged again, which says it
    // deleted nothing (as a full id with a typo does).
    let id = &ids[0];
    assert_eq!(g.ok(&["purge", id]), format!("deleted {id}"));
    let again = g.ok(&["purge", id]);
    assert!(
        again.contains("purged already, or never existed"),
        "{again}"
    );
    // A unique prefix still works for a task that exists, in capitals too
    // (ids are hex).
    let other = &ids[1];
    let prefix = (8..=32)
        .map(|n| &other[..n])
        .find(|p| ids.iter().filter(|i| i.starts_with(p)).count() == 1)
        .unwrap();
    let shown = g.ok(&["show", &prefix.to_ascii_uppercase(), "--json"]);
    assert!(shown.contains(other.as_str()), "{shown}");
    assert_eq!(g.ok(&["purge", prefix]), format!("deleted {other}"));

    // A deleted task's log goes with it: nothing could reach it once its
    // row is gone. Its run records stay (the orchestrator reads them), and
    // a purge of its id removes them, saying so.
    let deleted = &ids[2];
    let log = g.ws.join(format!(".grove/logs/{deleted}.log"));
    assert!(log.exists(), "the task ran and has a log");
    assert_eq!(g.ok(&["delete", deleted]), format!("deleted {deleted}"));
    assert!(!log.exists(), "delete left the log");
    let runs = || -> usize {
        (std::fs::read_dir(g.ws.join(".grove/run"))
            .unwrap()
            .flatten())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(deleted.as_str())
        })
        .count()
    };
    let left = runs();
    assert!(left > 0, "its run record stays");
    let said = g.ok(&["purge", deleted]);
    assert!(
        said.contains(&format!("removed the {left} file(s) it left")),
        "{said}"
    );
    assert_eq!(runs(), 0);
}

#[test]
fn an_oversized_request_is_refused_before_it_is_sent() {
    let g = started();
    // 20 values of 60 kB: 1.2 MB, over the 1 MiB a request may carry.
    let value = "v".repeat(60_000);
    let envs: Vec<String> = (0..20).map(|i| format!("K{i}={value}")).collect();
    let mut args = vec!["spawn", "true"];
    for e in &envs {
        args.extend(["--env", e.as_str()]);
    }
    let err = expect_code(&g.run(&args), EXIT_USAGE, "an oversized spawn");
    assert!(err.contains("too_large"), "{err}");
    assert!(err.contains("1 MiB"), "{err}");
    assert!(!err.contains("unresponsive"), "{err}");
    // Same through a prompt file.
    let file = g.dir.path().join("big-prompt.txt");
    std::fs::write(&file, "x".repeat(1_100_000)).unwrap();
    let err = expect_code(
        &g.run(&["spawn", "--prompt-file", file.to_str().unwrap()]),
        EXIT_USAGE,
        "an oversized prompt file",
    );
    assert!(err.contains("longer than the 524288 bytes"), "{err}");
    // One without an end is read no further than a prompt may be.
    let err = expect_code(
        &g.run(&["spawn", "--prompt-file", "/dev/zero"]),
        EXIT_USAGE,
        "an endless prompt file",
    );
    assert!(err.contains("longer than the 524288 bytes"), "{err}");
    // The primary is fine.
    g.ok(&["spawn", "true"]);
}

#[test]
fn the_primary_answers_an_oversized_frame_to_its_sender_at_once() {
    use grove::protocol::*;
    use zeromq::{Socket, SocketRecv, SocketSend};
    let g = started();
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(g.ws.join(".grove/primary.json")).unwrap())
            .unwrap();
    let endpoint = record["rpc"].as_str().unwrap().to_string();
    let request = Request {
        v: PROTOCOL_VERSION,
        id: "oversized-1".into(),
        from: "test".into(),
        epoch_seen: 0,
        method: Method::TaskCreate(NewTask {
            prompt: "p".repeat(MAX_FRAME_BYTES + 10),
            ..Default::default()
        }),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reply: Reply = runtime.block_on(async {
        let mut dealer = zeromq::DealerSocket::new();
        dealer.connect(&endpoint).await.unwrap();
        dealer
            .send(zeromq::ZmqMessage::from(encode(&request)))
            .await
            .unwrap();
        // Well under the client's 5 s rpc timeout the old primary let expire.
        let msg = tokio::time::timeout(DEADLINE, dealer.recv())
            .await
            .expect("a reply")
            .unwrap();
        decode(msg.iter().last().unwrap()).unwrap()
    });
    assert_eq!(reply.id, "oversized-1", "addressed to the request");
    assert_eq!(reply.err.map(|e| e.code), Some(ErrorCode::TooLarge));
}

#[test]
fn a_prompt_over_the_argument_limit_is_refused_or_sent_on_stdin() {
    let g = started();
    let file = g.dir.path().join("prompt.txt");
    // 300 kB: over Linux's 128 KiB per argument, under the 1 MiB request.
    std::fs::write(&file, format!(": {}", "x".repeat(300_000))).unwrap();
    let path = file.to_str().unwrap();
    // The shell engine passes the prompt as `sh -c PROMPT`: refused at
    // spawn, saying why and what to do, and no task is created.
    let err = expect_code(
        &g.run(&["spawn", "--prompt-file", path]),
        EXIT_USAGE,
        "a huge prompt as an argument",
    );
    assert!(err.contains("128 KiB"), "{err}");
    assert!(err.contains("prompt_via = \"stdin\""), "{err}");
    assert!(g.ok(&["list", "--json"]).trim() == "[]");
    // An engine that reads its prompt on stdin gets all of it.
    let id = g.ok(&["spawn", "-e", "counter", "--prompt-file", path]);
    let t = finished(&g, &id);
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(g.ok(&["logs", &id]), "300002");
}

#[test]
fn a_huge_acp_prompt_gets_a_clear_answer_at_once() {
    use std::io::{BufRead, BufReader, Write};
    let g = started();
    let mut child = Command::new(BIN)
        .arg("acp")
        .current_dir(&g.ws)
        .env("GROVE_NO_AUTOSTART", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // A reader thread, so that every wait below has a deadline.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut send = |v: serde_json::Value| {
        writeln!(stdin, "{v}").unwrap();
        stdin.flush().unwrap();
    };
    send(
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": 1}}),
    );
    let cwd = std::fs::canonicalize(&g.ws).unwrap();
    send(
        serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "session/new", "params": {"cwd": cwd, "mcpServers": []}}),
    );
    let mut said = String::new();
    let mut prompted = false;
    loop {
        let line = rx
            .recv_timeout(DEADLINE)
            .expect("the agent answers in time");
        let msg: serde_json::Value = serde_json::from_str(&line).unwrap();
        if msg["id"] == 2 && !prompted {
            let sid = msg["result"]["sessionId"]
                .as_str()
                .expect("a session")
                .to_string();
            let text = "y".repeat(1_200_000);
            send(
                serde_json::json!({"jsonrpc": "2.0", "id": 3, "method": "session/prompt",
                "params": {"sessionId": sid, "prompt": [{"type": "text", "text": text}]}}),
            );
            prompted = true;
        }
        if let Some(t) = msg["params"]["update"]["content"]["text"].as_str() {
            said.push_str(t);
        }
        if msg["id"] == 3 {
            break;
        }
    }
    assert!(said.contains("too_large"), "{said}");
    assert!(!said.contains("unresponsive"), "{said}");
    let _ = child.kill();
    let _ = child.wait();
}

/// `GROVE_WORKSPACE=` (set but empty, as a script's unset variable leaves
/// it) means the current directory, like no variable at all.
#[test]
fn an_empty_grove_workspace_variable_means_the_current_directory() {
    let mut g = Grove::new();
    g.serve();
    g.wait_primary();
    let id = g.task_create("true");
    let out = std::process::Command::new(BIN)
        .args(["list"])
        .current_dir(&g.ws)
        .env("GROVE_WORKSPACE", "")
        .env("GROVE_NO_AUTOSTART", "1")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains(&id[..12]), "{said}");
}
