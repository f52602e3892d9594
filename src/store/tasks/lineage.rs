//! A task's lineage: creation (with its first status), retry (a new task
//! from a finished one), relaunch (the same task again, and the dependents
//! it failed rearmed), deletion (and the dependents it fails).

use super::change::save;
use super::graph::{cascade, dependents, edges_of, ready_status, status_from_deps};
use super::{Ctx, Limits, Res, finished_task, ok};
use crate::protocol::{
    DEPTH_ENV, ErrorCode, EventData, FailureReason, NewTask, PARENT_REF_ENV, ReplyBody,
    TaskChanges, TaskRecord, TaskSpec, TaskStatus, Worktree, now_ms,
};
use crate::store::StoreError;
use crate::store::rows::{self, edge_key};
use crate::store::txn::{Applied, append_event, refused};
use rusqlite::Connection;

/// A task for `spec`, not yet inserted: checked, and pending, queued or
/// already failed as its dependencies call for.
fn new_task(
    c: &Ctx<'_>,
    spec: TaskSpec,
    retry_of: Option<String>,
    attempt: u32,
) -> Result<TaskRecord, Applied> {
    let tx = c.tx;
    let deps = check_spec(tx, &spec)?;
    match &spec.parent_id {
        Some(parent) => check_parent(tx, parent, c.limits)?,
        None => check_inherited(&spec, c.limits)?,
    }
    let now = now_ms();
    let id = new_task_id(c.id_prefix);
    // A retry copies its task's spec: its worktree is named after the new
    // id, from the same base.
    let mut spec = spec;
    spec.worktree = (spec.worktree.take()).map(|w| Worktree::for_task(&id, w.base));
    let mut task = TaskRecord {
        retry_of,
        attempt,
        ..TaskRecord::new(id, spec, now)
    };
    // Not inserted yet, so no edges: the listed dependencies' statuses.
    task.status = status_from_deps(deps.into_iter().map(Some));
    if task.status == TaskStatus::Failed {
        // A dependency that already failed dooms the new task at once.
        task.failure_reason = Some(FailureReason::DependencyFailed);
        task.finished_at = Some(now);
    }
    Ok(task)
}

/// A new task's id: 32 random hex digits, but for the first three when
/// the batch gives them (`Ctx::id_prefix`).
fn new_task_id(prefix: Option<u16>) -> String {
    let random = uuid::Builder::from_random_bytes(random_id_bytes()).into_uuid();
    let mut id = random.simple().to_string();
    if let Some(prefix) = prefix {
        id.replace_range(..3, &format!("{prefix:03x}"));
    }
    id
}

/// 16 random bytes for a task id. A `getrandom` call per id was ~2 % of
/// the store thread's time under a burst of creates: ids come from a pool
/// the thread refills with one call per [`ID_POOL`] ids. A process forked
/// from one that drew ids refills its own: a copied pool would hand it
/// the parent's next ids.
fn random_id_bytes() -> [u8; 16] {
    use std::cell::RefCell;
    thread_local! {
        static POOL: RefCell<(u32, Vec<[u8; 16]>)> = const { RefCell::new((0, Vec::new())) };
    }
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let pid = std::process::id();
        if pool.0 != pid {
            *pool = (pid, Vec::new());
        }
        if let Some(bytes) = pool.1.pop() {
            return bytes;
        }
        let mut fresh = vec![[0u8; 16]; ID_POOL];
        fill_random(fresh.as_flattened_mut());
        let bytes = fresh.pop().expect("the pool is not empty");
        pool.1 = fresh;
        bytes
    })
}

/// Task ids drawn per `getrandom` call (see [`random_id_bytes`]).
const ID_POOL: usize = 64;

/// Fills `buf` from the kernel's CSPRNG, as `uuid`'s v4 does.
fn fill_random(mut buf: &mut [u8]) {
    while !buf.is_empty() {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
        match n {
            n if n > 0 => buf = &mut buf[n as usize..],
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            // getrandom(2) fails otherwise only for bad arguments, or on a
            // kernel older than 3.17, which grove does not run on.
            _ => panic!("getrandom failed: {}", std::io::Error::last_os_error()),
        }
    }
}

