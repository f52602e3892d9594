//! A task's own git worktree: `.grove/worktrees/<id>` on branch
//! `grove/<short id>`, made from a recorded base commit (see
//! docs/design.md, Worktrees).
//!
//! Everything goes through the `git` command line, not a library: it is
//! what the user already has and trusts with their repository (its hooks,
//! config, credentials and on-disk format are the ones their own `git`
//! uses), `worktree` and `merge-tree --write-tree` are only there in full,
//! and it costs no large dependency. Branch names, paths and refs are
//! always separate arguments, never text for a shell.
//!
//! `mod.rs` the base, creation and removal; `diff.rs` a task's changes;
//! `merge.rs` bringing them into a branch.

pub(crate) mod bounded;
pub mod diff;
pub mod merge;
mod scratch_objects;
mod undo;

use crate::protocol::Worktree;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// Why a worktree operation did not happen. `Usage` is the user's to fix
/// (no repository, an unknown ref, a dirty checkout): the CLI exits 2 for
/// the first two and 1 for the rest, as it reports them.
#[derive(Debug, thiserror::Error)]
pub enum WorktreeError {
    /// Not possible in this workspace or with these arguments.
    #[error("{0}")]
    Usage(String),
    /// Refused or failed: a conflict, a dirty checkout, git failing.
    #[error("{0}")]
    Failed(String),
    /// Stopped at its deadline (the board's merge and discard, see
    /// `bounded`): what that left, in words.
    #[error("{0}")]
    Stopped(String),
}

/// Said when a deadline stopped a merge before it moved anything.
pub(crate) const NOTHING_MERGED: &str = "nothing was merged: your checkout and the branch to merge into are as they were (the task's uncommitted work may now be committed on its own branch)";

pub type Result<T> = std::result::Result<T, WorktreeError>;

/// One `git` command in `dir`: its stdout, or its stderr as the error.
pub(crate) fn git<I, S>(dir: &Path, args: I) -> std::result::Result<String, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    output_of(command(dir, args))
}

/// `cmd` (a [`command`]) run to its end: its stdout, or why it failed.
fn output_of(cmd: std::process::Command) -> std::result::Result<String, String> {
    let (status, stdout, stderr) = run_to_files(cmd)?;
    if status.success() {
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&stderr).trim().to_string();
        Err(if err.is_empty() {
            format!("git exited with {status}")
        } else {
            err
        })
    }
}

/// One `git` command in `dir`: its status, stdout and stderr as bytes.
pub(crate) fn git_bytes<I, S>(
    dir: &Path,
    args: I,
) -> std::result::Result<(std::process::ExitStatus, Vec<u8>, Vec<u8>), String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_to_files(command(dir, args))
}

/// Runs `cmd` to its end: its status, stdout and stderr as bytes. Its
/// output goes to unlinked files, not pipes: a hook or filter of the
/// repository's that leaves a process in the background (`watcher &`)
/// keeps a pipe open long after git has exited, and reading it to its end
/// would wait for that process — with the worktree lock held, or a board
/// thread taken. Inside `bounded::within`, a run stopped at the deadline
/// (or not started past it) is an error.
pub(crate) fn run_to_files(
    mut cmd: std::process::Command,
) -> std::result::Result<(std::process::ExitStatus, Vec<u8>, Vec<u8>), String> {
    use std::io::{Read, Seek};
    let temp = |what| {
        tempfile::tempfile()
            .map_err(|e| format!("cannot make a temporary file for git's {what}: {e}"))
    };
    let (mut out, mut err) = (temp("output")?, temp("errors")?);
    let dup = |f: &std::fs::File| f.try_clone().map_err(|e| format!("cannot run git: {e}"));
    cmd.stdout(dup(&out)?).stderr(dup(&err)?);
    let git = bounded::Git::spawn(cmd).map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut => bounded::STOPPED.into(),
        _ => format!("cannot run git: {e} (is git installed?)"),
    })?;
    let (status, stopped) = git
        .wait()
        .map_err(|e| format!("cannot wait for git: {e}"))?;
    if stopped {
        return Err(bounded::STOPPED.into());
    }
    let read = |f: &mut std::fs::File| {
        let mut bytes = Vec::new();
        f.rewind()
            .and_then(|()| f.read_to_end(&mut bytes))
            .map(|_| bytes)
            .map_err(|e| format!("cannot read git's output: {e}"))
    };
    Ok((status, read(&mut out)?, read(&mut err)?))
}

