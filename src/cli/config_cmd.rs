//! `grove config show`: the effective configuration, each value with the
//! place it came from (a file, or the built-in default).

use super::{CliError, Context, EXIT_OK, print_json};
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print every setting, its value and its source.
    Show {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(ctx: &Context, cmd: ConfigCommand) -> Result<i32, CliError> {
    let ConfigCommand::Show { json } = cmd;
    let rows = crate::config::explain(&ctx.ws.state_dir, &ctx.config);
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(k, v, src)| serde_json::json!({ "key": k, "value": v, "source": src }))
            .collect();
        print_json(&v);
    } else {
        for (k, v, src) in &rows {
            outln!("{k} = {v}    # {src}");
        }
    }
    Ok(EXIT_OK)
}
