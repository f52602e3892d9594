//! The one way grove writes to its standard output and standard error.
//!
//! A reader that goes away (`grove list | head -1`) must end the command
//! quietly, not with a panic. Every write to stdout goes through
//! [`outln!`]/[`out!`] or [`Stdout`]; when the write fails, the command is
//! unwound (running destructors, so that child processes of `demo`, `bench`
//! or `chaos` are still stopped) up to [`run_command`], which turns it into
//! an exit code: 0 for a closed pipe (the reader had all it wanted), 1 for
//! any other failure (e.g. a full disk), with a message.
//!
//! stderr goes through [`errln!`], which ignores write errors: when stderr
//! is gone there is nobody left to tell.
//!
//! `lib.rs` makes clippy flag `println!`/`eprintln!` (`print_stdout`,
//! `print_stderr`; CI denies warnings), so no command can bypass this.

pub mod terminal_safe;

use std::io::{self, Write};

// Exit codes of every command (README, "Exit codes"); shared by the CLI and
// the tools it runs (`bench`, `chaos`, `demo`), which sit beside it.
pub const EXIT_OK: i32 = 0;
/// The operation or the task failed.
pub const EXIT_FAILED: i32 = 1;
/// Usage or configuration error, or a workspace grove refuses to use.
pub const EXIT_USAGE: i32 = 2;
/// grove unavailable: no member running, primary unresponsive.
pub const EXIT_UNAVAILABLE: i32 = 3;

/// Unwind payload: stdout cannot be written any more.
struct StdoutGone {
    broken_pipe: bool,
}

fn stdout_failed(e: io::Error) -> ! {
    let broken_pipe = e.kind() == io::ErrorKind::BrokenPipe;
    if !broken_pipe {
        let _ = writeln!(io::stderr(), "grove: cannot write to standard output: {e}");
    }
    // Not `panic!`: this is not a bug, and the panic hook must not print.
    std::panic::resume_unwind(Box::new(StdoutGone { broken_pipe }))
}

/// Writes formatted text to stdout (used by [`out!`] and [`outln!`]).
pub fn stdout_fmt(args: std::fmt::Arguments<'_>) {
    if let Err(e) = io::stdout().lock().write_fmt(args) {
        stdout_failed(e)
    }
}

/// Writes bytes to stdout and flushes them (for streamed output: logs,
/// events).
pub fn stdout_bytes(bytes: &[u8]) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        stdout_failed(e)
    }
}

/// Writes what a task or its agent produced (a log, its output, a diff of
/// its files): as it is into a pipe or a file, through
/// [`terminal_safe::TerminalFilter`] onto a terminal, so that it
/// cannot drive the terminal showing it. One filter for the process: a
/// sequence split between two writes is judged whole.
pub fn stdout_task_bytes(bytes: &[u8]) {
    static FILTER: std::sync::OnceLock<Option<std::sync::Mutex<terminal_safe::TerminalFilter>>> =
        std::sync::OnceLock::new();
    let filter = FILTER
        .get_or_init(|| std::io::IsTerminal::is_terminal(&io::stdout()).then(Default::default));
    match filter {
        None => stdout_bytes(bytes),
        Some(filter) => {
            let mut shown = Vec::new();
            filter
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .filter(bytes, &mut shown);
            stdout_bytes(&shown)
        }
    }
}

/// Written before every [`errln!`] line of this process (see
/// [`set_stderr_prefix`]).
static STDERR_PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Names this process on each of its stderr lines: every shim of a
/// workspace writes to the same `run/shims.log`.
pub fn set_stderr_prefix(prefix: String) {
    let _ = STDERR_PREFIX.set(prefix);
}

/// Writes formatted text to stderr; errors are ignored (used by [`errln!`]).
/// One `write` per call: lines of processes sharing an append-only log
/// file do not interleave mid-line.
pub fn stderr_fmt(args: std::fmt::Arguments<'_>) {
    let prefix = STDERR_PREFIX.get().map_or("", String::as_str);
    let line = format!("{prefix}{args}");
    let _ = io::stderr().lock().write_all(line.as_bytes());
}

/// stdout as an `io::Write`, for APIs that want a writer (completions).
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match io::stdout().write(buf) {
            Ok(n) => Ok(n),
            Err(e) => stdout_failed(e),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match io::stdout().flush() {
            Ok(()) => Ok(()),
            Err(e) => stdout_failed(e),
        }
    }
}

/// What a command says on stderr when its stdout's reader goes away
/// (`grove run ... | head -1`: where its task goes on).
static WHEN_STDOUT_CLOSES: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Says `note` on stderr if stdout's reader goes away from now on.
pub fn say_when_stdout_closes(note: String) {
    let _ = WHEN_STDOUT_CLOSES.set(note);
}

/// Runs a whole command; a command whose stdout went away ends here with
/// exit code `closed_ok` (a closed pipe) or `failed` (any other error).
/// Real panics pass through untouched.
pub fn run_command(closed_ok: i32, failed: i32, command: impl FnOnce() -> i32) -> i32 {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(command)) {
        Ok(code) => code,
        Err(payload) => match payload.downcast::<StdoutGone>() {
            Ok(gone) if gone.broken_pipe => {
                if let Some(note) = WHEN_STDOUT_CLOSES.get() {
                    stderr_fmt(format_args!("{note}\n"));
                }
                closed_ok
            }
            Ok(_) => failed,
            Err(other) => std::panic::resume_unwind(other),
        },
    }
}

/// `outln!` that ends the command quietly when stdout is closed.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::stdout_fmt(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::stdout_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that ends the command quietly when stdout is closed.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::stdout_fmt(format_args!($($arg)*))
    };
}

/// `errln!` that never panics.
#[macro_export]
macro_rules! errln {
    () => {
        $crate::output::stderr_fmt(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::stderr_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => outln!("{s}"),
        Err(e) => errln!("grove: cannot encode JSON: {e}"),
    }
}