/// What a new task may not be: without a prompt, with a zero timeout, or
/// waiting on a task twice or on one that does not exist. Answers the
/// statuses of its dependencies, in the listed order.
fn check_spec(tx: &Connection, spec: &TaskSpec) -> Result<Vec<TaskStatus>, Applied> {
    if spec.prompt.trim().is_empty() {
        return Err(refused(ErrorCode::InvalidParams, "the prompt is empty"));
    }
    no_nul(&spec.prompt, "the prompt")?;
    too_long(&spec.prompt, "the prompt")?;
    // The rest of the spec (environment, tags, arguments, model) beside
    // the prompt: a record travels whole in each event about it, which
    // must stay within a frame with the conclusion to come.
    let size = spec_size_bound(spec);
    if size > MAX_SPEC_BYTES {
        return Err(refused(
            ErrorCode::InvalidParams,
            format!(
                "the task is {size} bytes with its environment, tags and arguments, more than the {MAX_SPEC_BYTES} a task keeps; pass large values through a file"
            ),
        ));
    }
    if spec.timeout_ms == Some(0) {
        return Err(refused(ErrorCode::InvalidParams, "timeout must be > 0"));
    }
    if let Some(w) = &spec.worktree
        && !is_commit_id(&w.base)
    {
        return Err(refused(
            ErrorCode::InvalidParams,
            format!(
                "worktree base {:?} is not a full commit id (the primary resolves a ref when it creates the task)",
                w.base
            ),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    let mut statuses = Vec::with_capacity(spec.dependencies.len());
    for dep in &spec.dependencies {
        if !seen.insert(dep) {
            return Err(refused(
                ErrorCode::InvalidParams,
                format!("dependency {dep} is listed twice"),
            ));
        }
        let Some(status) = rows::status(tx, dep)? else {
            return Err(refused(
                ErrorCode::InvalidParams,
                format!("unknown dependency {dep}"),
            ));
        };
        statuses.push(status);
    }
    Ok(statuses)
}

/// A full SHA-1 or SHA-256 commit id, in lowercase hex.
fn is_commit_id(s: &str) -> bool {
    matches!(s.len(), 40 | 64)
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// How far below a top-level task a task stands: the steps up its parent
/// chain here, and, above its top-level ancestor, the levels that one
/// inherited from the workspace that delegated it ([`DEPTH_ENV`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Level {
    /// Every level, here and inherited.
    pub total: u32,
    /// The inherited part, and the task that delegated the chain's top
    /// (`<workspace>#<task>`), when the walk reached it.
    pub inherited: Option<(u32, String)>,
}

/// `task`'s [`Level`]. The chain is walked at most `cap` steps (the answer
/// is then `cap`, the rest uncounted); parents are only ever older tasks,
/// so it ends anyway. A parent deleted since ends the walk, but not the
/// count: the level each spawned task had when it was created is kept
/// (`task_depths`), and the deepest the chain's kept levels say wins.
pub(crate) fn level(conn: &Connection, task: &TaskRecord, cap: u32) -> Result<Level, StoreError> {
    let inherit = |s: &TaskSpec| {
        let n = s.inherited_depth().unwrap_or(0);
        (n > 0).then(|| (n, s.env.get(PARENT_REF_ENV).cloned().unwrap_or_default()))
    };
    let mut here = 0u32;
    let mut kept = kept_depth(conn, &task.id)?.unwrap_or(0);
    let mut inherited = inherit(&task.spec);
    let mut up = task.spec.parent_id.clone();
    while let Some(id) = up {
        here += 1;
        if here >= cap {
            return Ok(Level {
                total: here.max(kept),
                inherited: None,
            });
        }
        let parent = rows::get(conn, &id)?;
        if parent.is_some()
            && let Some(d) = kept_depth(conn, &id)?
        {
            kept = kept.max(here.saturating_add(d));
        }
        inherited = parent.as_ref().and_then(|p| inherit(&p.spec));
        up = parent.and_then(|p| p.spec.parent_id);
    }
    let walked = here.saturating_add(inherited.as_ref().map_or(0, |(n, _)| *n));
    Ok(Level {
        total: walked.max(kept),
        inherited,
    })
}

/// The level kept for task `id` when it was created (`None`: none kept:
/// a top-level task, or one made before schema 15).
fn kept_depth(conn: &Connection, id: &str) -> Result<Option<u32>, StoreError> {
    use rusqlite::OptionalExtension;
    let depth: Option<Option<i64>> = conn
        .prepare_cached("SELECT depth FROM task_depths WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    Ok(depth
        .flatten()
        .map(|d| u32::try_from(d).unwrap_or(u32::MAX)))
}

/// A child of `parent` may be created: the parent exists, is not too deep
/// (its [`Level`], levels inherited from another workspace included) and
/// has room for another child.
fn check_parent(tx: &Connection, parent: &str, limits: Limits) -> Result<(), Applied> {
    let Some(p) = rows::get(tx, parent)? else {
        return Err(refused(
            ErrorCode::InvalidParams,
            format!("unknown parent task {parent}"),
        ));
    };
    refuse_below_cancelled(&p)?;
    let at = level(tx, &p, limits.max_depth)?;
    if at.total >= limits.max_depth {
        let across = match &at.inherited {
            Some((n, from)) => format!(
                " ({n} of them in the workspace that delegated this chain here, from {from})"
            ),
            None => String::new(),
        };
        return Err(refused(
            ErrorCode::Conflict,
            format!(
                "delegation too deep: task {parent} is already {} levels below a top-level task{across}, and max_delegation_depth is {}; do the work in this task, or raise max_delegation_depth in .grove/grove.toml",
                at.total, limits.max_depth
            ),
        ));
    }
    let children: i64 = tx
        .prepare_cached("SELECT COUNT(*) FROM tasks WHERE parent_id = ?1")?
        .query_row([parent], |r| r.get(0))?;
    if children >= i64::from(limits.max_children) {
        return Err(refused(
            ErrorCode::Conflict,
            format!(
                "task {parent} already has {children} children, the most max_children ({}) allows; wait for them and purge finished ones, or raise max_children in .grove/grove.toml",
                limits.max_children
            ),
        ));
    }
    Ok(())
}

/// A cancelled task's agent may still be ending (its kill grace): work it
/// started below it then — a child spawned, a child retried or relaunched
/// (its tools can) — would run on unseen after `cancel --tree` read the
/// tree. So nothing new runs below a cancelled task; the work can be
/// spawned anew, without that parent. Checked for what is asked over the
/// wire (a create, a retry, a relaunch), never for an await's rerun of its
/// parent inside a child's end, which is never refused.
pub(super) fn refuse_below_cancelled(parent: &TaskRecord) -> Result<(), Applied> {
    if parent.status != TaskStatus::Cancelled {
        return Ok(());
    }
    Err(refused(
        ErrorCode::Conflict,
        format!(
            "task {} was cancelled: nothing new runs below it; spawn the work anew (without it as parent)",
            parent.id
        ),
    ))
}

/// A task delegated from another workspace without a parent here stands
/// at the level its proxy there had: refused beyond this workspace's
/// limit, as a child that deep here would be.
fn check_inherited(spec: &TaskSpec, limits: Limits) -> Result<(), Applied> {
    let depth = spec.inherited_depth().map_err(|v| {
        refused(
            ErrorCode::InvalidParams,
            format!("{DEPTH_ENV} is '{v}', not a number of levels (grove delegate-run sets it)"),
        )
    })?;
    if depth > limits.max_depth {
        let from = match spec.env.get(PARENT_REF_ENV) {
            Some(from) => format!("was delegated from {from}"),
            None => format!("says ({DEPTH_ENV}) it was delegated"),
        };
        return Err(refused(
            ErrorCode::Conflict,
            format!(
                "delegation too deep: this task {from} at {depth} levels below a top-level task there, and max_delegation_depth is {} here; do the work in the delegating task, or raise max_delegation_depth in .grove/grove.toml",
                limits.max_depth
            ),
        ));
    }
    Ok(())
}

/// A NUL byte ends a C string: no command line, environment or file name
/// can hold one, so a prompt with one would be accepted and then fail to
/// start (a `spawn_error` that names nothing the user did).
pub(super) fn no_nul(text: &str, what: &str) -> Result<(), Applied> {
    match text.find('\0') {
        None => Ok(()),
        Some(at) => Err(refused(
            ErrorCode::InvalidParams,
            format!("{what} holds a NUL byte (at byte {at}), which no command line can carry"),
        )),
    }
}

/// What a user sends to a resume or relaunch (a new prompt, instructions
/// added to the old one) is refused when the prompt would be longer than
/// a record keeps. Only there: the same writes made inside a child's end
/// (an await's results, a goal's next iteration) are never refused, and
/// fit the prompt instead ([`fit_prompt`]).
pub(super) fn check_sent_prompt(
    tx: &Connection,
    id: &str,
    instructions: Option<&str>,
    changes: &TaskChanges,
) -> Result<(), Applied> {
    if let Some(p) = &changes.prompt {
        too_long(p, "the new prompt")?;
    }
    let Some(extra) = instructions.filter(|s| !s.trim().is_empty()) else {
        return Ok(());
    };
    let base = match &changes.prompt {
        Some(p) => p.len(),
        None => rows::get(tx, id)?.map_or(0, |t| t.spec.prompt.len()),
    };
    if base + 2 + extra.len() > crate::protocol::MAX_PROMPT_BYTES {
        return Err(refused(
            ErrorCode::InvalidParams,
            format!(
                "the prompt with the instructions would be {} bytes, more than the {} a task keeps; put the long part in a file and name it",
                base + 2 + extra.len(),
                crate::protocol::MAX_PROMPT_BYTES
            ),
        ));
    }
    Ok(())
}

/// `prompt` with `extra` after it, within what a record keeps: when too
/// long, the end of the earlier prompt goes (its start, the task's own
/// words, and the newest text stay), saying so. For writes that are never
/// refused: an await's results piling up over resurrections.
pub(super) fn fit_prompt(prompt: &str, extra: &str) -> String {
    const CUT: &str = "\n\n[grove: earlier text cut here to keep the prompt within its bound]";
    let max = crate::protocol::MAX_PROMPT_BYTES;
    if prompt.len() + 2 + extra.len() <= max {
        return format!("{prompt}\n\n{extra}");
    }
    let mut keep = max
        .saturating_sub(extra.len() + 2 + CUT.len())
        .min(prompt.len());
    while !prompt.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{CUT}\n\n{extra}", &prompt[..keep])
}

/// The most a task's spec may take encoded: the prompt's bound and room
/// for its environment, tags and arguments, leaving a frame room for the
/// rest of the record (a bounded conclusion, progress).
const MAX_SPEC_BYTES: usize = 640 * 1024;

/// At least what `spec` takes encoded, without encoding it a second time
/// on the store thread (the record is encoded for its event anyway): its
/// texts, each with room for its string header and its field's name, and
/// room for the fixed-size fields.
pub(crate) fn spec_size_bound(spec: &TaskSpec) -> usize {
    const FIXED: usize = 1024;
    const PER_TEXT: usize = 32;
    let one = |s: &String| s.len() + PER_TEXT;
    let opt = |s: &Option<String>| s.as_ref().map_or(0, one);
    let all = |v: &[String]| v.iter().map(one).sum::<usize>();
    let env: usize = spec.env.iter().map(|(k, v)| one(k) + one(v)).sum();
    let tree = (spec.worktree.as_ref()).map_or(0, |w| one(&w.base) + one(&w.branch) + one(&w.path));
    FIXED
        + one(&spec.prompt)
        + one(&spec.engine)
        + [
            &spec.model,
            &spec.work_dir,
            &spec.persona,
            &spec.session_id,
            &spec.parent_id,
        ]
        .into_iter()
        .map(opt)
        .sum::<usize>()
        + all(&spec.dependencies)
        + all(&spec.tags)
        + all(&spec.extra_args)
        + env
        + tree
}

/// A prompt longer than a task record may keep (`MAX_PROMPT_BYTES`).
pub(super) fn too_long(text: &str, what: &str) -> Result<(), Applied> {
    let max = crate::protocol::MAX_PROMPT_BYTES;
    if text.len() <= max {
        return Ok(());
    }
    Err(refused(
        ErrorCode::InvalidParams,
        format!(
            "{what} is {} bytes, more than the {max} a task keeps; put the long part in a file and name it in the prompt",
            text.len()
        ),
    ))
}

/// What a resume or relaunch may not change a task to: an empty prompt or
/// a zero timeout (the engine and model are the admission's).
pub(super) fn check_changes(changes: &TaskChanges) -> Result<(), Applied> {
    if changes.prompt.as_ref().is_some_and(|p| p.trim().is_empty()) {
        return Err(refused(ErrorCode::InvalidParams, "the new prompt is empty"));
    }
    if let Some(p) = &changes.prompt {
        no_nul(p, "the new prompt")?;
    }
    if changes.timeout_ms == Some(0) {
        return Err(refused(ErrorCode::InvalidParams, "timeout must be > 0"));
    }
    Ok(())
}

/// A task created by `task.create`; the engine left out is the shell (the
/// primary fills in its configured default before the write gets here).
pub(super) fn create_new(c: &mut Ctx<'_>, new: &NewTask) -> Res {
    let task = new_task(c, new.clone().with_engine_or("shell"), None, 1)?;
    create(c, task)
}

/// Inserts a new task and appends its `task.created`.
fn create(c: &mut Ctx<'_>, mut task: TaskRecord) -> Res {
    task.bound_texts();
    rows::insert(c.tx, &task)?;
    if task.spec.parent_id.is_some() {
        // Kept, so that its descendants count it even after an ancestor
        // is purged (see `level`). Top-level tasks need none: their walk
        // is their own spec.
        let depth = level(c.tx, &task, c.limits.max_depth.saturating_add(1))?.total;
        c.tx.prepare_cached("INSERT OR REPLACE INTO task_depths (id, depth) VALUES (?1, ?2)")?
            .execute(rusqlite::params![task.id, depth])?;
    }
    c.events.push(append_event(
        c.tx,
        c.epoch,
        EventData::TaskCreated { task: task.clone() },
    )?);
    ok(task)
}

/// A new task from a finished one (`retry_of`, `attempt + 1`).
pub(super) fn retry(c: &mut Ctx<'_>, id: &str) -> Res {
    let old = finished_task(c.tx, id, "retry")?;
    // A completed dependency purged since stays satisfied: the new
    // attempt does not wait for it (nor could it name it).
    let waits_on = edges_of(c.tx, &old)?;
    let mut spec = TaskSpec {
        dependencies: (old.spec.dependencies.iter())
            .filter(|d| waits_on.contains(*d))
            .cloned()
            .collect(),
        ..old.spec.clone()
    };
    if c.limits.retry_notice
        && spec.engine != "shell"
        && let Some(notice) = retry_notice(&old)
        && notice.len() + 2 + spec.prompt.len() <= crate::protocol::MAX_PROMPT_BYTES
    {
        spec.prompt = format!("{notice}\n\n{}", spec.prompt);
    }
    let task = new_task(c, spec, Some(old.id.clone()), old.attempt + 1)?;
    create(c, task)
}

/// A short notice of why the previous attempt did not succeed, for the
/// agent of the next one (nothing when it completed).
fn retry_notice(old: &TaskRecord) -> Option<String> {
    if old.status == TaskStatus::Completed {
        return None;
    }
    let mut why = match old.failure_reason {
        Some(r) => format!("{} ({})", old.status.as_str(), r.as_str()),
        None => old.status.as_str().to_string(),
    };
    if let Some(code) = old.exit_code {
        why.push_str(&format!(", exit code {code}"));
    }
    if let Some(c) = &old.conclusion {
        let summary: String = c.summary.chars().take(400).collect();
        why.push_str(&format!("; it concluded: {summary}"));
    } else if let Some(note) = &old.progress_text {
        let note: String = note.chars().take(400).collect();
        why.push_str(&format!("; last note: {note}"));
    }
    Some(format!(
        "[grove: attempt {} of this task ended {why}. Take that into account.]",
        old.attempt
    ))
}

/// Reruns a finished task under its id (see [`rearm`]), with `changes`
/// to its spec (checked by the admission like a spawn's) and then
/// Whether words may be appended to the task's prompt: not to a shell
/// task's, which is a command line.
pub(super) fn takes_instructions(spec: &TaskSpec) -> bool {
    spec.engine != "shell"
}

/// Instructions (a review's comments, a resume's words) are appended to
/// the prompt for an agent to read; the shell engine's prompt is a
/// command line, where they would run as commands.
pub(super) fn refuse_instructions_for_shell(spec: &TaskSpec, id: &str) -> Result<(), Applied> {
    if takes_instructions(spec) {
        return Ok(());
    }
    Err(refused(
        ErrorCode::InvalidParams,
        format!(
            "task {id} runs the shell engine: its prompt is a command line, and instructions added to it would run as commands; give it a new command instead (`grove relaunch {id} --prompt '...'` once it has ended)"
        ),
    ))
}

/// `instructions` appended to its prompt (a review's comments).
pub(super) fn relaunch(
    c: &mut Ctx<'_>,
    id: &str,
    instructions: Option<&str>,
    changes: &TaskChanges,
) -> Res {
    let mut task = finished_task(c.tx, id, "relaunch")?;
    check_changes(changes)?;
    changes.apply(&mut task.spec);
    if let Some(extra) = instructions.filter(|s| !s.trim().is_empty()) {
        refuse_instructions_for_shell(&task.spec, id)?;
        no_nul(extra, "the instructions")?;
        task.spec.prompt = fit_prompt(&task.spec.prompt, extra);
    }
    let task = rearm(c, task)?;
    if task.status == TaskStatus::Failed {
        // Failed again at once (a dependency failed or is gone):
        // dependents that were released when it completed, and
        // still wait, can never run either.
        cascade(c, &task.id, TaskStatus::Failed)?;
    } else {
        rearm_dependents(c, &task.id)?;
    }
    ok(task)
}

/// Resets a finished task for another run under the same id.
fn rearm(c: &mut Ctx<'_>, mut task: TaskRecord) -> Result<TaskRecord, Applied> {
    task.status = ready_status(c.tx, &task)?;
    task.failure_reason =
        (task.status == TaskStatus::Failed).then_some(FailureReason::DependencyFailed);
    task.exit_code = None;
    task.pid = None;
    task.run_id = None;
    task.progress_pct = None;
    task.progress_text = None;
    task.started_at = None;
    task.conclusion = None;
    task.finished_at = (task.status == TaskStatus::Failed).then(now_ms);
    match save(c, task)? {
        Ok(ReplyBody::Task(t)) => Ok(*t),
        Ok(_) => unreachable!("save returns the task"),
        Err(e) => Err(Applied::Refused(e)),
    }
}

/// Dependents that failed only because of `root` get another chance, and
/// so on down the graph. One that another dependency still fails is left
/// alone: rearming it would only rewrite its failure (and wake its waiters)
/// for nothing. A work list, not recursion: a chain of 10,000 dependents
/// must not take 10,000 stack frames of the store thread.
fn rearm_dependents(c: &mut Ctx<'_>, root: &str) -> Result<(), Applied> {
    let mut work = vec![root.to_string()];
    while let Some(id) = work.pop() {
        for dep_id in dependents(c.tx, &id)? {
            let Some(t) = rows::get(c.tx, &dep_id)? else {
                continue;
            };
            if t.status == TaskStatus::Failed
                && t.failure_reason == Some(FailureReason::DependencyFailed)
                && ready_status(c.tx, &t)? != TaskStatus::Failed
            {
                work.push(rearm(c, t)?.id);
            }
        }
    }
    Ok(())
}

pub(super) fn delete(c: &mut Ctx<'_>, task: &TaskRecord) -> Res {
    c.tx.prepare_cached("DELETE FROM tasks WHERE id = ?1")?
        .execute([&task.id])?;
    c.tx.prepare_cached("DELETE FROM task_depths WHERE id = ?1")?
        .execute([&task.id])?;
    super::slot_loans::forget(c.tx, &task.id)?;
    // Its conversation (kept past the event retention while it existed).
    c.tx.prepare_cached("DELETE FROM events WHERE task_id = ?1")?
        .execute([&task.id])?;
    // Edges from this task go. Edges to it stay when it had not completed,
    // so that its waiting dependents can still be found (and failed) below;
    // a completed task's edges go too: what it produced stays produced, so
    // its dependents stay satisfied (purging history must not fail work).
    c.tx.prepare_cached("DELETE FROM task_deps WHERE task_at = ?1 AND task_id = ?2")?
        .execute(edge_key(task))?;
    super::goals::deleted(c, &task.id)?;
    // Its awaits go with it; an await of its parent counts it as ended.
    c.tx.prepare_cached("DELETE FROM awaits WHERE parent_id = ?1")?
        .execute([&task.id])?;
    if let Some(parent) = &task.spec.parent_id {
        super::awaits::child_ended(c, parent, &task.id)?;
    }
    if task.status == TaskStatus::Completed {
        c.tx.prepare_cached("DELETE FROM task_deps WHERE dep_id = ?1")?
            .execute([&task.id])?;
    }
    c.events.push(append_event(
        c.tx,
        c.epoch,
        EventData::TaskDeleted {
            id: task.id.clone(),
        },
    )?);
    // Waiting dependents of an unfinished task can never run now.
    if task.status != TaskStatus::Completed {
        cascade(c, &task.id, TaskStatus::Failed)?;
    }
    Ok(Ok(ReplyBody::Deleted {
        id: task.id.clone(),
    }))
}

#[cfg(test)]
mod id_tests {
    use super::*;

    #[test]
    fn task_ids_drawn_across_pool_refills_are_all_different() {
        let ids: std::collections::HashSet<String> =
            (0..ID_POOL * 5 + 3).map(|_| new_task_id(None)).collect();
        assert_eq!(ids.len(), ID_POOL * 5 + 3);
        // 32 hex digits: usable as a file name (`runs::RunFiles::is_safe_id`).
        assert!((ids.iter()).all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())));
        let prefixed = new_task_id(Some(0xabc));
        assert!(prefixed.starts_with("abc"), "{prefixed}");
    }
}
