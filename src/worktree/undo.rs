//! What a board merge stopped inside `read-tree` puts back (see
//! [`super::merge`]'s `move_checkout`, and docs/design.md, Web board): a
//! copy of each file the move replaces or removes, taken before git
//! begins, and put back without git when the index shows the move never
//! happened. A file someone changed while git wrote the merge (an editor
//! saving, an agent) is theirs: it is left as it is, and what it held
//! before the merge is kept beside the store for them.

use super::{WorktreeError, bounded};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where a merge with a deadline keeps its copies: in the state dir, on
/// the checkout's file system, so that a rename puts each back (a path on
/// another one is named as not put back). Removed with the [`Undo`], or by
/// the next merge when the process died.
pub(super) const UNDO_PREFIX: &str = "merge.undo-";

/// Under a deadline, before `read-tree` moves the checkout: a copy of each
/// file the move replaces or removes, and what it adds. Put back when the
/// deadline stops `read-tree` before it wrote the index, without git's
/// checkout (see `merge::move_checkout`). Copies, not hard links: a link
/// would change the file's ctime, which makes git look at its content
/// again (through the clean filters) as it moves. git writes a new file
/// where it replaces one, and that file may get the inode number just
/// freed, so no stat tells whether git got to a path: its content does
/// (see [`Undo::put_back`]).
pub(super) struct Undo {
    dir: tempfile::TempDir,
    /// A path in the checkout and its copy.
    kept: Vec<(PathBuf, PathBuf)>,
    added: Vec<PathBuf>,
    /// Where the move may make a directory that was not one: the
    /// directories of `added`, deepest first.
    made: Vec<PathBuf>,
    /// What git writes at each path the move adds or changes: the blob's
    /// id in the new tree.
    new_blobs: HashMap<PathBuf, String>,
}

/// What [`Undo::put_back`] could not put back.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Left {
    /// Paths that could not be put back as they were.
    pub failed: Vec<String>,
    /// Paths changed by someone else while git wrote the merge: left as
    /// they are.
    pub changed: Vec<String>,
    /// Where what those held before the merge is kept.
    pub kept_at: Option<PathBuf>,
}

/// Where [`Undo::put_back`] keeps what a file changed during the merge held
/// before it: in the state dir, not removed by the next merge.
const BEFORE_PREFIX: &str = "merge-before-";

