//! `grove merge`: a task's branch into the workspace's branch (or another).
//!
//! One merge at a time per workspace: the merging process holds
//! `.grove/merge.lock` (flock: the kernel releases it when the process
//! dies, however it dies). The merge is prepared away from the user's
//! checkout — `git merge-tree --write-tree` computes the merged tree in
//! the object store, `git commit-tree` makes the commit — so a conflict, or
//! a kill at any point before the move, leaves the checkout, the index and
//! both branches exactly as they were, and never a `MERGE_HEAD`. Only a
//! finished commit is moved in: the checked-out files and index first
//! (`read-tree -m -u`, which refuses to overwrite local changes), then the
//! branch by compare-and-swap (`update-ref NEW OLD`). A journal written
//! before the move lets the next merge finish a move a kill interrupted.
//!
//! The board's merge has a deadline (`MergeAsk::until`): every git it runs
//! is stopped there (`bounded`), and what a stop may leave is said at
//! [`merge`] and [`move_checkout`] (docs/design.md, Web board).

use super::NOTHING_MERGED;
use super::undo::{Changes, UNDO_PREFIX, Undo, changes_between};
use super::{State, WorktreeError, bounded, branch_head, git, path_of, same_path, state};
use crate::protocol::Worktree;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What to merge and how.
pub struct MergeAsk<'a> {
    pub root: &'a Path,
    pub state_dir: &'a Path,
    pub worktree: &'a Worktree,
    /// One commit on top of the target instead of a merge (or fast-forward).
    pub squash: bool,
    /// The commit message of a merge commit or a squash.
    pub message: String,
    /// The commit message of the task's uncommitted changes, committed on
    /// its branch first.
    pub snapshot_message: String,
    /// The branch to merge into; default the one checked out in the
    /// workspace.
    pub into: Option<String>,
    /// The setup's copied files, never committed (see `work_pathspec`).
    pub copied: &'a [String],
    /// The board's deadline: every git the merge runs is stopped there,
    /// the wait for another merge's lock included (see [`merge`]). `None`
    /// in a terminal, where a Ctrl-C reaches git.
    pub until: Option<Instant>,
}

/// How a merge ended.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Merged {
    /// The target already contains the branch.
    UpToDate {
        into: String,
    },
    FastForward {
        into: String,
        commit: String,
    },
    MergeCommit {
        into: String,
        commit: String,
    },
    Squashed {
        into: String,
        commit: String,
    },
    /// Nothing changed: these files conflict.
    Conflict {
        into: String,
        files: Vec<String>,
    },
}

/// Written before a move into the checkout, removed after it.
#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    target: String,
    old: String,
    new: String,
}

/// git 2.38 brought `merge-tree --write-tree`.
const MIN_GIT: (u32, u32) = (2, 38);

/// Merges as `ask` says. With `ask.until` (the board) every git it runs is
/// stopped at that deadline with what it started (`bounded::within`), and
/// the answer is then [`WorktreeError::Stopped`], saying what was left.
/// Why a stop is safe at every point (docs/design.md, Web board):
///
/// - Before the move (the lock, the checks, the task's leftovers committed
///   on its branch, `merge-tree`, `commit-tree`) nothing of the user's
///   checkout or target branch has changed: a stop there leaves them as a
///   kill would, as they were. git is told to end first (SIGTERM), so a
///   stopped `git add` or `git commit` removes its `index.lock`; a commit
///   either moved the task's branch or did not.
/// - During the move see [`move_checkout`]: a stopped `read-tree` is undone
///   before the answer, a stop after it leaves the journal, which the next
///   merge's [`finish_interrupted`] completes; no step after a stop relies
///   on the word of a stopped git.
/// - [`finish_interrupted`] itself keeps the journal when its gits were
///   stopped, for a merge that can look.
pub fn merge(ask: &MergeAsk<'_>) -> super::Result<Merged> {
    let Some(until) = ask.until else {
        return merge_now(ask);
    };
    bounded::within(until, || match merge_now(ask) {
        // A git stopped before the move: its error says only that.
        Err(e) if bounded::stopped() && !matches!(e, WorktreeError::Stopped(_)) => {
            Err(WorktreeError::Stopped(NOTHING_MERGED.into()))
        }
        merged => merged,
    })
}