/// A `git` command in `dir`, not steered by the caller's git environment
/// (an agent inside a task may run grove with `GIT_DIR` set).
pub(crate) fn command<I, S>(dir: &Path, args: I) -> std::process::Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = std::process::Command::new("git");
    cmd.arg("-C").arg(dir).args(args);
    for var in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_PREFIX",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null());
    cmd
}

/// The workspace's checkout: `root` must be the top of a git work tree (a
/// worktree holds the whole repository, so an agent started in a
/// subdirectory's copy would see a different layout than its task says).
pub fn check_repo(root: &Path) -> Result<()> {
    let top = git(root, ["rev-parse", "--show-toplevel"]).map_err(|e| {
        WorktreeError::Usage(format!(
            "workspace {} is not a git repository, so its tasks cannot have worktrees ({}); run `git init` there, or spawn without --worktree",
            root.display(),
            e.lines().next().unwrap_or("")
        ))
    })?;
    let top = PathBuf::from(top.trim());
    let same = match (top.canonicalize(), root.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same {
        return Err(WorktreeError::Usage(format!(
            "workspace {} is inside the git repository {}, not at its top; task worktrees need the workspace at the repository's top",
            root.display(),
            top.display()
        )));
    }
    Ok(())
}

/// Task branches are `grove/<id>`: a branch named `grove` itself (or a
/// file in the way of `refs/heads/grove/`) leaves git no room for them,
/// and every worktree task would fail at its start, after its retries.
fn check_branch_room(root: &Path) -> Result<()> {
    let taken = git(
        root,
        ["rev-parse", "--verify", "--quiet", "refs/heads/grove"],
    )
    .is_ok_and(|id| !id.trim().is_empty());
    if taken {
        return Err(WorktreeError::Usage(format!(
            "the repository at {} has a branch named `grove`: task worktrees live on branches `grove/<id>`, which git cannot make beside it; rename it (`git branch -m grove <new-name>`), or spawn without --worktree",
            root.display()
        )));
    }
    Ok(())
}

/// The full commit id `base` names (default `HEAD`) in the workspace's
/// repository.
pub fn resolve_base(root: &Path, base: Option<&str>) -> Result<String> {
    check_repo(root)?;
    check_branch_room(root)?;
    let name = base.unwrap_or("HEAD");
    let spec = format!("{name}^{{commit}}");
    match git(
        root,
        [
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            &spec,
        ],
    ) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ if base.is_none() => Err(WorktreeError::Usage(format!(
            "the repository at {} has no commit yet: a worktree branches from one (commit first, or give --base)",
            root.display()
        ))),
        _ => Err(WorktreeError::Usage(format!(
            "--base {name:?} names no commit in {}",
            root.display()
        ))),
    }
}

/// Where a task's worktree is.
pub fn path_of(root: &Path, w: &Worktree) -> PathBuf {
    root.join(&w.path)
}

fn branch_ref(w: &Worktree) -> String {
    format!("refs/heads/{}", w.branch)
}

/// The commit the branch points to, if it exists.
pub fn branch_head(root: &Path, w: &Worktree) -> Option<String> {
    let r = format!("{}^{{commit}}", branch_ref(w));
    git(
        root,
        ["rev-parse", "--verify", "--quiet", "--end-of-options", &r],
    )
    .ok()
    .map(|s| s.trim().to_string())
    .filter(|s| !s.is_empty())
}

/// One entry of `git worktree list --porcelain`.
#[derive(Debug, Default)]
struct Listed {
    path: PathBuf,
    head: String,
    branch: Option<String>,
    /// `locked initializing`: a `worktree add` that did not finish.
    initializing: bool,
    prunable: bool,
}

fn listed(root: &Path) -> std::result::Result<Vec<Listed>, String> {
    let text = git(root, ["worktree", "list", "--porcelain"])?;
    let mut all = Vec::new();
    for block in text.split("\n\n") {
        let mut entry = Listed::default();
        for line in block.lines() {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "worktree" => entry.path = PathBuf::from(value),
                "HEAD" => entry.head = value.to_string(),
                "branch" => entry.branch = Some(value.to_string()),
                "locked" => entry.initializing |= value == "initializing",
                "prunable" => entry.prunable = true,
                _ => {}
            }
        }
        if !entry.path.as_os_str().is_empty() {
            all.push(entry);
        }
    }
    Ok(all)
}

fn same_path(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    canon(a) == canon(b)
}

/// Nothing at `path`, or an empty directory: what `git worktree add` leaves
/// before it writes anything (it makes the directory first). Anything else,
/// unreadable included, may hold work.
fn nothing_in(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        Ok(m) if m.is_dir() => std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_none()),
        Ok(_) => false,
    }
}

