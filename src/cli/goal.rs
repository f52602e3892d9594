//! `grove goal`: an objective pursued over many iterations, followed like
//! `grove run` follows a task (see `run.rs`), and `grove goals`, the list.
//! The goal itself is the primary's durable state (`store/tasks/goals.rs`):
//! this command only creates it and watches; killing it, or any member,
//! does not stop the goal (Ctrl-C does: it cancels the goal's task).

use super::run::{EXIT_CANNOT_START, EXIT_GROVE, Verdict};
use super::run_view::OutputFormat;
use super::task_args::TaskArgs;
use super::{CliError, Context, EXIT_FAILED, EXIT_OK, print_json};
use crate::protocol::{GoalRecord, GoalSpec, GoalStatus, NewTask, TaskRecord};
use clap::Args;
use serde_json::{Value, json};

/// The goal ended `blocked`: the agent needs a human.
pub const EXIT_BLOCKED: i32 = 4;
/// The goal ended `stalled`: progress stopped rising.
pub const EXIT_STALLED: i32 = 5;
/// The goal ran out of time (as `timeout(1)` reports it).
pub const EXIT_TIMEOUT: i32 = 124;

pub const GOAL_AFTER_HELP: &str = "\
How a goal runs:
  Each iteration ends with a conclusion block (status, summary, progress
  0-100, next_step, blocked_reason). On an ACP engine the iterations are
  turns of one agent session; on a CLI engine each is a new run of the
  agent, given the previous iteration's conclusion. The goal is kept by the
  workspace's primary: closing this terminal, or a member crashing, does not
  stop it (`grove goals`, `grove show ID`); Ctrl-C cancels it.

It ends:
  completed  an iteration concluded success
  blocked    an iteration concluded blocked (see blocked_reason)
  stalled    progress did not rise above its best for --stall-after
             iterations in a row (a missing or malformed block counts)
  timeout    --max-duration passed (the running iteration is cancelled)
  failed     an iteration concluded failed, the agent failed, or
             --max-iterations ran out
  cancelled  its task was cancelled (`grove cancel ID`)

