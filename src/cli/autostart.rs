//! Autostart (like gpg-agent): a command that needs a grove member where
//! none runs starts a background `grove serve` for the workspace, says so
//! once on stderr, and proceeds. `--no-autostart` turns it off.

use super::{CliError, Context};
use crate::client::ClientError;
use crate::protocol::{Method, ReplyBody};
use std::time::Duration;

impl Context {
    /// Calls `method` on the primary, starting a member first if none runs.
    /// With `request_id`, a retry is applied at most once.
    pub async fn call(
        &self,
        method: Method,
        request_id: Option<&str>,
    ) -> Result<ReplyBody, CliError> {
        let mut client = self.client();
        let id = request_id
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        match client.call_with_id(&id, method.clone()).await {
            Err(ClientError::NoPrimary { .. }) if self.autostart => {
                self.start_member().await?;
                let mut client = self.client();
                Ok(client.call_with_id(&id, method).await?)
            }
            other => Ok(other?),
        }
    }

    /// Makes sure a member runs (for commands that only read or follow).
    pub async fn ensure_member(&self) -> Result<(), CliError> {
        let mut client = self.client();
        match crate::client::ping(&mut client).await {
            Err(ClientError::NoPrimary { .. }) if self.autostart => self.start_member().await,
            _ => Ok(()),
        }
    }

    async fn start_member(&self) -> Result<(), CliError> {
        use std::os::unix::process::CommandExt;
        self.ws
            .ensure_state_dir()
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let log_path = self.ws.state_dir.join("serve.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| CliError::Failed(format!("cannot open {}: {e}", log_path.display())))?;
        let exe = std::env::current_exe().map_err(|e| CliError::Failed(e.to_string()))?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("serve")
            .arg("--workspace")
            .arg(&self.ws.root)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log);
        // SAFETY: setsid is async-signal-safe. A session of its own keeps
        // the member alive when this terminal goes away.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| CliError::Failed(format!("cannot start grove serve: {e}")))?;
        errln!(
            "grove: no member was running for {}; started `grove serve` in the background (pid {}, log {}). Use --no-autostart to prevent this.",
            self.ws.root.display(),
            child.id(),
            log_path.display()
        );
        let mut client = self.client();
        crate::client::wait_for_primary(&mut client, Duration::from_secs(15))
            .await
            .map(|_| ())
            .map_err(|e| {
                CliError::Unavailable(format!(
                    "the background member did not come up ({e}); see {}",
                    log_path.display()
                ))
            })
    }
}
