//! The line transport between the shim and its agent, handed to the ACP
//! connection: the agent's stdout is read one line at a time and only while
//! the outbox has room (the connection's own queues are unbounded, so the
//! bound is applied here, before a line is read), every line must be JSON
//! (anything else on stdout ends the conversation with the line quoted),
//! and a line has a length bound.

use super::outbox::Outbox;
use futures::{Sink, Stream};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// Longest line accepted from an agent (a tool call carrying a large diff
/// is one line).
pub const MAX_LINE: usize = 32 * 1024 * 1024;

/// Why the transport ended the conversation, when it did.
pub type Fatal = Arc<Mutex<Option<String>>>;

struct Reader<R> {
    out: BufReader<R>,
    outbox: Arc<Outbox>,
    fatal: Fatal,
    closed: Arc<tokio::sync::Notify>,
}

/// The agent's lines ended (end of file, a line that is not ACP, an error),
/// or the conversation dropped them: whoever waits on `closed` learns it,
/// also while no turn runs (a kept session between turns reads nothing).
impl<R> Drop for Reader<R> {
    fn drop(&mut self) {
        self.closed.notify_one();
    }
}

/// The agent's lines: its stdout, or the socket of the shared agent's
/// host (`super::super::host`), which relays them.
pub fn incoming<R: AsyncRead + Unpin + Send + 'static>(
    stdout: R,
    outbox: Arc<Outbox>,
    fatal: Fatal,
    closed: Arc<tokio::sync::Notify>,
) -> impl Stream<Item = std::io::Result<String>> + Send + 'static {
    let reader = Reader {
        out: BufReader::new(stdout),
        outbox,
        fatal,
        closed,
    };
    futures::stream::unfold(reader, |mut r| async move {
        loop {
            r.outbox.wait_room().await;
            match read_line(&mut r.out).await {
                Ok(None) => return None,
                Ok(Some(line)) if line.trim().is_empty() => continue,
                Ok(Some(line)) => {
                    if serde_json::from_str::<serde::de::IgnoredAny>(&line).is_err() {
                        let shown: String = line.chars().take(200).collect();
                        set(
                            &r.fatal,
                            format!("the agent wrote what is not ACP on its stdout: {shown:?}"),
                        );
                        return None;
                    }
                    return Some((Ok(line), r));
                }
                Err(e) => {
                    set(&r.fatal, e.to_string());
                    return None;
                }
            }
        }
    })
}

fn set(fatal: &Fatal, message: String) {
    let mut f = fatal.lock().unwrap_or_else(|p| p.into_inner());
    f.get_or_insert(message);
}

/// One line without its newline; `None` at end of file.
pub async fn read_line<R: AsyncRead + Unpin>(
    out: &mut BufReader<R>,
) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    loop {
        let chunk = out.fill_buf().await?;
        if chunk.is_empty() {
            return Ok((!buf.is_empty()).then(|| String::from_utf8_lossy(&buf).into_owned()));
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        buf.extend_from_slice(&chunk[..take]);
        out.consume(take);
        if buf.len() > MAX_LINE {
            return Err(std::io::Error::other(format!(
                "the agent wrote a line longer than {MAX_LINE} bytes on its stdout"
            )));
        }
        if done {
            buf.pop();
            return String::from_utf8(buf).map(Some).map_err(|_| {
                std::io::Error::other("the agent wrote a line that is not UTF-8 on its stdout")
            });
        }
    }
}

pub fn outgoing<W: AsyncWrite + Unpin + Send + 'static>(
    stdin: W,
) -> impl Sink<String, Error = std::io::Error> + Send + 'static {
    futures::sink::unfold(stdin, |mut stdin, line: String| async move {
        stdin.write_all(line.as_bytes()).await?;
        stdin.write_all(b"\n").await?;
        stdin.flush().await?;
        Ok::<_, std::io::Error>(stdin)
    })
}
