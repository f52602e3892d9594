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

use super::{State, WorktreeError, branch_head, git, path_of, same_path, state};
use crate::protocol::Worktree;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

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

pub fn merge(ask: &MergeAsk<'_>) -> super::Result<Merged> {
    let _lock = MergeLock::take(ask.state_dir)?;
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

impl MergeLock {
    fn take(state_dir: &Path) -> super::Result<MergeLock> {
        use std::os::fd::AsRawFd;
        let path = state_dir.join("merge.lock");
        let file = crate::paths::open_private(&path)
            .map_err(|e| WorktreeError::Failed(format!("cannot open {}: {e}", path.display())))?;
        // SAFETY: flock on an fd we own; blocks until the other merge ends.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(WorktreeError::Failed(format!(
                "cannot lock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            )));
        }
        Ok(MergeLock(file))
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
    rev(ask.root, &format!("refs/heads/{target}")).map_err(|_| {
        WorktreeError::Usage(format!("there is no branch {target:?} to merge into"))
    })?;
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
    let staged = super::command(&wt, ["diff", "--cached", "--quiet"])
        .status()
        .map_err(|e| failed(e.to_string()))?;
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

fn rev(root: &Path, name: &str) -> super::Result<String> {
    git(
        root,
        ["rev-parse", "--verify", "--quiet", "--end-of-options", name],
    )
    .map(|s| s.trim().to_string())
    .map_err(|_| WorktreeError::Failed(format!("{name} names no object")))
}

fn is_ancestor(root: &Path, a: &str, b: &str) -> bool {
    super::command(root, ["merge-base", "--is-ancestor", a, b])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The merged tree, or the conflicting files. Nothing but objects is
/// written.
fn merged_tree(
    root: &Path,
    ours: &str,
    theirs: &str,
) -> super::Result<Result<String, Vec<String>>> {
    let out = super::command(
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
    .output()
    .map_err(|e| WorktreeError::Failed(format!("cannot run git: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let tree = lines.next().unwrap_or("").trim().to_string();
    match out.status.code() {
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
            String::from_utf8_lossy(&out.stderr).trim()
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
/// are the user's and nowhere else (docs/design.md, Worktrees). Paths are
/// bytes throughout: a name that is not UTF-8 must not slip past.
fn refuse_overwriting_untracked(root: &Path, old: &str, new: &str) -> super::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let args = [
        "diff",
        "--name-status",
        "-z",
        "--no-renames",
        "--no-ext-diff",
        old,
        new,
        "--",
    ];
    let (status, changes, errors) = super::git_bytes(root, args).map_err(WorktreeError::Failed)?;
    if !status.success() {
        return Err(WorktreeError::Failed(format!(
            "cannot list what the merge changes: {}",
            String::from_utf8_lossy(&errors).trim()
        )));
    }
    let mut fields = changes.split(|b| *b == 0).filter(|f| !f.is_empty());
    let (mut added, mut removed) = (Vec::new(), HashSet::new());
    while let (Some(status), Some(path)) = (fields.next(), fields.next()) {
        let path = Path::new(std::ffi::OsStr::from_bytes(path));
        match status {
            b"A" => added.push(path),
            b"D" => {
                removed.insert(path);
            }
            _ => {}
        }
    }
    let in_the_way = in_the_way(root, &added, &removed);
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
fn in_the_way(root: &Path, added: &[&Path], removed: &HashSet<&Path>) -> Vec<PathBuf> {
    let mut found = std::collections::BTreeSet::new();
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
fn holds_untracked(root: &Path, dir: &Path, removed: &HashSet<&Path>) -> bool {
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

/// The checkout from `old` to `new` (files and index, refusing to lose
/// local changes), then the branch.
fn move_checkout(
    root: &Path,
    state_dir: &Path,
    target: &str,
    old: &str,
    new: &str,
) -> super::Result<()> {
    refuse_overwriting_untracked(root, old, new)?;
    let journal = Journal {
        target: target.into(),
        old: old.into(),
        new: new.into(),
    };
    let bytes = serde_json::to_vec(&journal).unwrap_or_default();
    crate::paths::write_atomic(&journal_path(state_dir), &bytes)
        .map_err(|e| WorktreeError::Failed(format!("cannot write the merge journal: {e}")))?;
    if let Err(e) = git(root, ["read-tree", "-m", "-u", old, new]) {
        let _ = std::fs::remove_file(journal_path(state_dir));
        return Err(WorktreeError::Failed(format!(
            "cannot update the checkout at {} (nothing was changed): {e}",
            root.display()
        )));
    }
    let moved = update_ref(root, target, new, old);
    if moved.is_err() {
        // Someone committed meanwhile: put the files back as they were.
        let _ = git(root, ["read-tree", "-m", "-u", new, old]);
    }
    let _ = std::fs::remove_file(journal_path(state_dir));
    moved
}

/// Finishes a move into the checkout that a kill interrupted: when the
/// files and index already show the new commit but the branch does not,
/// the branch follows; otherwise nothing had moved.
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
    if at.as_deref() == Some(j.old.as_str()) && index_tree.is_some() && index_tree == new_tree {
        let _ = update_ref(root, &j.target, &j.new, &j.old);
    }
    let _ = std::fs::remove_file(&path);
}
