//! Where a workspace keeps its state (see docs/design.md, Workspace layout).
//!
//! The state dir lives in the workspace; the sockets do not, because unix
//! socket paths are limited to 108 bytes. They go in a short per-user
//! directory keyed by a hash of the workspace path.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("workspace {path} does not exist or is not a directory")]
    NoWorkspace { path: PathBuf },
    #[error("cannot create the state dir {path}: {source} (is the workspace writable by you?)")]
    StateDir { path: PathBuf, source: io::Error },
    #[error("the state dir {path} is not writable: {source} (check its owner and mode)")]
    NotWritable { path: PathBuf, source: io::Error },
    #[error("cannot create the socket dir {path}: {source}")]
    SocketDir { path: PathBuf, source: io::Error },
    #[error(
        "refusing the socket dir {path}: {reason}; remove it or fix its ownership/mode (must be owned by uid {uid} and mode 0700)"
    )]
    UnsafeSocketDir {
        path: PathBuf,
        reason: String,
        uid: u32,
    },
    #[error(transparent)]
    Untrusted(#[from] crate::trust::Untrusted),
}

/// The resolved file layout of one workspace.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub socket_dir: PathBuf,
}

/// `.grove/.gitignore` as grove writes it (see
/// `Workspace::keep_state_out_of_git`).
const STATE_GITIGNORE: &str = "# Written by grove: its state here (the store, run records, task logs,\n\
# worktrees) is this machine's own, and so is grove.toml unless you share\n\
# it on purpose: `git add -f .grove/grove.toml .grove/personas` (a clone\n\
# then uses that config only once `grove config trust` approves it).\n\
*\n\
!/.gitignore\n";

