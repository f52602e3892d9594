//! Turning a task into a command line: engine templates, personas, and the
//! checks made at spawn time (unknown engine, bad template, missing binary,
//! unknown persona) so that a task that cannot start is never created.

use crate::config::{Config, EngineConfig, PromptVia};
use crate::protocol::TaskRecord;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What the supervisor runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Written to the agent's stdin, then closed (engines with `stdin`).
    pub stdin: Option<String>,
    pub work_dir: PathBuf,
}

const PLACEHOLDERS: &[&str] = &["{prompt}", "{model}", "{workdir}"];

/// Checks everything a spawn can get wrong, without running anything.
pub fn validate(
    config: &Config,
    workspace: &Path,
    engine: &str,
    model: Option<&str>,
    persona: Option<&str>,
    work_dir: Option<&str>,
) -> Result<(), String> {
    let e = lookup(config, engine)?;
    check_template(engine, e, model)?;
    if find_binary(&e.command[0]).is_none() {
        return Err(format!(
            "engine '{engine}' needs '{}', which is not on PATH; install it or configure [engines.{engine}] command in .grove/grove.toml",
            e.command[0]
        ));
    }
    if let Some(p) = persona {
        persona_text(config, workspace, p)?;
    }
    resolve_work_dir(workspace, work_dir)?;
    Ok(())
}

/// The command line for one run of `task`.
pub fn launch(config: &Config, workspace: &Path, task: &TaskRecord) -> Result<Launch, String> {
    let e = lookup(config, &task.engine)?;
    check_template(&task.engine, e, task.model.as_deref())?;
    let work_dir = resolve_work_dir(workspace, task.work_dir.as_deref())?;
    let prompt = match &task.persona {
        Some(p) => format!("{}\n\n{}", persona_text(config, workspace, p)?, task.prompt),
        None => task.prompt.clone(),
    };
    let model = task.model.clone().unwrap_or_default();
    let wd = work_dir.display().to_string();
    let fill = |arg: &str| {
        arg.replace("{prompt}", &prompt)
            .replace("{model}", &model)
            .replace("{workdir}", &wd)
    };
    let mut argv: Vec<String> = e.command.iter().map(|a| fill(a)).collect();
    if task.model.is_some() {
        argv.extend(e.model_args.iter().map(|a| fill(a)));
    }
    argv.extend(task.extra_args.iter().cloned());
    let mut env = e.env.clone();
    env.extend(task.env.clone());
    Ok(Launch {
        argv,
        env,
        stdin: (e.prompt_via == PromptVia::Stdin).then_some(prompt),
        work_dir,
    })
}

fn lookup<'c>(config: &'c Config, engine: &str) -> Result<&'c EngineConfig, String> {
    config.engines.get(engine).ok_or_else(|| {
        let names: Vec<&str> = config.engines.keys().map(String::as_str).collect();
        let hint = names
            .iter()
            .min_by_key(|n| edit_distance(n, engine))
            .filter(|n| edit_distance(n, engine) <= 2)
            .map(|n| format!(" — did you mean '{n}'?"))
            .unwrap_or_default();
        format!(
            "no engine '{engine}'{hint} Configured engines: {}",
            names.join(", ")
        )
    })
}

fn check_template(name: &str, e: &EngineConfig, model: Option<&str>) -> Result<(), String> {
    for arg in e.command.iter().chain(&e.model_args) {
        let mut rest = arg.as_str();
        while let Some(start) = rest.find('{') {
            let Some(len) = rest[start..].find('}') else {
                break;
            };
            let token = &rest[start..start + len + 1];
            if !PLACEHOLDERS.contains(&token) {
                return Err(format!(
                    "engine '{name}': unknown placeholder {token} in its command (known: {})",
                    PLACEHOLDERS.join(", ")
                ));
            }
            rest = &rest[start + len + 1..];
        }
    }
    let in_command = |p: &str| e.command.iter().any(|a| a.contains(p));
    if e.prompt_via == PromptVia::Arg && !in_command("{prompt}") {
        return Err(format!(
            "engine '{name}': its command has no {{prompt}} (or set prompt_via = \"stdin\")"
        ));
    }
    if model.is_some() && e.model_args.is_empty() && !in_command("{model}") {
        return Err(format!(
            "engine '{name}' takes no model (configure model_args for it)"
        ));
    }
    Ok(())
}

