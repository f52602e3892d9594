//! `grove bench-agent` (hidden): the fast ACP agent that `grove bench acp`
//! runs as an `acp` engine, on the agent side of the official
//! `agent-client-protocol` crate. It lives in the grove binary because the
//! bench must run wherever grove does, with no Python and no test build
//! (the scripted agents of the tests do not ship).
//!
//! Its prompts are its script:
//! - `latency N MS TAP`: N message chunks, one every MS milliseconds, each
//!   `#i:t;` with t the monotonic time (ns) it was made. Right after a
//!   chunk's line is written on stdout, `i t` goes to the FIFO at TAP: the
//!   bench reads the same chunk there directly, beside grove's path.
//! - `flood BYTES SIZE`: chunks of SIZE bytes (`#i:t;` padded) as fast as
//!   the connection takes them, BYTES in all.

use crate::stats::monotonic_ns;
use agent_client_protocol::v1::ConnectionTo;
use agent_client_protocol::v1::schema::{
    AgentCapabilities, ContentBlock, ContentChunk, Implementation, InitializeRequest,
    InitializeResponse, NewSessionRequest, NewSessionResponse, PromptRequest, PromptResponse,
    SessionId, SessionNotification, SessionUpdate, StopReason, TextContent,
};
use agent_client_protocol::{Agent, Client, Lines};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Where chunk lines are reported as they leave (the latency script's FIFO).
type Tap = Arc<Mutex<Option<std::fs::File>>>;

/// Runs the agent on stdin/stdout until stdin closes; the exit code.
pub async fn run() -> i32 {
    let tap: Tap = Arc::default();
    let turn_tap = tap.clone();
    let result = Agent
        .v1()
        .name("grove-bench-agent")
        .on_receive_request(
            async move |init: InitializeRequest, responder, _cx| {
                responder.respond(
                    InitializeResponse::new(init.protocol_version)
                        .agent_capabilities(AgentCapabilities::new())
                        .agent_info(Implementation::new(
                            "grove-bench-agent",
                            env!("CARGO_PKG_VERSION"),
                        )),
                )
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |_: NewSessionRequest, responder, _cx| {
                responder.respond(NewSessionResponse::new("bench"))
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |req: PromptRequest, responder, cx| {
                // Outside the dispatch loop, so that the loop keeps serving
                // while the turn streams.
                let (tap, turn_cx) = (turn_tap.clone(), cx.clone());
                cx.spawn(async move {
                    let stop = match script(&turn_cx, &req, &tap).await {
                        Ok(()) => StopReason::EndTurn,
                        Err(e) => {
                            errln!("grove bench-agent: {e}");
                            StopReason::Refusal
                        }
                    };
                    responder.respond(PromptResponse::new(stop))
                })
            },
            agent_client_protocol::on_receive_request!(),
        )
        .connect_to(stdio(tap))
        .await;
    match result {
        Ok(()) => 0,
        Err(e) => {
            errln!("grove bench-agent: {e}");
            1
        }
    }
}

/// stdin and stdout as lines; every line written is then reported to the
/// tap, if one is open, by the chunk markers it carries.
fn stdio(
    tap: Tap,
) -> Lines<
    impl futures::Sink<String, Error = std::io::Error> + Send + 'static,
    impl futures::Stream<Item = std::io::Result<String>> + Send + 'static,
> {
    let incoming = futures::stream::unfold(
        BufReader::new(tokio::io::stdin()).lines(),
        |mut lines| async move {
            match lines.next_line().await {
                Ok(Some(line)) => Some((Ok(line), lines)),
                Ok(None) => None,
                Err(e) => Some((Err(e), lines)),
            }
        },
    );
    // A blocking write: tokio's stdout hands every line to its blocking
    // pool, which made this agent slower than the shim that reads it. Only
    // the stream is held up while the pipe is full; nothing else waits.
    let outgoing = futures::sink::unfold(tap, |tap, mut line: String| async move {
        line.push('\n');
        let mut out = std::io::stdout().lock();
        out.write_all(line.as_bytes())?;
        out.flush()?;
        drop(out);
        report(&tap, &line)?;
        Ok::<_, std::io::Error>(tap)
    });
    Lines::new(outgoing, incoming)
}

/// Writes `i t` to the tap for each chunk marker in `line`.
fn report(tap: &Tap, line: &str) -> std::io::Result<()> {
    let mut tap = tap.lock().unwrap_or_else(|p| p.into_inner());
    let Some(file) = tap.as_mut() else {
        return Ok(());
    };
    let mut out = String::new();
    for (i, t) in markers(line) {
        out.push_str(&format!("{i} {t}\n"));
    }
    if !out.is_empty() {
        file.write_all(out.as_bytes())?;
    }
    Ok(())
}

/// The `#i:t;` markers of a text, in order.
pub fn markers(text: &str) -> impl Iterator<Item = (u64, u64)> + '_ {
    text.split('#').skip(1).filter_map(|part| {
        let (i, rest) = part.split_once(':')?;
        let (t, _) = rest.split_once(';')?;
        Some((i.parse().ok()?, t.parse().ok()?))
    })
}

async fn script(cx: &ConnectionTo<Client>, req: &PromptRequest, tap: &Tap) -> Result<(), String> {
    let text: String = req
        .prompt
        .iter()
        .filter_map(|b| match b {
            ContentBlock::Text(t) => Some(t.text.as_str()),
            _ => None,
        })
        .collect();
    let words: Vec<&str> = text.split_whitespace().collect();
    let number = |i: usize| -> Result<u64, String> {
        words
            .get(i)
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| format!("bad script {text:?}"))
    };
    let sid = &req.session_id;
    match words.first() {
        Some(&"latency") => {
            let path = words.get(3).ok_or_else(|| format!("no tap in {text:?}"))?;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| format!("cannot open the tap {path}: {e}"))?;
            *tap.lock().unwrap_or_else(|p| p.into_inner()) = Some(file);
            let every = Duration::from_millis(number(2)?);
            for i in 0..number(1)? {
                say(cx, sid, format!("#{i}:{};", monotonic_ns()))?;
                tokio::time::sleep(every).await;
            }
            Ok(())
        }
        Some(&"flood") => {
            let (bytes, size) = (number(1)?, number(2)?.max(32) as usize);
            let chunks = bytes.div_ceil(size as u64);
            for i in 0..chunks {
                let mut chunk = format!("#{i}:{};", monotonic_ns());
                chunk.extend(std::iter::repeat_n('x', size.saturating_sub(chunk.len())));
                say(cx, sid, chunk)?;
                // Lets the writer drain: the crate's queue is unbounded.
                if i % 64 == 63 {
                    tokio::task::yield_now().await;
                }
            }
            Ok(())
        }
        _ if goal_target(&words).is_some() => goal_iteration(cx, sid, &words).await,
        _ => Err(format!("unknown bench script {text:?}")),
    }
}

