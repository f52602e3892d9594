//! Reading a task's log from an offset, one chunk at a time: the live
//! output the primary publishes, `grove logs`, an ACP turn's messages. The
//! shim writes the file; every reader keeps its own offset.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

pub struct LogReader {
    file: File,
    offset: u64,
    buf: Vec<u8>,
}

impl LogReader {
    /// Opens `path` to read from `offset` in chunks of at most `chunk` bytes.
    pub fn open(path: &Path, offset: u64, chunk: usize) -> io::Result<LogReader> {
        Ok(LogReader {
            file: File::open(path)?,
            offset,
            buf: vec![0; chunk.max(1)],
        })
    }

    /// Where the next read starts.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The bytes after the offset, at most one chunk (empty at the end of
    /// the file). They stay unread until `consume`: a reader may take only
    /// part of them (e.g. not a character cut in two).
    pub fn peek(&mut self) -> io::Result<&[u8]> {
        self.file.seek(SeekFrom::Start(self.offset))?;
        let n = self.file.read(&mut self.buf)?;
        Ok(&self.buf[..n])
    }

    /// Moves the offset past `n` bytes of what `peek` returned.
    pub fn consume(&mut self, n: usize) {
        self.offset += n as u64;
    }
}
