//! An object directory of grove's own for git commands that only look:
//! whatever they write (the blobs of `git add -A` into a private index, the
//! trees of `git merge-tree --write-tree`) lands in a temporary directory,
//! with the repository's objects as an alternate so that everything the
//! repository has stays readable. Removed when dropped. Without it, every
//! `grove diff` grew `.git/objects` by the size of the worktree's changes,
//! and every squash-merge check of `grove delete` by the merged trees,
//! until git's garbage collection, weeks later.

use std::path::Path;
use std::process::Command;

pub(crate) struct ScratchObjects {
    dir: tempfile::TempDir,
    /// The repository's own object directory, which these extend.
    repo_objects: String,
}

impl ScratchObjects {
    /// Scratch objects over `repo_objects` (`git rev-parse --git-path
    /// objects`, absolute).
    pub(crate) fn over(repo_objects: &str) -> Result<ScratchObjects, String> {
        let dir = tempfile::tempdir()
            .map_err(|e| format!("cannot create a temporary object directory: {e}"))?;
        std::fs::create_dir(dir.path().join("objects"))
            .map_err(|e| format!("cannot create a temporary object directory: {e}"))?;
        Ok(ScratchObjects {
            dir,
            repo_objects: repo_objects.trim().to_string(),
        })
    }

    /// Scratch objects for the repository `dir` is in.
    pub(crate) fn for_repo(dir: &Path) -> Result<ScratchObjects, String> {
        let objects = super::git(
            dir,
            [
                "rev-parse",
                "--path-format=absolute",
                "--git-path",
                "objects",
            ],
        )?;
        Self::over(&objects)
    }

    /// A directory of ours beside the objects (a private index goes there).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Points `cmd`'s writes here and its reads here and at the repository.
    pub(crate) fn apply(&self, cmd: &mut Command) {
        cmd.env("GIT_OBJECT_DIRECTORY", self.dir.path().join("objects"))
            .env("GIT_ALTERNATE_OBJECT_DIRECTORIES", &self.repo_objects);
    }
}
