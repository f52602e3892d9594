//! The editor path of the latency phase: this bench is the ACP client of a
//! `grove acp` subprocess (stdio, ACP v1 JSON-RPC lines), as an editor is.
//! Its session's mode is the bench agent's engine, so its prompt is a turn
//! of a kept agent session that a shim holds, and the agent's chunks come
//! back as `session/update` notifications relayed from the event stream:
//! agent → shim → store → bus → `grove acp` → editor, the whole way a
//! chunk travels to a window. The same chunks are read directly on a FIFO
//! in the same turn, so the difference is what grove adds.
//!
//! Raw JSON lines rather than the crate's client side: the bench needs the
//! arrival time of each line as it is read, before any dispatch.

use super::{ENGINE, Plan, SLACK, agent, ended, tap};
use crate::bench::Row;
use crate::bench::stats::{monotonic_ns, quantile};
use crate::local_cluster::LocalCluster;
use crate::protocol::{ControlKind, Method, TaskControl};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// How long `grove acp` may take to answer a request other than the prompt.
const ANSWER: Duration = Duration::from_secs(30);

/// This bench as the editor of one `grove acp` process.
struct Editor {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    next_id: u64,
    /// Arrival time and chunk markers of each agent message chunk seen.
    chunks: Vec<(u64, Vec<(u64, u64)>)>,
}

impl Editor {
    fn start(exe: &std::path::Path, c: &LocalCluster) -> Result<Editor, String> {
        let log = std::fs::File::create(c.dir.path().join("editor-acp.log"))
            .map_err(|e| format!("cannot create grove acp's log: {e}"))?;
        let mut child = tokio::process::Command::new(exe)
            .arg("--workspace")
            .arg(&c.ws.root)
            .arg("acp")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start grove acp: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("grove acp has no stdio".into());
        };
        Ok(Editor {
            child,
            stdin: Some(stdin),
            lines: BufReader::new(stdout).lines(),
            next_id: 1,
            chunks: Vec::new(),
        })
    }

    /// Sends a request and reads until its answer, noting the chunks of
    /// the notifications that arrive meanwhile; the answer's `result`.
    async fn request(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let line = format!(
            "{}\n",
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
        );
        let stdin = self.stdin.as_mut().ok_or("grove acp's stdin is closed")?;
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("cannot write to grove acp: {e}"))?;
        loop {
            let line = self
                .lines
                .next_line()
                .await
                .map_err(|e| format!("cannot read grove acp: {e}"))?
                .ok_or_else(|| format!("grove acp closed its stdout during {method}"))?;
            let at = monotonic_ns();
            let msg: Value = serde_json::from_str(&line)
                .map_err(|e| format!("grove acp wrote a line that is not JSON ({e}): {line}"))?;
            if msg.get("method").is_none() && msg["id"] == id {
                if let Some(error) = msg.get("error") {
                    return Err(format!("grove acp refused {method}: {error}"));
                }
                return Ok(msg["result"].clone());
            }
            if msg["method"] == "session/update" {
                let update = &msg["params"]["update"];
                if update["sessionUpdate"] == "agent_message_chunk" {
                    let text = update["content"]["text"].as_str().unwrap_or("");
                    self.chunks.push((at, agent::markers(text).collect()));
                }
            }
        }
    }

    async fn answered(&mut self, method: &str, params: Value) -> Result<Value, String> {
        tokio::time::timeout(ANSWER, self.request(method, params))
            .await
            .map_err(|_| format!("grove acp did not answer {method} within {ANSWER:?}"))?
    }

    /// Closes stdin (an editor's window closing) and waits for the process.
    async fn stop(mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// The latency phase through `grove acp`: rows of agent → editor and of
/// what that adds to the same chunk read directly.
pub async fn latency(
    c: &LocalCluster,
    client: &mut crate::client::Client,
    plan: &Plan,
) -> Result<Vec<Row>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this grove: {e}"))?;
    let tap = tap::Tap::open(&c.dir.path().join("editor-chunks.fifo"))?;
    let n = plan.chunks.max(1) as u64;
    let mut editor = Editor::start(&exe, c)?;
    let root = c.ws.root.display().to_string();
    editor
        .answered(
            "initialize",
            json!({"protocolVersion": 1, "clientCapabilities": {}}),
        )
        .await?;
    let session = editor
        .answered("session/new", json!({"cwd": root, "mcpServers": []}))
        .await?["sessionId"]
        .as_str()
        .ok_or("grove acp's session/new named no session")?
        .to_string();
    editor
        .answered(
            "session/set_mode",
            json!({"sessionId": session, "modeId": ENGINE}),
        )
        .await?;
    let prompt = format!("latency {n} {} {}", plan.every_ms, tap.path.display());
    let within = Duration::from_millis(plan.every_ms * n) + SLACK;
    let turn = editor.request(
        "session/prompt",
        json!({"sessionId": session, "prompt": [{"type": "text", "text": prompt}]}),
    );
    let result = tokio::time::timeout(within, turn)
        .await
        .map_err(|_| format!("the editor's turn did not end within {within:?}"))??;
    if result["stopReason"] != "end_turn" {
        return Err(format!("the editor's turn ended {result}"));
    }
    let direct = tap.collect(n, SLACK)?;
    let chunks = std::mem::take(&mut editor.chunks);
    editor.stop().await;
    close(c, client, &session).await?;
    let got: usize = chunks.iter().map(|(_, m)| m.len()).sum();
    if (got as u64) < n {
        return Err(format!("the editor received {got} of {n} chunks"));
    }
    Ok(rows(plan, &chunks, &direct))
}