fn merge_now(ask: &MergeAsk<'_>) -> super::Result<Merged> {
    let _lock = MergeLock::take(ask.state_dir)?;
    sweep_undo(ask.state_dir);
    check_git_version()?;
    finish_interrupted(ask.root, ask.state_dir);
    let target = target_branch(ask)?;
    let here = checked_out_in(ask.root, &target)?;
    if here {
        refuse_dirty(ask.root)?;
    }
    commit_leftovers(ask)?;
    let failed = WorktreeError::Failed;
    let w = ask.worktree;
    let src = branch_head(ask.root, w).ok_or_else(|| {
        failed(format!(
            "branch {} does not exist (discarded?): nothing to merge",
            w.branch
        ))
    })?;
    let tgt = rev(ask.root, &format!("refs/heads/{target}"))?;
    if is_ancestor(ask.root, &src, &tgt) {
        return Ok(Merged::UpToDate { into: target });
    }
    refuse_embedded_repositories(ask, &tgt, &src)?;
    let fast = is_ancestor(ask.root, &tgt, &src);
    let (new, done): (String, fn(String, String) -> Merged) = if fast && !ask.squash {
        (src.clone(), |into, commit| Merged::FastForward {
            into,
            commit,
        })
    } else {
        let tree = if fast {
            rev(ask.root, &format!("{src}^{{tree}}"))?
        } else {
            match merged_tree(ask.root, &tgt, &src)? {
                Ok(tree) => tree,
                Err(files) => {
                    return Ok(Merged::Conflict {
                        into: target,
                        files,
                    });
                }
            }
        };
        let mut args = vec!["commit-tree", tree.as_str(), "-p", tgt.as_str()];
        if !ask.squash {
            args.extend(["-p", src.as_str()]);
        }
        args.extend(["-m", ask.message.as_str()]);
        let commit = git(ask.root, &args).map_err(failed)?.trim().to_string();
        if ask.squash {
            (commit, |into, commit| Merged::Squashed { into, commit })
        } else {
            (commit, |into, commit| Merged::MergeCommit { into, commit })
        }
    };
    #[cfg(feature = "test-hooks")]
    crate::test_hooks::merge_prepared();
    if here {
        move_checkout(ask.root, ask.state_dir, &target, &tgt, &new)?;
    } else {
        update_ref(ask.root, &target, &new, &tgt)?;
    }
    Ok(done(target, new))
}

/// `.grove/merge.lock`, held for the whole merge.
struct MergeLock(#[allow(dead_code)] std::fs::File);

/// How often a merge with a deadline tries the lock another merge holds
/// (flock has no timeout; only the board's merge waits this way).
const LOCK_RETRY: Duration = Duration::from_millis(50);

impl MergeLock {
    /// Waits for the other merge to end; within a deadline's scope, until
    /// the deadline at most.
    fn take(state_dir: &Path) -> super::Result<MergeLock> {
        use std::os::fd::AsRawFd;
        let path = state_dir.join("merge.lock");
        let file = crate::paths::open_private(&path)
            .map_err(|e| WorktreeError::Failed(format!("cannot open {}: {e}", path.display())))?;
        let until = bounded::deadline();
        let how = if until.is_some() {
            libc::LOCK_EX | libc::LOCK_NB
        } else {
            libc::LOCK_EX
        };
        loop {
            // SAFETY: flock on an fd we own; without LOCK_NB it blocks
            // until the other merge ends.
            if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
                return Ok(MergeLock(file));
            }
            let e = std::io::Error::last_os_error();
            let busy = e.raw_os_error() == Some(libc::EWOULDBLOCK);
            match until {
                Some(until) if busy => {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(WorktreeError::Stopped(format!(
                            "another merge of this workspace (a `grove merge` in a terminal?) held {} all the while; {NOTHING_MERGED}",
                            path.display()
                        )));
                    }
                    std::thread::sleep(left.min(LOCK_RETRY));
                }
                _ if e.kind() == std::io::ErrorKind::Interrupted => {}
                _ => {
                    return Err(WorktreeError::Failed(format!(
                        "cannot lock {}: {e}",
                        path.display()
                    )));
                }
            }
        }
    }
}

fn check_git_version() -> super::Result<()> {
    let text = git(Path::new("."), ["version"]).map_err(WorktreeError::Failed)?;
    let mut nums = (text.split_whitespace().nth(2).unwrap_or(""))
        .split('.')
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    if version < MIN_GIT {
        return Err(WorktreeError::Usage(format!(
            "grove merge needs git {}.{} or newer (it merges with `git merge-tree --write-tree`, away from your checkout); this is {}",
            MIN_GIT.0,
            MIN_GIT.1,
            text.trim()
        )));
    }
    Ok(())
}