impl Workspace {
    /// Resolves `root` (canonicalized, so every process agrees on the hash).
    pub fn resolve(root: &Path) -> Result<Self, PathError> {
        let root = fs::canonicalize(root).map_err(|_| PathError::NoWorkspace {
            path: root.to_path_buf(),
        })?;
        if !root.is_dir() {
            return Err(PathError::NoWorkspace { path: root });
        }
        let state_dir = root.join(".grove");
        let socket_dir = socket_base().join(workspace_hash(&root));
        Ok(Workspace {
            root,
            state_dir,
            socket_dir,
        })
    }

    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("grove.db")
    }
    pub fn lock_path(&self) -> PathBuf {
        self.state_dir.join("primary.lock")
    }
    pub fn primary_json(&self) -> PathBuf {
        self.state_dir.join("primary.json")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
    pub fn config_path(&self) -> PathBuf {
        self.state_dir.join("grove.toml")
    }
    pub fn pub_socket(&self, epoch: u64) -> PathBuf {
        self.socket_dir.join(format!("pub-{epoch}.sock"))
    }
    pub fn rpc_socket(&self, epoch: u64) -> PathBuf {
        self.socket_dir.join(format!("rpc-{epoch}.sock"))
    }
    /// The highest epoch any primary of this workspace took, kept outside
    /// `.grove` so that it survives the state dir being deleted.
    pub fn epoch_mark(&self) -> PathBuf {
        self.socket_dir.join("epoch")
    }
    /// What one member reports about the config files it loaded.
    pub fn member_report(&self, instance_id: &str) -> PathBuf {
        self.socket_dir.join(format!("member-{instance_id}.json"))
    }

    /// Creates `.grove/` (0700), checks that it can be trusted (see
    /// [`Workspace::check_state_dir`]) and that we can write in it.
    pub fn ensure_state_dir(&self) -> Result<(), PathError> {
        // Never recreate a workspace that was deleted: only `.grove` itself.
        if !self.root.is_dir() {
            return Err(PathError::NoWorkspace {
                path: self.root.clone(),
            });
        }
        match fs::DirBuilder::new().mode(0o700).create(&self.state_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(PathError::StateDir {
                    path: self.state_dir.clone(),
                    source,
                });
            }
        }
        self.check_state_dir()?;
        // Creating the dir succeeds when it already exists; prove writability.
        let probe = self
            .state_dir
            .join(format!(".probe-{}", std::process::id()));
        fs::write(&probe, b"")
            .and_then(|_| fs::remove_file(&probe))
            .map_err(|source| PathError::NotWritable {
                path: self.state_dir.clone(),
                source,
            })?;
        self.keep_state_out_of_git();
        Ok(())
    }

    /// Writes `.grove/.gitignore` when there is none: everything in `.grove`
    /// but this file (the config and personas are shared only on purpose,
    /// `git add -f`), so that a habitual `git add -A` does not commit the store,
    /// the run records and the task logs (output that may hold secrets) —
    /// and, with them committed, every member after refused to start. Never
    /// over a file that is there (`create_new`); a failure only means git
    /// is not told.
    fn keep_state_out_of_git(&self) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.state_dir.join(".gitignore");
        let made = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path);
        if let Ok(mut file) = made {
            let _ = file.write_all(STATE_GITIGNORE.as_bytes());
        }
    }

    /// Refuses a `.grove` in which git tracks grove's state (a store, run
    /// records, logs: anything but the config, the personas and a
    /// `.gitignore`): it came with the repository, and a member would run
    /// the tasks it holds as this user
    /// (docs/design.md, Committed configuration). When git cannot tell,
    /// says so in the log and goes on: a broken git must not stop a
    /// workspace.
    pub fn refuse_committed_state(&self) -> Result<(), PathError> {
        let committed = match crate::trust::committed::committed(&self.root) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("cannot tell whether git tracks files in .grove: {e}");
                return Ok(());
            }
        };
        if committed.state.is_empty() {
            return Ok(());
        }
        let listed = committed.state.join(", ");
        // A store's WAL left beside a new store would bring its pages back.
        let mut gone = committed.state.clone();
        if gone.iter().any(|p| p.starts_with(".grove/grove.db")) {
            gone.retain(|p| !p.starts_with(".grove/grove.db"));
            gone.extend(
                [
                    ".grove/grove.db",
                    ".grove/grove.db-wal",
                    ".grove/grove.db-shm",
                ]
                .map(String::from),
            );
        }
        let gone = gone.join(" ");
        Err(PathError::Untrusted(crate::trust::Untrusted {
            what: "the grove state dir",
            path: self.state_dir.clone(),
            problem: format!(
                "git tracks grove's state in it ({listed}): it came with the repository"
            ),
            advice: format!(
                "grove would run the tasks it holds as you, so it uses only state of its own. \
                 If you committed your own state by mistake, take it out of the repository \
                 and keep it (`git rm -r -q --cached -- .grove`, and commit; share the config \
                 again, if you did, with `git add -f .grove/grove.toml .grove/personas`): your task history stays. \
                 If it came with a clone or a pull (someone else's tasks), also delete it from \
                 this checkout (`rm -rf -- {gone}`). Only .grove/grove.toml and .grove/personas may be committed"
            ),
        }))
    }

    /// Refuses a state dir that another user owns, and every entry in it
    /// that another user owns: grove runs what `grove.toml` and the store
    /// say, and writes logs where the state dir says. Our own state dir
    /// that is merely too open (an older grove, a permissive umask) is
    /// tightened to 0700, and our store files to 0600 (they hold prompts
    /// and task environments); our config file, store or personas dir that
    /// others could write is refused, since its content may not be ours.
    /// A missing state dir is fine.
    pub fn check_state_dir(&self) -> Result<(), PathError> {
        use crate::trust;
        let Some(meta) = trust::check_owner(&self.state_dir, "the grove state dir")? else {
            return Ok(());
        };
        let meta = if meta.file_type().is_symlink() {
            // Follow it, but the target must pass the same test.
            match trust::check_owner(
                &fs::canonicalize(&self.state_dir).unwrap_or_default(),
                "the grove state dir",
            )? {
                Some(m) => m,
                None => return Ok(()),
            }
        } else {
            meta
        };
        if !meta.is_dir() {
            return Err(PathError::StateDir {
                path: self.state_dir.clone(),
                source: io::Error::other("it is not a directory"),
            });
        }
        if meta.uid() == trust::euid() {
            trust::tighten(&self.state_dir, &meta, 0o700);
        } else if trust::writable_by_others(&meta) {
            // Owned by root but open to others: not ours to change.
            trust::check(&self.state_dir, "the grove state dir")?;
        }
        let entries = fs::read_dir(&self.state_dir).map_err(|source| PathError::StateDir {
            path: self.state_dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let what = match name.as_ref() {
                "grove.toml" => "the workspace config file",
                "personas" => "the personas dir",
                "grove.db" | "grove.db-wal" | "grove.db-shm" => "the grove store",
                _ => "a file in the grove state dir",
            };
            let Some(meta) = trust::check_owner(&path, what)? else {
                continue;
            };
            match name.as_ref() {
                "grove.toml" | "personas" => {
                    trust::check(&path, what)?;
                }
                "grove.db" | "grove.db-wal" | "grove.db-shm" => {
                    trust::check(&path, what)?;
                    trust::tighten(&path, &meta, 0o600);
                }
                "logs" | "run" if meta.is_dir() => trust::tighten(&path, &meta, 0o700),
                _ => {}
            }
        }
        Ok(())
    }

    /// Creates the socket dir (0700) and refuses it when someone else owns it
    /// or others can write to it, the way tmux and ssh-agent do.
    pub fn ensure_socket_dir(&self) -> Result<(), PathError> {
        for dir in [self.socket_dir.parent(), Some(self.socket_dir.as_path())]
            .into_iter()
            .flatten()
        {
            match fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(PathError::SocketDir {
                        path: dir.to_path_buf(),
                        source,
                    });
                }
            }
            check_private_dir(dir)?;
        }
        Ok(())
    }
}