/// Ends the kept agent session that the editor's prompt opened, so that no
/// shim or agent outlives the bench.
async fn close(
    c: &LocalCluster,
    client: &mut crate::client::Client,
    session: &str,
) -> Result<(), String> {
    let reader = crate::store::Reader::open(&c.ws.db_path()).map_err(|e| e.to_string())?;
    let filter = crate::store::TaskFilter {
        session_id: Some(session.to_string()),
        ..Default::default()
    };
    let task = reader
        .tasks(&filter)
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|t| t.spec.keep_session)
        .ok_or_else(|| format!("no agent task holds the editor's session {session}"))?;
    let control = TaskControl {
        id: task.id.clone(),
        kind: ControlKind::Close,
        option: None,
        text: None,
        ask: None,
    };
    client
        .call(Method::TaskControl(control))
        .await
        .map_err(|e| format!("cannot close the editor's agent task: {e}"))?;
    ended(c, &task.id).await
}

fn rows(
    plan: &Plan,
    chunks: &[(u64, Vec<(u64, u64)>)],
    direct: &std::collections::HashMap<u64, u64>,
) -> Vec<Row> {
    let (mut through, mut base, mut added) = (vec![], vec![], vec![]);
    for (at, markers) in chunks {
        for (i, made) in markers {
            let Some(read) = direct.get(i) else { continue };
            let editor = at.saturating_sub(*made) as f64 / 1e6;
            let pipe = read.saturating_sub(*made) as f64 / 1e6;
            through.push(editor);
            base.push(pipe);
            added.push(editor - pipe);
        }
    }
    let base_p50 = quantile(&base, 0.5);
    let row = |metric: String, s: &[f64], goal: Option<&str>| Row {
        scenario: "acp".into(),
        metric,
        unit: "ms".into(),
        p50: quantile(s, 0.5),
        p99: quantile(s, 0.99),
        samples: s.len(),
        baseline: Some("same chunk read directly (pipe)".into()),
        baseline_p50: Some(base_p50),
        goal: goal.map(str::to_string),
    };
    vec![
        row(
            format!(
                "chunk agent → editor (grove acp), one per {} ms",
                plan.every_ms
            ),
            &through,
            None,
        ),
        row(
            "added to the editor (grove acp − direct)".into(),
            &added,
            Some("p50 ≤ 2 ms added"),
        ),
    ]
}
