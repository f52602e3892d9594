//! `grove bench`: measured on this machine, beside same-run baselines.

use crate::cli::{CliError, Context};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Scenarios to run.
    scenarios: Vec<String>,
}

pub async fn run(_ctx: &Context, _args: BenchArgs) -> Result<i32, CliError> {
    Err(CliError::Usage("bench: TODO".into()))
}
