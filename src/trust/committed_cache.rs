//! `git ls-files`' answer for a workspace, kept until the repository's
//! index changes (see docs/design.md, Committed configuration).
//!
//! Every CLI command and every `grove mcp` tool call loads the config, and
//! a workspace config the user has not approved (the common case: a local,
//! untracked `grove.toml`) needs git's word that it is not tracked: a fork
//! and exec of git, ~1.5 ms, half again the time of a `grove list`. What
//! `git ls-files -- .grove` prints is the index's entries and nothing else,
//! so the answer is kept beside the identity of the index file it came
//! from (device, inode, size, change times: git replaces the index by a
//! rename on every change), and used while that identity is the same.
//!
//! Kept in the user's own state dir, never in the workspace: a repository
//! may commit anything into `.grove`, and a cached "nothing is tracked"
//! that a clone brought would be the very bypass the check exists to stop.
//! Only git's answers are kept, never "git could not tell".

use super::committed::Committed;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// An index changed this recently may change again within the same tick
/// of the file system's clock, keeping its size and times (git's "racy"
/// index): its answer is not kept.
const SETTLED_AFTER: Duration = Duration::from_secs(2);

/// The most a `.git` file (a worktree's or a submodule's pointer) is read.
const GITFILE_CAP: u64 = 4096;

/// The files git's answer was read from, as they are now: the `.git`
/// found above `root` and the index it leads to. `None` when there is no
/// `.git` above `root` (git is asked every time then: a bare repository or
/// a `.git` our walk cannot see would not be keyed by anything).
#[derive(Debug, PartialEq)]
pub struct IndexKey {
    text: String,
    settled: bool,
    /// The git dir the walk found (the `.git` dir, or where a `.git` file
    /// points).
    git_dir: PathBuf,
}

impl IndexKey {
    /// Whether `used` (the git dir git itself reports) is the one this key
    /// follows.
    pub fn names_git_dir(&self, used: &Path) -> bool {
        let canonical = |p: &Path| std::fs::canonicalize(p).ok();
        canonical(&self.git_dir).is_some_and(|mine| Some(mine) == canonical(used))
    }
}

pub fn index_key(root: &Path) -> Option<IndexKey> {
    let dot_git = root
        .ancestors()
        .map(|d| d.join(".git"))
        .find(|p| std::fs::symlink_metadata(p).is_ok())?;
    let dot_meta = std::fs::metadata(&dot_git).ok()?;
    let git_dir = if dot_meta.is_dir() {
        dot_git.clone()
    } else {
        gitdir_of_file(&dot_git)?
    };
    let dir_meta = std::fs::metadata(&git_dir).ok()?;
    let mut text = format!(
        "{} {}:{}:{} {}:{}:{}",
        dot_git.display(),
        dot_meta.dev(),
        dot_meta.ino(),
        dot_meta.uid(),
        dir_meta.dev(),
        dir_meta.ino(),
        dir_meta.uid(),
    );
    let settled = match std::fs::metadata(git_dir.join("index")) {
        Ok(m) => {
            text.push_str(&format!(
                " index {}:{}:{}:{}.{}:{}.{}",
                m.dev(),
                m.ino(),
                m.size(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec()
            ));
            let changed = m.modified().ok()?.max(ctime(&m));
            SystemTime::now()
                .duration_since(changed)
                .is_ok_and(|age| age >= SETTLED_AFTER)
        }
        // No index yet: nothing is tracked, and the first `git add`
        // creates one, which changes the key.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            text.push_str(" no index");
            true
        }
        Err(_) => return None,
    };
    Some(IndexKey {
        text,
        settled,
        git_dir,
    })
}

fn ctime(m: &std::fs::Metadata) -> SystemTime {
    let since = Duration::new(
        m.ctime().max(0) as u64,
        m.ctime_nsec().clamp(0, 999_999_999) as u32,
    );
    SystemTime::UNIX_EPOCH + since
}

/// The git dir a `.git` file points at (`gitdir: <path>`, relative to the
/// file's directory when not absolute).
fn gitdir_of_file(dot_git: &Path) -> Option<PathBuf> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(dot_git)
        .ok()?
        .take(GITFILE_CAP)
        .read_to_string(&mut text)
        .ok()?;
    let dir = text.lines().next()?.strip_prefix("gitdir:")?.trim();
    let dir = Path::new(dir);
    Some(if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        dot_git.parent()?.join(dir)
    })
}

/// Where git's answer for `root` is kept: `$XDG_STATE_HOME/grove/committed/`,
/// one file per workspace, named by a hash of its root.
fn record(root: &Path) -> Option<PathBuf> {
    let name = format!(
        "{:016x}",
        super::committed::fnv1a(root.as_os_str().as_encoded_bytes())
    );
    Some(
        super::committed::state_home()?
            .join("grove")
            .join("committed")
            .join(name),
    )
}

