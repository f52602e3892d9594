//! `grove run`: one task in the workspace's grove, followed to its end on
//! stdout as the agent produces it — for scripts, CI jobs and cron.
//!
//! It is a client like `grove wait`: it subscribes to the event stream
//! *before* creating the task (so nothing the task does is missed), then
//! follows the task's events: an ACP agent's updates as they are stored,
//! a command's output read from its log file whenever the bus says there is
//! more. Its exit code is the task's own; grove's own failures are kept
//! apart as `docker run` keeps them (125, 126, 127).

use super::run_view::{OutputFormat, View};
use super::task_args::TaskArgs;
use super::{CliError, Context, EXIT_FAILED, EXIT_OK};
use crate::config::EngineKind;
use crate::orchestrator::engines::{EngineError, RunSpec};
use crate::protocol::{
    ErrorCode, EventData, FailureReason, GoalRecord, GoalStatus, Method, NewTask, ReplyBody,
};
use crate::protocol::{TaskRecord, TaskStatus};
use clap::Args;
use futures::FutureExt;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// grove itself failed: no member could be reached or started, the store
/// refused the task, the event stream broke, the task's supervisor vanished.
pub const EXIT_GROVE: i32 = 125;
/// The engine could not start: its program was found but failed to start,
/// or an ACP agent died (or broke the protocol) before its turn began.
pub const EXIT_CANNOT_START: i32 = 126;
/// No such engine, or its program is not on `PATH`.
pub const EXIT_NO_ENGINE: i32 = 127;
/// Interrupted (Ctrl-C): 128 + SIGINT, as shells report it.
pub const EXIT_INTERRUPTED: i32 = 130;
/// Its stdout's reader went away (`| head -1`): 128 + SIGPIPE, as shells
/// report a writer killed by it. The task goes on, as on SIGHUP.
pub const EXIT_STDOUT_CLOSED: i32 = 141;

