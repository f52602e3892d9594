//! Engines: how to run one agent (a CLI run once per task, or an ACP agent
//! on its stdio), and the presets grove knows by name.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How to run one agent: a CLI run once per task, or an agent that speaks
/// the Agent Client Protocol on its stdio.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// `cli` (the default) or `acp`. Never guessed from the command: an
    /// engine is one or the other, so a task never silently runs as the
    /// other kind.
    #[serde(default)]
    pub kind: EngineKind,
    /// The command and its arguments; `{prompt}`, `{model}` and `{workdir}`
    /// are replaced in each argument (an `acp` engine gets its prompt over
    /// the protocol, so its command has no `{prompt}`).
    pub command: Vec<String>,
    /// Appended when the task names a model, e.g. `["--model", "{model}"]`.
    #[serde(default)]
    pub model_args: Vec<String>,
    /// `arg` (the prompt is in `command` as `{prompt}`) or `stdin`.
    #[serde(default)]
    pub prompt_via: PromptVia,
    /// Extra environment for the agent.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `acp` engines: which permission requests of the agent grove answers
    /// by itself (the others wait for `grove approve`/`grove deny`).
    #[serde(default)]
    pub permissions: PermissionPolicy,
    /// `acp` engines: one agent process serves the sessions of every task
    /// of this engine (same command and environment), through a host
    /// (`grove agent-host`) that outlives each task and stops after
    /// `agent_idle_ms` without one. Off by default: each task then has
    /// its own agent.
    #[serde(default)]
    pub shared: bool,
    /// `cli` engines whose agent takes an MCP configuration on its command
    /// line: appended with `{mcp_config}` replaced by the JSON
    /// `{"mcpServers": {...}}` of grove's own server and the configured
    /// `[mcp_servers]` (e.g. `["--mcp-config", "{mcp_config}"]`), unless
    /// `mcp_inject = false`.
    #[serde(default)]
    pub mcp_args: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    #[default]
    Cli,
    Acp,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Cli => "cli",
            EngineKind::Acp => "acp",
        }
    }
}

pub use crate::protocol::PermissionPolicy;

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PromptVia {
    #[default]
    Arg,
    Stdin,
}

impl EngineConfig {
    /// Whether the engine hands its prompt to a shell, or another
    /// interpreter, as code: its program (past wrappers such as `env`,
    /// `nice`, `timeout`, `busybox`), or any program further on its command
    /// line (behind a wrapper grove does not know: `taskset -c 0`, `flock
    /// F`, `chrt`, `unshare`, `/usr/bin/time`, `xargs`), is a shell whose
    /// script the prompt is (in `-c`, or its stdin read as its script:
    /// `-s`, or no script file named), an interpreter whose `-c`/`-e` code
    /// holds it (`python3 -c`, `node -e`), or a program that runs its
    /// `-c` through a shell (`su -c`, `script -qec`). Words appended to such
    /// a prompt (a review's comments, a resume's instructions, the
    /// conclusion brief, a persona) would run as code, as they would for
    /// the built-in `shell` engine. A prompt passed to a shell as an
    /// argument (`sh -c 'agent "$1"' sh {prompt}`, `bash agent.sh {prompt}`)
    /// is not code; neither is one a script `eval`s, which no reading of
    /// the command line can tell. Looking further than the program errs
    /// towards refusing those words: a wrongly refused one says why.
    pub fn runs_prompt_as_shell(&self) -> bool {
        // Copied only for an `env`, whose `-S` may hold the program.
        let split;
        let words = if self.command.iter().any(|a| program_name(a) == "env") {
            split = split_env_strings(&self.command);
            &split
        } else {
            &self.command
        };
        let argv: Vec<&str> = words.iter().map(String::as_str).collect();
        let first = past_wrappers(&argv);
        let programs = first.into_iter().chain(1..argv.len());
        programs.into_iter().any(|at| {
            let (name, rest) = (program_name(argv[at]), &argv[at + 1..]);
            if SHELLS.contains(&name) {
                shell_runs_prompt(rest, self.prompt_via)
            } else if is_interpreter(name) {
                interpreter_runs_prompt(rest)
            } else if matches!(name, "su" | "script") {
                command_option_holds_prompt(rest)
            } else {
                false
            }
        })
    }
}