/// How the task's worktree stands now.
#[derive(Debug, PartialEq, Eq)]
pub enum State {
    /// Registered, on its branch, checked out.
    Ready,
    /// Nothing of it: no directory, no registration.
    Absent,
    /// Provably a half-made leftover, with nothing of the task's in it: git
    /// still marks it `locked initializing` (a `worktree add` that did not
    /// finish), or its directory is missing or empty.
    Leftover,
    /// Something else is at its path: another branch or a detached HEAD
    /// checked out, a registration git cannot use, a directory git does not
    /// list (a moved repository). It may hold the task's uncommitted work,
    /// so grove never clears it (docs/design.md, Worktrees). What was found,
    /// in words.
    Astray(String),
}

pub fn state(root: &Path, w: &Worktree) -> std::result::Result<State, String> {
    let path = path_of(root, w);
    let entry = listed(root)?
        .into_iter()
        .find(|e| same_path(&e.path, &path));
    let exists = std::fs::symlink_metadata(&path).is_ok();
    Ok(match entry {
        None if !exists => State::Absent,
        Some(e) if e.initializing => State::Leftover,
        _ if nothing_in(&path) => State::Leftover,
        Some(e)
            if !e.prunable
                && e.branch.as_deref() == Some(branch_ref(w).as_str())
                && path.join(".git").exists() =>
        {
            State::Ready
        }
        entry => State::Astray(found(entry.as_ref(), w)),
    })
}

/// What is at a worktree's path that is not its branch's checkout.
fn found(entry: Option<&Listed>, w: &Worktree) -> String {
    let Some(e) = entry else {
        return "a directory git does not list as a worktree of this repository".into();
    };
    if e.prunable {
        return "a worktree git cannot use (`git worktree list` marks it prunable)".into();
    }
    match e.branch.as_deref() {
        Some(b) if b != branch_ref(w) => {
            format!("branch {} checked out", b.trim_start_matches("refs/heads/"))
        }
        Some(_) => "no `.git` file in its directory".into(),
        None => format!("a detached HEAD at {}", &e.head[..e.head.len().min(12)]),
    }
}

/// The error for a worktree that is not its branch's checkout: what was
/// found, and the user's ways out (grove deletes nothing of it).
pub fn not_on_branch(root: &Path, w: &Worktree, found: &str) -> String {
    let path = path_of(root, w);
    format!(
        "the worktree {} is not on its branch {} (found {found}); grove changed nothing in it. \
         If the repository was moved, run `git worktree repair {}`; if another branch or a detached HEAD \
         is checked out, commit what it holds and run `git -C {} switch {}`; or discard the task to throw it all away",
        w.path,
        w.branch,
        path.display(),
        path.display(),
        w.branch
    )
}

/// Makes the task's worktree exist, whatever an earlier attempt left:
/// reused when ready; a half-made leftover (an interrupted `worktree add`)
/// is removed and made again, on the branch when the branch exists (it may
/// hold the task's commits), else on a new branch from the base. The
/// branch and the checkout come from one `git worktree add -b`. Anything
/// else at its path is never removed: repaired when git can reconnect it (a
/// moved repository), else an error saying what is there. Returns what was
/// done, for the task's log. `stop` set: the run was given up (a cancel,
/// its timeout), so no further git command is started.
pub fn ensure(
    root: &Path,
    w: &Worktree,
    stop: &std::sync::atomic::AtomicBool,
) -> std::result::Result<String, String> {
    let path = path_of(root, w);
    // Several tasks' supervisors add worktrees to one repository at once:
    // git's lock files make a loser fail rather than wait, and `worktree
    // list` fails on an entry another `worktree add` is still writing. So
    // grove's own additions take turns (a flock: a killed holder releases
    // it), and what else races with them is retried.
    let _turn = take_turn(root)?;
    let given_up = || stop.load(std::sync::atomic::Ordering::SeqCst);
    let mut last = String::new();
    for attempt in 0..ENSURE_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(50 << attempt.min(4)));
        }
        if given_up() {
            return Err("given up while making the worktree".into());
        }
        let now = match state(root, w) {
            Ok(s) => s,
            Err(e) => {
                last = e;
                continue;
            }
        };
        match now {
            State::Ready => {
                return Ok(if attempt == 0 {
                    format!("reusing worktree {} on {}", w.path, w.branch)
                } else {
                    format!("created worktree {} on {}", w.path, w.branch)
                });
            }
            State::Astray(found) => return repair(root, w, &found),
            State::Leftover => clear(root, &path),
            State::Absent => {}
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            // So that `git add -A` in the workspace never records the
            // worktrees as embedded repositories.
            let ignore = dir.join(".gitignore");
            if !ignore.exists() {
                let _ = std::fs::write(ignore, "*\n");
            }
        }
        if given_up() {
            return Err("given up while making the worktree".into());
        }
        let exists = branch_head(root, w).is_some();
        let mut args: Vec<&OsStr> = vec![OsStr::new("worktree"), OsStr::new("add")];
        if !exists {
            args.extend([OsStr::new("-b"), OsStr::new(&w.branch)]);
        }
        args.extend([OsStr::new("--end-of-options"), path.as_os_str()]);
        args.push(OsStr::new(if exists { &w.branch } else { &w.base }));
        if let Err(e) = git(root, &args) {
            last = e;
        }
    }
    Err(format!(
        "cannot create worktree {} on {}: {last}",
        w.path, w.branch
    ))
}

