//! A `grove acp` process driven line by line from a test, every message it
//! sends checked against the official Rust schema types (the serde types
//! Zed uses).

use crate::common::*;
use agent_client_protocol_schema::v1 as schema;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;

pub struct Agent {
    child: Child,
    /// `None` once closed by `finish`.
    stdin: Option<ChildStdin>,
    /// Lines from the agent's stdout. The reader thread hands over one line
    /// at a time (a rendezvous channel), so a test that stops receiving
    /// really stops reading the agent's stdout.
    lines: mpsc::Receiver<String>,
    next_id: i64,
    /// Every `session/update` received so far, in order.
    pub updates: Vec<schema::SessionNotification>,
}

impl Agent {
    pub fn start(g: &Grove, name: &str) -> Agent {
        let log = std::fs::File::create(g.dir.path().join(format!("{name}.log"))).unwrap();
        let mut child = Command::new(BIN)
            .arg("acp")
            .current_dir(&g.ws)
            .env("GROVE_NO_AUTOSTART", "1")
            .env("GROVE_LOG", "grove=info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::sync_channel(0);
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Agent {
            child,
            stdin: Some(stdin),
            lines,
            next_id: 0,
            updates: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn send(&mut self, msg: Value) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{msg}").unwrap();
        stdin.flush().unwrap();
    }

    /// Sends a request without waiting; returns its id.
    pub fn send_request(&mut self, method: &str, params: Value) -> i64 {
        self.next_id += 1;
        let id = self.next_id;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    /// The next message, or a panic after the harness deadline.
    pub fn next(&mut self) -> Value {
        let line = self
            .lines
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|e| panic!("no message from grove acp within {DEADLINE:?}: {e}"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Reads messages until the response to `id`, recording the updates
    /// that come first.
    pub fn response(&mut self, id: i64) -> Value {
        loop {
            let msg = self.next();
            if msg.get("method").is_some() {
                self.record(msg);
            } else if msg["id"] == json!(id) {
                return msg;
            } else {
                panic!("a response to a request never sent: {msg}");
            }
        }
    }

    /// A request's result, deserialized with its official type.
    pub fn call<T: serde::de::DeserializeOwned>(&mut self, method: &str, params: Value) -> T {
        let id = self.send_request(method, params);
        let msg = self.response(id);
        let result = msg
            .get("result")
            .unwrap_or_else(|| panic!("{method} failed: {msg}"));
        serde_json::from_value(result.clone())
            .unwrap_or_else(|e| panic!("{method}: not the official response type ({e}): {msg}"))
    }

    /// A request's error object, deserialized with the official type.
    pub fn call_err(&mut self, method: &str, params: Value) -> schema::Error {
        let id = self.send_request(method, params);
        let msg = self.response(id);
        let error = msg
            .get("error")
            .unwrap_or_else(|| panic!("{method} should have failed: {msg}"));
        serde_json::from_value(error.clone()).unwrap()
    }

    fn record(&mut self, msg: Value) {
        assert_eq!(msg["method"], "session/update", "{msg}");
        assert_eq!(msg["jsonrpc"], "2.0", "{msg}");
        let n: schema::SessionNotification = serde_json::from_value(msg["params"].clone())
            .unwrap_or_else(|e| panic!("not an official SessionNotification ({e}): {msg}"));
        self.updates.push(n);
    }

    /// Reads until an update (recorded or new) satisfies `pred`.
    pub fn wait_update(
        &mut self,
        what: &str,
        pred: impl Fn(&schema::SessionNotification) -> bool,
    ) -> schema::SessionNotification {
        let mut seen = 0;
        loop {
            if let Some(n) = self.updates[seen..].iter().find(|n| pred(n)) {
                return n.clone();
            }
            seen = self.updates.len();
            let msg = self.next();
            assert!(msg.get("method").is_some(), "waiting for {what}, got {msg}");
            self.record(msg);
        }
    }

    pub fn initialize(&mut self) -> schema::InitializeResponse {
        self.call("initialize", json!({"protocolVersion": 1}))
    }

    pub fn new_session(&mut self, g: &Grove) -> schema::NewSessionResponse {
        let cwd = std::fs::canonicalize(&g.ws).unwrap();
        self.call("session/new", json!({"cwd": cwd, "mcpServers": []}))
    }

    /// Sends a prompt and waits for the end of the turn.
    pub fn prompt(&mut self, session: &schema::SessionId, text: &str) -> schema::PromptResponse {
        self.call(
            "session/prompt",
            json!({"sessionId": session, "prompt": [{"type": "text", "text": text}]}),
        )
    }

    /// The updates recorded for one session.
    pub fn of(&self, session: &schema::SessionId) -> Vec<&schema::SessionUpdate> {
        self.updates
            .iter()
            .filter(|n| &n.session_id == session)
            .map(|n| &n.update)
            .collect()
    }

    /// Closes stdin (the agent leaves the grove) and waits for its exit,
    /// draining stdout meanwhile so a pending write cannot hold it up.
    pub fn finish(mut self) -> std::process::ExitStatus {
        self.stdin = None;
        while self.lines.recv_timeout(DEADLINE).is_ok() {}
        self.child.wait().unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text of an agent message chunk, if `u` is one.
pub fn chunk_text(u: &schema::SessionUpdate) -> Option<&str> {
    match u {
        schema::SessionUpdate::AgentMessageChunk(c) => match &c.content {
            schema::ContentBlock::Text(t) => Some(&t.text),
            _ => None,
        },
        _ => None,
    }
}

/// The output a command's card shows (its code block, fences removed), if
/// `u` is an update that carries it.
pub fn card_output(u: &schema::SessionUpdate) -> Option<String> {
    let schema::SessionUpdate::ToolCallUpdate(t) = u else {
        return None;
    };
    t.fields.content.as_ref()?.iter().find_map(|c| match c {
        schema::ToolCallContent::Content(c) => match &c.content {
            schema::ContentBlock::Text(t) if t.text.starts_with("```") => {
                let body = t.text.trim_start_matches('`').strip_prefix('\n')?;
                Some(
                    body.trim_end_matches('`')
                        .trim_end_matches('\n')
                        .to_string(),
                )
            }
            _ => None,
        },
        _ => None,
    })
}

/// The status a tool call update sets, if `u` is one for `id`.
pub fn card_status(
    u: &schema::SessionUpdate,
    id: &schema::ToolCallId,
) -> Option<schema::ToolCallStatus> {
    match u {
        schema::SessionUpdate::ToolCall(t) if &t.tool_call_id == id => Some(t.status),
        schema::SessionUpdate::ToolCallUpdate(t) if &t.tool_call_id == id => t.fields.status,
        _ => None,
    }
}
