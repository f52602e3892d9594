//! Fault injection for the test suite, compiled only with the `test-hooks`
//! cargo feature (every `cargo test` build has it through the self
//! dev-dependency in Cargo.toml; `cargo build`/`cargo install` never does).
//!
//! Some failures matter at one exact moment that a random `kill -9` almost
//! never hits: a primary dying between COMMIT and reply, a transition that
//! crashes the primary every time it is applied, an event loop that hangs.
//! The tests (and `grove chaos`) ask for that moment through the hooks here.
//! A shipped binary has none of them: no `debug.stall` method on the wire,
//! no `grove debug-stall` command, no prompt check on the store thread.

use crate::protocol::{Event, EventData, Method};
use std::time::Duration;

/// A `task.create` with this prompt makes the primary die right after
/// COMMIT and before answering, the exact window in which a client must
/// retry and get the recorded reply.
pub const CRASH_AFTER_COMMIT_PROMPT: &str = "__grove_crash_after_commit__";

/// A `task.create` with this prompt aborts the primary while the write is
/// being applied, the way a bug in a transition would; the crash guard must
/// stop it after two.
pub const CRASH_DURING_APPLY_PROMPT: &str = "__grove_crash_during_apply__";

/// A `task.create` whose prompt is this followed by a path holds the store
/// thread, while the write is applied, until that path exists (a minute at
/// most): writes queue behind it as they would behind a stalled disk.
pub const HOLD_STORE_PROMPT: &str = "__grove_hold_store__:";

/// Called by the store thread before it applies a write.
pub fn while_applying(method: &Method) {
    let Method::TaskCreate(new) = method else {
        return;
    };
    if new.prompt == CRASH_DURING_APPLY_PROMPT {
        tracing::warn!("test hook: aborting while applying a write");
        std::process::abort();
    }
    if let Some(release) = new.prompt.strip_prefix(HOLD_STORE_PROMPT) {
        tracing::warn!("test hook: holding the store thread until {release} exists");
        let until = std::time::Instant::now() + Duration::from_secs(60);
        while !std::path::Path::new(release).exists() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Called by the store thread after COMMIT, before anyone is answered. Only
/// a freshly applied marker (one that produced an event) crashes; its retry,
/// answered from the ledger, must not.
pub fn after_commit(events: &[Event]) {
    let marked = events.iter().any(|e| {
        matches!(&e.data, EventData::TaskCreated { task } if task.spec.prompt == CRASH_AFTER_COMMIT_PROMPT)
    });
    if marked {
        tracing::warn!("test hook: dying after commit, before replying");
        // SAFETY: _exit(2) ends the process at once; nothing runs after it.
        unsafe { libc::_exit(137) };
    }
}

/// `debug.stall`: blocks the primary's (single-threaded) event loop so that
/// the watchdog can be tested.
pub fn stall(ms: u64) {
    tracing::warn!("test hook: blocking the event loop for {ms} ms");
    std::thread::sleep(Duration::from_millis(ms));
}

/// Set in a `grove merge`'s environment: it waits this many milliseconds
/// after preparing the merge and before moving anything, so that a test can
/// kill it there.
pub const MERGE_STALL_ENV: &str = "GROVE_TEST_MERGE_STALL_MS";

/// Called by `grove merge` between preparing the merge commit and moving
/// the branch and the checkout.
pub fn merge_prepared() {
    if let Some(ms) = std::env::var(MERGE_STALL_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        crate::output::stderr_fmt(format_args!(
            "test hook: merge prepared, stalling {ms} ms\n"
        ));
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// Set in a `grove run`'s environment: it waits this many milliseconds
/// after its task was created and before it takes the reply, so that a test
/// can press Ctrl-C while the task exists but its id is not known yet.
pub const RUN_CREATED_STALL_ENV: &str = "GROVE_TEST_RUN_CREATED_STALL_MS";

/// Called by `grove run` when its task.create returned.
pub fn run_created_stall() -> Option<Duration> {
    let ms = std::env::var(RUN_CREATED_STALL_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())?;
    crate::output::stderr_fmt(format_args!("test hook: task created, stalling {ms} ms\n"));
    Some(Duration::from_millis(ms))
}

/// Set in a primary's environment: the board's diff gets this many
/// milliseconds instead of its minute, so that a test of its deadline does
/// not wait a minute.
pub const DIFF_WITHIN_ENV: &str = "GROVE_TEST_DIFF_WITHIN_MS";

/// The board's diff deadline a test asked for, if one did.
pub fn diff_within() -> Option<Duration> {
    let ms = std::env::var(DIFF_WITHIN_ENV).ok()?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ms))
}

/// Set in a primary's environment: the board's merge and discard get this
/// many milliseconds instead of their minute, so that a test of their
/// deadline does not wait a minute.
pub const MERGE_WITHIN_ENV: &str = "GROVE_TEST_MERGE_WITHIN_MS";

/// The board's merge and discard deadline a test asked for, if one did.
pub fn merge_within() -> Option<Duration> {
    let ms = std::env::var(MERGE_WITHIN_ENV).ok()?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ms))
}
