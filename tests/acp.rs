//! `grove acp` with real ACP clients:
//! - the official Python client (PyPI `agent-client-protocol`, pydantic
//!   models validate every message): a full turn with streamed chunks and
//!   tool-call updates, cancel mid-prompt, load of a session created by
//!   another `grove acp` process, two agents with a `kill -9` of the primary
//!   one, garbage input (tests/acp/acp_client_test.py);
//! - the official Rust schema crate (`agent-client-protocol-schema`, the
//!   serde types Zed uses): every message of a turn deserializes.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

#[test]
fn official_python_client_drives_grove_acp() {
    let python = test_env::python();
    let g = Grove::new();
    let bin_dir = std::path::Path::new(BIN)
        .parent()
        .unwrap()
        .display()
        .to_string();
    let out = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/acp/acp_client_test.py"
        ))
        .arg(BIN)
        .arg(&g.ws)
        .env(
            "PATH",
            format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default()),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

#[test]
fn every_message_fits_the_official_rust_types() {
    use agent_client_protocol_schema::v1 as s;
    let g = Grove::new();
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
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let send = |stdin: &mut std::process::ChildStdin, v: serde_json::Value| {
        writeln!(stdin, "{v}").unwrap();
        stdin.flush().unwrap();
    };
    let mut next =
        || -> serde_json::Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
    send(
        &mut stdin,
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": 1}}),
    );
    let init: s::InitializeResponse = serde_json::from_value(next()["result"].clone()).unwrap();
    assert!(init.agent_capabilities.load_session);
    let cwd = std::fs::canonicalize(&g.ws).unwrap();
    send(
        &mut stdin,
        serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "session/new", "params": {"cwd": cwd, "mcpServers": []}}),
    );
    let new: s::NewSessionResponse = serde_json::from_value(next()["result"].clone()).unwrap();
    let sid = new.session_id.to_string();
    send(
        &mut stdin,
        serde_json::json!({"jsonrpc": "2.0", "id": 3, "method": "session/prompt",
        "params": {"sessionId": sid, "prompt": [{"type": "text", "text": "echo typed; exit 3"}]}}),
    );
    let mut kinds = Vec::new();
    loop {
        let msg = next();
        if msg.get("id") == Some(&serde_json::json!(3)) {
            let resp: s::PromptResponse = serde_json::from_value(msg["result"].clone()).unwrap();
            assert_eq!(resp.stop_reason, s::StopReason::EndTurn);
            break;
        }
        assert_eq!(msg["method"], "session/update", "{msg}");
        let n: s::SessionNotification = serde_json::from_value(msg["params"].clone())
            .unwrap_or_else(|e| panic!("not an official SessionNotification: {e}: {msg}"));
        kinds.push(
            msg["params"]["update"]["sessionUpdate"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        drop(n);
    }
    for k in [
        "available_commands_update",
        "tool_call",
        "tool_call_update",
        "agent_message_chunk",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k} in {kinds:?}");
    }
    drop(stdin); // EOF: the agent leaves the grove and exits
    let status = child.wait().unwrap();
    assert!(status.success());
}
