//! The information tools: stats, engines, personas, projects.

use super::{Answer, GroveMcp, reply};
use rmcp::model::CallToolResult;
use rmcp::{tool, tool_router};
use serde_json::json;

#[tool_router(router = info_router, vis = "pub(super)")]
impl GroveMcp {
    /// Task counts per status, (inside a task) how many of your children
    /// are unfinished, and the delegation counters (warm reuse of agents:
    /// attempts, hits, failures, cold fallbacks, cap rejections, hit rate;
    /// resurrections, live injections).
    #[tool(name = "stats")]
    async fn stats(&self) -> CallToolResult {
        reply(self.do_stats().await)
    }

    /// The engines a task can run with: name, kind (cli or acp) and whether
    /// its program is installed.
    #[tool(name = "engines")]
    async fn engines(&self) -> CallToolResult {
        let config = self.grove.config();
        let rows: Vec<_> = (config.engines.iter())
            .map(|(name, e)| {
                let found = crate::orchestrator::engines::find_binary(&e.command[0]).is_some();
                json!({ "name": name, "kind": e.kind.as_str(), "available": found })
            })
            .collect();
        reply(Ok(
            json!({ "default": config.default_engine, "engines": rows }),
        ))
    }

    /// The workspaces you can delegate to (`spawn` with `project` = id,
    /// name or path): id, name, path, whether a grove member runs there
    /// (one is started when needed), and stale entries whose path is gone.
    #[tool(name = "projects")]
    async fn projects(&self) -> CallToolResult {
        let here = crate::projects::id_of(self.grove.workspace());
        reply(crate::projects::list().map(|l| json!({ "this": here, "projects": l })))
    }

    /// The personas a task can take (prepended to its prompt).
    #[tool(name = "personas")]
    async fn personas(&self) -> CallToolResult {
        let config = self.grove.config();
        let root = &self.grove.workspace().root;
        let names = crate::orchestrator::engines::personas(&config, root);
        reply(Ok(json!({ "personas": names })))
    }
}

impl GroveMcp {
    async fn do_stats(&self) -> Answer {
        let reader = self.reader().await?;
        let counts = reader.counts().map_err(|e| e.to_string())?;
        let mine = (self.parent().await).map(|id| super::control::open_children(&reader, &id));
        let delegation = reader.counters().map_err(|e| e.to_string())?;
        Ok(json!({ "counts": counts, "my_unfinished_children": mine, "delegation": delegation }))
    }
}
