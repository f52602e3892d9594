//! Warm reuse: a delegated task of a `shared` engine takes a session on
//! the engine's running agent under the host's cap, or gets an agent of
//! its own when the host is at the cap or went away; nothing else falls
//! back (see docs/design.md, Delegation).

use super::{Agent, Reader, Writer, host, on_host, own};
use crate::paths::Workspace;
use crate::protocol::WarmUse;
use crate::runs::{AcpSpec, RunRecord, ShimSpec};
use std::time::Duration;

/// How long the host may take to answer a warm request.
const WARM_ANSWER: Duration = Duration::from_secs(10);

/// Warm reuse, for a delegated task of a shared engine: a new session on
/// the engine's running agent (or one this run starts), if the host takes
/// it under `cap`. Only a host at the cap, or one that went away before it
/// answered, sends the run to an agent of its own (the cold path); any
/// other failure here fails the task, so that a broken warm path is seen
/// rather than hidden behind cold reruns.
pub(super) async fn warm_agent(
    ws: &Workspace,
    spec: &ShimSpec,
    acp: &AcpSpec,
    record: &mut RunRecord,
    cap: u32,
    warm: &mut Option<WarmUse>,
) -> Result<(Agent, Reader, Writer), String> {
    let failed = |warm: &mut Option<WarmUse>, m: String| {
        *warm = Some(WarmUse::Failed);
        format!("warm reuse failed: {m} (a delegated task is not rerun on an agent of its own)")
    };
    let c = match host::start::connect(ws, spec, acp).await {
        Ok(c) => c,
        Err(m) => return Err(failed(warm, m)),
    };
    let mut stream = c.stream;
    match tokio::time::timeout(WARM_ANSWER, ask_warm(&mut stream, cap)).await {
        Ok(Ok(Some(true))) => {
            *warm = Some(if c.started {
                WarmUse::Started
            } else {
                WarmUse::Hit
            });
            Ok(on_host(stream, c.agent_pid, c.log))
        }
        Ok(Ok(Some(false))) => {
            *warm = Some(WarmUse::CapReached);
            own(ws, spec, record)
        }
        Ok(Ok(None)) => {
            *warm = Some(WarmUse::NoTarget);
            own(ws, spec, record)
        }
        Ok(Err(m)) => Err(failed(warm, m)),
        Err(_) => Err(failed(
            warm,
            format!(
                "the agent host did not answer within {WARM_ANSWER:?}; see {}",
                c.log.display()
            ),
        )),
    }
}

/// Asks the host for a warm session under `cap`: `Some(admitted)`, or
/// `None` when it closed the connection without answering (it is gone).
async fn ask_warm(stream: &mut tokio::net::UnixStream, cap: u32) -> Result<Option<bool>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = format!("{}\n", serde_json::json!({"grove": "warm", "cap": cap}));
    if stream.write_all(ask.as_bytes()).await.is_err() {
        return Ok(None);
    }
    // Byte by byte: nothing past the answer's newline may be taken from
    // the stream, which the conversation reads next.
    let mut answer = Vec::new();
    loop {
        let mut b = [0u8; 1];
        match stream.read(&mut b).await {
            Ok(0) if answer.is_empty() => return Ok(None),
            Ok(0) => return Err("the agent host closed the connection mid-answer".into()),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) if answer.len() < 4096 => answer.push(b[0]),
            Ok(_) => return Err("the agent host's answer is too long".into()),
            Err(e) if answer.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok(None);
            }
            Err(e) => return Err(format!("cannot read the agent host's answer: {e}")),
        }
    }
    let v: serde_json::Value = serde_json::from_slice(&answer)
        .map_err(|_| "the agent host's answer is not JSON (an older grove?)".to_string())?;
    v["admitted"]
        .as_bool()
        .map(Some)
        .ok_or_else(|| format!("unexpected answer from the agent host: {v}"))
}
