//! `grove config show`: the effective configuration, each value with the
//! place it came from (a file, or the built-in default), and which config
//! files each running member uses and whether they loaded.

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
}

pub fn run(ctx: &Context, cmd: ConfigCommand) -> Result<i32, CliError> {
    let ConfigCommand::Show { json } = cmd;
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
