//! `grove delegate-run`: the agent of a task delegated to another
//! workspace (the built-in `delegate` engine, see `projects::proxy_task`).
//!
//! Its shim runs it like any agent, so the proxy task here is supervised,
//! timed, cancelled and adopted as any task is. It is a client of the other
//! workspace's grove (started there when none runs): it creates the task
//! there with a request id derived from this task and run — so a rerun of
//! the same run never creates a second one — prints that task's output as
//! it comes, and ends with its conclusion as a conclusion block (which the
//! shim records as this task's) and its outcome as the exit code. A cancel
//! or timeout here (SIGTERM from the shim) cancels the task there and every
//! task below it (see docs/design.md, Delegation). Either
//! workspace may fail over meanwhile: both clients follow their primary.

use super::{CliError, Context, EXIT_FAILED, EXIT_OK};
use crate::projects;
use crate::protocol::{
    DEPTH_ENV, Method, NewTask, PARENT_REF_ENV, ReplyBody, TaskRecord, TaskStatus,
};
use std::time::Duration;

/// How often the other task's log and status are read.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// Entry point; `autostart` as the command line says.
pub async fn run(autostart: bool) -> i32 {
    match delegate(autostart).await {
        Ok(code) => code,
        Err(e) => {
            errln!("grove delegate-run: {e}");
            e.exit_code()
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// This task (from the environment its shim gave it) and the other
/// workspace's context.
fn contexts(autostart: bool) -> Result<(Context, TaskRecord, Context), CliError> {
    let usage =
        |m: &str| CliError::Usage(format!("{m} (grove delegate-run is run by a task's shim)"));
    let (Some(here), Some(id)) = (env("GROVE_WORKSPACE"), env("GROVE_TASK_ID")) else {
        return Err(usage("GROVE_WORKSPACE and GROVE_TASK_ID are not set"));
    };
    let there = env(projects::PROJECT_ENV)
        .ok_or_else(|| usage(&format!("{} is not set", projects::PROJECT_ENV)))?;
    let local = Context::load(Some(here.into()), false, false)?;
    let task = local
        .reader()?
        .task(&id)?
        .ok_or_else(|| CliError::Failed(format!("task {id} is not in this workspace")))?;
    // Checked again where the work starts: the proxy may run long after
    // its spawn was checked, and a task can name the `delegate` engine
    // itself.
    let checked =
        projects::trusted_target(std::path::Path::new(&there)).map_err(CliError::Usage)?;
    // The root as checked (symlinks resolved), not the path again.
    let remote = Context::load(Some(checked.root), autostart, false)?;
    Ok((local, task, remote))
}

/// The task to create there: this one's prompt, tags, priority and
/// environment, with the other workspace's engine, model, persona and
/// work dir, marked as delegated from here at this task's level (`depth`),
/// so that its children there count on from it.
fn remote_task(local: &Context, task: &TaskRecord, depth: u32) -> NewTask {
    let mut env = task.spec.env.clone();
    env.retain(|k, _| !k.starts_with("GROVE_DELEGATE_"));
    env.insert(
        PARENT_REF_ENV.into(),
        format!("{}#{}", local.ws.root.display(), task.id),
    );
    env.insert(DEPTH_ENV.into(), depth.to_string());
    NewTask {
        prompt: task.spec.prompt.clone(),
        engine: env_of(task, projects::ENGINE_ENV),
        model: env_of(task, projects::MODEL_ENV),
        persona: env_of(task, projects::PERSONA_ENV),
        work_dir: env_of(task, projects::WORKDIR_ENV),
        tags: task.spec.tags.clone(),
        priority: task.spec.priority,
        env,
        want_conclusion: true,
        ..Default::default()
    }
}

fn env_of(task: &TaskRecord, name: &str) -> Option<String> {
    task.spec.env.get(name).cloned()
}

async fn delegate(autostart: bool) -> Result<i32, CliError> {
    let (local, task, remote) = contexts(autostart)?;
    let run = task.run_id.clone().unwrap_or_default();
    let key = format!("delegate-{}-{}-{run}", projects::id_of(&local.ws), task.id);
    // This task's level here, levels it inherited included. Past the limit
    // here counts as limit + 1: refused there too, unless its limit is
    // higher.
    let cap = local.config.max_delegation_depth.saturating_add(1);
    let depth = local.reader()?.delegation_level(&task, cap)?;
    // Before the create: a cancel that comes while it runs (it may start a
    // member there) waits in `stop` instead of ending this process with
    // the task there created and left to run.
    let mut stop = Stop::install()?;
    let reply = remote
        .call(
            Method::TaskCreate(remote_task(&local, &task, depth)),
            Some(&key),
        )
        .await?;
    let ReplyBody::Task(there) = reply else {
        return Err(CliError::Failed(format!("unexpected reply {reply:?}")));
    };
    outln!(
        "grove: delegated to {} as task {}",
        remote.ws.root.display(),
        there.id
    );
    let cancel_there = async || {
        // The work it spawned there serves only this task, and nobody here
        // sees it: the task there goes with every task below it. A
        // delegated task below it cancels its own tree in turn (its
        // `delegate-run`).
        let key = format!("{key}-cancel");
        match crate::mcp::tree::cancel_with_descendants(&remote, &there.id, Some(&key)).await {
            Err(e) => errln!(
                "grove delegate-run: cannot cancel task {} there: {e}",
                there.id
            ),
            Ok(done) => {
                for f in done.failed {
                    errln!("grove delegate-run: cannot cancel task {f} there");
                }
            }
        }
    };
    // The task here does nothing but follow the one there: its slot is
    // lent meanwhile (docs/design.md, Slot loans), or a chain that comes
    // back here (A → B → A) waits on this workspace's slots that its own
    // proxies hold, for good.
    let lender = crate::mcp::slot_loan::Lender::of(Some(task.id.clone()));
    let following =
        crate::mcp::slot_loan::while_waiting(&local, lender, follow(&remote, &there.id));
    let followed = tokio::select! {
        r = following => r,
        // The other workspace's last member may go while its task runs:
        // one is started there (autostart), or the proxy fails saying so.
        hopeless = remote.keep_member() => Err(hopeless),
        _ = stop.next() => {
            // Cancelled or timed out here: so is the task there.
            cancel_there().await;
            return Ok(128 + libc::SIGTERM);
        }
    };
    if followed.is_err() {
        // This task fails: the task there would run on unseen.
        cancel_there().await;
    }
    followed
}

/// Prints the task's output until it ended, then its conclusion block;
/// the exit code is 0 when it completed.
async fn follow(remote: &Context, id: &str) -> Result<i32, CliError> {
    let path = crate::runs::RunFiles::log(&remote.ws, id);
    let reader = remote.reader()?;
    let mut offset = 0u64;
    loop {
        // The status before the file: output written before the task ended
        // is then certainly in the file when we see it ended.
        let now = reader.task(id)?;
        if let Some(end) = super::orchestrate::copy_log(&path, offset)? {
            offset = end;
        }
        match now {
            None => {
                errln!(
                    "grove delegate-run: task {id} was deleted in {}",
                    remote.ws.root.display()
                );
                return Ok(EXIT_FAILED);
            }
            Some(t) if t.status.is_terminal() => return Ok(ended(&t)),
            Some(_) => tokio::time::sleep(FOLLOW_POLL).await,
        }
    }
}

/// The other task's end, as this task's: its conclusion as a block (the
/// shim reads the last one), saying so when grove made it up there (from
/// the output, or from a malformed block) rather than the agent reporting
/// it; then why it did not complete.
fn ended(t: &TaskRecord) -> i32 {
    use crate::protocol::ConclusionSource;
    use crate::runs::conclusion::{CLOSE, OPEN};
    outln!("");
    if let Some(c) = &t.conclusion {
        let mut block = serde_json::json!({
            "status": c.status, "summary": c.summary, "artifacts": c.artifacts,
            "follow_up": c.follow_up, "confidence": c.confidence,
        });
        if c.source != ConclusionSource::Reported {
            block["source"] = serde_json::json!(c.source);
            block["error"] = serde_json::json!(c.error);
        }
        // `<` only ever stands in a string of the JSON: escaped, a block
        // quoted in the summary (a malformed one's) is no block here.
        let block = block.to_string().replace('<', "\\u003c");
        outln!("{OPEN}{block}{CLOSE}");
    }
    if t.status == TaskStatus::Completed {
        return EXIT_OK;
    }
    let reason = t.failure_reason.map(|r| r.as_str()).unwrap_or("");
    errln!(
        "grove delegate-run: task {} {} {reason} {}",
        t.id,
        t.status.as_str(),
        t.progress_text.as_deref().unwrap_or("")
    );
    match t.exit_code {
        Some(c) if (1..=255).contains(&c) => c,
        _ if t.status == TaskStatus::Cancelled => 128 + libc::SIGTERM,
        _ => EXIT_FAILED,
    }
}

/// SIGTERM, SIGINT or SIGHUP: how the shim stops its agent.
struct Stop(Vec<tokio::signal::unix::Signal>);

impl Stop {
    fn install() -> Result<Stop, CliError> {
        use tokio::signal::unix::{SignalKind, signal};
        let kinds = [
            SignalKind::terminate(),
            SignalKind::interrupt(),
            SignalKind::hangup(),
        ];
        let mut out = Vec::new();
        for k in kinds {
            out.push(signal(k).map_err(|e| CliError::Failed(format!("signals: {e}")))?);
        }
        Ok(Stop(out))
    }

    async fn next(&mut self) {
        let [a, b, c] = self.0.as_mut_slice() else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = a.recv() => {}
            _ = b.recv() => {}
            _ = c.recv() => {}
        }
    }
}
