//! What the repository brought into `.grove`
//! (see docs/design.md, Committed configuration).
//!
//! The ownership checks of this module's parent stop other users; they
//! cannot stop a file the user cloned. A repository that commits
//! `.grove/grove.toml` chooses the commands grove runs as the user
//! (engines, MCP servers, a worktree's setup), and one that commits
//! `.grove/grove.db` or run records chooses the tasks. So, as direnv's
//! `allow` and mise's `trust` do:
//! - a workspace config that git tracks is used only while its content is
//!   one the user approved (`grove config trust`), a copy of which is kept
//!   in the user's own state dir, outside every repository;
//! - state that git tracks (anything in `.grove` but the config, the
//!   personas and a `.gitignore`) makes a member refuse to start.
//!
//! Files git does not track were not brought by a clone or a pull: they are
//! the user's own, and used as before.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long `git ls-files` may take before grove stops waiting for it. It
/// reads only the index; a git that waits longer is stuck on something of
/// the user's own configuration (a FIFO include, a hung filesystem).
/// Well below the primary's watchdog (5 s by default): a reload may run it.
const GIT_DEADLINE: Duration = Duration::from_secs(2);

/// The most of `git ls-files`' output read: enough to name what is
/// tracked, and a repository that commits a million files into `.grove`
/// cannot make grove hold them all.
const OUTPUT_CAP: usize = 64 * 1024;

/// The names in `.grove` a repository may commit: the configuration (once
/// approved), the personas (prompts, not commands) and an ignore file.
const SHAREABLE: [&str; 3] = ["grove.toml", "personas", ".gitignore"];

/// What git tracks in a workspace's `.grove`.
#[derive(Debug, Default, PartialEq)]
pub struct Committed {
    /// `.grove/grove.toml` (or `.grove` itself) is tracked.
    pub config: bool,
    /// Tracked paths that are grove's state (relative to the workspace;
    /// `.grove` itself when the directory is a tracked symlink or
    /// submodule), the first few of them.
    pub state: Vec<String>,
}

/// Asks git what it tracks in `root/.grove`. `Ok(default)` outside a git
/// repository or without git; `Err` when git could not tell (it failed or
/// did not answer in time), with what happened.
pub fn committed(root: &Path) -> Result<Committed, String> {
    if !maybe_in_a_repository(root) {
        return Ok(Committed::default());
    }
    let Some(out) = ls_files(root)? else {
        return Ok(Committed::default());
    };
    let mut found = classify(&out);
    if out.len() >= OUTPUT_CAP {
        // The config's entry may be past the cut, and so much tracked
        // there is state enough to refuse: neither may pass for lack of
        // reading on.
        found.config = true;
        if found.state.is_empty() {
            found.state.push(".grove".into());
        }
    }
    Ok(found)
}

/// [`committed`], answered from the answer kept for the repository's
/// index as it is now when there is one (see `committed_cache`): the
/// question every command and tool call asks of a config the user has not
/// approved, most often a local one that git does not track.
pub fn committed_cached(root: &Path) -> Result<Committed, String> {
    use super::committed_cache as cache;
    let key = cache::index_key(root);
    if let Some(found) = key.as_ref().and_then(|k| cache::read(root, k)) {
        return Ok(found);
    }
    let found = committed(root)?;
    // Kept only when the walk found the git dir git used: git skips a
    // `.git` that is no repository (an empty dir) for the one above it,
    // whose index the key would then not follow.
    if let Some(key) = key
        && git_dir(root).is_some_and(|used| key.names_git_dir(&used))
    {
        cache::write(root, &key, &found);
    }
    Ok(found)
}