/// Whether a shell given `rest` runs the prompt as its script.
fn shell_runs_prompt(rest: &[&str], prompt_via: PromptVia) -> bool {
    let (mut script_arg, mut stdin_script, mut i) = (false, false, 0);
    while let Some(a) = rest.get(i) {
        i += 1;
        if *a == "--" {
            break;
        }
        if let Some(script) = a.strip_prefix("--command=") {
            return script.contains("{prompt}"); // fish
        }
        if matches!(*a, "--rcfile" | "--init-file") {
            i += 1;
            continue;
        }
        let Some(flags) = a.strip_prefix('-').or_else(|| a.strip_prefix('+')) else {
            i -= 1;
            break;
        };
        if flags.starts_with('-') {
            script_arg |= flags == "-command"; // fish's `--command SCRIPT`
            continue; // another long option (`--login`)
        }
        script_arg |= flags.contains('c') || flags == "C"; // fish's `-C` too
        stdin_script |= flags.contains('s');
        // `-o NAME`, `-O NAME`: the option's name follows.
        if flags.ends_with('o') || flags.ends_with('O') {
            i += 1;
        }
    }
    let operand = rest.get(i);
    if script_arg {
        operand.is_some_and(|script| script.contains("{prompt}"))
    } else {
        let stdin_file = operand.is_some_and(|o| matches!(*o, "/dev/stdin" | "-"));
        (stdin_script || stdin_file || operand.is_none()) && prompt_via == PromptVia::Stdin
    }
}

/// Interpreters whose `-c`/`-e` code a prompt can be.
fn is_interpreter(name: &str) -> bool {
    let base = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    matches!(
        base,
        "python" | "perl" | "ruby" | "node" | "nodejs" | "php" | "lua"
    )
}

/// Whether an interpreter given `rest` runs the prompt as its code: an
/// option of code before any script or module (whose arguments are its own).
fn interpreter_runs_prompt(rest: &[&str]) -> bool {
    let mut i = 0;
    while let Some(a) = rest.get(i) {
        if !a.starts_with('-') || matches!(*a, "-m" | "--") {
            return false;
        }
        if let Some(code) = a.strip_prefix("--eval=") {
            return code.contains("{prompt}");
        }
        if matches!(*a, "-c" | "-e" | "-E" | "--eval" | "-r" | "--print") {
            return rest.get(i + 1).is_some_and(|c| c.contains("{prompt}"));
        }
        // Options whose value follows (python's `-X dev`, `-W error`).
        i += if matches!(*a, "-X" | "-W") { 2 } else { 1 };
    }
    false
}

/// Whether a program that runs its `-c` through a shell (`su`, `script`)
/// is given the prompt there.
fn command_option_holds_prompt(rest: &[&str]) -> bool {
    rest.iter().enumerate().any(|(i, a)| {
        if let Some(command) = a.strip_prefix("--command=") {
            return command.contains("{prompt}");
        }
        let short_c = a
            .strip_prefix('-')
            .is_some_and(|f| !f.starts_with('-') && f.contains('c'));
        (short_c || *a == "--command") && rest.get(i + 1).is_some_and(|c| c.contains("{prompt}"))
    })
}

/// Shells whose script a prompt can be.
const SHELLS: &[&str] = &[
    "sh", "bash", "rbash", "dash", "zsh", "ksh", "ksh93", "mksh", "oksh", "ash", "yash", "posh",
    "fish", "csh", "tcsh",
];

fn program_name(arg: &str) -> &str {
    arg.rsplit('/').next().unwrap_or(arg)
}

/// The command line with `env -S STRING` (`--split-string`) split into
/// the words it stands for (by white space: env's own quoting is not
/// followed, which only matters inside the words).
fn split_env_strings(command: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(command.len());
    let mut args = command.iter();
    let mut after_env = false;
    while let Some(a) = args.next() {
        if !after_env {
            after_env = program_name(a) == "env";
            out.push(a.clone());
            continue;
        }
        let joined =
            (a.strip_prefix("--split-string=")).or(a.strip_prefix("-S").filter(|v| !v.is_empty()));
        let split = match joined {
            Some(value) => Some(value.to_string()),
            None if a == "-S" || a == "--split-string" => args.next().cloned(),
            None => {
                out.push(a.clone());
                continue;
            }
        };
        out.extend(
            split
                .iter()
                .flat_map(|v| v.split_whitespace().map(str::to_string)),
        );
    }
    out
}

