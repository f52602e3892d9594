//! A task's changes against its base: what it committed on its branch and
//! what is still uncommitted in its worktree, new files included. The
//! uncommitted part is read through a copy of the worktree's index, so
//! looking never changes what the agent sees.

use super::{State, WorktreeError, branch_head, command, git, not_on_branch, path_of, state};
use crate::protocol::Worktree;
use serde::Serialize;
use std::path::Path;

/// One changed file: lines added and deleted (`None`: binary).
#[derive(Debug, Serialize)]
pub struct FileChange {
    pub path: String,
    pub added: Option<u64>,
    pub deleted: Option<u64>,
}

/// A task's changes.
#[derive(Debug, Serialize)]
pub struct Changes {
    pub base: String,
    pub branch: String,
    pub path: String,
    pub files: Vec<FileChange>,
    /// The patch (`git diff`), or the `--stat` summary.
    pub text: String,
}

/// What `git diff` shows: the patch, or only the summary.
pub enum Form {
    Patch,
    Stat,
}

/// `copied`: the setup's files, left out where the base does not track
/// them (see `work_pathspec`).
pub fn changes(root: &Path, w: &Worktree, form: Form, copied: &[String]) -> super::Result<Changes> {
    let shape: &[&str] = match form {
        Form::Patch => &["--no-color", "--no-renames"],
        Form::Stat => &["--no-color", "--no-renames", "--stat"],
    };
    let numstat: &[&str] = &["--no-renames", "--numstat"];
    let (text, numbers) = match state(root, w).map_err(WorktreeError::Failed)? {
        State::Ready => {
            let wt = path_of(root, w);
            let index = snapshot_index(&wt, &super::work_pathspec(root, w, copied))?;
            let run = |extra: &[&str]| {
                let mut cmd = command(&wt, ["diff", "--cached"]);
                cmd.args(extra)
                    .arg("--end-of-options")
                    .arg(&w.base)
                    .env("GIT_INDEX_FILE", index.1.as_path());
                output(cmd)
            };
            (run(shape)?, run(numstat)?)
        }
        // The worktree holds more than the branch shows: showing only the
        // branch would hide its uncommitted work.
        State::Astray(found) => {
            return Err(WorktreeError::Failed(not_on_branch(root, w, &found)));
        }
        _ if branch_head(root, w).is_some() => {
            let range = [w.base.as_str(), w.branch.as_str()];
            let run = |extra: &[&str]| {
                let mut args = vec!["diff"];
                args.extend(extra);
                args.push("--end-of-options");
                args.extend(range);
                git(root, &args).map_err(WorktreeError::Failed)
            };
            (run(shape)?, run(numstat)?)
        }
        _ => {
            return Err(WorktreeError::Failed(format!(
                "the worktree {} and branch {} are gone (discarded?)",
                w.path, w.branch
            )));
        }
    };
    Ok(Changes {
        base: w.base.clone(),
        branch: w.branch.clone(),
        path: w.path.clone(),
        files: numbers.lines().filter_map(parse_numstat).collect(),
        text,
    })
}

fn output(mut cmd: std::process::Command) -> super::Result<String> {
    let out = cmd
        .output()
        .map_err(|e| WorktreeError::Failed(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(WorktreeError::Failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A private copy of the worktree's index with every change in it
/// (`git add -A`), so that new files count and the agent's own index and
/// staging stay as they are.
fn snapshot_index(
    wt: &Path,
    pathspec: &[String],
) -> super::Result<(tempfile::TempDir, std::path::PathBuf)> {
    let failed = |e: String| WorktreeError::Failed(e);
    let index = git(
        wt,
        ["rev-parse", "--path-format=absolute", "--git-path", "index"],
    )
    .map_err(failed)?;
    let dir =
        tempfile::tempdir().map_err(|e| failed(format!("cannot create a temporary index: {e}")))?;
    let copy = dir.path().join("index");
    // No index yet (nothing staged ever): git builds one from scratch.
    let _ = std::fs::copy(index.trim(), &copy);
    let mut cmd = command(wt, ["add", "-A", "--"]);
    cmd.args(pathspec).env("GIT_INDEX_FILE", &copy);
    output(cmd)?;
    Ok((dir, copy))
}

fn parse_numstat(line: &str) -> Option<FileChange> {
    let mut parts = line.splitn(3, '\t');
    let (added, deleted, path) = (parts.next()?, parts.next()?, parts.next()?);
    Some(FileChange {
        path: path.to_string(),
        added: added.parse().ok(),
        deleted: deleted.parse().ok(),
    })
}
