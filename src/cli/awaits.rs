//! `grove awaits`: the parents' durable awaits of their children (what is
//! pending, what became of the others) and `--cancel` of one.

use super::{CliError, Context, EXIT_OK, print_json};
use crate::protocol::{AwaitRecord, Method, ReplyBody, now_ms};

/// `grove awaits [--all] [--json]`, or `grove awaits --cancel PARENT`.
pub async fn run(
    ctx: &Context,
    all: bool,
    cancel: Option<String>,
    json: bool,
) -> Result<i32, CliError> {
    if let Some(parent) = cancel {
        let parent_id = super::task::resolve_id(ctx, &parent)?;
        let reply = ctx
            .call(Method::TaskAwaitCancel { parent_id }, None)
            .await?;
        match reply {
            ReplyBody::Await(rec) if json => print_json(&rec),
            ReplyBody::Await(rec) => outln!("cancelled the await of task {}", rec.parent_id),
            other => outln!("{other:?}"),
        }
        return Ok(EXIT_OK);
    }
    let list = ctx.reader()?.awaits(all, 500)?;
    if json {
        print_json(&list);
        return Ok(EXIT_OK);
    }
    if list.is_empty() {
        outln!(
            "{}",
            if all {
                "no awaits"
            } else {
                "no pending awaits (--all shows settled ones)"
            }
        );
    }
    for rec in &list {
        outln!("{}", line(rec));
    }
    Ok(EXIT_OK)
}

fn line(rec: &AwaitRecord) -> String {
    let short = |id: &str| id[..12.min(id.len())].to_string();
    let children: Vec<String> = rec.children.iter().map(|c| short(c)).collect();
    let when = match rec.settled_at {
        None => {
            let left = rec.deadline.saturating_sub(now_ms()) / 1000;
            format!("deadline in {left} s")
        }
        Some(_) => String::new(),
    };
    format!(
        "{}  {:<9} {} {} of [{}] {when}",
        short(&rec.parent_id),
        rec.state.as_str(),
        rec.policy.as_str(),
        rec.quorum,
        children.join(" ")
    )
}