fn target_branch(ask: &MergeAsk<'_>) -> super::Result<String> {
    let target = match &ask.into {
        Some(b) => b.clone(),
        None => git(ask.root, ["symbolic-ref", "--quiet", "--short", "HEAD"])
            .map(|s| s.trim().to_string())
            .map_err(|_| {
                WorktreeError::Usage(format!(
                    "the checkout at {} is on no branch (detached HEAD): check out the branch to merge into, or name it with --into",
                    ask.root.display()
                ))
            })?,
    };
    if target == ask.worktree.branch {
        return Err(WorktreeError::Usage(format!(
            "--into {target} is the task's own branch"
        )));
    }
    // A revision such as `main~1` resolves under `refs/heads/` too, and
    // the move's compare-and-swap would then fail as "moved meanwhile".
    let named = git(ask.root, ["check-ref-format", "--branch", &target]).is_ok();
    if !named || rev(ask.root, &format!("refs/heads/{target}")).is_err() {
        return Err(WorktreeError::Usage(format!(
            "there is no branch {target:?} to merge into (name a branch, not a revision)"
        )));
    }
    Ok(target)
}

/// Whether `branch` is the workspace's checkout; refused when another
/// worktree has it checked out (its files would not follow).
fn checked_out_in(root: &Path, branch: &str) -> super::Result<bool> {
    let want = format!("refs/heads/{branch}");
    let mut here = false;
    for e in super::listed(root).map_err(WorktreeError::Failed)? {
        if e.branch.as_deref() != Some(want.as_str()) {
            continue;
        }
        if same_path(&e.path, root) {
            here = true;
        } else {
            return Err(WorktreeError::Failed(format!(
                "branch {branch} is checked out in {}; merge into it there, or name another branch with --into",
                e.path.display()
            )));
        }
    }
    Ok(here)
}

fn refuse_dirty(root: &Path) -> super::Result<()> {
    let status = git(root, ["status", "--porcelain", "--untracked-files=no"])
        .map_err(WorktreeError::Failed)?;
    let files: Vec<&str> = status.lines().map(|l| l.get(3..).unwrap_or(l)).collect();
    if files.is_empty() {
        return Ok(());
    }
    Err(WorktreeError::Failed(format!(
        "the checkout at {} has uncommitted changes ({}); commit or stash them, then merge again (nothing was changed)",
        root.display(),
        files.join(", ")
    )))
}

/// Commits what the task left uncommitted in its worktree onto its branch,
/// so that the merge carries everything `grove diff` showed.
fn commit_leftovers(ask: &MergeAsk<'_>) -> super::Result<()> {
    let w = ask.worktree;
    match state(ask.root, w).map_err(WorktreeError::Failed)? {
        State::Ready => {}
        // Merging the branch alone would leave its uncommitted work behind
        // while reporting the task merged.
        State::Astray(found) => {
            return Err(WorktreeError::Failed(super::not_on_branch(
                ask.root, w, &found,
            )));
        }
        State::Absent | State::Leftover => return Ok(()),
    }
    let wt = path_of(ask.root, w);
    let failed = |e: String| WorktreeError::Failed(format!("cannot commit in {}: {e}", w.path));
    let mut add = vec!["add".to_string(), "-A".into(), "--".into()];
    add.extend(super::work_pathspec(ask.root, w, ask.copied));
    git(&wt, &add).map_err(failed)?;
    let (staged, _, _) = super::run_to_files(super::command(&wt, ["diff", "--cached", "--quiet"]))
        .map_err(failed)?;
    if staged.success() {
        return Ok(());
    }
    git(
        &wt,
        [
            "commit",
            "--quiet",
            "--no-verify",
            "-m",
            ask.snapshot_message.as_str(),
        ],
    )
    .map_err(failed)?;
    Ok(())
}

/// Refuses a merge that would bring in a directory the task made a git
/// repository of its own (`git init`, a project generator): `git add -A`
/// commits such a directory as a pointer to a commit that exists only
/// inside it, in the worktree; merged, the branch would hold the pointer
/// and none of the files, and the worktree's removal would then take the
/// files for good. A submodule declared in `.gitmodules` is a pointer on
/// purpose and is merged as one. Nothing has changed when it refuses.
fn refuse_embedded_repositories(ask: &MergeAsk<'_>, tgt: &str, src: &str) -> super::Result<()> {
    let range = format!("{tgt}...{src}");
    let links: Vec<String> = super::undo::raw_diff(ask.root, &[&range], "the task's branch")?
        .into_iter()
        .filter(|c| c.new_mode == "160000")
        .map(|c| c.path.to_string_lossy().into_owned())
        .collect();
    if links.is_empty() {
        return Ok(());
    }
    // Declared submodules: `submodule.<name>.path` in the branch's
    // `.gitmodules` (none: the blob is missing and git says nothing).
    let blob = format!("{src}:.gitmodules");
    let declared = git(
        ask.root,
        [
            "config",
            "--blob",
            &blob,
            "--get-regexp",
            r"^submodule\..*\.path$",
        ],
    )
    .unwrap_or_default();
    let declared: HashSet<&str> = declared
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, path)| path))
        .collect();
    let embedded: Vec<String> = links
        .into_iter()
        .filter(|l| !declared.contains(l.as_str()))
        .collect();
    if embedded.is_empty() {
        return Ok(());
    }
    let w = ask.worktree;
    Err(WorktreeError::Failed(format!(
        "the task made {} a git repository of its own (`git init` there?): its branch holds only a pointer to a commit inside the worktree, not the files, and merging would lose them; nothing was merged. To merge them as plain files, remove the inner repository and its pointer in the worktree (`cd {} && rm -rf {} && git rm -q --cached {}`), then merge again",
        embedded.join(", "),
        w.path,
        embedded
            .iter()
            .map(|e| format!("{e}/.git"))
            .collect::<Vec<_>>()
            .join(" "),
        embedded.join(" ")
    )))
}

