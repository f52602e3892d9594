//! The direct path of the latency phase: a FIFO that the bench agent writes
//! `i t` to right after chunk i's line left on its stdout, read by a thread
//! of this process that stamps each line as it arrives.

use crate::stats::monotonic_ns;
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What tells the reader thread to stop.
const END: &str = "end";

pub struct Tap {
    pub path: PathBuf,
    read: mpsc::Receiver<(u64, u64)>,
}

impl Tap {
    /// Makes the FIFO at `path` and starts reading it.
    pub fn open(path: &std::path::Path) -> Result<Tap, String> {
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| format!("{} has a NUL byte", path.display()))?;
        // SAFETY: a valid C string; mkfifo has no other precondition.
        if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(format!("cannot make the FIFO {}: {e}", path.display()));
        }
        // Read and write: the open does not wait for the agent, and the
        // reader is never left at end of file between writers.
        let fifo = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| format!("cannot open the FIFO {}: {e}", path.display()))?;
        let (tx, read) = mpsc::channel();
        std::thread::Builder::new()
            .name("bench-acp-tap".into())
            .spawn(move || {
                for line in std::io::BufReader::new(fifo).lines() {
                    let Ok(line) = line else { return };
                    let at = monotonic_ns();
                    if line == END {
                        return;
                    }
                    let i = line.split(' ').next().and_then(|i| i.parse().ok());
                    if let Some(i) = i
                        && tx.send((i, at)).is_err()
                    {
                        return;
                    }
                }
            })
            .map_err(|e| format!("cannot start the tap's thread: {e}"))?;
        Ok(Tap {
            path: path.to_path_buf(),
            read,
        })
    }

    /// When each of chunks 0..n was read, waiting up to `within`.
    pub fn collect(&self, n: u64, within: Duration) -> Result<HashMap<u64, u64>, String> {
        let until = Instant::now() + within;
        let mut read = HashMap::new();
        while (read.len() as u64) < n {
            let left = until.saturating_duration_since(Instant::now());
            match self.read.recv_timeout(left) {
                Ok((i, at)) => {
                    read.entry(i).or_insert(at);
                }
                Err(_) => {
                    return Err(format!(
                        "the agent reported {} of {n} chunks on its tap",
                        read.len()
                    ));
                }
            }
        }
        Ok(read)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // The thread holds the FIFO open for writing too, so this open
        // does not block; the line ends the thread.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path)
        {
            let _ = writeln!(f, "{END}");
        }
    }
}
