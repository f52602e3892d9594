//! `grove mcp`: the MCP server (`crate::mcp`) on stdio, reaching grove as
//! every command does (autostart included).

use super::{CliError, Context, EXIT_OK};
use crate::config::Config;
use crate::mcp::Grove;
use crate::paths::Workspace;
use crate::protocol::{Method, ReplyBody};
use futures::future::BoxFuture;
use std::sync::Arc;

impl Grove for Context {
    fn workspace(&self) -> &Workspace {
        &self.ws
    }

    fn config(&self) -> Config {
        // The files as they are now: an engine added meanwhile is listed.
        Config::load(&self.ws.state_dir).unwrap_or_else(|_| self.config.clone())
    }

    fn call_keyed<'a>(
        &'a self,
        method: Method,
        key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<ReplyBody, String>> {
        Box::pin(async move {
            Context::call(self, method, key)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn ensure_member(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            Context::ensure_member(self)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn keep_member(&self) -> BoxFuture<'_, String> {
        Box::pin(async move { Context::keep_member(self).await.to_string() })
    }
}

pub async fn run(ctx: Context) -> Result<i32, CliError> {
    crate::mcp::serve(Arc::new(ctx))
        .await
        .map_err(CliError::Failed)?;
    Ok(EXIT_OK)
}