fn rev(root: &Path, name: &str) -> super::Result<String> {
    git(
        root,
        ["rev-parse", "--verify", "--quiet", "--end-of-options", name],
    )
    .map(|s| s.trim().to_string())
    .map_err(|_| WorktreeError::Failed(format!("{name} names no object")))
}

fn is_ancestor(root: &Path, a: &str, b: &str) -> bool {
    super::run_to_files(super::command(root, ["merge-base", "--is-ancestor", a, b]))
        .is_ok_and(|(status, _, _)| status.success())
}

/// The merged tree, or the conflicting files. Nothing but objects is
/// written.
fn merged_tree(
    root: &Path,
    ours: &str,
    theirs: &str,
) -> super::Result<Result<String, Vec<String>>> {
    let (status, stdout, stderr) = super::git_bytes(
        root,
        [
            "merge-tree",
            "--write-tree",
            "--name-only",
            "--no-messages",
            ours,
            theirs,
        ],
    )
    .map_err(WorktreeError::Failed)?;
    let stdout = String::from_utf8_lossy(&stdout);
    let mut lines = stdout.lines();
    let tree = lines.next().unwrap_or("").trim().to_string();
    match status.code() {
        Some(0) => Ok(Ok(tree)),
        Some(1) => {
            let mut files: Vec<String> = lines
                .take_while(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            files.dedup();
            Ok(Err(files))
        }
        _ => Err(WorktreeError::Failed(format!(
            "git merge-tree failed: {}",
            String::from_utf8_lossy(&stderr).trim()
        ))),
    }
}

fn update_ref(root: &Path, target: &str, new: &str, old: &str) -> super::Result<()> {
    let name = format!("refs/heads/{target}");
    git(root, ["update-ref", "-m", "grove merge", &name, new, old])
        .map(|_| ())
        .map_err(|e| {
            WorktreeError::Failed(format!(
                "{target} moved while merging ({e}); nothing was merged, try again"
            ))
        })
}

/// Refuses a move that would replace what the checkout holds untracked at
/// a path the merge adds: `read-tree -u` refuses a plain untracked file but
/// overwrites an ignored one (a local `.env`, a build setting), or a
/// directory's worth of them when the merge needs a directory where an
/// ignored file is, or a file where a directory holds ignored files. Those
/// are the user's and nowhere else (docs/design.md, Worktrees).
fn refuse_overwriting_untracked(root: &Path, changes: &Changes) -> super::Result<()> {
    let in_the_way = in_the_way(root, &changes.added, &changes.removed);
    if in_the_way.is_empty() {
        return Ok(());
    }
    const SHOWN: usize = 10;
    let mut list = in_the_way
        .iter()
        .take(SHOWN)
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if in_the_way.len() > SHOWN {
        list.push_str(&format!(" and {} more", in_the_way.len() - SHOWN));
    }
    Err(WorktreeError::Failed(format!(
        "the merge would overwrite what the checkout at {} holds untracked (ignored by git): {list}; move it away, then merge again (nothing was changed)",
        root.display()
    )))
}

/// The paths of `added` (or a directory on the way to one) that something
/// untracked occupies in the checkout. What the merge removes is tracked,
/// so clean (the checkout was checked): not in the way, neither on the way
/// nor inside a directory where the merge puts a file.
fn in_the_way(root: &Path, added: &[PathBuf], removed: &HashSet<PathBuf>) -> Vec<PathBuf> {
    let mut found = BTreeSet::new();
    for path in added {
        match std::fs::symlink_metadata(root.join(path)) {
            Ok(m) if m.is_dir() => {
                if holds_untracked(root, path, removed) {
                    found.insert(path.to_path_buf());
                }
                continue;
            }
            Ok(_) => {
                found.insert(path.to_path_buf());
                continue;
            }
            Err(_) => {}
        }
        let mut prefix = PathBuf::new();
        for part in path.parent().into_iter().flat_map(|p| p.iter()) {
            prefix.push(part);
            let blocking = std::fs::symlink_metadata(root.join(&prefix)).is_ok_and(|m| !m.is_dir());
            if blocking && !removed.contains(prefix.as_path()) {
                found.insert(prefix.clone());
                break;
            }
        }
    }
    found.into_iter().collect()
}

/// Whether the directory `dir` of the checkout holds anything but files
/// the merge removes (a work list: no recursion over the user's tree).
fn holds_untracked(root: &Path, dir: &Path, removed: &HashSet<PathBuf>) -> bool {
    let mut todo = vec![dir.to_path_buf()];
    while let Some(at) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(root.join(&at)) else {
            return true;
        };
        for entry in entries {
            let Ok(entry) = entry else {
                return true;
            };
            let path = at.join(entry.file_name());
            match entry.file_type() {
                Ok(t) if t.is_dir() => todo.push(path),
                Ok(_) if removed.contains(path.as_path()) => {}
                _ => return true,
            }
        }
    }
    false
}