/// Where the program a command line runs is, past the commands that only
/// run another (`env A=1`, `nice -n 5`, `timeout 1h`, `busybox`, `nohup`,
/// `setsid`, `stdbuf -oL`, `ionice -c 3`, `sudo -u u`) and their options.
fn past_wrappers(argv: &[&str]) -> Option<usize> {
    // Options that take the next argument as their value, per wrapper.
    let valued: fn(&str) -> &'static [&'static str] = |wrapper| match wrapper {
        "env" => &["-u", "--unset", "-C", "--chdir", "-S", "--split-string"],
        "nice" => &["-n", "--adjustment"],
        "timeout" => &["-s", "--signal", "-k", "--kill-after"],
        "stdbuf" => &["-i", "-o", "-e", "--input", "--output", "--error"],
        "ionice" => &["-c", "--class", "-n", "--classdata", "-p", "--pid"],
        "sudo" => &[
            "-u", "--user", "-g", "--group", "-C", "-D", "-h", "-p", "-r", "-t", "-U",
        ],
        _ => &[],
    };
    let mut i = 0;
    loop {
        let wrapper = program_name(argv.get(i)?);
        if !matches!(
            wrapper,
            "env"
                | "nice"
                | "timeout"
                | "busybox"
                | "nohup"
                | "setsid"
                | "stdbuf"
                | "ionice"
                | "sudo"
        ) {
            return Some(i);
        }
        i += 1;
        while let Some(a) = argv.get(i) {
            if valued(wrapper).contains(a) {
                i += 2;
            } else if a.starts_with('-') || (wrapper == "env" && a.contains('=')) {
                i += 1;
            } else {
                break;
            }
        }
        if wrapper == "timeout" {
            i += 1; // its duration
        }
    }
}

fn engine(command: &[&str], model_args: &[&str]) -> EngineConfig {
    EngineConfig {
        kind: EngineKind::Cli,
        command: command.iter().map(|s| s.to_string()).collect(),
        model_args: model_args.iter().map(|s| s.to_string()).collect(),
        prompt_via: PromptVia::Arg,
        env: BTreeMap::new(),
        permissions: PermissionPolicy::Ask,
        shared: false,
        mcp_args: Vec::new(),
    }
}

fn acp_engine(command: &[&str], model_args: &[&str]) -> EngineConfig {
    EngineConfig {
        kind: EngineKind::Acp,
        ..engine(command, model_args)
    }
}

/// Presets of agents that speak ACP on their stdio, under names distinct
/// from the CLI presets of the same tools (`claude` stays the one-shot CLI,
/// `claude-acp` is the conversation).
const ACP_PRESETS: &[(&str, &[&str], &[&str])] = &[
    // npm @agentclientprotocol/claude-agent-acp; takes its model from the
    // session, not from a flag.
    ("claude-acp", &["claude-agent-acp"], &[]),
    // npm @agentclientprotocol/codex-acp
    ("codex-acp", &["codex-acp"], &[]),
    ("gemini-acp", &["gemini", "--acp"], &["--model", "{model}"]),
    ("opencode-acp", &["opencode", "acp"], &[]),
    ("goose-acp", &["goose", "acp"], &[]),
    (
        "copilot-acp",
        &["copilot", "--acp"],
        &["--model", "{model}"],
    ),
];

/// The engines grove knows without configuration: `shell` for scripts, and
/// presets for common agent CLIs in their non-interactive modes.
pub fn builtin_engines() -> BTreeMap<String, EngineConfig> {
    let mut m = BTreeMap::new();
    m.insert("shell".into(), engine(&["sh", "-c", "{prompt}"], &[]));
    m.insert(
        "claude".into(),
        EngineConfig {
            mcp_args: vec!["--mcp-config".into(), "{mcp_config}".into()],
            ..engine(&["claude", "--print", "{prompt}"], &["--model", "{model}"])
        },
    );
    m.insert(
        "gemini".into(),
        engine(&["gemini", "--prompt", "{prompt}"], &["--model", "{model}"]),
    );
    m.insert(
        "codex".into(),
        engine(&["codex", "exec", "{prompt}"], &["--model", "{model}"]),
    );
    m.insert(
        "opencode".into(),
        engine(&["opencode", "run", "{prompt}"], &["--model", "{model}"]),
    );
    m.insert(
        "copilot".into(),
        engine(
            &["copilot", "--prompt", "{prompt}", "--allow-all-tools"],
            &["--model", "{model}"],
        ),
    );
    for (name, command, model_args) in ACP_PRESETS {
        m.insert(name.to_string(), acp_engine(command, model_args));
    }
    // A task delegated to another workspace runs here as this engine: its
    // agent is grove itself, a client of the other workspace's grove.
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "grove".into());
    let mut delegate = engine(&[exe.as_str(), "delegate-run"], &[]);
    delegate.prompt_via = PromptVia::Stdin;
    m.insert(DELEGATE_ENGINE.into(), delegate);
    m
}

/// The built-in engine of a task delegated to another workspace (see
/// `grove delegate-run`): the task here follows the one it created there.
pub const DELEGATE_ENGINE: &str = "delegate";

#[cfg(test)]
mod tests {
    use super::*;