/// Whether git could find a repository for `root`: a `.git` (directory
/// or file) in it or a directory above, or a directory above that looks
/// like a git dir itself (a bare repository: `HEAD`, `objects`, `refs`).
/// A few `stat`s that spare the fork and exec of git (~3 ms, on every
/// member's start and every command) for a workspace outside any
/// repository; where one may be, git is asked as before. The walk is of
/// the real path, as git's own discovery is (a symlinked path's lexical
/// parents are not git's).
fn maybe_in_a_repository(root: &Path) -> bool {
    let real = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    real.ancestors().any(|dir| {
        dir.join(".git").symlink_metadata().is_ok()
            || (dir.join("HEAD").is_file()
                && dir.join("objects").is_dir()
                && dir.join("refs").is_dir())
    })
}

/// Sorts `git ls-files -z` output into config and state.
fn classify(out: &[u8]) -> Committed {
    let mut found = Committed::default();
    // The last entry may be cut by the cap: only whole entries count, but
    // a cut one still shows that something is tracked.
    for entry in out.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        let path = String::from_utf8_lossy(entry);
        // Matched without case: on a file system that ignores it (macOS,
        // a Windows drive under WSL) `.GROVE/Grove.toml` is what grove opens.
        let lower = path.to_lowercase();
        let inside = lower.strip_prefix(".grove/");
        let name = inside.map(|p| p.split('/').next().unwrap_or(""));
        let state = match name {
            Some("grove.toml") => {
                found.config = true;
                false
            }
            Some(n) => !SHAREABLE.contains(&n),
            // `.grove` itself: a symlink or submodule the repository chose.
            None => {
                found.config = true;
                true
            }
        };
        // Named: the first few (the config is looked for to the end).
        if state && found.state.len() < 5 {
            found.state.push(path.into_owned());
        }
    }
    found
}

/// `git ls-files -z -- .grove` in `root`: `None` when `root` is not in a
/// git repository or git is not installed.
fn ls_files(root: &Path) -> Result<Option<Vec<u8>>, String> {
    // No fsmonitor hook: the question needs the index only. `icase`: see
    // `classify`.
    git(
        root,
        &[
            "-c",
            "core.fsmonitor=false",
            "ls-files",
            "-z",
            "--",
            ":(icase).grove",
        ],
    )
}

/// The git dir git uses for `root` (`rev-parse --absolute-git-dir`), as
/// `ls_files` finds it: what `committed_cache` checks its own walk
/// against before it keeps an answer. `None` when git cannot say.
pub(super) fn git_dir(root: &Path) -> Option<PathBuf> {
    let out = git(root, &["rev-parse", "--absolute-git-dir"]).ok()??;
    let text = String::from_utf8(out).ok()?;
    Some(PathBuf::from(text.trim_end_matches('\n')))
}

