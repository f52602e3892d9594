//! A task's changes against its base: what it committed on its branch and
//! what is still uncommitted in its worktree, new files included. The
//! uncommitted part is read through a copy of the worktree's index, so
//! looking never changes what the agent sees.
//!
//! git's output is read as it comes, never gathered whole: a task may
//! write a file of gigabytes, and whoever asks (the board, served by the
//! primary; `grove diff`) holds at most what it keeps (`changes`, up to a
//! cap) or passes on (`write`). See docs/design.md, Worktrees.

use super::bounded::Git;
use super::scratch_objects::ScratchObjects;
use super::{State, WorktreeError, branch_head, command, not_on_branch, path_of, state};
use crate::protocol::Worktree;
use serde::Serialize;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

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
    /// The patch (`git diff`), or the `--stat` summary; up to the cap,
    /// cut after its last whole line.
    pub text: String,
    /// The text (or the file list) stopped at the cap: there is more,
    /// which `grove diff` shows.
    pub truncated: bool,
}

/// What `git diff` shows: the patch, or only the summary.
pub enum Form {
    Patch,
    Stat,
}

impl Form {
    fn args(&self) -> &'static [&'static str] {
        match self {
            Form::Patch => &["--no-color", "--no-renames"],
            Form::Stat => &["--no-color", "--no-renames", "--stat"],
        }
    }
}

/// How much of a task's changes to read: up to `cap` bytes of the text and
/// of the file list each (`usize::MAX`: all of them), and, when `until` is
/// given, every git it runs stopped there with whatever it started (the
/// board: see `bounded::within`).
pub struct Limits {
    pub cap: usize,
    pub until: Option<Instant>,
}

/// A task's changes, read within `limits`. `copied`: the setup's files,
/// left out where the base does not track them (see `work_pathspec`).
pub fn changes(
    root: &Path,
    w: &Worktree,
    form: Form,
    copied: &[String],
    limits: Limits,
) -> super::Result<Changes> {
    let Limits { cap, until } = limits;
    match until {
        Some(until) => super::bounded::within(until, || read_changes(root, w, form, copied, cap)),
        None => read_changes(root, w, form, copied, cap),
    }
}

fn read_changes(
    root: &Path,
    w: &Worktree,
    form: Form,
    copied: &[String],
    cap: usize,
) -> super::Result<Changes> {
    let source = Source::open(root, w, copied)?;
    let (text, text_cut) = read_capped(source.command(form.args()), cap)?;
    let numstat = source.command(&["--no-renames", "--numstat"]);
    let (numbers, files_cut) = read_capped(numstat, cap)?;
    Ok(Changes {
        base: w.base.clone(),
        branch: w.branch.clone(),
        path: w.path.clone(),
        files: numbers.lines().filter_map(parse_numstat).collect(),
        text,
        truncated: text_cut || files_cut,
    })
}

/// Hands the text of a task's changes to `out` as git writes it, all of
/// it, holding none (`grove diff`).
pub fn write(
    root: &Path,
    w: &Worktree,
    form: Form,
    copied: &[String],
    mut out: impl FnMut(&[u8]),
) -> super::Result<()> {
    let source = Source::open(root, w, copied)?;
    stream(source.command(form.args()), |chunk| {
        out(chunk);
        true
    })?;
    Ok(())
}

/// Where a task's changes are read: its worktree, through a private index
/// holding every change in it; or, the worktree gone, its branch.
struct Source {
    /// Where git runs.
    dir: PathBuf,
    /// What `git diff` compares: the base (with the index), or base and
    /// branch.
    sides: Vec<String>,
    /// The private index and objects; removed when this is dropped.
    index: Option<Snapshot>,
}

/// A private copy of a worktree's index with every change in it, and the
/// objects that took, in scratch objects: `git add -A` wrote a blob of
/// every new or changed file into the repository on each look (a 300 MB
/// artefact grew `.git/objects` by 300 MB per `grove diff`); a diff only
/// reads.
struct Snapshot {
    objects: ScratchObjects,
    index: PathBuf,
}

impl Snapshot {
    fn apply(&self, cmd: &mut Command) {
        cmd.env("GIT_INDEX_FILE", &self.index);
        self.objects.apply(cmd);
    }
}

impl Source {
    fn open(root: &Path, w: &Worktree, copied: &[String]) -> super::Result<Source> {
        match state(root, w).map_err(WorktreeError::Failed)? {
            State::Ready => {
                let wt = path_of(root, w);
                let pathspec = super::work_pathspec(root, w, copied);
                let index = snapshot_index(&wt, &pathspec)?;
                Ok(Source {
                    dir: wt,
                    sides: vec![w.base.clone()],
                    index: Some(index),
                })
            }
            // The worktree holds more than the branch shows: showing only
            // the branch would hide its uncommitted work.
            State::Astray(found) => Err(WorktreeError::Failed(not_on_branch(root, w, &found))),
            _ if branch_head(root, w).is_some() => Ok(Source {
                dir: root.to_path_buf(),
                sides: vec![w.base.clone(), w.branch.clone()],
                index: None,
            }),
            _ => Err(WorktreeError::Failed(format!(
                "the worktree {} and branch {} are gone (discarded?)",
                w.path, w.branch
            ))),
        }
    }

