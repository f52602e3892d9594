//! The durable-await tools: `await` (resume me with my children's
//! results, then end your turn), `awaits` (what is pending) and
//! `await_cancel`. Unlike `wait`, nothing blocks: the intent is stored by
//! the primary and survives every member's death (see docs/design.md,
//! Delegation).

use super::{Answer, GroveMcp, reply, seconds};
use crate::protocol::{AwaitPolicy, AwaitSpec, Method, ReplyBody};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::CallToolResult;
use rmcp::{tool, tool_router};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AwaitParams {
    /// Ids (or unique prefixes) of your children to await; empty: every
    /// child of yours still running.
    #[serde(default)]
    pub ids: Vec<String>,
    /// "all" (default): when every one ended; "any": when one ended;
    /// "quorum": when `quorum` of them ended. A child counts once it ended,
    /// whatever its status (a failed child counts).
    pub policy: Option<String>,
    /// For policy "quorum": how many must end.
    pub quorum: Option<u32>,
    /// Resume you with what has arrived after this many seconds (default
    /// 3600, at most 7 days).
    pub timeout_seconds: Option<f64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AwaitsParams {
    /// Include settled awaits (satisfied, expired, cancelled, replaced),
    /// newest first.
    #[serde(default)]
    pub all: bool,
}

const MAX_AWAIT_SECS: f64 = 7.0 * 24.0 * 3600.0;

#[tool_router(router = awaits_router, vis = "pub(super)")]
impl GroveMcp {
    /// Be resumed with your children's results instead of blocking: grove
    /// stores the intent, you END YOUR TURN now, and when the policy is met
    /// (or the timeout passes) your next turn starts with one
    /// `[delegated-result ID STATUS]` block per ended child holding its
    /// conclusion. Survives any restart; you are resumed exactly once. A
    /// second await replaces your pending one. Only for tasks that run on
    /// an ACP engine (their session can be resumed); otherwise use `wait`.
    #[tool(name = "await")]
    async fn await_children(&self, Parameters(p): Parameters<AwaitParams>) -> CallToolResult {
        reply(self.do_await(p).await)
    }

    /// Pending awaits of this workspace (with `all`: settled ones too).
    #[tool(name = "awaits")]
    async fn awaits(&self, Parameters(p): Parameters<AwaitsParams>) -> CallToolResult {
        reply(self.do_awaits(p).await)
    }

    /// Cancel your pending await (you will not be resumed by it).
    #[tool(name = "await_cancel")]
    async fn await_cancel(&self) -> CallToolResult {
        reply(self.do_await_cancel().await)
    }
}

impl GroveMcp {
    async fn do_await(&self, p: AwaitParams) -> Answer {
        let me = self.own_task("await").await?;
        let policy = p.policy.as_deref().unwrap_or("all");
        let policy = AwaitPolicy::parse(policy)
            .ok_or_else(|| format!("unknown policy '{policy}'; one of all, any, quorum"))?;
        if policy == AwaitPolicy::Quorum && p.quorum.is_none() {
            return Err("policy quorum needs `quorum`: how many children must end".into());
        }
        let mut children = Vec::with_capacity(p.ids.len());
        for id in &p.ids {
            children.push(self.find(id).await?.id);
        }
        let spec = AwaitSpec {
            parent_id: me.id,
            children,
            policy,
            quorum: p.quorum,
            timeout_ms: seconds(p.timeout_seconds, "timeout_seconds", MAX_AWAIT_SECS)?,
        };
        match self.grove.call(Method::TaskAwait(spec)).await? {
            ReplyBody::Await(rec) => {
                let next = match rec.state.as_str() {
                    "pending" => "End your turn now: your next turn brings the results.",
                    _ => "Already met: end your turn now; your next turn brings the results.",
                };
                Ok(json!({ "await": rec, "next": next }))
            }
            other => Err(format!("unexpected reply from grove: {other:?}")),
        }
    }

    async fn do_awaits(&self, p: AwaitsParams) -> Answer {
        let list = (self.reader().await?)
            .awaits(p.all, 200)
            .map_err(|e| e.to_string())?;
        Ok(json!({ "awaits": list }))
    }

    async fn do_await_cancel(&self) -> Answer {
        let me = self.own_task("await_cancel").await?;
        match (self.grove)
            .call(Method::TaskAwaitCancel { parent_id: me.id })
            .await?
        {
            ReplyBody::Await(rec) => Ok(json!({ "await": rec })),
            other => Err(format!("unexpected reply from grove: {other:?}")),
        }
    }
}