fn journal_path(state_dir: &Path) -> PathBuf {
    state_dir.join("merge.journal")
}

/// How long the branch's move (and, when the branch moved meanwhile, the
/// files' move back) may take once `read-tree` has ended, whatever was
/// left of the deadline: steps of milliseconds, which a `read-tree` that
/// ended at the deadline must not leave to the journal. Also what the
/// look at the index after a stopped `read-tree` gets.
const FINISH_WITHIN: Duration = Duration::from_secs(10);

/// Runs `f` with [`FINISH_WITHIN`] at least, when a deadline applies.
fn finishing<T>(f: impl FnOnce() -> T) -> T {
    match bounded::deadline() {
        Some(until) => bounded::within(until.max(Instant::now() + FINISH_WITHIN), f),
        None => f(),
    }
}

/// The checkout from `old` to `new` (files and index, refusing to lose
/// local changes), then the branch, the journal written before and removed
/// after. Under a deadline (the board's merge, see [`merge`]) a stop
/// leaves, by where it came (docs/design.md, Web board):
///
/// - before `read-tree`: nothing moved, no journal yet.
/// - in `read-tree`: git writes the checkout's files first, then its index
///   (a new file renamed into place), so the index tells how far it got
///   (`write-tree`, given [`FINISH_WITHIN`]). Still `old`: the branch and
///   index are as they were, and the files git had written are put back
///   from the copies [`Undo`] kept before it began (files moved, no git:
///   a filter that stopped git would stop it again), the journal removed:
///   as if never begun. `new`: files and index moved, the branch not,
///   which is the journal's own case: kept, the next merge's
///   [`finish_interrupted`] moves the branch. Neither known: the journal
///   is kept, nothing put back, and the answer says so.
/// - in `update-ref` (given [`FINISH_WITHIN`]): the branch moved or not
///   (its reference-transaction hook may run after the move), the journal
///   is kept, and the next merge tells which.
///
/// No git is started once the deadline has passed, and nothing here acts
/// on what a stopped git would have said.
fn move_checkout(
    root: &Path,
    state_dir: &Path,
    target: &str,
    old: &str,
    new: &str,
) -> super::Result<()> {
    let changes = changes_between(root, old, new)?;
    refuse_overwriting_untracked(root, &changes)?;
    let guard = match bounded::deadline() {
        Some(_) => Some(Guard {
            undo: Undo::keep(root, state_dir, &changes)?,
            old_tree: rev(root, &format!("{old}^{{tree}}"))?,
            new_tree: rev(root, &format!("{new}^{{tree}}"))?,
        }),
        None => None,
    };
    let journal = Journal {
        target: target.into(),
        old: old.into(),
        new: new.into(),
    };
    let bytes = serde_json::to_vec(&journal).unwrap_or_default();
    crate::paths::write_atomic(&journal_path(state_dir), &bytes)
        .map_err(|e| WorktreeError::Failed(format!("cannot write the merge journal: {e}")))?;
    // Out of Ctrl-C's reach: the terminal's SIGINT stopped a `read-tree`
    // after it wrote files, before its index, and the checkout was left
    // half moved, with no journal and "nothing was changed" said.
    let read_tree = bounded::out_of_ctrl_c(|| git(root, ["read-tree", "-m", "-u", old, new]));
    if let Err(e) = read_tree {
        if let Some(guard) = guard.filter(|_| bounded::stopped()) {
            return Err(stopped_in_read_tree(root, state_dir, target, guard));
        }
        let _ = std::fs::remove_file(journal_path(state_dir));
        return Err(WorktreeError::Failed(format!(
            "cannot update the checkout at {} (nothing was changed): {e}",
            root.display()
        )));
    }
    let (moved, put_back) = bounded::out_of_ctrl_c(|| {
        finishing(|| {
            let moved = update_ref(root, target, new, old);
            if moved.is_err() && !bounded::stopped() {
                // Someone committed meanwhile: put the files back as they were.
                return (moved, Some(git(root, ["read-tree", "-m", "-u", new, old])));
            }
            (moved, None)
        })
    });
    match (moved, put_back) {
        (Err(_), None) if bounded::stopped() => Err(WorktreeError::Stopped(format!(
            "git was stopped while it moved {target} to the merge, after your checkout's files and index took it; the next merge (`grove merge` of any task) finishes the move, or finds it done (.grove/merge.journal)"
        ))),
        (Err(_), Some(Err(e))) if bounded::stopped() => {
            // The branch is someone else's now: nothing for the journal.
            let _ = std::fs::remove_file(journal_path(state_dir));
            Err(WorktreeError::Stopped(format!(
                "{target} moved while merging, and git was stopped while it put your checkout's files back ({e}): they may hold some of the merge; `git status` shows what differs from {target}"
            )))
        }
        (moved, _) => {
            let _ = std::fs::remove_file(journal_path(state_dir));
            moved
        }
    }
}