/// `goal N ...` anywhere in the prompt (a goal's objective, repeated in
/// each next turn): the iterations until success.
fn goal_target(words: &[&str]) -> Option<u32> {
    words
        .windows(2)
        .find(|w| w[0] == "goal")
        .and_then(|w| w[1].parse().ok())
}

/// One iteration of the demo's goal: its number is the prompt's
/// `iteration K` (1 in the first prompt); a few words over 0.7 s, then a
/// conclusion block, progress rising to success at iteration N.
async fn goal_iteration(
    cx: &ConnectionTo<Client>,
    sid: &SessionId,
    words: &[&str],
) -> Result<(), String> {
    let target = goal_target(words).unwrap_or(1).max(1);
    let k: u32 = (words.windows(2))
        .find_map(|w| (w[0] == "iteration").then(|| w[1].parse().ok()).flatten())
        .unwrap_or(1);
    for part in ["tidying ", "step ", &format!("{k} ")] {
        say(cx, sid, part.to_string())?;
        tokio::time::sleep(Duration::from_millis(230)).await;
    }
    let progress = (100 * k / target).min(100);
    let status = if k >= target { "success" } else { "partial" };
    say(
        cx,
        sid,
        format!(
            "\n<grove:conclusion>{{\"status\": \"{status}\", \"summary\": \"step {k} of {target} done\", \"progress\": {progress}, \"next_step\": \"step {}\"}}</grove:conclusion>",
            k + 1
        ),
    )
}

fn say(cx: &ConnectionTo<Client>, sid: &SessionId, text: String) -> Result<(), String> {
    let chunk = ContentChunk::new(ContentBlock::Text(TextContent::new(text)));
    cx.send_notification(SessionNotification::new(
        sid.clone(),
        SessionUpdate::AgentMessageChunk(chunk),
    ))
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn markers_are_read_from_merged_text() {
        let m: Vec<_> = super::markers("#1:100;#2:200;xxxx#3:300;").collect();
        assert_eq!(m, [(1, 100), (2, 200), (3, 300)]);
    }
}