/// Runs git with `args` in `root`, bounded (see `GIT_DEADLINE`,
/// `OUTPUT_CAP`), in the repository at `root` whatever the caller's
/// environment says: `None` when `root` is in no repository or git is not
/// installed.
fn git(root: &Path, args: &[&str]) -> Result<Option<Vec<u8>>, String> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("git");
    cmd.args(args)
        .current_dir(root)
        // Its messages untranslated: "not a git repository" is read below.
        .env("LC_ALL", "C")
        .env("LANGUAGE", "")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so that a stuck git and whatever it started can
        // be killed whole.
        .process_group(0);
    // The repository is the one at `root`, whatever the caller's
    // environment points git at (`GIT_DIR` of a dotfiles setup, a hook's
    // `GIT_INDEX_FILE`): another index would say nothing is tracked.
    for (key, _) in std::env::vars_os() {
        if key.as_encoded_bytes().starts_with(b"GIT_") {
            cmd.env_remove(key);
        }
    }
    // A workspace on a mount of its own inside a repository is still in
    // it: a pull there writes through the mount.
    cmd.env("GIT_DISCOVERY_ACROSS_FILESYSTEM", "1");
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        // No git: nothing can be told of a repository, if there is one.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return match root.ancestors().find(|d| d.join(".git").exists()) {
                Some(repo) => Err(format!(
                    "git is not on PATH, and {} is a git repository",
                    repo.display()
                )),
                None => Ok(None),
            };
        }
        Err(e) => return Err(format!("cannot run git: {e}")),
    };
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let read_out = std::thread::spawn(move || read_capped(stdout, OUTPUT_CAP));
    let read_err = std::thread::spawn(move || read_capped(stderr, 4096));
    // Told when git ends, without reaping it (`WNOWAIT`): only this thread
    // reaps, so until it does the group id is still git's to kill.
    let pid = child.id();
    let (ended_tx, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: waitid(2) into a zeroed siginfo_t we own.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        let _ = ended_tx.send(());
    });
    if ended.recv_timeout(GIT_DEADLINE).is_err() {
        // SAFETY: kill(2) of the group made above; its leader is not
        // reaped yet (see above).
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        let _ = child.wait();
        return Err(format!(
            "`git ls-files` did not answer within {} s",
            GIT_DEADLINE.as_secs()
        ));
    }
    let status = child
        .wait()
        .map_err(|e| format!("cannot wait for git: {e}"))?;
    let out = read_out.join().unwrap_or_default();
    let err = String::from_utf8_lossy(&read_err.join().unwrap_or_default()).into_owned();
    // Cut at the cap, git ends on a broken pipe: what it wrote stands.
    if status.success() || out.len() >= OUTPUT_CAP {
        return Ok(Some(out));
    }
    if err.contains("not a git repository") {
        return Ok(None);
    }
    Err(format!("`git ls-files` failed ({status}): {}", err.trim()))
}

/// Reads up to `cap` bytes, then stops reading (the writer gets EPIPE
/// rather than grove holding everything it writes).
fn read_capped(from: impl Read, cap: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = from.take(cap as u64).read_to_end(&mut buf);
    buf
}

/// Whether the user approved this content of the workspace config `path`.
#[derive(Debug, PartialEq)]
pub enum Approval {
    Approved,
    /// Approved once, with other content: a pull or an edit changed it.
    Changed,
    Never,
}

/// Where the approved copy of the config at `path` is kept:
/// `$XDG_STATE_HOME/grove/approved/` (`~/.local/state/grove/approved/`),
/// one file per workspace config, named by a hash of its path. `None`
/// without a home.
pub fn approval_record(path: &Path) -> Option<PathBuf> {
    let name = format!("{:016x}", fnv1a(path.as_os_str().as_encoded_bytes()));
    Some(state_home()?.join("grove").join("approved").join(name))
}

/// The user's state dir: `$XDG_STATE_HOME`, else `~/.local/state`.
pub(super) fn state_home() -> Option<PathBuf> {
    std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
}

/// The record's bytes: the config's path, a NUL, the approved content (so
/// that two paths whose hashes collide never stand for each other).
fn record_bytes(path: &Path, content: &[u8]) -> Vec<u8> {
    let mut bytes = path.as_os_str().as_encoded_bytes().to_vec();
    bytes.push(0);
    bytes.extend_from_slice(content);
    bytes
}

pub fn approval(path: &Path, content: &[u8]) -> Approval {
    match approved_copy(path) {
        Some(kept) if kept == content => Approval::Approved,
        Some(_) => Approval::Changed,
        None => Approval::Never,
    }
}

/// The content of the config at `path` as the user last approved it, if
/// they did: what `grove config trust` shows a change against. A record
/// another user could have written, or one for another path whose hash
/// collides, holds nothing.
pub fn approved_copy(path: &Path) -> Option<Vec<u8>> {
    let record = approval_record(path)?;
    if !matches!(super::check(&record, "an approval record"), Ok(Some(_))) {
        return None;
    }
    let kept = std::fs::read(&record).ok()?;
    kept.strip_prefix(record_bytes(path, &[]).as_slice())
        .map(<[u8]>::to_vec)
}

