//! Newline-delimited JSON-RPC framing on stdio, with a bounded line length
//! (a client cannot make us buffer without limit).

use serde_json::Value;
use std::rc::Rc;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::sync::{Notify, mpsc};

/// Longest accepted line.
pub const MAX_LINE: usize = 16 * 1024 * 1024;

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
pub async fn write_lines(mut rx: mpsc::UnboundedReceiver<Value>, closed: Rc<Notify>) {
    let mut stdout = tokio::io::stdout();
    while let Some(msg) = rx.recv().await {
        let mut line = msg.to_string();
        line.push('\n');
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
                            let _ = serde_json::from_str::<Value>(&t);
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
