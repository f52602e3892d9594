//! The web board: a live page of the workspace's tasks, served over HTTP by
//! the primary on 127.0.0.1 only, and moving with it (a new primary binds
//! the stored port, so an open page reconnects and goes on).
//!
//! Whether it runs is stored in `.grove/web.json` (`grove web`, `grove
//! serve --web`), or forced by `web = true` in the config; the same file
//! keeps its port. Every request needs the random token of
//! `.grove/web.token` (0600), see `auth.rs`. The page follows the event
//! stream (`sse.rs`), reads through `api.rs` and writes through
//! `actions.rs`, with the same writes the CLI sends.

mod actions;
mod api;
mod auth;
mod connections;
pub mod notify;
pub mod port_owner;
mod sse;

use crate::config::LiveConfig;
use crate::fs_watch::FileWatch;
use crate::paths::Workspace;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// The board's stored setting (`.grove/web.json`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Turned on by `grove web` or `grove serve --web`; off by `grove web
    /// --off` (the config's `web = true` still forces it on).
    pub enabled: bool,
    /// The port every primary binds; 0: none chosen yet.
    #[serde(default)]
    pub port: u16,
}

pub fn settings_path(ws: &Workspace) -> PathBuf {
    ws.state_dir.join("web.json")
}

pub fn token_path(ws: &Workspace) -> PathBuf {
    ws.state_dir.join("web.token")
}

/// The page `grove web --open` gives the browser: it leads to the URL
/// with the token, which no command line may carry (see `cli/web.rs`).
pub fn opener_path(ws: &Workspace) -> PathBuf {
    ws.state_dir.join("web-open.html")
}

impl Settings {
    /// The stored setting; off with no port when none is stored or it does
    /// not parse (a broken file is reported, never taken as "on").
    pub fn read(ws: &Workspace) -> Settings {
        let path = settings_path(ws);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!("ignoring {}: {e}", path.display());
                Settings::default()
            }),
            Err(_) => Settings::default(),
        }
    }

    pub fn write(&self, ws: &Workspace) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        crate::paths::write_atomic(&settings_path(ws), &bytes)
    }

    /// This setting with a port: the stored one, else a free one now
    /// (written back by the caller, so that every primary binds it).
    pub fn with_port(mut self) -> std::io::Result<Settings> {
        if self.port == 0 {
            let probe = std::net::TcpListener::bind(("127.0.0.1", 0))?;
            self.port = probe.local_addr()?.port();
        }
        Ok(self)
    }
}

/// `s` as HTML text or a quoted attribute's value.
pub fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The board's URL with its token, as `grove web` prints it.
pub fn url(port: u16, token: &str) -> String {
    format!("http://127.0.0.1:{port}/?token={token}")
}

/// The board's token: read from `.grove/web.token`, created (0600) when
/// absent. A token file another user owns is refused: whoever wrote it
/// could read the board's pages and answer its agents.
pub fn token(ws: &Workspace) -> Result<String, String> {
    let path = token_path(ws);
    let refuse = |e: crate::trust::Untrusted| e.to_string();
    if let Some(meta) = crate::trust::check_owner(&path, "the web board's token").map_err(refuse)? {
        // Only we may read it: close up a copy that a umask left open.
        crate::trust::tighten(&path, &meta, 0o600);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let text = text.trim();
        if text.len() >= 32 {
            return Ok(text.to_string());
        }
        return Err(format!(
            "{} holds no token; remove it and run `grove web` again",
            path.display()
        ));
    }
    let fresh = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    // Written aside, then linked into place: two processes creating it at
    // once agree on the one that was linked first.
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    crate::paths::write_atomic(&tmp, fresh.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(fresh),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => token(ws),
        Err(e) => Err(format!("cannot create {}: {e}", path.display())),
    }
}

/// What the primary gives the board.
pub struct BoardOptions {
    pub ws: Workspace,
    pub live: Arc<LiveConfig>,
    /// Unix ms of the last request the member served: the board's requests
    /// and open pages count, so an autostarted member does not exit under
    /// a page someone watches.
    pub last_request: Arc<AtomicU64>,
    /// This primary took over from one it heard moments ago (a failover,
    /// a handover): the board's port was free for milliseconds at most,
    /// and open tabs keep their login. Otherwise (a cold start) the board
    /// starts with a new token: while no member ran, anyone could hold
    /// its port and serve a page of their own on its origin to a tab left
    /// open, which could then read the board, token and all, once it is
    /// back (see docs/design.md, Web board).
    pub took_over: bool,
}

