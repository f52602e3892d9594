//! Which files grove may trust.
//!
//! grove runs the commands that `grove.toml` configures, the tasks that the
//! store holds and the personas it reads, all as the user who runs it. A
//! state dir, config file, personas dir or database that another user owns,
//! or that other users can write, would let them run code as this user (a
//! shared checkout, a world-writable `/tmp` project). Like git's
//! `safe.directory` and ssh's `StrictModes`, grove refuses such paths with
//! an error that names the path, its owner and mode, and what to do.
//!
//! Trusted owners are this user (effective uid) and root (who can run code
//! as anyone already). A file writable by its group is accepted only when
//! the group is the owner's private group (the `umask 002` convention of
//! many distributions: group `alice` with no other member).
//!
//! Files the user owns but a repository brought (a committed `grove.toml`,
//! a committed store) are `committed`'s concern.

pub mod committed;
mod committed_cache;

use std::ffi::CStr;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A path grove refuses to use.
#[derive(Debug, thiserror::Error)]
#[error("refusing {what} {path}: {problem}. {advice}")]
pub struct Untrusted {
    /// What the path is to grove ("the state dir", "the config file", ...).
    pub what: &'static str,
    pub path: PathBuf,
    pub problem: String,
    pub advice: String,
}

pub fn euid() -> u32 {
    unsafe { libc::geteuid() }
}

/// `uid 1001 (alice)`, or `uid 1001` when the name is unknown.
pub fn describe_uid(uid: u32) -> String {
    match user_name(uid) {
        Some(name) => format!("uid {uid} ({name})"),
        None => format!("uid {uid}"),
    }
}

fn trusted_owner(uid: u32) -> bool {
    uid == euid() || uid == 0
}

/// Checks one path (following a symlink, whose own owner is checked too).
/// A path that does not exist is fine: grove creates it itself.
/// Returns the target's metadata when it exists.
pub fn check(path: &Path, what: &'static str) -> Result<Option<Metadata>, Untrusted> {
    let lmeta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(path, what, &e)),
    };
    if lmeta.file_type().is_symlink() && !trusted_owner(lmeta.uid()) {
        return Err(foreign(path, what, &lmeta));
    }
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(path, what, &e)),
    };
    if !trusted_owner(meta.uid()) {
        return Err(foreign(path, what, &meta));
    }
    if writable_by_others(&meta) {
        return Err(too_open(path, what, &meta));
    }
    Ok(Some(meta))
}

/// Checks the directories above `path` (an absolute path with no symlink
/// left in it): each owned by this user or root, and none writable by
/// others unless sticky (`/tmp`: others cannot rename or remove what is
/// ours there). Whoever can replace a directory on the way can swap what
/// `path` names between a check of it and its use, as ssh's `StrictModes`
/// knows.
pub fn check_ancestors(path: &Path, what: &'static str) -> Result<(), Untrusted> {
    for dir in path.ancestors().skip(1) {
        let meta = fs::metadata(dir).map_err(|e| unreadable(dir, what, &e))?;
        if !trusted_owner(meta.uid()) {
            return Err(foreign_above(dir, what, &meta));
        }
        let sticky = meta.permissions().mode() & 0o1000 != 0;
        if writable_by_others(&meta) && !sticky {
            return Err(too_open(dir, what, &meta));
        }
    }
    Ok(())
}

/// Checks only the owner (for our own paths that grove may tighten itself).
pub fn check_owner(path: &Path, what: &'static str) -> Result<Option<Metadata>, Untrusted> {
    match fs::symlink_metadata(path) {
        Ok(m) if !trusted_owner(m.uid()) => Err(foreign(path, what, &m)),
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(unreadable(path, what, &e)),
    }
}

/// True when someone other than the owner (and root) may write the path.
pub fn writable_by_others(meta: &Metadata) -> bool {
    let mode = meta.permissions().mode();
    if mode & 0o002 != 0 {
        return true;
    }
    mode & 0o020 != 0 && !private_group(meta.gid(), meta.uid())
}

/// Sets `mode` on a path this user owns; used to close up our own files
/// that an older grove or a permissive umask left open.
pub fn tighten(path: &Path, meta: &Metadata, mode: u32) {
    if meta.uid() == euid() && meta.permissions().mode() & 0o777 & !mode != 0 {
        match fs::set_permissions(path, fs::Permissions::from_mode(mode)) {
            Ok(()) => tracing::info!(
                "tightened {} from mode {:o} to {mode:o}",
                path.display(),
                meta.permissions().mode() & 0o777
            ),
            Err(e) => tracing::warn!("cannot tighten {}: {e}", path.display()),
        }
    }
}

