//! Newline-delimited JSON-RPC framing on stdio, bounded both ways: a
//! client cannot make us buffer a line without limit, and a client that
//! stops reading our stdout cannot make us queue messages without limit.

use super::error::AcpError;
use agent_client_protocol_schema::v1 as schema;
use schema::{AgentNotification, AgentResponse, JsonRpcMessage, RequestId, SessionId};
use std::rc::Rc;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::sync::{Notify, mpsc};

/// Longest accepted line.
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// Messages waiting for stdout. When the queue is full, senders wait for
/// room rather than drop anything: every producer of many messages (a
/// turn tailing its task's log, the tracker of spawned cards) derives what
/// it sends from durable state (the log file and its offset, the task
/// row), so while it waits the output piles up in the log on disk, not in
/// our memory, and intermediate progress states fold into the latest.
/// Dropping chunks instead would lose output the user never sees.
/// Memory held here is at most this many lines, the longest being one log
/// read (`prompt::LOG_READ`) JSON-escaped.
pub const OUT_QUEUE: usize = 64;

/// Where outgoing messages go: the stdout writer task. Each message is
/// serialized as it is sent, so the queue holds lines (their memory is what
/// they weigh); every send waits for room; after stdout closed, sends are
/// no-ops.
#[derive(Clone)]
pub struct Out(mpsc::Sender<String>);

impl Out {
    pub fn channel() -> (Out, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(OUT_QUEUE);
        (Out(tx), rx)
    }

    async fn send(&self, msg: impl serde::Serialize) {
        let mut line =
            serde_json::to_string(&JsonRpcMessage::wrap(msg)).expect("ACP messages serialize");
        line.push('\n');
        // Err: the writer is gone (stdout closed); the agent is stopping.
        let _ = self.0.send(line).await;
    }

    pub async fn respond(&self, id: RequestId, result: AgentResponse) {
        let response: schema::Response<AgentResponse> = schema::Response::Result { id, result };
        self.send(response).await
    }

    pub async fn fail(&self, id: RequestId, error: &AcpError) {
        let error = schema::Error::from(error);
        let response: schema::Response<AgentResponse> = schema::Response::Error { id, error };
        self.send(response).await
    }

    /// A `session/update` notification.
    pub async fn update(&self, session: &SessionId, update: schema::SessionUpdate) {
        let n = schema::SessionNotification::new(session.clone(), update);
        self.send(schema::Notification {
            method: schema::CLIENT_METHOD_NAMES.session_update.into(),
            params: Some(AgentNotification::SessionNotification(n)),
        })
        .await
    }

    /// A request to the client (its response comes back through the read
    /// loop: `Agent::answered`).
    pub async fn request(&self, id: RequestId, request: schema::AgentRequest) {
        let method = request.method();
        self.send(schema::Request {
            id,
            method: method.into(),
            params: Some(request),
        })
        .await
    }

    /// Agent text in the chat.
    pub async fn say(&self, session: &SessionId, text: impl Into<String>) {
        let chunk = schema::ContentChunk::new(text.into().into());
        self.update(session, schema::SessionUpdate::AgentMessageChunk(chunk))
            .await
    }
}

pub enum Line {
    Text(String),
    TooLong,
    Eof,
}

pub struct LineReader<R> {
    inner: BufReader<R>,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(r: R) -> Self {
        LineReader {
            inner: BufReader::new(r),
        }
    }

    /// The next line (without its newline). An over-long line is skipped up
    /// to its newline and reported as `TooLong`.
    pub async fn next(&mut self) -> Line {
        let mut buf = Vec::new();
        let mut too_long = false;
        loop {
            let chunk = match self.inner.fill_buf().await {
                Ok(c) => c,
                Err(_) => return Line::Eof,
            };
            if chunk.is_empty() {
                return if buf.is_empty() && !too_long {
                    Line::Eof
                } else if too_long {
                    Line::TooLong
                } else {
                    Line::Text(String::from_utf8_lossy(&buf).into_owned())
                };
            }
            let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            if !too_long {
                if buf.len() + take > MAX_LINE {
                    too_long = true;
                    buf = Vec::new();
                } else {
                    buf.extend_from_slice(&chunk[..take]);
                }
            }
            self.inner.consume(take);
            if done {
                if too_long {
                    return Line::TooLong;
                }
                while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buf.pop();
                }
                return Line::Text(String::from_utf8_lossy(&buf).into_owned());
            }
        }
    }
}

/// Writes each message as one line on stdout; notifies `closed` on EPIPE.
/// Ends when every `Out` is gone and the queue is drained.
pub async fn write_lines(mut rx: mpsc::Receiver<String>, closed: Rc<Notify>) {
    let mut stdout = tokio::io::stdout();
    while let Some(line) = rx.recv().await {
        if stdout.write_all(line.as_bytes()).await.is_err() || stdout.flush().await.is_err() {
            tracing::info!("acp: stdout closed");
            closed.notify_one();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any bytes split into lines: no panic, every line within the
        /// limit, and the JSON parse of each answers (Ok or Err).
        #[test]
        fn any_input_is_framed_without_panic(input in proptest::collection::vec(proptest::num::u8::ANY, 0..4096)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let mut r = LineReader::new(&input[..]);
                let mut lines = 0;
                loop {
                    match r.next().await {
                        Line::Eof => break,
                        Line::TooLong => {}
                        Line::Text(t) => {
                            assert!(t.len() <= MAX_LINE);
                            let _ = serde_json::from_str::<serde_json::Value>(&t);
                        }
                    }
                    lines += 1;
                    assert!(lines <= input.len() + 1, "no progress");
                }
            });
        }
    }

    #[tokio::test]
    async fn lines_and_limits() {
        let mut input = b"{\"a\":1}\r\n\n".to_vec();
        input.extend(vec![b'x'; MAX_LINE + 10]);
        input.extend(b"\nlast");
        let mut r = LineReader::new(&input[..]);
        assert!(matches!(r.next().await, Line::Text(t) if t == "{\"a\":1}"));
        assert!(matches!(r.next().await, Line::Text(t) if t.is_empty()));
        assert!(matches!(r.next().await, Line::TooLong));
        assert!(matches!(r.next().await, Line::Text(t) if t == "last"));
        assert!(matches!(r.next().await, Line::Eof));
    }
}