/// While this member is primary: serves the board whenever the stored
/// setting or the config turns it on, on the stored port, and stops it
/// when turned off. Aborted with the primary's other parts at handover.
pub async fn run(opts: BoardOptions) {
    let BoardOptions {
        ws,
        live,
        last_request,
        took_over,
    } = opts;
    let mut renew = !took_over;
    let mut watches: Vec<FileWatch> = std::iter::once(settings_path(&ws))
        .chain(live.files().iter().cloned())
        .map(|p| FileWatch::with_writes(&p, RECHECK))
        .collect();
    let mut serving: Option<(u16, Serving)> = None;
    loop {
        live.refresh();
        let wanted = wanted_port(&ws, &live);
        match (&serving, wanted) {
            (Some((port, _)), Some(want)) if *port == want => {}
            (_, want) => {
                if let Some((port, server)) = serving.take() {
                    server.stop().await;
                    tracing::info!("web board on port {port} stopped");
                }
                if let Some(port) = want {
                    let server = serve(
                        ws.clone(),
                        live.clone(),
                        last_request.clone(),
                        port,
                        std::mem::take(&mut renew),
                    );
                    serving = Some((port, Serving(crate::loop_watch::spawn("web", server))));
                }
            }
        }
        crate::fs_watch::any(&mut watches).await;
    }
}

/// The server's task, stopped when dropped: aborting `run` (the primary's
/// role ended, the member lives on) must close the listener too, or the
/// next primary could not bind the port.
struct Serving(tokio::task::JoinHandle<()>);

impl Serving {
    async fn stop(mut self) {
        self.0.abort();
        let _ = (&mut self.0).await;
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The port to serve on, or `None` when the board is off. A board turned
/// on by the config alone gets its port chosen and stored now.
fn wanted_port(ws: &Workspace, live: &LiveConfig) -> Option<u16> {
    let stored = Settings::read(ws);
    if !stored.enabled && !live.current().web {
        return None;
    }
    if stored.port != 0 {
        return Some(stored.port);
    }
    let chosen = stored.with_port().ok()?;
    if let Err(e) = chosen.write(ws) {
        tracing::warn!("cannot store the web board's port: {e}");
    }
    Some(chosen.port)
}

/// Binds `port` on 127.0.0.1 (retrying while it is taken: the primary
/// before us may still be letting it go) and serves until aborted.
async fn serve(
    ws: Workspace,
    live: Arc<LiveConfig>,
    last_request: Arc<AtomicU64>,
    port: u16,
    mut renew: bool,
) {
    let mut warned = false;
    let listener = loop {
        match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => break l,
            Err(e) => {
                // Who holds it, at every failed try (the kernel's tables,
                // read off the event loop): another user may take the port
                // after our first try found the last primary still on it.
                let foreign = tokio::task::spawn_blocking(move || port_owner::foreign(port))
                    .await
                    .unwrap_or(None);
                // Another user held the port: a tab open on it may have
                // been served their page (see `BoardOptions`).
                renew |= foreign.is_some();
                if !warned {
                    match foreign {
                        Some(uid) => tracing::error!(
                            "web board: 127.0.0.1:{port} is held by another user (uid {uid}); retrying, but choose another port: grove web --port P"
                        ),
                        None => tracing::warn!(
                            "web board: cannot bind 127.0.0.1:{port} yet ({e}); retrying"
                        ),
                    }
                    warned = true;
                }
                tokio::time::sleep(BIND_RETRY).await;
            }
        }
    };
    if renew {
        let _ = std::fs::remove_file(token_path(&ws));
    }
    // Read (or made) once the port is ours: the URL `grove web` prints
    // names the token the board checks.
    let token = match token(&ws) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("web board not started: {e}");
            return;
        }
    };
    tracing::info!("web board on http://127.0.0.1:{port}/");
    let state = Arc::new(api::Board {
        ws,
        live,
        token,
        port,
        last_request,
    });
    connections::serve(listener, api::router(state)).await;
}

/// How often a taken port is tried again.
const BIND_RETRY: Duration = Duration::from_millis(200);

/// Where the kernel cannot notify us, how often the setting is read again.
const RECHECK: Duration = Duration::from_secs(2);