/// A worktree that is not its branch's checkout: `git worktree repair`
/// reconnects one whose repository was moved (both sides' paths are
/// absolute); whatever it still is after that fails the run, untouched.
fn repair(root: &Path, w: &Worktree, found: &str) -> std::result::Result<String, String> {
    let path = path_of(root, w);
    let _ = git(
        root,
        [
            "worktree".as_ref(),
            "repair".as_ref(),
            "--end-of-options".as_ref(),
            path.as_os_str(),
        ],
    );
    match state(root, w)? {
        State::Ready => Ok(format!(
            "repaired worktree {} on {} (found {found})",
            w.path, w.branch
        )),
        State::Astray(now) => Err(not_on_branch(root, w, &now)),
        _ => Err(not_on_branch(root, w, found)),
    }
}

const ENSURE_ATTEMPTS: u32 = 8;

/// An exclusive flock on `.grove/worktrees/.lock`, held while one
/// supervisor makes its worktree.
fn take_turn(root: &Path) -> std::result::Result<std::fs::File, String> {
    use std::os::fd::AsRawFd;
    let dir = root.join(".grove").join("worktrees");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(".lock");
    let file = crate::paths::open_private(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: flock on an fd we own; waits for the supervisor before us.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!(
            "cannot lock {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(file)
}

/// Removes a worktree's directory and registration (not its branch).
/// Nothing more once a deadline stopped git (see [`remove`]).
fn clear(root: &Path, path: &Path) {
    let _ = git(
        root,
        [
            "worktree".as_ref(),
            "remove".as_ref(),
            "--force".as_ref(),
            "--force".as_ref(),
            path.as_os_str(),
        ],
    );
    if bounded::stopped() {
        return;
    }
    // Only ever under `.grove/worktrees/`: never a directory of the user's.
    if path.starts_with(root.join(".grove").join("worktrees")) && path.exists() {
        let _ = std::fs::remove_dir_all(path);
    }
    let _ = git(root, ["worktree", "prune"]);
}

/// Removes the task's worktree and its branch (`grove discard`, and
/// `delete`/`purge` once they are allowed to). With `until` (the board),
/// every git it runs is stopped there (`bounded::within`), and then
/// nothing further is done: git's removal of the worktree ends as it was
/// stopped (its lock files removed, see `bounded`), or not begun, which a
/// later discard finishes; the answer is [`WorktreeError::Stopped`], never
/// "removed" on the word of a git that was stopped (`branch_head` would
/// read it as "no branch").
pub fn remove(root: &Path, w: &Worktree, until: Option<std::time::Instant>) -> Result<()> {
    let Some(until) = until else {
        return remove_now(root, w);
    };
    bounded::within(until, || {
        let removed = remove_now(root, w);
        if bounded::stopped() {
            return Err(WorktreeError::Stopped(format!(
                "the worktree {} and branch {} may be partly removed; discard again to finish",
                w.path, w.branch
            )));
        }
        removed
    })
}

fn remove_now(root: &Path, w: &Worktree) -> Result<()> {
    clear(root, &path_of(root, w));
    if branch_head(root, w).is_some() {
        git(root, ["branch", "-D", "--end-of-options", &w.branch]).map_err(|e| {
            WorktreeError::Failed(format!("cannot delete branch {}: {e}", w.branch))
        })?;
    }
    Ok(())
}

/// What would be lost if the worktree and its branch went now: changes not
/// committed in the worktree, commits the workspace's `HEAD` does not
/// contain (on the branch, or reachable only from the worktree's own HEAD
/// when it is detached or on another branch). Empty when nothing would; an
/// error when git cannot tell (a moved repository, a broken worktree),
/// which must never read as "nothing".
pub fn unmerged(
    root: &Path,
    w: &Worktree,
    copied: &[String],
) -> std::result::Result<Vec<String>, String> {
    let mut lost = Vec::new();
    let path = path_of(root, w);
    if !nothing_in(&path) {
        lost.extend(tree_work(root, w, &path, copied)?);
    }
    if branch_head(root, w).is_some() {
        let range = format!("HEAD..{}", branch_ref(w));
        let n = git(root, ["rev-list", "--count", "--end-of-options", &range])?;
        let n: u64 = n.trim().parse().unwrap_or(0);
        if n > 0 && !content_merged(root, &branch_ref(w)) {
            lost.push(format!(
                "{n} commit(s) on {} that HEAD does not contain",
                w.branch
            ));
        }
    }
    Ok(lost)
}

/// Whether merging `branch` into `HEAD` would change nothing: its changes
/// are there already, though its commits are not (`grove merge --squash`,
/// a cherry-pick). Deleting a squash-merged task was refused as "never
/// merged", and the advice given, `grove merge`, merged it a second time.
/// A conflict, or any failure to tell, counts as not merged.
fn content_merged(root: &Path, branch: &str) -> bool {
    // The merged trees go to scratch objects: a check must not leave
    // objects in the user's repository (see `scratch_objects`).
    let Ok(scratch) = scratch_objects::ScratchObjects::for_repo(root) else {
        return false;
    };
    let mut cmd = command(
        root,
        [
            "merge-tree",
            "--write-tree",
            "--end-of-options",
            "HEAD",
            branch,
        ],
    );
    scratch.apply(&mut cmd);
    let head = git(root, ["rev-parse", "--verify", "HEAD^{tree}"]);
    match (output_of(cmd), head) {
        (Ok(merged), Ok(head)) => merged.lines().next().map(str::trim) == Some(head.trim()),
        _ => false,
    }
}

/// The work in the worktree itself: uncommitted changes, and commits its
/// own HEAD holds that no branch, tag or the workspace's `HEAD` does (a
/// detached HEAD's commits go with it).
fn tree_work(
    root: &Path,
    w: &Worktree,
    path: &Path,
    copied: &[String],
) -> std::result::Result<Vec<String>, String> {
    // A directory git does not see as a worktree would be read as part of
    // the workspace's checkout, where `.grove/` is ignored: "clean".
    let top = git(
        path,
        ["rev-parse", "--path-format=absolute", "--show-toplevel"],
    )?;
    if !same_path(Path::new(top.trim()), path) {
        return Err(format!(
            "git sees no worktree there (it finds {})",
            top.trim()
        ));
    }
    let mut lost = Vec::new();
    let mut status = vec!["status".to_string(), "--porcelain".into(), "--".into()];
    status.extend(work_pathspec(root, w, copied));
    if !git(path, &status)?.trim().is_empty() {
        lost.push(format!("uncommitted changes in {}", w.path));
    }
    let head = git(path, ["rev-parse", "--verify", "HEAD"])?;
    let n = git(
        root,
        [
            "rev-list",
            "--count",
            head.trim(),
            "--not",
            "HEAD",
            "--branches",
            "--tags",
            "--remotes",
        ],
    )?;
    let n: u64 = n.trim().parse().unwrap_or(0);
    if n > 0 {
        lost.push(format!(
            "{n} commit(s) only on the worktree's own HEAD (no branch holds them)"
        ));
    }
    Ok(lost)
}

/// The worktree's own git admin dir (`<repo>/.git/worktrees/<name>`).
pub fn git_dir(tree: &Path) -> Option<PathBuf> {
    let dir = git(tree, ["rev-parse", "--path-format=absolute", "--git-dir"]).ok()?;
    Some(PathBuf::from(dir.trim()))
}

/// The pathspec for "every change" in a worktree, without the files the
/// setup copied in that the base does not track (a `.env`): they are the
/// worktree's configuration, not the task's work, and never reach a diff
/// or a commit.
pub fn work_pathspec(root: &Path, w: &Worktree, copied: &[String]) -> Vec<String> {
    let mut spec = vec![".".to_string()];
    let quiet = |cmd| run_to_files(cmd).is_ok_and(|(status, _, _)| status.success());
    for file in copied {
        let tracked = quiet({
            let mut c = command(root, ["cat-file", "-e"]);
            c.arg(format!("{}:{file}", w.base));
            c
        });
        // An ignored file is left out already, and git refuses a pathspec
        // that names one.
        let ignored = quiet({
            let mut c = command(root, ["check-ignore", "-q", "--"]);
            c.arg(file);
            c
        });
        if !tracked && !ignored {
            spec.push(format!(":(exclude,literal){file}"));
        }
    }
    spec
}