/// Records `content` as the approved content of the config at `path`.
/// Returns where the record is.
pub fn approve(path: &Path, content: &[u8]) -> Result<PathBuf, String> {
    let record = approval_record(path)
        .ok_or("neither XDG_STATE_HOME nor HOME is set: nowhere to keep the approval")?;
    write_private(&record, &record_bytes(path, content))?;
    Ok(record)
}

/// Writes `bytes` to `file` whole or not at all (a temporary file synced,
/// then renamed), mode 0600, in a dir of the user's own (0700, created
/// if missing, owner-checked).
pub(super) fn write_private(file: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = file.parent().ok_or("a record needs a dir")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    super::check(dir, "a dir of grove's records").map_err(|e| e.to_string())?;
    let tmp = dir.join(format!(
        ".{}.{}",
        file.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            use std::io::Write;
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, file));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cannot write {}: {e}", file.display()));
    }
    Ok(())
}

/// Forgets the approval of the config at `path`; true when there was one.
pub fn revoke(path: &Path) -> Result<bool, String> {
    let Some(record) = approval_record(path) else {
        return Ok(false);
    };
    match std::fs::remove_file(&record) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("cannot remove {}: {e}", record.display())),
    }
}

/// FNV-1a: a name for a record that stays the same across Rust releases
/// (std's hasher makes no such promise). Not a security measure: the
/// record holds the path it is for.
pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_is_asked_only_where_a_repository_may_be() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("a/b");
        std::fs::create_dir_all(&ws).unwrap();
        let outside_any = !dir.path().ancestors().any(|d| d.join(".git").exists());
        if outside_any {
            assert!(!maybe_in_a_repository(&ws), "no repository above");
        }
        // A bare repository's layout above the workspace.
        let a = dir.path().join("a");
        std::fs::write(a.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::create_dir_all(a.join("objects")).unwrap();
        std::fs::create_dir_all(a.join("refs")).unwrap();
        assert!(maybe_in_a_repository(&ws), "a bare repository above");
        std::fs::remove_file(a.join("HEAD")).unwrap();
        // A `.git` file (a worktree's, a submodule's) above.
        std::fs::write(a.join(".git"), "gitdir: /elsewhere\n").unwrap();
        assert!(maybe_in_a_repository(&ws), "a .git file above");
        // Reached through a symbolic link: the real path is walked.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&ws, &link).unwrap();
        assert!(maybe_in_a_repository(&link), "through a link");
    }

    #[test]
    fn classify_sorts_config_state_and_shareable_files() {
        let out = b".grove/.gitignore\0.grove/grove.db\0.grove/grove.toml\0.grove/personas/a.md\0.grove/run/x.json\0";
        let c = classify(out);
        assert!(c.config);
        assert_eq!(c.state, vec![".grove/grove.db", ".grove/run/x.json"]);
        assert_eq!(classify(b""), Committed::default());
        let only_personas = classify(b".grove/personas/reviewer.md\0");
        assert_eq!(only_personas, Committed::default());
    }

    #[test]
    fn names_are_matched_without_case_and_the_config_is_found_past_the_named_state() {
        let c = classify(b".GROVE/Grove.TOML\0");
        assert!(c.config);
        let out: Vec<u8> = (0..10)
            .flat_map(|i| format!(".grove/a{i}\0").into_bytes())
            .chain(b".grove/grove.toml\0".iter().copied())
            .collect();
        let c = classify(&out);
        assert!(c.config, "the config after five state paths");
        assert_eq!(c.state.len(), 5);
    }

    #[test]
    fn a_tracked_grove_symlink_or_submodule_counts_as_both() {
        let c = classify(b".grove\0");
        assert!(c.config);
        assert_eq!(c.state, vec![".grove"]);
    }

    #[test]
    fn classify_names_at_most_five_state_paths() {
        let out: Vec<u8> = (0..100)
            .flat_map(|i| format!(".grove/run/{i}.json\0").into_bytes())
            .collect();
        assert_eq!(classify(&out).state.len(), 5);
    }

    #[test]
    fn fnv1a_is_stable() {
        // Record names must not change between builds.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