impl Undo {
    pub(super) fn keep(root: &Path, state_dir: &Path, changes: &Changes) -> super::Result<Undo> {
        let failed = |e: std::io::Error| {
            WorktreeError::Failed(format!(
                "cannot keep a copy of what the merge replaces (nothing was changed): {e}"
            ))
        };
        let dir = tempfile::Builder::new()
            .prefix(UNDO_PREFIX)
            .tempdir_in(state_dir)
            .map_err(failed)?;
        let mut kept = Vec::new();
        for (n, path) in changes.changed.iter().chain(&changes.removed).enumerate() {
            if bounded::deadline().is_some_and(|until| Instant::now() >= until) {
                return Err(WorktreeError::Stopped(super::NOTHING_MERGED.into()));
            }
            let at = root.join(path);
            if !below_root_unlinked(root, path) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&at) else {
                continue;
            };
            // A submodule's directory: `read-tree` leaves what is in it.
            if meta.is_dir() {
                continue;
            }
            let copy = dir.path().join(n.to_string());
            if meta.file_type().is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(&at).map_err(failed)?, &copy)
            } else {
                std::fs::copy(&at, &copy).map(|_| ())
            }
            .map_err(failed)?;
            kept.push((path.clone(), copy));
        }
        let mut made = BTreeSet::new();
        for path in &changes.added {
            for above in path.ancestors().skip(1) {
                if above.as_os_str().is_empty() {
                    break;
                }
                let dir = std::fs::symlink_metadata(root.join(above)).is_ok_and(|m| m.is_dir());
                if !dir {
                    made.insert(above.to_path_buf());
                }
            }
        }
        let mut made: Vec<PathBuf> = made.into_iter().collect();
        made.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        Ok(Undo {
            dir,
            kept,
            added: changes.added.clone(),
            made,
            new_blobs: changes.new_blobs.clone(),
        })
    }

    /// The checkout's files as they were before the move, for the paths it
    /// touches: what it added removed, the directories it made removed
    /// when empty, what it replaced or removed renamed back from its copy.
    /// Only what the move itself left there is undone: a path that holds
    /// neither what it held before nor what git writes there was changed
    /// by someone else meanwhile, and is left as it is (its copy kept in
    /// `state_dir`, said in [`Left`]). Never through a symbolic link (git
    /// writes none through one either).
    pub(super) fn put_back(self, root: &Path, state_dir: &Path) -> Left {
        let mut left = Left::default();
        let written = self.written_by_git(root);
        for path in &self.added {
            let at = root.join(path);
            let file = std::fs::symlink_metadata(&at).is_ok_and(|m| !m.is_dir());
            if !file || !below_root_unlinked(root, path) {
                continue;
            }
            if !written.contains(path) {
                left.changed.push(path.display().to_string());
            } else if std::fs::remove_file(&at).is_err() {
                left.failed.push(path.display().to_string());
            }
        }
        for dir in &self.made {
            if below_root_unlinked(root, dir) {
                // Only an empty one: anything in it stays.
                let _ = std::fs::remove_dir(root.join(dir));
            }
        }
        let mut before: Option<PathBuf> = None;
        for (path, copy) in &self.kept {
            let at = root.join(path);
            if !below_root_unlinked(root, path) {
                left.failed.push(path.display().to_string());
                continue;
            }
            let now = std::fs::symlink_metadata(&at);
            let back = match &now {
                Err(_) => true,
                Ok(m) if m.is_dir() => true, // fails below, and is said
                Ok(_) if same_content(&at, copy) => continue,
                Ok(_) => written.contains(path),
            };
            if !back {
                left.changed.push(path.display().to_string());
                let kept = keep_before(state_dir, &mut before, path, copy);
                if !kept {
                    left.failed.push(path.display().to_string());
                }
                continue;
            }
            let moved = at
                .parent()
                .is_none_or(|dir| std::fs::create_dir_all(dir).is_ok())
                && std::fs::rename(copy, &at).is_ok();
            if !moved {
                left.failed.push(path.display().to_string());
            }
        }
        left.kept_at = before;
        drop(self.dir);
        left
    }

    /// The paths the move adds or changes that hold what git writes there:
    /// the new tree's blob, byte for byte (a symbolic link's target is its
    /// blob). Read with `git cat-file`, which runs no filter (a filter that
    /// stopped `read-tree` would stop it again), so a file a filter wrote
    /// (`text eol=crlf`, LFS) does not match and is left, and said.
    fn written_by_git(&self, root: &Path) -> std::collections::HashSet<PathBuf> {
        let mut asked: Vec<(&PathBuf, &String)> = Vec::new();
        let kept = self.kept.iter().map(|(path, _)| path);
        for path in self.added.iter().chain(kept) {
            let present = std::fs::symlink_metadata(root.join(path)).is_ok_and(|m| !m.is_dir());
            if let Some(blob) = self.new_blobs.get(path).filter(|_| present) {
                asked.push((path, blob));
            }
        }
        let mut matching = std::collections::HashSet::new();
        if asked.is_empty() {
            return matching;
        }
        let Ok(mut out) = cat_blobs(root, asked.iter().map(|(_, blob)| blob.as_str())) else {
            return matching;
        };
        for (path, _) in asked {
            match next_blob_matches(&mut out, &root.join(path)) {
                Some(true) => {
                    matching.insert(path.clone());
                }
                Some(false) => {}
                None => break, // git's answer ended early: no more is known
            }
        }
        matching
    }
}