fn resolve_work_dir(workspace: &Path, work_dir: Option<&str>) -> Result<PathBuf, String> {
    let dir = match work_dir {
        Some(d) if Path::new(d).is_absolute() => PathBuf::from(d),
        Some(d) => workspace.join(d),
        None => workspace.to_path_buf(),
    };
    if !dir.is_dir() {
        return Err(format!("work dir {} is not a directory", dir.display()));
    }
    Ok(dir)
}

/// The text of persona `name` (`<personas_dir>/<name>.md`).
pub fn persona_text(config: &Config, workspace: &Path, name: &str) -> Result<String, String> {
    let dir = config.personas_dir(workspace);
    let valid = !name.is_empty() && !name.contains(['/', '\\']) && !name.starts_with('.');
    let path = dir.join(format!("{name}.md"));
    // A persona becomes part of the prompt an agent acts on: only this
    // user's files, in a dir others cannot write.
    if valid {
        crate::trust::check(&dir, "the personas dir").map_err(|e| e.to_string())?;
        crate::trust::check(&path, "the persona file").map_err(|e| e.to_string())?;
    }
    match valid.then(|| std::fs::read_to_string(&path)) {
        Some(Ok(text)) => Ok(text.trim_end().to_string()),
        _ => {
            let known = personas(config, workspace);
            Err(format!(
                "no persona '{name}' in {}; available: {}",
                dir.display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        }
    }
}

/// Names of the persona files.
pub fn personas(config: &Config, workspace: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(config.personas_dir(workspace))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_suffix(".md").map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// Finds an executable like the shell would (a path, or a name on PATH).
pub fn find_binary(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.is_file()
            && p.metadata()
                .map(|m| m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| executable(p))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            engines: crate::config::builtin_engines(),
            ..Default::default()
        }
    }

    #[test]
    fn typo_gets_a_suggestion() {
        let err = lookup(&config(), "claud").unwrap_err();
        assert!(err.contains("did you mean 'claude'"), "{err}");
        assert!(err.contains("Configured engines:"), "{err}");
    }

    #[test]
    fn shell_launch_fills_the_prompt() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = sample();
        t.prompt = "echo hi".into();
        let l = launch(&config(), dir.path(), &t).unwrap();
        assert_eq!(l.argv, vec!["sh", "-c", "echo hi"]);
        assert!(l.stdin.is_none());
    }

    #[test]
    fn model_needs_model_args() {
        let dir = tempfile::tempdir().unwrap();
        let err = validate(&config(), dir.path(), "shell", Some("m"), None, None).unwrap_err();
        assert!(err.contains("takes no model"), "{err}");
    }

    #[test]
    fn unknown_placeholder_is_refused() {
        let mut c = config();
        c.engines.insert(
            "odd".into(),
            EngineConfig {
                command: vec!["sh".into(), "-c".into(), "{prompt} {nope}".into()],
                model_args: vec![],
                prompt_via: PromptVia::Arg,
                env: Default::default(),
            },
        );
        let dir = tempfile::tempdir().unwrap();
        let err = validate(&c, dir.path(), "odd", None, None, None).unwrap_err();
        assert!(err.contains("{nope}"), "{err}");
    }

    #[test]
    fn distance() {
        assert_eq!(edit_distance("claude", "claud"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    fn sample() -> TaskRecord {
        TaskRecord {
            id: "t".into(),
            prompt: "p".into(),
            engine: "shell".into(),
            model: None,
            work_dir: None,
            persona: None,
            status: crate::protocol::TaskStatus::Queued,
            failure_reason: None,
            dependencies: vec![],
            tags: vec![],
            priority: 0,
            timeout_ms: None,
            progress_pct: None,
            progress_text: None,
            exit_code: None,
            pid: None,
            session_id: None,
            created_at: 0,
            updated_at: 0,
            started_at: None,
            finished_at: None,
            retry_of: None,
            attempt: 1,
            extra_args: vec![],
            env: Default::default(),
            run_id: None,
        }
    }
}