pub const RUN_AFTER_HELP: &str = "\
Output (--output-format):
  text         the agent's message as it streams and one line per tool call
               ([tool] TITLE (KIND) STATUS); a command's (shell/cli engine)
               output as it is written
  stream-json  one JSON object per line: {\"type\":\"status\"} on each status
               change, {\"type\":\"agent_update\"} per ACP update,
               {\"type\":\"output\"} per chunk of a command's output, and last
               {\"type\":\"result\"}
  json         only the result document, at the end: task_id, status,
               exit_code, failure_reason, error, duration_ms, engine, model,
               message (the agent's text), output (a command's, its last
               64 KiB), conclusion (with --conclusion; else null)
A spinner shows on stderr when it is a terminal, unless --quiet.

Exit codes:
  0    the task completed
  N    the task failed with exit code N (1 when it has none: an ACP agent's
       refusal, a timeout, a cancel by someone else)
  2    usage error (a flag, an empty prompt, an invalid work dir or persona)
  125  grove itself failed (no member reachable or startable, the store
       refused the task, the task's supervisor was lost)
  126  the engine could not start (found but failed to start; an ACP agent
       that died or broke the protocol before its turn began)
  127  no such engine, or its program is not on PATH
  130  interrupted: Ctrl-C cancels the task, waits for it to end, exits 130.
       A second Ctrl-C exits at once and leaves the task cancelling
       (see `grove show ID`).
  141  stdout's reader went away (`| head -1`): the task goes on
SIGHUP and SIGTERM end `grove run` alone (129, 143): the task keeps running,
as every task outlives the window that started it (`grove wait ID`). Use
--timeout to bound the task itself, not `timeout grove run`.

Examples:
  grove run 'make test'                        # a shell task, its output live
  grove run -e claude 'fix the failing test' --yolo --worktree
  grove run -e claude 'summarize README.md' --output-format json | jq .message";

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// What stdout carries: text, json (one document at the end) or
    /// stream-json (one JSON object per event).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output_format: OutputFormat,
    /// No spinner and no notes on stderr (errors are still printed).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// `grove run`: the task's exit code, or grove's own (see `RUN_AFTER_HELP`).
pub async fn run(ctx: &Context, args: RunArgs) -> Result<i32, CliError> {
    match run_task(ctx, args).await {
        Err(CliError::Usage(m)) => Err(CliError::Usage(m)),
        Err(e) => {
            errln!("grove: {e}");
            Ok(EXIT_GROVE)
        }
        Ok(code) => Ok(code),
    }
}

/// What Ctrl-C has done so far.
struct Interrupt {
    signal: Signal,
    pressed: bool,
}

impl Interrupt {
    /// A second press: the command ends now, the task goes on cancelling.
    fn again(&self, id: Option<&str>) -> i32 {
        match id {
            Some(id) => errln!(
                "grove: interrupted again; task {id} is still being cancelled (see `grove show {id}`)"
            ),
            None => errln!(
                "grove: interrupted again while the task was being created; it may have been created (see `grove list`)"
            ),
        }
        EXIT_INTERRUPTED
    }
}

async fn run_task(ctx: &Context, args: RunArgs) -> Result<i32, CliError> {
    let RunArgs {
        task,
        output_format,
        quiet,
    } = args;
    follow_new(ctx, task.new_task()?, None, output_format, quiet).await
}

/// Creates the task (with `goal`: a goal and its task) and follows it to
/// its end (a goal's); the exit code (see `RUN_AFTER_HELP`, `GOAL_AFTER_HELP`).
pub(super) async fn follow_new(
    ctx: &Context,
    mut new: NewTask,
    goal: Option<super::goal::GoalLimits>,
    output_format: OutputFormat,
    quiet: bool,
) -> Result<i32, CliError> {
    // First of all: from here on Ctrl-C is handled, however early it comes.
    let signal = signal(SignalKind::interrupt())
        .map_err(|e| CliError::Failed(format!("cannot handle Ctrl-C: {e}")))?;
    let mut interrupt = Interrupt {
        signal,
        pressed: false,
    };
    super::orchestrate::place_in_chain(ctx, &mut new);
    let engine = new
        .engine
        .clone()
        .unwrap_or_else(|| ctx.config.default_engine.clone());
    if let Err(e) = check_engine(ctx, &new, &engine) {
        errln!("grove: {e}");
        return Ok(EXIT_NO_ENGINE);
    }
    let acp = ctx
        .config
        .engines
        .get(&engine)
        .is_some_and(|e| e.kind == EngineKind::Acp);
    let mut view = View::new(output_format, quiet, acp);
    tokio::select! {
        r = ctx.ensure_member() => r?,
        _ = interrupt.signal.recv() => return Ok(EXIT_INTERRUPTED),
    }
    // The stream starts before the task exists: none of its events is missed.
    let first = ctx.reader()?.last_seq()? + 1;
    let mut sub = crate::subscriber::subscribe(&ctx.ws, first);
    if interrupt.signal.recv().now_or_never().is_some() {
        return Ok(EXIT_INTERRUPTED); // nothing was created yet
    }
    let method = match goal {
        None => Method::TaskCreate(new),
        Some(limits) => Method::GoalCreate(limits.spec(new)),
    };
    let Some((task, goal)) = create(ctx, method, &mut interrupt).await? else {
        return Ok(EXIT_INTERRUPTED);
    };
    crate::output::say_when_stdout_closes(format!(
        "grove: stdout closed: task {} goes on without this command (`grove wait {}`, `grove logs -f {}`)",
        task.id, task.id, task.id
    ));
    view.started(&task);
    if interrupt.pressed && !cancel(ctx, &task.id, &mut interrupt, &mut view).await {
        return Ok(interrupt.again(Some(&task.id)));
    }
    let mut follow = Follow {
        ctx,
        task,
        goal,
        view,
        gaps: 0,
    };
    let followed = follow.until_ended(&mut sub, &mut interrupt);
    if let Some(code) = super::orchestrate::lending_slot(ctx, followed).await? {
        return Ok(code);
    }
    let Follow {
        task,
        goal,
        mut view,
        ..
    } = follow;
    if task.status == TaskStatus::Cancelled && !run_gone(ctx, &task, &mut interrupt).await {
        return Ok(interrupt.again(Some(&task.id)));
    }
    view.read_log(&ctx.ws, &task.id, true);
    let run_code = exit_code(&task, view.saw_prompt, acp);
    // Said from why the task ended, not from the code: a task's own exit
    // 125, 126 or 130 is the task's, not grove's verdict.
    let verdict = if interrupt.pressed {
        Verdict::Interrupted
    } else {
        verdict(&task, view.saw_prompt, acp)
    };
    let code = match &goal {
        _ if interrupt.pressed => EXIT_INTERRUPTED,
        Some(goal) => super::goal::exit_code(goal, verdict),
        None => run_code,
    };
    match &goal {
        Some(goal) => {
            view.finish_with(super::goal::result(goal));
            super::goal::explain(goal, &task, verdict, &engine);
        }
        None => {
            view.finish(&task);
            explain(&task, code, verdict, &engine);
        }
    }
    Ok(code)
}

/// The engine checks that have an exit code of their own (127): a name no
/// engine has, a program not on `PATH`. The rest (template, persona, work
/// dir) the primary reports as usage errors.
fn check_engine(ctx: &Context, new: &NewTask, engine: &str) -> Result<(), EngineError> {
    let spec = RunSpec::of_new(new, engine);
    match crate::orchestrator::engines::validate(&ctx.config, &ctx.ws.root, &spec) {
        Err(e @ (EngineError::Unknown(_) | EngineError::MissingBinary(_))) => Err(e),
        _ => Ok(()),
    }
}

/// Creates the task (or the goal and its task). Ctrl-C meanwhile is
/// remembered, not obeyed: the create may already be committed, and only
/// its reply names the task to cancel. `None`: a second Ctrl-C gave up on
/// it.
async fn create(
    ctx: &Context,
    method: Method,
    interrupt: &mut Interrupt,
) -> Result<Option<(TaskRecord, Option<GoalRecord>)>, CliError> {
    let request_id = crate::client::new_request_id();
    let call = async {
        let reply = ctx.call(method, Some(&request_id)).await;
        #[cfg(feature = "test-hooks")]
        if let Some(stall) = crate::test_hooks::run_created_stall() {
            tokio::time::sleep(stall).await;
        }
        reply
    };
    tokio::pin!(call);
    loop {
        tokio::select! {
            reply = &mut call => {
                return match reply? {
                    ReplyBody::Task(task) => Ok(Some((*task, None))),
                    // Committed with its task, which the reader sees now.
                    ReplyBody::Goal(goal) => match ctx.reader()?.task(&goal.id)? {
                        Some(task) => Ok(Some((task, Some(*goal)))),
                        None => Err(CliError::Failed(format!(
                            "goal {} was created but its task is gone (deleted meanwhile?)",
                            goal.id
                        ))),
                    },
                    other => Err(CliError::Failed(format!("unexpected reply {other:?}"))),
                };
            }
            _ = interrupt.signal.recv() => {
                if interrupt.pressed {
                    interrupt.again(None);
                    return Ok(None);
                }
                interrupt.pressed = true;
            }
        }
    }
}

/// Asks the primary to cancel the task; false when a second Ctrl-C came
/// first. A task that ended meanwhile needs no cancel.
async fn cancel(ctx: &Context, id: &str, interrupt: &mut Interrupt, view: &mut View) -> bool {
    view.note(&format!(
        "grove: cancelling task {id} (Ctrl-C again to stop waiting)"
    ));
    view.spin("cancelling");
    let method = Method::TaskCancel { id: id.to_string() };
    let mut client = ctx.client();
    tokio::select! {
        r = client.call(method) => {
            match r {
                Ok(_) => {}
                Err(crate::client::ClientError::Refused(w)) if w.code == ErrorCode::Conflict => {}
                Err(e) => errln!("grove: cannot cancel task {id}: {e}"),
            }
            true
        }
        _ = interrupt.signal.recv() => false,
    }
}

/// A cancelled task's status is final at once, while its processes take
/// up to the kill grace to go: waits for its supervisor to exit, which it
/// does only when no process of the run is left. False: a second Ctrl-C.
async fn run_gone(ctx: &Context, task: &TaskRecord, interrupt: &mut Interrupt) -> bool {
    let Some(run) = task
        .run_id
        .as_deref()
        .and_then(|run_id| crate::runs::RunFiles::read_run(&ctx.ws, &task.id, run_id))
    else {
        return true; // it never ran
    };
    // Watched first, then checked: a pid reused after the check is not ours.
    let watch = crate::proc::ExitWatch::new(run.shim_pid, EXIT_FALLBACK);
    if crate::proc::start_time(run.shim_pid) != Some(run.shim_start) {
        return true;
    }
    tokio::select! {
        _ = watch.exited() => true,
        _ = interrupt.signal.recv() => false,
    }
}

/// How often a supervisor's exit is checked where pidfds are unavailable.
const EXIT_FALLBACK: std::time::Duration = std::time::Duration::from_millis(100);

/// The task being followed (and the goal it pursues) and what was shown
/// of it.
struct Follow<'a> {
    ctx: &'a Context,
    task: TaskRecord,
    goal: Option<GoalRecord>,
    view: View,
    /// The subscriber's count of pruned gaps when last looked at.
    gaps: u64,
}

impl Follow<'_> {
    /// Over: the task ended, and its goal too (a goal's CLI-engine task
    /// ends once per iteration, and is rerun in the same commit).
    fn done(&self) -> bool {
        self.task.status.is_terminal()
            && (self.goal.as_ref()).is_none_or(|g| g.status != GoalStatus::Running)
    }

    /// Follows the task until it ended. `Some(code)`: the command ends
    /// now without it (a second Ctrl-C, the task deleted).
    async fn until_ended(
        &mut self,
        sub: &mut crate::subscriber::Subscription,
        interrupt: &mut Interrupt,
    ) -> Result<Option<i32>, CliError> {
        let ctx = self.ctx;
        let hopeless = ctx.keep_member();
        tokio::pin!(hopeless);
        while !self.done() {
            tokio::select! {
                e = &mut hopeless => return Err(e),
                event = sub.events.recv() => {
                    let Some(event) = event else {
                        return Err(CliError::Unavailable("the event stream ended".into()));
                    };
                    let mut exists = true;
                    if sub.health.pruned_gaps() != self.gaps {
                        self.gaps = sub.health.pruned_gaps();
                        exists = self.resync()?;
                    }
                    if !exists || !self.on_event(event.data) {
                        errln!("grove: task {} was deleted while it ran", self.task.id);
                        return Ok(Some(EXIT_FAILED));
                    }
                }
                _ = interrupt.signal.recv() => {
                    let id = self.task.id.clone();
                    if interrupt.pressed {
                        return Ok(Some(interrupt.again(Some(&id))));
                    }
                    interrupt.pressed = true;
                    if !cancel(self.ctx, &id, interrupt, &mut self.view).await {
                        return Ok(Some(interrupt.again(Some(&id))));
                    }
                }
            }
        }
        Ok(None)
    }

    /// One event of the stream; false when the task was deleted.
    fn on_event(&mut self, data: EventData) -> bool {
        let ws = &self.ctx.ws;
        match data {
            EventData::TaskCreated { task } | EventData::TaskUpdated { task }
                if task.id == self.task.id =>
            {
                self.changed(task);
            }
            EventData::TaskDeleted { id } if id == self.task.id => return false,
            EventData::GoalUpdated { goal } if goal.id == self.task.id => {
                self.view.goal(&goal);
                self.goal = Some(goal);
            }
            EventData::TaskAgentUpdate { id, kind, acp, .. } if id == self.task.id => {
                self.view.agent_update(&id, &kind, &acp);
            }
            // A command's output is read from its log, which holds all of
            // it; the bus's chunks (which a full queue may drop) and the
            // heartbeats only say when to look.
            EventData::TaskOutput { id, .. } if id == self.task.id => {
                self.view.read_log(ws, &id, false);
            }
            EventData::Heartbeat { .. } if self.task.status == TaskStatus::Running => {
                self.view.read_log(ws, &self.task.id, false);
            }
            _ => {}
        }
        true
    }

    fn changed(&mut self, task: TaskRecord) {
        if task.status.is_terminal() {
            // Everything the command wrote is in its log by now.
            self.view.read_log(&self.ctx.ws, &task.id, true);
        }
        if task.status != self.task.status {
            self.view.status(&task);
        }
        self.task = task;
    }

    /// The stream lost events this follower needed (it fell behind the
    /// store's retention): the task as it is now; false when it was
    /// deleted.
    fn resync(&mut self) -> Result<bool, CliError> {
        let reader = self.ctx.reader()?;
        match reader.task(&self.task.id)? {
            Some(t) => self.changed(t),
            None => return Ok(false),
        }
        if self.goal.is_some() {
            self.goal = reader.goal(&self.task.id)?;
        }
        Ok(true)
    }
}

/// `grove run`'s exit code for a task that ended (see `RUN_AFTER_HELP`).
pub(super) fn exit_code(t: &TaskRecord, saw_prompt: bool, acp: bool) -> i32 {
    if t.status == TaskStatus::Completed {
        return EXIT_OK;
    }
    match verdict(t, saw_prompt, acp) {
        Verdict::CannotStart => EXIT_CANNOT_START,
        Verdict::Lost => EXIT_GROVE,
        // Stopped from outside (a timeout, a cancel from elsewhere): its
        // processes died of grove's SIGTERM, and their 143 is no exit code
        // of the task's own (it would read as a command that killed itself).
        _ if stopped_from_outside(t) => EXIT_FAILED,
        _ => t
            .exit_code
            .filter(|c| (1..=255).contains(c))
            .unwrap_or(EXIT_FAILED),
    }
}

/// Stopped by a timeout or a cancel: its processes died of grove's
/// SIGTERM, and their 143 is no exit code of the task's own. `grove run`
/// and `spawn --wait` both exit 1 for it.
pub(super) fn stopped_from_outside(t: &TaskRecord) -> bool {
    t.status == TaskStatus::Cancelled || t.failure_reason == Some(FailureReason::Timeout)
}

/// What ended a run, for what stderr says: grove's verdicts (their exit
/// codes 125, 126, 130 are also codes a task may exit with itself).
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Verdict {
    Interrupted,
    CannotStart,
    Lost,
    /// The task ended by itself, or was stopped: its end says how.
    Ended,
}

/// grove's verdict on a run that ended, from why it ended (never from its
/// exit code, which may be the task's own 125 or 126).
fn verdict(t: &TaskRecord, saw_prompt: bool, acp: bool) -> Verdict {
    if t.status == TaskStatus::Cancelled || t.failure_reason == Some(FailureReason::Timeout) {
        return Verdict::Ended;
    }
    match t.failure_reason {
        Some(FailureReason::SpawnError) => Verdict::CannotStart,
        Some(FailureReason::AgentError) if acp && !saw_prompt => Verdict::CannotStart,
        Some(FailureReason::Lost) => Verdict::Lost,
        _ => Verdict::Ended,
    }
}

/// Why the run did not succeed, on stderr (whatever the output format).
fn explain(t: &TaskRecord, code: i32, verdict: Verdict, engine: &str) {
    let why = t.progress_text.as_deref().unwrap_or("no reason recorded");
    match verdict {
        Verdict::Interrupted => {}
        Verdict::Ended if code == EXIT_OK => {}
        Verdict::CannotStart => {
            errln!(
                "grove: engine '{engine}' could not start task {0}: {why} (what it wrote: `grove logs {0}`)",
                t.id
            )
        }
        Verdict::Lost => errln!(
            "grove: task {} was lost: its supervisor vanished ({why})",
            t.id
        ),
        Verdict::Ended => {
            let mut end = super::orchestrate::describe_end(t);
            // The supervisor's account of an agent's end (a crash, a
            // timeout); after an exit code it is only the last progress.
            if let (Some(why), Some(r)) = (&t.progress_text, t.failure_reason)
                && !matches!(r, FailureReason::ExitCode | FailureReason::SpawnError)
            {
                end.push_str(&format!(": {why}"));
            }
            errln!("grove: task {} {end}", t.id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(status: TaskStatus, reason: Option<FailureReason>, code: Option<i32>) -> TaskRecord {
        let mut r: TaskRecord = serde_json::from_value(serde_json::json!({
            "id": "x", "prompt": "p", "engine": "shell", "status": "queued",
            "created_at": 0, "updated_at": 0
        }))
        .unwrap();
        r.status = status;
        r.failure_reason = reason;
        r.exit_code = code;
        r
    }

    #[test]
    fn exit_codes_keep_grove_apart_from_the_task() {
        use FailureReason::*;
        use TaskStatus::*;
        assert_eq!(exit_code(&task(Completed, None, Some(0)), true, true), 0);
        assert_eq!(
            exit_code(&task(Failed, Some(ExitCode), Some(3)), false, false),
            3
        );
        assert_eq!(
            exit_code(&task(Failed, Some(Timeout), None), false, false),
            1
        );
        // Killed by grove's SIGTERM at the timeout or a cancel: not 143.
        assert_eq!(
            exit_code(&task(Failed, Some(Timeout), Some(143)), false, false),
            1
        );
        assert_eq!(exit_code(&task(Cancelled, None, Some(143)), true, true), 1);
        assert_eq!(
            exit_code(&task(Failed, Some(SpawnError), None), false, false),
            126
        );
        assert_eq!(
            exit_code(&task(Failed, Some(AgentError), Some(5)), false, true),
            126
        );
        assert_eq!(
            exit_code(&task(Failed, Some(AgentError), Some(3)), true, true),
            3
        );
        assert_eq!(exit_code(&task(Failed, Some(Refusal), None), true, true), 1);
        assert_eq!(exit_code(&task(Failed, Some(Lost), None), true, true), 125);
        assert_eq!(exit_code(&task(Cancelled, None, None), true, true), 1);
    }
}