    fn with(command: &[&str], via: PromptVia) -> EngineConfig {
        EngineConfig {
            prompt_via: via,
            ..engine(command, &[])
        }
    }

    #[test]
    fn a_prompt_handed_to_a_shell_as_code_is_recognised() {
        use PromptVia::{Arg, Stdin};
        let code = [
            (&["bash", "-c", "{prompt}"][..], Arg),
            (&["/bin/sh", "-ec", "cd src && {prompt}"], Arg),
            (&["env", "A=1", "zsh", "--login", "-c", "{prompt}"], Arg),
            (
                &[
                    "/usr/bin/env",
                    "-i",
                    "bash",
                    "-o",
                    "pipefail",
                    "-c",
                    "{prompt}",
                ],
                Arg,
            ),
            (&["bash"], Stdin),
            (&["sh", "-s", "--", "x"], Stdin),
            (&["dash", "-e"], Stdin),
            (&["busybox", "sh", "-c", "{prompt}"], Arg),
            (&["nice", "-n", "10", "bash", "-c", "{prompt}"], Arg),
            (
                &["timeout", "-k", "5", "1h", "bash", "-lc", "{prompt}"],
                Arg,
            ),
            (
                &["env", "-u", "HOME", "-C", "/repo", "bash", "-c", "{prompt}"],
                Arg,
            ),
            (&["bash", "--rcfile", "rc", "-c", "{prompt}"], Arg),
            (&["fish", "--command={prompt}"], Arg),
            (&["fish", "--command", "{prompt}"], Arg),
            (&["tcsh", "-c", "{prompt}"], Arg),
            (&["bash", "-euo", "pipefail", "-c", "{prompt}"], Arg),
            (&["env", "-S", "bash -c", "{prompt}"], Arg),
            (&["/usr/bin/env", "-Sbash -e -c", "{prompt}"], Arg),
            (&["sudo", "-u", "agent", "bash", "-c", "{prompt}"], Arg),
            // Behind wrappers grove does not know, and other interpreters.
            (&["taskset", "-c", "0", "bash", "-c", "{prompt}"], Arg),
            (&["flock", "/tmp/l", "bash", "-c", "{prompt}"], Arg),
            (&["/usr/bin/time", "-v", "sh", "-c", "{prompt}"], Arg),
            (&["unshare", "-n", "bash", "-c", "{prompt}"], Arg),
            (&["chrt", "-i", "0", "bash", "-c", "{prompt}"], Arg),
            (&["xargs", "-0", "bash", "-c", "{prompt}"], Arg),
            (&["script", "-qec", "{prompt}", "/dev/null"], Arg),
            (&["su", "agent", "-c", "{prompt}"], Arg),
            (&["sh", "/dev/stdin"], Stdin),
            (&["fish", "-C", "{prompt}"], Arg),
            (&["python3", "-c", "{prompt}"], Arg),
            (&["python3", "-X", "dev", "-c", "{prompt}"], Arg),
            (&["node", "-e", "{prompt}"], Arg),
            (&["perl", "-p", "-e", "{prompt}"], Arg),
        ];
        for (command, via) in code {
            assert!(
                with(command, via).runs_prompt_as_shell(),
                "{command:?} {via:?}"
            );
        }
        let not_code = [
            (&["sh", "-c", "agent \"$1\"", "sh", "{prompt}"][..], Arg),
            (&["bash", "agent.sh", "{prompt}"], Arg),
            (&["bash", "agent.sh"], Stdin),
            (&["claude", "-p", "{prompt}"], Arg),
            (&["env", "A=1", "codex", "exec", "{prompt}"], Arg),
            (&["bash", "-c", "agent --from-stdin"], Stdin),
            (&["bash"], Arg),
            (&["python3", "agent.py", "-c", "{prompt}"], Arg),
            (&["python3", "-m", "agent", "-c", "{prompt}"], Arg),
            (&["taskset", "-c", "0", "claude", "-p", "{prompt}"], Arg),
            (&["flock", "/tmp/l", "codex", "exec", "{prompt}"], Arg),
            (&["nice", "-n", "10", "claude", "-p", "{prompt}"], Arg),
            (&["timeout", "1h", "codex", "exec", "{prompt}"], Arg),
            (&["busybox", "sh", "agent.sh", "{prompt}"], Arg),
            (&["env", "-S", "claude -p", "{prompt}"], Arg),
            (&["sudo", "-u", "agent", "claude", "-p", "{prompt}"], Arg),
        ];
        for (command, via) in not_code {
            assert!(
                !with(command, via).runs_prompt_as_shell(),
                "{command:?} {via:?}"
            );
        }
    }
}
