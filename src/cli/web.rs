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
        if !ctx.config.web {
            // `--open`'s page leads to the board: no use while it is off.
            let _ = std::fs::remove_file(crate::web::opener_path(&ctx.ws));
            // A new token when the board comes back: one that leaked (an
            // open tab's cookie sent to whoever binds the freed port, the
            // page reopened from history) is then worth nothing. Not while
            // the config keeps the board on: it goes on with the token it
            // read when it started.
            let _ = std::fs::remove_file(crate::web::token_path(&ctx.ws));
        }
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
    crate::web::token(&ctx.ws).map_err(CliError::Usage)?;
    ctx.ensure_member().await?;
    let (up, token) = wait_until_up(&ctx.ws, settings.port).await?;
    let url = crate::web::url(settings.port, &token);
    if up != Up::Answered {
        // The URL (it carries the token) is neither printed nor opened
        // unless our own board answers on the port: whatever holds it
        // instead may be another user's, now or by the time a browser
        // gets there.
        if a.json {
            print_json(&serde_json::json!({
                "enabled": true,
                "port": settings.port,
                "up": false,
            }));
        }
        return Err(CliError::Failed(match up {
            Up::Held(uid) => format!(
                "127.0.0.1:{} is held by another user's program (uid {uid}), not by this workspace's board; its token was not sent there. Choose another port: grove web --port P",
                settings.port
            ),
            _ => format!(
                "the board does not answer on 127.0.0.1:{} yet, so its URL is not given: is a member running (`grove status`)? is the port taken by another program (then `grove web --port P`)? see the primary's log, then run `grove web` again",
                settings.port
            ),
        }));
    }
    if a.json {
        print_json(&serde_json::json!({
            "enabled": true,
            "port": settings.port,
            "url": url,
            "up": true,
        }));
    } else {
        outln!("{url}");
    }
    if a.open {
        open(ctx, &url);
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
    if stored.port != 0 && settings.port != stored.port {
        // Moved (perhaps away from a port someone else took): a new token,
        // which the board on the new port reads when it starts. Tabs open
        // on the old port still hold the old one, and that port is free
        // for anyone now.
        let _ = std::fs::remove_file(crate::web::token_path(&ctx.ws));
    }
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

/// How the board's port answered `grove web`.
#[derive(Debug, PartialEq, Eq)]
enum Up {
    /// Our board answered an authenticated request.
    Answered,
    /// Another user listens on it (its uid): nothing was sent there.
    Held(u32),
    /// Nothing that answered as our board, until `COME_UP` passed.
    Silent,
}

/// Waits up to `COME_UP` for our board (not some other program on the
/// port) to answer an authenticated request. The token is read again for
/// each try: a board that starts cold makes a new one (see
/// `web::BoardOptions::took_over`). Answers the token last tried.
async fn wait_until_up(ws: &crate::paths::Workspace, port: u16) -> Result<(Up, String), CliError> {
    let until = Instant::now() + COME_UP;
    loop {
        let token = crate::web::token(ws).map_err(CliError::Usage)?;
        let tried = token.clone();
        let up = tokio::task::spawn_blocking(move || probe(port, &tried))
            .await
            .unwrap_or(Up::Silent);
        if up != Up::Silent || Instant::now() >= until {
            return Ok((up, token));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One look at `port`: who holds it (one read of the kernel's tables), and
/// whether our board answers there. The token goes only to a listener of
/// our own user: while no primary serves the stored port, another user may
/// have bound it (see `web::port_owner`).
fn probe(port: u16, token: &str) -> Up {
    use crate::web::port_owner::{Holder, holder};
    match holder(port) {
        Holder::Other(uid) => return Up::Held(uid),
        Holder::Nobody => return Up::Silent,
        Holder::Us => {}
    }
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return Up::Silent;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!(
        "GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Grove-Token: {token}\r\nConnection: close\r\n\r\n"
    );
    let mut head = [0u8; 12];
    let answered = s.write_all(req.as_bytes()).is_ok()
        && s.read_exact(&mut head).is_ok()
        && head.starts_with(b"HTTP/1.1 200");
    if answered { Up::Answered } else { Up::Silent }
}

/// Opens the board in the desktop's browser. Never with the URL as an
/// argument: every local user can read a process's command line
/// (`/proc/PID/cmdline`), xdg-open's and the browser's it starts, and the
/// URL carries the token. The browser is given a page of ours instead,
/// which leads it to the URL (`write_opener`).
fn open(ctx: &Context, url: &str) {
    let page = match write_opener(&ctx.ws, url) {
        Ok(page) => page,
        Err(e) => {
            errln!(
                "grove: cannot write {} ({e}); open the URL above yourself",
                crate::web::opener_path(&ctx.ws).display()
            );
            return;
        }
    };
    let spawned = std::process::Command::new("xdg-open")
        .arg(&page)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        errln!("grove: cannot run xdg-open ({e}); open the URL above yourself");
    }
}

/// Writes `.grove/web-open.html` (0600): a page that sends the browser on
/// to `url` at once, and returns its path.
///
/// In the state dir, which `grove web` has checked is ours and closed to
/// others (0700), as is `web.token` beside it: the page tells nothing the
/// token file does not. It is not under the socket dir (`$XDG_RUNTIME_DIR`,
/// `/tmp`), which a sandboxed browser (a snap, a flatpak) often cannot
/// read, while the workspace usually is within its reach.
///
/// Written whole under a fresh name (`O_CREAT|O_EXCL|O_NOFOLLOW`: never
/// through a link, never into a file that was there) and renamed over the
/// last one: a rename replaces whatever is at the name, a link included,
/// without following it. It is kept, not deleted after a while: xdg-open
/// returns before the browser has read the page (it may first have to
/// start), and nothing of ours stays to delete it later. The next `--open`
/// replaces it, `grove web --off` removes it, and a token that changes
/// makes an old copy worthless. See docs/design.md, Web board.
fn write_opener(ws: &crate::paths::Workspace, url: &str) -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = crate::web::opener_path(ws);
    let attr = crate::web::escape_html(url);
    // As a JavaScript string inside <script>: no `<` to end the element.
    let script = serde_json::to_string(url)
        .unwrap_or_default()
        .replace('<', "\\u003c");
    let page = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <meta http-equiv=\"refresh\" content=\"0; url={attr}\">\n\
         <title>grove board</title>\n\
         <script>location.replace({script});</script></head>\n\
         <body><p><a href=\"{attr}\">Open the grove board</a></p></body></html>\n"
    );
    let tmp = ws
        .state_dir
        .join(format!(".web-open-{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    // Exactly 0600, whatever the umask.
    let written = f
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| f.write_all(page.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map(|()| path)
}
