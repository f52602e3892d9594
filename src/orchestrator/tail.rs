//! Live output: what a run's log gained since the last look, cut into
//! `task.output` chunks. Blocking file reads: called from `observe::look`,
//! off the event loop.

use crate::paths::Workspace;
use crate::runs::RunFiles;
use crate::runs::log::LogReader;

/// Largest `task.output` chunk. Small, because the bus bounds each
/// subscriber's queue in messages, not bytes: 1,000 chunks of 16 KiB is
/// what a stopped subscriber can cost the primary.
const MAX_CHUNK: usize = 16 * 1024;
/// Most output published per run per look: a task that writes faster is
/// skipped ahead with a note (its log file stays complete; `grove logs`
/// reads the file). Live output is for watching, not for archiving.
const MAX_PER_LOOK: u64 = 4 * MAX_CHUNK as u64;
/// A log offset not known yet (an adopted run): the first look starts at
/// the log's end, publishing nothing of what came before.
pub const AT_END: u64 = u64::MAX;

/// What one look at a log found.
#[derive(Debug, Default)]
pub struct Tail {
    pub chunks: Vec<String>,
    /// Where the next look starts.
    pub offset: u64,
}

/// The output of `task`'s log from `offset` on, at most `MAX_PER_LOOK` of
/// it (the rest is skipped with a note).
pub fn tail_log(ws: &Workspace, task: &str, mut offset: u64) -> Tail {
    let path = RunFiles::log(ws, task);
    let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if offset == AT_END {
        offset = len;
    }
    let mut tail = Tail {
        chunks: Vec::new(),
        offset,
    };
    if len <= offset {
        return tail;
    }
    if len - offset > MAX_PER_LOOK {
        let skipped = len - MAX_PER_LOOK - offset;
        tail.chunks
            .push(format!("[grove: {skipped} bytes skipped; see the log]\n"));
        tail.offset = len - MAX_PER_LOOK;
    }
    let Ok(mut log) = LogReader::open(&path, tail.offset, MAX_CHUNK) else {
        return tail;
    };
    while log.offset() < len {
        let (chunk, n) = match log.peek() {
            Ok(bytes) if !bytes.is_empty() => {
                (String::from_utf8_lossy(bytes).into_owned(), bytes.len())
            }
            _ => break,
        };
        log.consume(n);
        tail.chunks.push(chunk);
    }
    tail.offset = log.offset();
    tail
}

/// Where a new run's live output starts: the end of the log as it is
/// (a retry appends to the earlier runs' output).
pub fn log_end(ws: &Workspace, task: &str) -> u64 {
    std::fs::metadata(RunFiles::log(ws, task))
        .map(|m| m.len())
        .unwrap_or(0)
}
