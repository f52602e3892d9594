//! The projects registry: which workspaces this user runs grove in, so
//! that a task can delegate to another one by id, name or path
//! (`grove projects`, `spawn --project`).
//!
//! Each member registers its workspace when it starts: one small JSON file
//! per workspace, `$XDG_CONFIG_HOME/grove/projects/<id>.json` (else
//! `~/.config/grove/projects/`), written to a temp name and renamed into
//! place. One file per workspace means concurrent members of different
//! workspaces never write the same file, and members of the same one
//! write the same content: no lock, no lost update. The directory is the
//! user's own (0700; refused, like every file grove trusts, when another
//! user owns it or others can write it), because a registered path is
//! where a delegated task runs.
//!
//! The id is the workspace's socket-dir hash (a hash of its canonical
//! path): stable, and the same that every process computes.

use crate::paths::Workspace;
use crate::primary_record::PrimaryRecord;
use crate::protocol::{DEPTH_ENV, NewTask, PARENT_REF_ENV};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One registered workspace, as its file holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub path: PathBuf,
}

/// A registered workspace and what is known of it now.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    #[serde(flatten)]
    pub project: Project,
    /// The path no longer names a directory (`grove projects --forget ID`).
    pub stale: bool,
    /// A member serves it (its recorded primary's process runs).
    pub running: bool,
}

/// `$XDG_CONFIG_HOME/grove/projects`, else `~/.config/grove/projects`.
pub fn registry_dir() -> Result<PathBuf, String> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .ok_or("neither XDG_CONFIG_HOME nor HOME is set: no place for the projects registry")?;
    Ok(base.join("grove").join("projects"))
}

/// The workspace's id in the registry.
pub fn id_of(ws: &Workspace) -> String {
    ws.socket_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The registry dir, made (0700) if absent; refused when it is not the
/// user's alone.
fn checked_dir(create: bool) -> Result<Option<PathBuf>, String> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = registry_dir()?;
    if create && !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create the projects registry {}: {e}", dir.display()))?;
    }
    match crate::trust::check(&dir, "the projects registry") {
        Ok(Some(_)) => Ok(Some(dir)),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Set (non-empty) in a member's environment: its workspace is not
/// registered (the throwaway clusters of `grove demo`, `bench`, `chaos`).
pub const NO_REGISTER_ENV: &str = "GROVE_NO_REGISTER";

/// Records `ws` (named `name`, else its directory's name). Rewrites the
/// file only when its content changed.
pub fn register(ws: &Workspace, name: Option<&str>) -> Result<(), String> {
    if std::env::var_os(NO_REGISTER_ENV).is_some_and(|v| !v.is_empty()) {
        return Ok(());
    }
    let dir = checked_dir(true)?.ok_or("the projects registry vanished")?;
    let dir_name = ws
        .root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let project = Project {
        id: id_of(ws),
        name: name
            .map(str::to_string)
            .or(dir_name)
            .unwrap_or_else(|| "/".into()),
        path: ws.root.clone(),
    };
    let path = dir.join(format!("{}.json", project.id));
    if read_one(&path).as_ref() == Some(&project) {
        return Ok(());
    }
    let bytes = serde_json::to_vec_pretty(&project).map_err(|e| e.to_string())?;
    crate::paths::write_replace(&path, &bytes)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn read_one(path: &Path) -> Option<Project> {
    // Only files of this user that nobody else can write.
    crate::trust::check(path, "a project entry").ok()??;
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Every registered workspace, by name then path.
pub fn list() -> Result<Vec<Listed>, String> {
    let Some(dir) = checked_dir(false)? else {
        return Ok(vec![]);
    };
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot read the projects registry {}: {e}", dir.display()))?;
    let mut out: Vec<Listed> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| read_one(&e.path()))
        .map(|project| {
            let stale = !project.path.is_dir();
            let running = !stale && member_runs(&project.path);
            Listed {
                project,
                stale,
                running,
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.project.name, &a.project.path).cmp(&(&b.project.name, &b.project.path)));
    Ok(out)
}

/// Whether a member serves the workspace at `path`: its `primary.json`
/// names a process that still runs.
fn member_runs(path: &Path) -> bool {
    Workspace::resolve(path)
        .ok()
        .and_then(|ws| PrimaryRecord::read(&ws))
        .is_some_and(|r| r.pid_alive())
}

/// Removes the entry `id` (a stale one, typically). Says whether one was.
pub fn forget(id: &str) -> Result<bool, String> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "'{id}' is not a project id (see `grove projects` for the ids)"
        ));
    }
    let Some(dir) = checked_dir(false)? else {
        return Ok(false);
    };
    let path = dir.join(format!("{id}.json"));
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
    }
}