/// Runs `git cat-file --batch` for `blobs`, to its end, under the scope's
/// deadline; its answer in a file, read as it is compared (a blob may be
/// large), never through a pipe (see `worktree::run_to_files`).
fn cat_blobs<'a>(
    root: &Path,
    blobs: impl Iterator<Item = &'a str>,
) -> std::io::Result<std::io::BufReader<std::fs::File>> {
    use std::io::{Seek, Write};
    let mut ask = tempfile::tempfile()?;
    for blob in blobs {
        writeln!(ask, "{blob}")?;
    }
    ask.rewind()?;
    let out = tempfile::tempfile()?;
    let mut cmd = super::command(root, ["cat-file", "--batch"]);
    cmd.stdin(ask)
        .stdout(out.try_clone()?)
        .stderr(std::process::Stdio::null());
    let (status, stopped) = bounded::Git::spawn(cmd)?.wait()?;
    if stopped || !status.success() {
        return Err(std::io::Error::other("git cat-file did not answer"));
    }
    let mut out = out;
    out.rewind()?;
    Ok(std::io::BufReader::new(out))
}

/// Reads the next object of `cat-file --batch`'s answer: whether it is a
/// blob holding what `at` holds (a symbolic link's target), `None` when
/// the answer cannot be read on.
fn next_blob_matches(out: &mut impl BufRead, at: &Path) -> Option<bool> {
    let mut header = String::new();
    out.read_line(&mut header).ok()?;
    let mut fields = header.split_whitespace().skip(1);
    let (kind, size) = (fields.next()?, fields.next());
    let Some(size) = size.and_then(|s| s.parse::<u64>().ok()) else {
        return Some(false); // `missing`: nothing follows
    };
    let mut blob = out.by_ref().take(size);
    let same = kind == "blob" && same_as(&mut blob, at);
    // The rest of the object, then its newline.
    std::io::copy(&mut blob, &mut std::io::sink()).ok()?;
    let mut newline = [0u8; 1];
    out.read_exact(&mut newline).ok()?;
    Some(same)
}

/// Whether `a` and `b` hold the same: both links with the same target, or
/// both files with the same bytes.
fn same_content(a: &Path, b: &Path) -> bool {
    let link = |p: &Path| std::fs::symlink_metadata(p).map(|m| m.file_type().is_symlink());
    if link(a).ok() != link(b).ok() {
        return false;
    }
    match std::fs::symlink_metadata(b) {
        Ok(m) if m.file_type().is_symlink() => {
            let target = std::fs::read_link(b).ok();
            target.is_some_and(|t| same_as(&mut t.as_os_str().as_encoded_bytes(), a))
        }
        Ok(_) => std::fs::File::open(b).is_ok_and(|mut f| same_as(&mut f, a)),
        Err(_) => false,
    }
}

/// Whether `content` is what `at` holds: a symbolic link's target, or a
/// file's bytes, compared as they are read.
fn same_as(content: &mut impl Read, at: &Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(at) else {
        return false;
    };
    let mut theirs: Box<dyn Read> = if meta.file_type().is_symlink() {
        match std::fs::read_link(at) {
            Ok(t) => Box::new(std::io::Cursor::new(
                t.into_os_string().into_encoded_bytes(),
            )),
            Err(_) => return false,
        }
    } else {
        match std::fs::File::open(at) {
            Ok(f) => Box::new(f),
            Err(_) => return false,
        }
    };
    let (mut a, mut b) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let Ok(n) = read_full(content, &mut a) else {
            return false;
        };
        let Ok(m) = read_full(&mut theirs, &mut b[..n.max(1)]) else {
            return false;
        };
        if n == 0 {
            return m == 0;
        }
        if n != m || a[..n] != b[..m] {
            return false;
        }
    }
}

/// Reads until `buf` is full or the end: how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Moves the copy of `path` into the state dir's `merge-before-<ms>/`
/// (made on first use into `before`), under its path: kept for the user,
/// whose change stays in the checkout.
fn keep_before(state_dir: &Path, before: &mut Option<PathBuf>, path: &Path, copy: &Path) -> bool {
    let dir = match before {
        Some(dir) => dir.clone(),
        None => {
            let made = tempfile::Builder::new()
                .prefix(&format!("{BEFORE_PREFIX}{}-", crate::protocol::now_ms()))
                .tempdir_in(state_dir)
                .map(|d| d.keep());
            match made {
                Ok(dir) => before.insert(dir).clone(),
                Err(_) => return false,
            }
        }
    };
    let to = dir.join(path);
    to.parent()
        .is_none_or(|p| std::fs::create_dir_all(p).is_ok())
        && std::fs::rename(copy, &to).is_ok()
}