/// What a move under a deadline keeps for a stop in `read-tree`.
struct Guard {
    undo: Undo,
    old_tree: String,
    new_tree: String,
}

/// The answer, and what is left, when the deadline stopped `read-tree`
/// (see [`move_checkout`]).
fn stopped_in_read_tree(root: &Path, state_dir: &Path, target: &str, g: Guard) -> WorktreeError {
    let (index, lock) = finishing(|| {
        let index = git(root, ["write-tree"]).map(|t| t.trim().to_string());
        let lock = [
            "rev-parse",
            "--path-format=absolute",
            "--git-path",
            "index.lock",
        ];
        (index, git(root, lock).map(|l| PathBuf::from(l.trim())))
    });
    let reached = |tree: &str| index.as_deref().ok() == Some(tree);
    if reached(&g.old_tree) {
        // What git wrote is told from what it writes (`cat-file`, given
        // [`FINISH_WITHIN`]).
        let undone = finishing(|| g.undo.put_back(root, state_dir));
        let _ = std::fs::remove_file(journal_path(state_dir));
        let mut left = format!(
            "git was stopped while it wrote the merge into your checkout, before its index: {target} and the index are as they were, "
        );
        if undone.failed.is_empty() && undone.changed.is_empty() {
            left.push_str("and so are the files, put back");
        } else {
            left.push_str("and so are the files, put back, but for these");
        }
        if !undone.changed.is_empty() {
            left.push_str(&format!(
                "; changed by someone else while git wrote the merge, so left as they are: {}",
                undone.changed.join(", ")
            ));
            if let Some(before) = &undone.kept_at {
                left.push_str(&format!(
                    " (what they held before the merge is in {})",
                    before.display()
                ));
            }
        }
        if !undone.failed.is_empty() {
            left.push_str(&format!(
                "; could not be put back as they were: {}",
                undone.failed.join(", ")
            ));
        }
        if let Ok(lock) = &lock
            && lock.exists()
        {
            left.push_str(&format!(
                "; {} is left (git did not end when told): remove it once no git runs there",
                lock.display()
            ));
        }
        return WorktreeError::Stopped(left);
    }
    if reached(&g.new_tree) {
        return WorktreeError::Stopped(format!(
            "git was stopped as it ended writing the merge into your checkout: its files and index hold the merge, {target} does not yet; the next merge (`grove merge` of any task) moves {target} there (.grove/merge.journal)"
        ));
    }
    WorktreeError::Stopped(format!(
        "git was stopped while it wrote the merge into your checkout, and what its index holds could not be told; {target} was not moved. The next merge finishes the move if the index holds it (.grove/merge.journal); else `git status` shows what differs from {target}"
    ))
}