/// The record's bytes: the root, the key, then the answer, NUL between
/// them (none of them holds a NUL: paths and `ls-files -z` entries).
fn record_bytes(root: &Path, key: &IndexKey, found: &Committed) -> Vec<u8> {
    let mut fields: Vec<&[u8]> = vec![
        b"v1",
        root.as_os_str().as_encoded_bytes(),
        key.text.as_bytes(),
        if found.config { b"config" } else { b"-" },
    ];
    fields.extend(found.state.iter().map(|s| s.as_bytes()));
    fields.join(&0u8)
}

/// git's kept answer for `root`, if it was given for the index `key` names.
pub fn read(root: &Path, key: &IndexKey) -> Option<Committed> {
    read_from(&record(root)?, root, key)
}

fn read_from(path: &Path, root: &Path, key: &IndexKey) -> Option<Committed> {
    // A record another user could have written says nothing.
    if !matches!(super::check(path, "a cached git answer"), Ok(Some(_))) {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    let mut fields = bytes.split(|b| *b == 0);
    if fields.next()? != b"v1"
        || fields.next()? != root.as_os_str().as_encoded_bytes()
        || fields.next()? != key.text.as_bytes()
    {
        return None;
    }
    let config = match fields.next()? {
        b"config" => true,
        b"-" => false,
        _ => return None,
    };
    let state = fields
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    Some(Committed { config, state })
}

/// Keeps git's answer `found` for `root`, read from the index `key` names.
/// Best effort: a cache that cannot be written costs the next command a
/// git run, nothing else.
pub fn write(root: &Path, key: &IndexKey, found: &Committed) {
    if let Some(path) = record(root) {
        write_to(&path, root, key, found);
    }
}

fn write_to(path: &Path, root: &Path, key: &IndexKey, found: &Committed) {
    if !key.settled {
        return;
    }
    let bytes = record_bytes(root, key, found);
    if let Err(e) = super::committed::write_private(path, &bytes) {
        tracing::debug!("not keeping git's answer for {}: {e}", root.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> IndexKey {
        IndexKey {
            text: text.into(),
            settled: true,
            git_dir: PathBuf::from("/nonexistent"),
        }
    }

    #[test]
    fn an_answer_is_read_back_only_for_its_root_and_index() {
        let home = tempfile::tempdir().unwrap();
        let file = home.path().join("committed/record");
        let root = Path::new("/tmp/grove-cache-test-root");
        let found = Committed {
            config: true,
            state: vec![".grove/grove.db".into(), ".grove/runs/x".into()],
        };
        write_to(&file, root, &key("index 1"), &found);
        assert_eq!(read_from(&file, root, &key("index 1")), Some(found));
        assert_eq!(
            read_from(&file, root, &key("index 2")),
            None,
            "another index"
        );
        let other = Path::new("/tmp/grove-cache-test-other");
        assert_eq!(read_from(&file, other, &key("index 1")), None);
        let unsettled = IndexKey {
            text: "index 3".into(),
            settled: false,
            git_dir: PathBuf::from("/nonexistent"),
        };
        write_to(&file, root, &unsettled, &Committed::default());
        assert_eq!(
            read_from(&file, root, &unsettled),
            None,
            "a racy index is not kept"
        );
        // A record others can write says nothing.
        use std::os::unix::fs::PermissionsExt;
        write_to(&file, root, &key("index 4"), &Committed::default());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(read_from(&file, root, &key("index 4")), None);
    }

    #[test]
    fn the_key_follows_the_index_and_a_gitfile() {
        let repo = tempfile::tempdir().unwrap();
        let git = repo.path().join(".git");
        std::fs::create_dir(&git).unwrap();
        let sub = repo.path().join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        let none = index_key(&sub).unwrap();
        assert!(none.text.ends_with("no index") && none.settled);
        std::fs::write(git.join("index"), b"DIRC").unwrap();
        let fresh = index_key(&sub).unwrap();
        assert_ne!(fresh, none);
        assert!(!fresh.settled, "an index written just now is racy");
        // A worktree's `.git` file leads to its own git dir.
        let wt = repo.path().join("wt");
        std::fs::create_dir_all(wt.join("gd")).unwrap();
        std::fs::write(wt.join(".git"), b"gitdir: gd\n").unwrap();
        std::fs::write(wt.join("gd/index"), b"DIRC..").unwrap();
        let worktree = index_key(&wt).unwrap();
        assert!(worktree.text.contains(":6:"), "{}", worktree.text);
        assert!(index_key(Path::new("/")).is_none() || Path::new("/.git").exists());
    }
}