fn check_private_dir(dir: &Path) -> Result<(), PathError> {
    let uid = unsafe { libc::geteuid() };
    let meta = fs::symlink_metadata(dir).map_err(|source| PathError::SocketDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let unsafe_dir = |reason: String| PathError::UnsafeSocketDir {
        path: dir.to_path_buf(),
        reason,
        uid,
    };
    if !meta.is_dir() {
        return Err(unsafe_dir("it is not a directory".into()));
    }
    if meta.uid() != uid {
        return Err(unsafe_dir(format!("it is owned by uid {}", meta.uid())));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(unsafe_dir(format!(
            "its mode is {:o}, open to other users",
            meta.permissions().mode() & 0o777
        )));
    }
    Ok(())
}

/// `$XDG_RUNTIME_DIR/grove` when set and usable, else `/tmp/grove-<uid>`.
fn socket_base() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if dir.is_dir() {
            return dir.join("grove");
        }
    }
    let uid = unsafe { libc::geteuid() };
    PathBuf::from(format!("/tmp/grove-{uid}"))
}

/// A short, stable name for a workspace path (FNV-1a, 64 bits, hex).
fn workspace_hash(root: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in root.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Opens a file of ours for reading and writing, creating it 0600 if
/// absent and keeping its content (marker files), never through a link.
pub fn open_private(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Writes `bytes` to `path` atomically: write a temp file, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_temp_and_rename(path, bytes, true)
}

/// Temp file + rename, without the fsync of [`write_atomic`]: readers never
/// see a half-written file, and a process crash loses nothing (the page
/// cache outlives it); only a power loss may. For files that matter only
/// while the processes that use them run (a run's spec and run record, a
/// member's report), so that no hot path waits for a disk flush.
pub fn write_replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_temp_and_rename(path, bytes, false)
}

fn write_temp_and_rename(path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // The writer's pid in the temp name: the files a dead writer left are
    // recognisable (`runs::tree` removes a dead shim's).
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if sync {
            f.sync_all()?;
        }
    }
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_are_short() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a".repeat(200));
        fs::create_dir(&deep).unwrap();
        let ws = Workspace::resolve(&deep).unwrap();
        assert!(ws.rpc_socket(u64::MAX).as_os_str().len() < 108);
    }

    #[test]
    fn hash_is_stable_and_distinct() {
        assert_eq!(
            workspace_hash(Path::new("/a/b")),
            workspace_hash(Path::new("/a/b"))
        );
        assert_ne!(
            workspace_hash(Path::new("/a/b")),
            workspace_hash(Path::new("/a/c"))
        );
    }
}