/// Removes what a merge with a deadline kept and could not remove itself
/// (its process died). Under the merge lock: no merge is using one.
fn sweep_undo(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let ours = name.to_string_lossy().starts_with(UNDO_PREFIX);
        if ours && entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Finishes a move into the checkout that a kill interrupted: when the
/// files and index already show the new commit but the branch does not,
/// the branch follows; otherwise nothing had moved. The journal stays when
/// a deadline stopped a git here (nothing it said is known): a later merge
/// looks again.
fn finish_interrupted(root: &Path, state_dir: &Path) {
    let path = journal_path(state_dir);
    let Some(j) = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Journal>(&b).ok())
    else {
        let _ = std::fs::remove_file(&path);
        return;
    };
    let at = rev(root, &format!("refs/heads/{}", j.target)).ok();
    let index_tree = git(root, ["write-tree"]).map(|s| s.trim().to_string()).ok();
    let new_tree = rev(root, &format!("{}^{{tree}}", j.new)).ok();
    if bounded::stopped() {
        return;
    }
    // The branch still at the journal's start, but the index unreadable
    // (`write-tree` fails while another git, an editor's, holds
    // `index.lock`): nothing says the move is stale, so the journal stays
    // for a merge that can look.
    if at.as_deref() == Some(j.old.as_str()) && (index_tree.is_none() || new_tree.is_none()) {
        return;
    }
    if at.as_deref() == Some(j.old.as_str()) && index_tree.is_some() && index_tree == new_tree {
        let _ = update_ref(root, &j.target, &j.new, &j.old);
        if bounded::stopped() {
            return;
        }
    }
    let _ = std::fs::remove_file(&path);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// git in `dir`, with a test identity and no user config.
    fn run(dir: &Path, args: &[&str], index: Option<&Path>) -> String {
        let mut cmd = Command::new("git");
        cmd.arg("-C").arg(dir).args(args);
        cmd.env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t.invalid");
        if let Some(index) = index {
            cmd.env("GIT_INDEX_FILE", index);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn write(root: &Path, path: &str, text: &str) {
        let at = root.join(path);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(at, text).unwrap();
    }

    /// A journal whose move the index has taken, while another git holds
    /// `index.lock` (an editor's `git status`): kept, not read as stale,
    /// and finished once the lock is gone.
    #[test]
    fn an_unreadable_index_keeps_the_journal_for_the_next_merge() {
        let dir = tempfile::tempdir().unwrap();
        let (root, state) = (dir.path().join("repo"), dir.path().join("state"));
        std::fs::create_dir_all(&state).unwrap();
        run(dir.path(), &["init", "-q", "-b", "main", "repo"], None);
        write(&root, "a.txt", "old\n");
        run(&root, &["add", "-A"], None);
        run(&root, &["commit", "-qm", "old"], None);
        let old = run(&root, &["rev-parse", "HEAD"], None);
        write(&root, "a.txt", "new\n");
        run(&root, &["commit", "-qam", "new"], None);
        let new = run(&root, &["rev-parse", "HEAD"], None);
        // The files and index moved, the branch not: what a kill between
        // `read-tree` and `update-ref` leaves.
        run(&root, &["update-ref", "refs/heads/main", &old], None);
        let journal = Journal {
            target: "main".into(),
            old: old.clone(),
            new: new.clone(),
        };
        std::fs::write(journal_path(&state), serde_json::to_vec(&journal).unwrap()).unwrap();
        std::fs::write(root.join(".git/index.lock"), "").unwrap();
        finish_interrupted(&root, &state);
        assert!(journal_path(&state).exists(), "the journal was dropped");
        assert_eq!(run(&root, &["rev-parse", "main"], None), old);
        std::fs::remove_file(root.join(".git/index.lock")).unwrap();
        finish_interrupted(&root, &state);
        assert_eq!(run(&root, &["rev-parse", "main"], None), new);
        assert!(!journal_path(&state).exists());
    }

    /// A move cut before `read-tree` wrote the index is put back from the
    /// copies: files changed, removed, added, a directory replaced by a
    /// file and a file by a directory; what is not the move's stays.
    #[test]
    fn a_move_stopped_before_the_index_is_put_back_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let (root, state) = (dir.path().join("repo"), dir.path().join("state"));
        std::fs::create_dir_all(&state).unwrap();
        run(dir.path(), &["init", "-q", "-b", "main", "repo"], None);
        write(&root, "changed.txt", "old\n");
        write(&root, "gone.txt", "gone\n");
        write(&root, "d/x", "in a directory\n");
        write(&root, "f", "a file\n");
        write(&root, "kept.txt", "kept\n");
        std::os::unix::fs::symlink("kept.txt", root.join("link")).unwrap();
        run(&root, &["add", "-A"], None);
        run(&root, &["commit", "-qm", "old"], None);
        let old = run(&root, &["rev-parse", "HEAD"], None);
        run(&root, &["switch", "-qc", "task"], None);
        run(&root, &["rm", "-qr", "gone.txt", "d", "f", "link"], None);
        write(&root, "changed.txt", "new\n");
        write(&root, "d", "now a file\n");
        write(&root, "f/y", "now a directory\n");
        write(&root, "n/e/w.txt", "added\n");
        write(&root, "link", "no longer a link\n");
        run(&root, &["add", "-A"], None);
        run(&root, &["commit", "-qm", "new"], None);
        let new = run(&root, &["rev-parse", "HEAD"], None);
        run(&root, &["switch", "-q", "main"], None);
        write(&root, "untracked.txt", "mine\n");

        let changes = changes_between(&root, &old, &new).unwrap();
        let undo = Undo::keep(&root, &state, &changes).unwrap();
        // The files move while the real index stays: a `read-tree` cut
        // before it wrote the index.
        let elsewhere = dir.path().join("index");
        std::fs::copy(root.join(".git/index"), &elsewhere).unwrap();
        run(
            &root,
            &["read-tree", "-m", "-u", &old, &new],
            Some(&elsewhere),
        );
        assert_eq!(
            std::fs::read_to_string(root.join("d")).unwrap(),
            "now a file\n"
        );
        assert!(root.join("n/e/w.txt").exists());

        assert_eq!(undo.put_back(&root, &state), Default::default());
        let status = run(
            &root,
            &["status", "--porcelain", "--untracked-files=all"],
            None,
        );
        assert_eq!(status, "?? untracked.txt");
        assert_eq!(
            std::fs::read_to_string(root.join("changed.txt")).unwrap(),
            "old\n"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("d/x")).unwrap(),
            "in a directory\n"
        );
        assert_eq!(
            std::fs::read_link(root.join("link")).unwrap(),
            Path::new("kept.txt")
        );
        assert!(!root.join("n").exists(), "the directories it made are gone");
        let left: Vec<_> = std::fs::read_dir(&state).unwrap().collect();
        assert!(left.is_empty(), "the copies are removed: {left:?}");
    }
    /// A file someone changes while `read-tree` writes the merge (an
    /// editor saving) holds neither what it held nor what git wrote: the
    /// put-back leaves it as it is, keeps what it held before the merge for
    /// them, and says so; the rest is put back.
    #[test]
    fn a_put_back_never_overwrites_a_change_made_during_the_merge() {
        let dir = tempfile::tempdir().unwrap();
        let (root, state) = (dir.path().join("repo"), dir.path().join("state"));
        std::fs::create_dir_all(&state).unwrap();
        run(dir.path(), &["init", "-q", "-b", "main", "repo"], None);
        write(&root, "edited.txt", "old\n");
        write(&root, "plain.txt", "old\n");
        write(&root, "gone.txt", "gone\n");
        run(&root, &["add", "-A"], None);
        run(&root, &["commit", "-qm", "old"], None);
        let old = run(&root, &["rev-parse", "HEAD"], None);
        run(&root, &["switch", "-qc", "task"], None);
        run(&root, &["rm", "-q", "gone.txt"], None);
        write(&root, "edited.txt", "new\n");
        write(&root, "plain.txt", "new\n");
        write(&root, "added.txt", "added\n");
        write(&root, "added-too.txt", "added\n");
        run(&root, &["add", "-A"], None);
        run(&root, &["commit", "-qm", "new"], None);
        let new = run(&root, &["rev-parse", "HEAD"], None);
        run(&root, &["switch", "-q", "main"], None);

        let changes = changes_between(&root, &old, &new).unwrap();
        let undo = Undo::keep(&root, &state, &changes).unwrap();
        let elsewhere = dir.path().join("index");
        std::fs::copy(root.join(".git/index"), &elsewhere).unwrap();
        run(
            &root,
            &["read-tree", "-m", "-u", &old, &new],
            Some(&elsewhere),
        );
        // Saved by someone else meanwhile.
        write(&root, "edited.txt", "mine\n");
        write(&root, "added.txt", "mine too\n");
        write(&root, "gone.txt", "made again\n");

        let left = undo.put_back(&root, &state);
        let mut changed = left.changed.clone();
        changed.sort();
        assert_eq!(changed, ["added.txt", "edited.txt", "gone.txt"], "{left:?}");
        assert!(left.failed.is_empty(), "{left:?}");
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&root.join("edited.txt")), "mine\n");
        assert_eq!(read(&root.join("added.txt")), "mine too\n");
        assert_eq!(read(&root.join("gone.txt")), "made again\n");
        assert_eq!(read(&root.join("plain.txt")), "old\n", "put back");
        assert!(!root.join("added-too.txt").exists(), "what git added goes");
        let before = left.kept_at.expect("the copies are kept");
        assert!(before.starts_with(&state));
        assert_eq!(read(&before.join("edited.txt")), "old\n");
        assert_eq!(read(&before.join("gone.txt")), "gone\n");
    }
}