/// The workspace `query` names: a registered id, a registered name (one
/// only), or the path of a directory (registered or not: a grove is
/// started there when needed). The answer says what to do when it names
/// none, or several.
pub fn resolve(query: &str) -> Result<Project, String> {
    let query = query.trim();
    if query.is_empty() {
        return Err("the project is empty; give its id, name or path (see `projects`)".into());
    }
    let known = list()?;
    if let Some(p) = known.iter().find(|p| p.project.id == query) {
        return usable(&p.project);
    }
    let named: Vec<&Listed> = known.iter().filter(|p| p.project.name == query).collect();
    match named.as_slice() {
        [one] => return usable(&one.project),
        [] => {}
        many => {
            let ids: Vec<String> = many
                .iter()
                .map(|p| format!("{} ({})", p.project.id, p.project.path.display()))
                .collect();
            return Err(format!(
                "several projects are named '{query}': {}; give the id or the path",
                ids.join(", ")
            ));
        }
    }
    let path = Path::new(query);
    if path.is_absolute() || query.contains('/') {
        let ws = Workspace::resolve(path).map_err(|e| e.to_string())?;
        // A directory inside a workspace is not another one: a grove
        // started there would have none of the workspace's config,
        // engines or tasks (and `/` is no project at all).
        if ws.root.parent().is_none() {
            return Err(format!(
                "{} is the file system's root, not a project; give a project's directory",
                ws.root.display()
            ));
        }
        if !ws.state_dir.join("grove.db").exists()
            && let Some(above) = ws
                .root
                .ancestors()
                .skip(1)
                .find(|d| d.join(".grove").join("grove.db").exists())
        {
            return Err(format!(
                "{} is inside the workspace {}: give that one (its path, or its name in `projects`)",
                ws.root.display(),
                above.display()
            ));
        }
        let name = ws
            .root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        return Ok(Project {
            id: id_of(&ws),
            name: name.unwrap_or_else(|| "/".into()),
            path: ws.root,
        });
    }
    let names: Vec<&str> = known.iter().map(|p| p.project.name.as_str()).collect();
    Err(format!(
        "no project '{query}': give the id or name of a registered one ({}; see `projects`) or a workspace path; a workspace is registered when a grove member first runs there",
        if names.is_empty() {
            "none yet".to_string()
        } else {
            names.join(", ")
        }
    ))
}

fn usable(p: &Project) -> Result<Project, String> {
    if !p.path.is_dir() {
        return Err(format!(
            "project {} ({}) is stale: {} no longer exists; `grove projects --forget {}` removes it",
            p.name,
            p.id,
            p.path.display(),
            p.id
        ));
    }
    Ok(p.clone())
}

/// The workspace at `path`, when this user may delegate to it: its root,
/// and its `.grove` when it has one, owned by this user (or root) and
/// writable by nobody else ([`crate::trust::check`]). A delegation starts
/// or joins a grove there, which runs what that `.grove` configures as
/// this user: a directory another user owns or can write could have been
/// made to run anything. The answer names the path, why, and what to do.
pub fn trusted_target(path: &Path) -> Result<Workspace, String> {
    let ws = Workspace::resolve(path).map_err(|e| e.to_string())?;
    let refuse = |e: crate::trust::Untrusted| format!("cannot delegate: {e}");
    crate::trust::check(&ws.root, "the workspace")
        .map_err(|mut e| {
            e.advice = format!(
                "A delegation starts grove there, and grove runs what a workspace configures as you: \
                 delegate only to a directory of yours that nobody else can write \
                 (if it and its content are yours, `chmod go-w {}`)",
                ws.root.display()
            );
            e
        })
        .map_err(refuse)?;
    crate::trust::check(&ws.state_dir, "the workspace's state dir").map_err(refuse)?;
    crate::trust::check_ancestors(&ws.root, "a directory above the workspace")
        .map_err(|mut e| {
            e.advice = format!(
                "whoever can replace it can swap the workspace for one of theirs between grove's check and its use; \
                 delegate only to a workspace whose every parent directory is yours or root's and writable by nobody else \
                 (or sticky, as /tmp is): move {} there",
                ws.root.display()
            );
            e
        })
        .map_err(refuse)?;
    Ok(ws)
}

