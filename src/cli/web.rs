//! `grove web`: turns the workspace's web board on (or `--off`), stores its
//! port, makes sure a member runs, waits for the board to answer and
//! prints (or opens) its URL with the token.

use super::{CliError, Context, EXIT_OK, print_json};
use crate::web::Settings;
use clap::Args;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct WebArgs {
    /// The port on 127.0.0.1 (default: the stored one, else a free one,
    /// stored so that every primary binds the same).
    #[arg(long)]
    pub port: Option<u16>,
    /// Open the board in the desktop's browser (`xdg-open`).
    #[arg(long)]
    pub open: bool,
    /// Turn the board off (unless the config's `web = true` keeps it on).
    #[arg(long, conflicts_with_all = ["port", "open"])]
    pub off: bool,
    #[arg(long)]
    pub json: bool,
}

/// How long `grove web` waits for the primary to bring the board up.
const COME_UP: Duration = Duration::from_secs(15);

pub async fn run(ctx: &Context, a: WebArgs) -> Result<i32, CliError> {
    ctx.ws
        .ensure_state_dir()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    if a.off {
        let settings = Settings {
            enabled: false,
            ..Settings::read(&ctx.ws)
        };
        store(ctx, &settings)?;
        if a.json {
            print_json(&serde_json::json!({ "enabled": false, "port": settings.port }));
        } else if ctx.config.web {
            outln!("web board turned off, but the config's `web = true` keeps it on");
        } else {
            outln!("web board off");
        }
        return Ok(EXIT_OK);
    }
    if a.port == Some(0) {
        return Err(CliError::Usage("--port must be between 1 and 65535".into()));
    }
    let settings = enable(ctx, a.port)?;
    let token = crate::web::token(&ctx.ws).map_err(CliError::Usage)?;
    let url = crate::web::url(settings.port, &token);
    ctx.ensure_member().await?;
    let up = wait_until_up(settings.port, &token).await;
    if !up && let Some(uid) = crate::web::port_owner::foreign(settings.port) {
        // Neither printed nor opened: the URL carries the token.
        return Err(CliError::Failed(format!(
            "127.0.0.1:{} is held by another user's program (uid {uid}), not by this workspace's board; its token was not sent there. Choose another port: grove web --port P",
            settings.port
        )));
    }
    if a.json {
        print_json(&serde_json::json!({
            "enabled": true,
            "port": settings.port,
            "url": url,
            "up": up,
        }));
    } else {
        outln!("{url}");
    }
    if !up {
        errln!(
            "grove: the board does not answer on 127.0.0.1:{} yet: is a member running (`grove status`)? is the port taken by another program (then `grove web --port P`)? see the primary's log",
            settings.port
        );
    }
    if a.open {
        open(&url);
    }
    Ok(EXIT_OK)
}

/// Stores the board as on, with `port` or the stored one or a free one.
pub fn enable(ctx: &Context, port: Option<u16>) -> Result<Settings, CliError> {
    let stored = Settings::read(&ctx.ws);
    let settings = Settings {
        enabled: true,
        port: port.unwrap_or(stored.port),
    }
    .with_port()
    .map_err(|e| CliError::Failed(format!("cannot find a free port on 127.0.0.1: {e}")))?;
    if settings != stored {
        store(ctx, &settings)?;
    }
    Ok(settings)
}

fn store(ctx: &Context, settings: &Settings) -> Result<(), CliError> {
    settings.write(&ctx.ws).map_err(|e| {
        CliError::Failed(format!(
            "cannot write {}: {e}",
            crate::web::settings_path(&ctx.ws).display()
        ))
    })
}

/// Whether our board (not some other program on the port) answers an
/// authenticated request within `COME_UP`.
async fn wait_until_up(port: u16, token: &str) -> bool {
    let until = Instant::now() + COME_UP;
    while Instant::now() < until {
        if crate::web::port_owner::foreign(port).is_some() {
            return false;
        }
        let token = token.to_string();
        let ok = tokio::task::spawn_blocking(move || answers(port, &token))
            .await
            .unwrap_or(false);
        if ok {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Whether our board answers on `port`. The token goes only to a listener
/// of our own user: while no primary serves the stored port, another user
/// may have bound it (see `web::port_owner`).
fn answers(port: u16, token: &str) -> bool {
    if !crate::web::port_owner::ours(port) {
        return false;
    }
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!(
        "GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Grove-Token: {token}\r\nConnection: close\r\n\r\n"
    );
    let mut head = [0u8; 12];
    s.write_all(req.as_bytes()).is_ok()
        && s.read_exact(&mut head).is_ok()
        && head.starts_with(b"HTTP/1.1 200")
}

fn open(url: &str) {
    let spawned = std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        errln!("grove: cannot run xdg-open ({e}); open the URL above yourself");
    }
}
