//! The demo's goal: an objective the demo's ACP agent (`grove bench-agent`)
//! reaches in three iterations, each a turn of one session, while the
//! primary is killed. The goal lives in the store, so the new primary gives
//! the next turn; checked from the store: completed at the third iteration,
//! each iteration's words stored once and in order.

use crate::client::Client;
use crate::protocol::{GoalRecord, GoalSpec, GoalStatus, Method, NewTask, ReplyBody};

/// Three iterations of ~0.7 s: the kill lands between two of them.
const OBJECTIVE: &str = "goal 3 tidy the changelog";
const ITERATIONS: u32 = 3;

pub struct Goal {
    pub id: String,
    /// The iteration last narrated.
    narrated: u32,
}

impl Goal {
    pub async fn start(window: &mut Client) -> Result<Goal, String> {
        let spec = GoalSpec {
            task: NewTask {
                prompt: OBJECTIVE.into(),
                engine: Some("agent".into()),
                tags: vec!["demo".into(), "goal".into()],
                ..Default::default()
            },
            max_iterations: 5,
            max_duration_ms: 60_000,
            stall_after: 2,
        };
        match window.call(Method::GoalCreate(spec)).await {
            Ok(ReplyBody::Goal(g)) => Ok(Goal {
                id: g.id,
                narrated: 0,
            }),
            Ok(other) => Err(format!("unexpected reply to goal.create: {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// What to narrate of a change of the goal, once per iteration.
    pub fn on_update(&mut self, g: &GoalRecord) -> Option<String> {
        if g.id != self.id {
            return None;
        }
        let progress = g
            .progress
            .map(|p| format!(", progress {p}%"))
            .unwrap_or_default();
        match g.status {
            GoalStatus::Running if g.iteration > self.narrated => {
                self.narrated = g.iteration;
                Some(format!(
                    "iteration {} of at most {}{progress}",
                    g.iteration, g.max_iterations
                ))
            }
            GoalStatus::Running => None,
            s => Some(format!(
                "{} after {} iterations{progress}",
                s.as_str(),
                g.iteration
            )),
        }
    }

    /// The stored goal and its turns: completed at the third iteration,
    /// each iteration's words once, in order.
    pub fn check(&self, reader: &crate::store::Reader) -> Result<(bool, String), String> {
        let goal = reader.goal(&self.id).map_err(|e| e.to_string())?;
        let last = reader.last_seq().map_err(|e| e.to_string())?;
        let updates = reader
            .agent_updates(&self.id, last)
            .map_err(|e| e.to_string())?;
        let text = super::conversation::message_text(&updates);
        let steps: Vec<u32> = text
            .split("tidying step ")
            .skip(1)
            .filter_map(|s| s.split_whitespace().next()?.parse().ok())
            .collect();
        let sessions = updates.iter().filter(|(_, k, _)| k == "session").count();
        let done = goal
            .as_ref()
            .is_some_and(|g| g.status == GoalStatus::Completed && g.iteration == ITERATIONS);
        let ok = done && steps == (1..=ITERATIONS).collect::<Vec<_>>() && sessions == 1;
        Ok((
            ok,
            format!(
                "the goal: {} at iteration {}, turns {steps:?} of 1 session, each once, across the kill",
                goal.as_ref()
                    .map(|g| g.status.as_str())
                    .unwrap_or("missing"),
                goal.as_ref().map(|g| g.iteration).unwrap_or(0),
            ),
        ))
    }
}