fn foreign(path: &Path, what: &'static str, meta: &Metadata) -> Untrusted {
    let me = describe_uid(euid());
    let p = path.display();
    // A link is never advised through: `chmod -R` and `chown -R` follow
    // the one they are given, and would change whatever it points to.
    if let Ok(link) = fs::read_link(path) {
        return Untrusted {
            what,
            path: path.to_path_buf(),
            problem: format!(
                "it is a symbolic link to {}, and it or what it points to is owned by {}, not by you ({me})",
                link.display(),
                describe_uid(meta.uid()),
            ),
            advice: format!(
                "grove uses only your own files. Remove the link (`rm {p}`, which leaves what it points to alone) and grove creates its own"
            ),
        };
    }
    Untrusted {
        what,
        path: path.to_path_buf(),
        problem: format!(
            "it is owned by {}, not by you ({me}), mode {:04o}",
            describe_uid(meta.uid()),
            meta.permissions().mode() & 0o7777
        ),
        advice: format!(
            "grove runs the commands and tasks configured there as you, so only your own files are used. \
             If you trust it, take it over (as root: `chown -R {} {p}` and `chmod -R go-w {p}`); \
             otherwise remove it and grove creates its own",
            euid(),
        ),
    }
}

/// A directory above the workspace's state that another user owns: never
/// advised to be taken over whole (it holds more than grove's files).
fn foreign_above(dir: &Path, what: &'static str, meta: &Metadata) -> Untrusted {
    Untrusted {
        what,
        path: dir.to_path_buf(),
        problem: format!(
            "it is owned by {}, not by you ({}) or root: whoever owns it can swap what grove reads below it",
            describe_uid(meta.uid()),
            describe_uid(euid()),
        ),
        advice: "keep the workspace below directories that you or root own (move it, or have that directory's owner changed to you; its contents need not be)".into(),
    }
}

fn too_open(path: &Path, what: &'static str, meta: &Metadata) -> Untrusted {
    let mode = meta.permissions().mode() & 0o7777;
    let who = if mode & 0o002 != 0 {
        "every user"
    } else {
        "its group"
    };
    Untrusted {
        what,
        path: path.to_path_buf(),
        problem: format!(
            "it is writable by {who} (owner {}, mode {mode:04o})",
            describe_uid(meta.uid())
        ),
        advice: format!(
            "anyone who can write it can make grove run commands as you. \
             If its content is yours, fix it with `chmod go-w {}`; otherwise remove it",
            path.display()
        ),
    }
}

fn unreadable(path: &Path, what: &'static str, e: &io::Error) -> Untrusted {
    Untrusted {
        what,
        path: path.to_path_buf(),
        problem: format!("cannot inspect it: {e}"),
        advice: "check its permissions".into(),
    }
}

fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    Some(
        unsafe { CStr::from_ptr(pwd.pw_name) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// Whether `gid` is the private group of `uid`: named like the user and
/// with no member but the user (what `useradd` makes with USERGROUPS_ENAB).
fn private_group(gid: u32, uid: u32) -> bool {
    let Some(user) = user_name(uid) else {
        return false;
    };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    let rc = unsafe { libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() || grp.gr_name.is_null() {
        return false;
    }
    if unsafe { CStr::from_ptr(grp.gr_name) }.to_string_lossy() != user {
        return false;
    }
    let mut member = grp.gr_mem;
    // SAFETY: gr_mem is a NULL-terminated array of C strings inside `buf`.
    unsafe {
        while !member.is_null() && !(*member).is_null() {
            if CStr::from_ptr(*member).to_string_lossy() != user {
                return false;
            }
            member = member.add(1);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_private_file_is_trusted_world_writable_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"x").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(check(&p, "the file").unwrap().is_some());
        fs::set_permissions(&p, fs::Permissions::from_mode(0o666)).unwrap();
        let err = check(&p, "the file").unwrap_err().to_string();
        assert!(
            err.contains("writable by every user") && err.contains("0666"),
            "{err}"
        );
        assert!(check(&dir.path().join("missing"), "x").unwrap().is_none());
    }

    #[test]
    fn root_has_a_name() {
        assert!(describe_uid(0).starts_with("uid 0"));
    }
}
