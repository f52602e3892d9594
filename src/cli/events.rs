//! `grove events`: the durable event log, and with `--follow` the live
//! stream (gap-free, across failovers).

use super::{CliError, Context, EXIT_OK};
use crate::protocol::{Event, EventData};
use clap::Args;

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Keep running and print new events as they happen.
    #[arg(long, short = 'f')]
    follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Start at this seq (default: the whole log, or only new events with --follow).
    #[arg(long)]
    since: Option<u64>,
    /// Also print heartbeats and task output chunks (with --follow).
    #[arg(long)]
    all: bool,
}

pub async fn run(ctx: &Context, args: EventsArgs) -> Result<i32, CliError> {
    let reader = ctx.reader()?;
    if !args.follow {
        let mut next = args.since.unwrap_or(1);
        loop {
            let batch = reader.events_from(next, 1000)?;
            if batch.is_empty() {
                return Ok(EXIT_OK);
            }
            for e in &batch {
                print_event(e, args.json);
                next = e.seq + 1;
            }
        }
    }
    let first = match args.since {
        Some(s) => s,
        None => reader.last_seq()? + 1,
    };
    drop(reader);
    let mut sub = crate::subscriber::subscribe(&ctx.ws, first);
    while let Some(event) = sub.events.recv().await {
        if event.seq == 0 && !args.all {
            continue;
        }
        print_event(&event, args.json);
    }
    Ok(EXIT_OK)
}

fn print_event(e: &Event, json: bool) {
    let line = if json {
        serde_json::to_string(e).unwrap_or_default()
    } else {
        format!(
            "{:>6}  e{}  {:<18} {}",
            e.seq,
            e.epoch,
            e.topic(),
            summary(&e.data)
        )
    };
    outln!("{line}");
}

fn summary(d: &EventData) -> String {
    match d {
        EventData::TaskCreated { task } | EventData::TaskUpdated { task } => {
            format!(
                "{} {}",
                &task.id[..12.min(task.id.len())],
                task.status.as_str()
            )
        }
        EventData::TaskDeleted { id } => id.clone(),
        EventData::TaskOutput { id, chunk } => format!("{id}: {}", chunk.trim_end()),
        EventData::InstanceJoined { member, .. } => {
            format!(
                "{} pid {} ({})",
                &member.instance_id[..8.min(member.instance_id.len())],
                member.pid,
                member.kind
            )
        }
        EventData::Heartbeat { last_seq, .. } => format!("last_seq {last_seq}"),
        EventData::Promoted { pid, epoch, .. } => format!("pid {pid} epoch {epoch}"),
        EventData::Shutdown { epoch, .. } => format!("epoch {epoch}"),
        EventData::SessionCreated { id, cwd } => format!("{id} in {cwd}"),
        EventData::TaskControlled {
            id, kind, option, ..
        } => format!(
            "{} {kind:?} {}",
            &id[..12.min(id.len())],
            option.as_deref().unwrap_or("")
        ),
        EventData::TaskAgentUpdate { id, kind, acp, .. } => {
            let short: String = acp.chars().take(100).collect();
            format!("{} {kind} {short}", &id[..12.min(id.len())])
        }
        EventData::GoalUpdated { goal } => format!(
            "{} {} iteration {}/{}",
            &goal.id[..12.min(goal.id.len())],
            goal.status.as_str(),
            goal.iteration,
            goal.max_iterations
        ),
        EventData::TaskSlot { id, lent, .. } => format!(
            "{} {}",
            &id[..12.min(id.len())],
            if *lent {
                "lent its slot while it waits"
            } else {
                "took its slot back"
            }
        ),
    }
}
