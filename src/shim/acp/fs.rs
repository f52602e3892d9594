//! The file-system capability grove offers an ACP agent, confined to the
//! task's workdir: every path is resolved (symlinks included, `..`
//! included) before it is used, and anything that resolves outside the
//! workdir is refused with a message naming both.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Largest file the agent may read through grove (its reply is one line of
/// JSON on the agent's stdin).
pub const MAX_READ_BYTES: u64 = 16 * 1024 * 1024;

pub struct Confined {
    /// The workdir, resolved.
    root: PathBuf,
}

impl Confined {
    pub fn new(work_dir: &Path) -> std::io::Result<Confined> {
        Ok(Confined {
            root: work_dir.canonicalize()?,
        })
    }

    fn inside(&self, resolved: &Path, asked: &Path) -> Result<(), String> {
        if resolved.starts_with(&self.root) {
            Ok(())
        } else {
            Err(format!(
                "{} resolves to {}, outside the task's workdir {}; grove refuses it",
                asked.display(),
                resolved.display(),
                self.root.display()
            ))
        }
    }

    /// The resolved path of an existing file inside the workdir.
    fn existing(&self, path: &Path) -> Result<PathBuf, String> {
        if !path.is_absolute() {
            return Err(format!("{} is not an absolute path", path.display()));
        }
        let resolved = path
            .canonicalize()
            .map_err(|e| format!("cannot resolve {}: {e}", path.display()))?;
        self.inside(&resolved, path)?;
        Ok(resolved)
    }

    /// `fs/read_text_file`: `line` is 1-based, `limit` a number of lines.
    pub fn read(
        &self,
        path: &Path,
        line: Option<u32>,
        limit: Option<u32>,
    ) -> Result<String, String> {
        let resolved = self.existing(path)?;
        let meta = std::fs::metadata(&resolved).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.len() > MAX_READ_BYTES {
            return Err(format!(
                "{} is {} bytes; grove reads at most {MAX_READ_BYTES} for an agent",
                path.display(),
                meta.len()
            ));
        }
        let text = std::fs::read_to_string(&resolved)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if line.is_none() && limit.is_none() {
            return Ok(text);
        }
        let skip = line.unwrap_or(1).saturating_sub(1) as usize;
        let take = limit.map(|l| l as usize).unwrap_or(usize::MAX);
        Ok(text.split_inclusive('\n').skip(skip).take(take).collect())
    }

    /// `fs/write_text_file`: the parent dir must exist inside the workdir;
    /// an existing file (or symlink) at the path must resolve inside too.
    pub fn write(&self, path: &Path, content: &str) -> Result<(), String> {
        if !path.is_absolute() {
            return Err(format!("{} is not an absolute path", path.display()));
        }
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(format!("{} names no file", path.display()));
        };
        let dir = parent
            .canonicalize()
            .map_err(|e| format!("cannot resolve {}: {e}", parent.display()))?;
        self.inside(&dir, path)?;
        let target = dir.join(name);
        if std::fs::symlink_metadata(&target).is_ok() {
            // A symlink (even a dangling one) is followed by the resolution
            // below; one that points outside is refused.
            match target.canonicalize() {
                Ok(resolved) => self.inside(&resolved, path)?,
                Err(_) => {
                    return Err(format!(
                        "{} is a symlink that resolves nowhere; grove does not write through it",
                        path.display()
                    ));
                }
            }
        }
        // O_NOFOLLOW: a symlink swapped in after the check is not followed.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o644)
            .open(&target)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        file.write_all(content.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_workdir_are_refused_symlinks_included() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        let outside = dir.path().join("secret.txt");
        std::fs::create_dir(&work).unwrap();
        std::fs::write(&outside, "secret").unwrap();
        std::os::unix::fs::symlink(&outside, work.join("link")).unwrap();
        std::fs::write(work.join("a.txt"), "1\n2\n3\n").unwrap();
        let fs = Confined::new(&work).unwrap();
        assert_eq!(
            fs.read(&work.join("a.txt"), Some(2), Some(1)).unwrap(),
            "2\n"
        );
        let err = fs.read(&work.join("link"), None, None).unwrap_err();
        assert!(err.contains("outside the task's workdir"), "{err}");
        let err = fs
            .read(&work.join("../secret.txt"), None, None)
            .unwrap_err();
        assert!(err.contains("outside"), "{err}");
        let err = fs.write(&work.join("link"), "pwned").unwrap_err();
        assert!(err.contains("outside"), "{err}");
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "secret");
        fs.write(&work.join("new.txt"), "hi").unwrap();
        assert_eq!(std::fs::read_to_string(work.join("new.txt")).unwrap(), "hi");
        assert!(fs.read(Path::new("a.txt"), None, None).is_err());
    }
}