    /// `git diff` with `extra` between this source's sides.
    fn command(&self, extra: &[&str]) -> Command {
        // No external diff program and no text conversion: both are
        // configured by the repository (its `.gitattributes`, which the
        // task's agent may write) and could show a change as anything, or
        // as nothing, to the person reviewing it; they could also hang.
        let mut cmd = command(
            &self.dir,
            [
                "-c",
                "core.fsmonitor=false",
                "diff",
                "--no-ext-diff",
                "--no-textconv",
            ],
        );
        if let Some(snapshot) = &self.index {
            cmd.arg("--cached");
            snapshot.apply(&mut cmd);
        }
        cmd.args(extra).arg("--end-of-options").args(&self.sides);
        cmd
    }
}

/// `cmd`'s output up to `cap` bytes, and whether there was more (then git
/// is stopped there, and the text cut after its last whole line).
fn read_capped(cmd: Command, cap: usize) -> super::Result<(String, bool)> {
    let mut bytes = Vec::new();
    // One byte past the cap tells "more" from "exactly the cap".
    let keep = cap.saturating_add(1);
    stream(cmd, |chunk| {
        let room = keep - bytes.len();
        bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
        bytes.len() < keep
    })?;
    let truncated = bytes.len() > cap;
    if truncated {
        bytes.truncate(cap);
        if let Some(last) = bytes.iter().rposition(|b| *b == b'\n') {
            bytes.truncate(last + 1);
        }
    }
    let text = String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    Ok((text, truncated))
}

/// How much git's output is read at a time.
const CHUNK: usize = 64 * 1024;

/// The most of git's error output kept for a message.
const ERRORS_MAX: u64 = 64 * 1024;

/// Runs `cmd` and hands its output to `sink` as it comes, until git ends
/// (then a failing git is an error) or `sink` answers false (then git is
/// stopped), or the deadline of a `bounded::within` scope passes (then git
/// is stopped with what it started, and that is an error). Returns whether `sink` stopped it. Either way git
/// has ended and been reaped when this returns or unwinds (see
/// `bounded::Git`).
fn stream(mut cmd: Command, mut sink: impl FnMut(&[u8]) -> bool) -> super::Result<bool> {
    let failed = |e: std::io::Error| WorktreeError::Failed(format!("cannot run git: {e}"));
    // Its errors go to an unlinked file, read once it has ended: a pipe
    // nobody reads while its output is read could fill and stall it.
    let mut errors = tempfile::tempfile().map_err(failed)?;
    cmd.stdout(Stdio::piped())
        .stderr(errors.try_clone().map_err(failed)?);
    let mut git = Git::spawn(cmd).map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut => WorktreeError::Failed(super::bounded::STOPPED.into()),
        _ => failed(e),
    })?;
    let mut out = git.child().stdout.take().expect("stdout is piped");
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(failed(e)),
        };
        if !sink(&buf[..n]) {
            drop(out);
            drop(git);
            return Ok(true);
        }
    }
    drop(out);
    let (status, stopped) = git.wait().map_err(failed)?;
    if stopped {
        return Err(WorktreeError::Failed(super::bounded::STOPPED.into()));
    }
    if status.success() {
        return Ok(false);
    }
    let mut text = String::new();
    let _ = errors.rewind();
    let _ = errors.take(ERRORS_MAX).read_to_string(&mut text);
    let text = text.trim();
    Err(WorktreeError::Failed(if text.is_empty() {
        format!("git exited with {status}")
    } else {
        text.to_string()
    }))
}

/// A private copy of the worktree's index with every change in it
/// (`git add -A`), so that new files count and the agent's own index and
/// staging stay as they are; the blobs it takes stay private too (see
/// [`Snapshot`]).
fn snapshot_index(wt: &Path, pathspec: &[String]) -> super::Result<Snapshot> {
    let failed = |e: String| WorktreeError::Failed(e);
    let paths = super::git(
        wt,
        [
            "rev-parse",
            "--path-format=absolute",
            "--git-path",
            "index",
            "--git-path",
            "objects",
        ],
    )
    .map_err(failed)?;
    let mut paths = paths.lines();
    let (Some(index), Some(objects)) = (paths.next(), paths.next()) else {
        return Err(failed(format!(
            "git rev-parse named no index and objects in {}",
            wt.display()
        )));
    };
    let objects = ScratchObjects::over(objects).map_err(failed)?;
    let snapshot = Snapshot {
        index: objects.dir().join("index"),
        objects,
    };
    // No index yet (nothing staged ever): git builds one from scratch.
    let _ = std::fs::copy(index.trim(), &snapshot.index);
    let mut cmd = command(wt, ["add", "-A", "--"]);
    cmd.args(pathspec);
    snapshot.apply(&mut cmd);
    // Its output in files: a clean filter it runs could leave a process
    // holding a pipe (see `run_to_files`).
    let (status, _, errors) = super::run_to_files(cmd).map_err(failed)?;
    if !status.success() {
        let errors = String::from_utf8_lossy(&errors);
        return Err(failed(match errors.trim() {
            "" => format!("git add exited with {status}"),
            text => text.to_string(),
        }));
    }
    Ok(snapshot)
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