Output (--output-format): as `grove run`, plus {\"type\":\"goal\"} lines on
each change of the goal in stream-json. The result document (json; the
last line of stream-json, with \"type\":\"result\") has exactly: session_id
(the goal's id, which is its task's), objective, status, iteration,
max_iterations, max_duration_seconds, response (the last summary),
progress, next_step, blocked_reason.

Exit codes:
  0    completed
  1    failed, or cancelled by someone else
  2    usage error
  4    blocked
  5    stalled
  124  timeout
  125  grove itself failed; 126 the engine could not start; 127 no such
       engine or program (as `grove run`)
  130  interrupted: Ctrl-C cancels the goal (a second one stops waiting)
  141  stdout's reader went away (`| head -1`): the goal goes on
SIGHUP and SIGTERM end `grove goal` alone: the goal keeps going (--timeout
bounds it).

Examples:
  grove goal -e claude 'make every test in tests/ pass' --max-iterations 10
  grove goal -e gemini 'port the CLI to clap 4' --max-duration 2h --output-format json";

#[derive(Args, Debug)]
pub struct GoalArgs {
    /// The objective is PROMPT (an agent engine's: not `shell`); the task
    /// flags are `grove run`'s.
    #[command(flatten)]
    pub task: TaskArgs,
    /// Most iterations before the goal ends `failed`.
    #[arg(long, default_value_t = 20)]
    pub max_iterations: u32,
    /// Longest the goal may take, from now: 90s, 30m, 1h, 2h30m, or
    /// seconds.
    #[arg(long, default_value = "1h", value_parser = parse_duration_ms)]
    pub max_duration: u64,
    /// Iterations in a row without progress before the goal ends
    /// `stalled`.
    #[arg(long, default_value_t = 3)]
    pub stall_after: u32,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output_format: OutputFormat,
    /// No spinner and no notes on stderr (errors are still printed).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// What a goal is allowed, beside its task.
pub struct GoalLimits {
    max_iterations: u32,
    max_duration_ms: u64,
    stall_after: u32,
}

impl GoalLimits {
    pub fn spec(self, task: NewTask) -> GoalSpec {
        GoalSpec {
            task,
            max_iterations: self.max_iterations,
            max_duration_ms: self.max_duration_ms,
            stall_after: self.stall_after,
        }
    }
}

pub async fn run(ctx: &Context, args: GoalArgs) -> Result<i32, CliError> {
    if args.max_iterations == 0 || args.stall_after == 0 {
        return Err(CliError::Usage(
            "--max-iterations and --stall-after must be at least 1".into(),
        ));
    }
    let limits = GoalLimits {
        max_iterations: args.max_iterations,
        max_duration_ms: args.max_duration,
        stall_after: args.stall_after,
    };
    let mut new = args.task.new_task()?;
    super::orchestrate::place_in_chain(ctx, &mut new);
    let followed =
        super::run::follow_new(ctx, new, Some(limits), args.output_format, args.quiet).await;
    match followed {
        Err(CliError::Usage(m)) => Err(CliError::Usage(m)),
        Err(e) => {
            errln!("grove: {e}");
            Ok(EXIT_GROVE)
        }
        Ok(code) => Ok(code),
    }
}

/// The exit code of an ended goal; `run_code` is what `grove run` would
/// say of its task (grove's own failures and a failed start stay apart).
pub fn exit_code(goal: &GoalRecord, last_run: Verdict) -> i32 {
    match goal.status {
        GoalStatus::Completed => EXIT_OK,
        GoalStatus::Blocked => EXIT_BLOCKED,
        GoalStatus::Stalled => EXIT_STALLED,
        GoalStatus::Timeout => EXIT_TIMEOUT,
        GoalStatus::Failed if last_run == Verdict::Lost => EXIT_GROVE,
        GoalStatus::Failed if last_run == Verdict::CannotStart => EXIT_CANNOT_START,
        GoalStatus::Failed | GoalStatus::Cancelled | GoalStatus::Running => EXIT_FAILED,
    }
}

/// The result document: exactly these fields.
pub fn result(g: &GoalRecord) -> Value {
    json!({
        "session_id": g.id,
        "objective": g.objective,
        "status": g.status.as_str(),
        "iteration": g.iteration,
        "max_iterations": g.max_iterations,
        "max_duration_seconds": g.max_duration_ms as f64 / 1000.0,
        "response": g.response,
        "progress": g.progress,
        "next_step": g.next_step,
        "blocked_reason": g.blocked_reason,
    })
}

/// How the goal ended, on stderr (whatever the output format).
pub fn explain(g: &GoalRecord, task: &TaskRecord, verdict: Verdict, engine: &str) {
    if verdict == Verdict::Interrupted {
        return;
    }
    let after = format!(
        "after {} iteration{}",
        g.iteration,
        if g.iteration == 1 { "" } else { "s" }
    );
    let why = match g.status {
        GoalStatus::Blocked => g.blocked_reason.clone().or(g.response.clone()),
        _ => g.response.clone(),
    };
    let why = why.map(|w| format!(": {w}")).unwrap_or_default();
    if verdict == Verdict::CannotStart {
        errln!(
            "grove: engine '{engine}' could not start goal {0}{why} (what it wrote: `grove logs {0}`)",
            task.id
        );
        return;
    }
    errln!("grove: goal {} {} {after}{why}", g.id, g.status.as_str());
}

/// `--max-duration`: 90s, 30m, 1h, 2h30m, 1d, or plain seconds.
fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let bad = || format!("'{s}' is not a duration (e.g. 90s, 30m, 1h, 2h30m, 3600)");
    if let Ok(secs) = s.parse::<u64>() {
        return secs.checked_mul(1000).filter(|&ms| ms > 0).ok_or_else(bad);
    }
    let (mut total, mut digits) = (0u64, String::new());
    for ch in s.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let unit = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        total = n
            .checked_mul(unit * 1000)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(bad)?;
    }
    if !digits.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(total)
}

/// `grove goals`: the running goals (all with `--all`).
pub async fn list(ctx: &Context, all: bool, json: bool) -> Result<i32, CliError> {
    let goals = ctx.reader()?.goals(all, 200)?;
    if json {
        print_json(&goals);
        return Ok(EXIT_OK);
    }
    if goals.is_empty() {
        outln!(
            "{}",
            if all {
                "no goals"
            } else {
                "no running goals (--all for ended ones)"
            }
        );
        return Ok(EXIT_OK);
    }
    outln!(
        "{:<12} {:<9} {:>9} {:>8}  OBJECTIVE",
        "ID",
        "STATUS",
        "ITERATION",
        "PROGRESS"
    );
    for g in goals {
        outln!("{}", row(&g));
    }
    Ok(EXIT_OK)
}

fn row(g: &GoalRecord) -> String {
    let objective: String = g
        .objective
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(60)
        .collect();
    format!(
        "{:<12} {:<9} {:>9} {:>8}  {objective}",
        &g.id[..12.min(g.id.len())],
        g.status.as_str(),
        format!("{}/{}", g.iteration, g.max_iterations),
        g.progress
            .map(|p| format!("{p}%"))
            .unwrap_or_else(|| "-".into()),
    )
}

/// What `grove show` adds for a task that pursues a goal.
pub fn show_lines(g: &GoalRecord) -> Vec<String> {
    let mut out = vec![format!(
        "goal:       {} · iteration {} of {} · stall after {} ({} so far) · max {} s",
        g.status.as_str(),
        g.iteration,
        g.max_iterations,
        g.stall_after,
        g.stalls,
        g.max_duration_ms / 1000
    )];
    if let Some(p) = g.progress {
        out.push(format!("progress:   {p}%"));
    }
    for (name, v) in [
        ("response:  ", &g.response),
        ("next step: ", &g.next_step),
        ("blocked:   ", &g.blocked_reason),
    ] {
        if let Some(v) = v {
            out.push(format!("{name} {v}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration_ms("90"), Ok(90_000));
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert_eq!(parse_duration_ms("2h30m"), Ok(9_000_000));
        assert_eq!(parse_duration_ms("1d"), Ok(86_400_000));
        for bad in ["", "0", "h", "1x", "10m5", "0s", "-3"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
    }
}