/// Whether every directory between `root` and `path` (relative) is a
/// directory or absent, never a symbolic link: what is done at `path`
/// stays inside the checkout.
pub(super) fn below_root_unlinked(root: &Path, path: &Path) -> bool {
    let mut at = root.to_path_buf();
    let parts: Vec<_> = path.components().collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        if !matches!(part, std::path::Component::Normal(_)) {
            return false;
        }
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return false,
            Err(_) => return true,
        }
    }
    true
}

/// What a move from one commit to another changes, paths as bytes (a name
/// that is not UTF-8 must not slip past).
pub(super) struct Changes {
    pub added: Vec<PathBuf>,
    pub removed: HashSet<PathBuf>,
    /// Changed in place: content, mode or type.
    pub changed: Vec<PathBuf>,
    /// The blob the new commit has at each added or changed path (not a
    /// submodule's commit): what `read-tree` writes there.
    pub new_blobs: HashMap<PathBuf, String>,
}

pub(super) fn changes_between(root: &Path, old: &str, new: &str) -> super::Result<Changes> {
    let mut changes = Changes {
        added: Vec::new(),
        removed: HashSet::new(),
        changed: Vec::new(),
        new_blobs: HashMap::new(),
    };
    for c in raw_diff(root, &[old, new], "the merge")? {
        if matches!(c.new_mode.as_str(), "100644" | "100755" | "120000") {
            changes.new_blobs.insert(c.path.clone(), c.new_id);
        }
        match c.status.as_str() {
            "A" => changes.added.push(c.path),
            "D" => {
                changes.removed.insert(c.path);
            }
            _ => changes.changed.push(c.path),
        }
    }
    Ok(changes)
}

/// One path of `git diff --raw`: its new mode and object, its status.
pub(super) struct RawChange {
    pub path: PathBuf,
    pub new_mode: String,
    pub new_id: String,
    pub status: String,
}

/// `git diff --raw` between `revs` (two commits, or an `A...B` range),
/// paths as bytes (a name that is not UTF-8 must not slip past); `what`
/// names whose changes they are, for the error.
pub(super) fn raw_diff(root: &Path, revs: &[&str], what: &str) -> super::Result<Vec<RawChange>> {
    use std::os::unix::ffi::OsStrExt;
    let mut args = vec![
        "diff",
        "--raw",
        "-z",
        "--no-abbrev",
        "--no-renames",
        "--no-ext-diff",
    ];
    args.extend(revs);
    args.push("--");
    let (status, listed, errors) = super::git_bytes(root, args).map_err(WorktreeError::Failed)?;
    if !status.success() {
        return Err(WorktreeError::Failed(format!(
            "cannot list what {what} changes: {}",
            String::from_utf8_lossy(&errors).trim()
        )));
    }
    let mut fields = listed.split(|b| *b == 0).filter(|f| !f.is_empty());
    let mut out = Vec::new();
    // `:OLD_MODE NEW_MODE OLD_ID NEW_ID STATUS`, then the path.
    while let (Some(raw), Some(path)) = (fields.next(), fields.next()) {
        let raw = String::from_utf8_lossy(raw);
        let raw: Vec<&str> = raw.split(' ').collect();
        let [_, new_mode, _, new_id, status] = raw[..] else {
            return Err(WorktreeError::Failed(format!(
                "cannot read what {what} changes: git said {raw:?}"
            )));
        };
        out.push(RawChange {
            path: PathBuf::from(std::ffi::OsStr::from_bytes(path)),
            new_mode: new_mode.into(),
            new_id: new_id.into(),
            status: status.into(),
        });
    }
    Ok(out)
}