/// A task of another workspace creating `new` here without
/// `--project` (its agent ran `cd ../other && grove spawn`, or an MCP
/// server of this workspace): `new` takes the place a delegation's task
/// would, a reference to the caller and the caller's level + 1
/// ([`DEPTH_ENV`]), so that `max_delegation_depth` holds however an agent
/// reaches another workspace (docs/design.md, Delegation). The caller is
/// named by the environment the shim gives every agent (`GROVE_TASK_ID`,
/// `GROVE_WORKSPACE`); its level is read from its own store when that is a
/// store this user trusts, and taken as 0 otherwise (it is a task, so what
/// it creates stands at least one level down). `cap`: where counting stops
/// (this workspace's limit + 1 is refused as well as any more).
pub fn inherit_foreign_caller(here: &Path, cap: u32, new: &mut NewTask) {
    if new.parent_id.is_some() || new.env.contains_key(PARENT_REF_ENV) {
        return;
    }
    let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    let (Some(task), Some(there)) = (var("GROVE_TASK_ID"), var("GROVE_WORKSPACE")) else {
        return;
    };
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    if canonical(Path::new(&there)) == canonical(here) {
        return; // a task of this workspace (deleted since): not a delegation
    }
    let level = caller_level(Path::new(&there), &task, cap).unwrap_or(0);
    new.env
        .insert(PARENT_REF_ENV.into(), format!("{there}#{task}"));
    new.env.insert(
        DEPTH_ENV.into(),
        level.saturating_add(1).min(cap).to_string(),
    );
}

/// The level of task `id` in the workspace at `root`, from its store, when
/// that store is one this user trusts.
fn caller_level(root: &Path, id: &str, cap: u32) -> Option<u32> {
    let ws = trusted_target(root).ok()?;
    let reader = crate::store::Reader::open(&ws.db_path()).ok()?;
    let task = reader.task(id).ok()??;
    reader.delegation_level(&task, cap).ok()
}

/// What a delegated task's proxy passes to `grove delegate-run` (its
/// environment): the other workspace, and what the task there runs with.
pub const PROJECT_ENV: &str = "GROVE_DELEGATE_PROJECT";
pub const ENGINE_ENV: &str = "GROVE_DELEGATE_ENGINE";
pub const MODEL_ENV: &str = "GROVE_DELEGATE_MODEL";
pub const PERSONA_ENV: &str = "GROVE_DELEGATE_PERSONA";
pub const WORKDIR_ENV: &str = "GROVE_DELEGATE_WORKDIR";

/// The task to create *here* for `new` to run in `project`: a task of the
/// built-in `delegate` engine, whose agent (`grove delegate-run`) creates
/// the task there, follows it, and ends with its result and conclusion.
/// The proxy is an ordinary task of this workspace — a child of the
/// caller, with its dependencies, timeout and cancel — so that waiting for
/// it, its conclusion and every delegation tool work as for a local child.
/// Engine, model, persona and work dir are the other workspace's to
/// resolve, so they travel in the proxy's environment. Refused when the
/// other workspace is not [`trusted_target`].
pub fn proxy_task(
    project: &Project,
    new: crate::protocol::NewTask,
) -> Result<crate::protocol::NewTask, String> {
    trusted_target(&project.path)?;
    if new.keep_session {
        return Err(
            "keep_session cannot be combined with project: a task in another workspace ends after its turn"
                .into(),
        );
    }
    if new.worktree.as_ref().is_some_and(|w| w.enabled) {
        return Err("a worktree cannot be asked for a task in another project".into());
    }
    let mut env = new.env.clone();
    env.insert(PROJECT_ENV.into(), project.path.display().to_string());
    let pairs = [
        (ENGINE_ENV, &new.engine),
        (MODEL_ENV, &new.model),
        (PERSONA_ENV, &new.persona),
        (WORKDIR_ENV, &new.work_dir),
    ];
    for (k, v) in pairs {
        if let Some(v) = v {
            env.insert(k.into(), v.clone());
        }
    }
    Ok(crate::protocol::NewTask {
        engine: Some(crate::config::DELEGATE_ENGINE.into()),
        model: None,
        persona: None,
        work_dir: None,
        env,
        worktree: Some(crate::protocol::WorktreeAsk {
            enabled: false,
            base: None,
        }),
        want_conclusion: true,
        ..new
    })
}
