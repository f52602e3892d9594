//! The web board, with real grove processes and a real browser: Debian's
//! Chromium (headless) driven by Playwright for Python (tests/web/board.py,
//! in the tests' own Python environment; no browser is downloaded). The
//! board lists and follows tasks, cancels, spawns, approves and denies
//! from the page, and keeps a page live and gap-free across a `kill -9` of
//! the primary, whose successor's measured takeover the members view
//! shows; the delegation view follows awaits and counters. Its refusals
//! (no token, another `Host`, a cross-site change) and the `notify`
//! command are checked over plain HTTP.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;

const BOARD_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/web/board.py");

/// `grove web`: the board's port, token and URL.
fn web(g: &Grove) -> (u16, String, String) {
    let v: Value = serde_json::from_str(&g.ok(&["web", "--json"])).expect("grove web --json");
    assert_eq!(v["up"], true, "the board came up: {v}");
    let url = v["url"].as_str().unwrap().to_string();
    let token = url.split("token=").nth(1).unwrap().to_string();
    (v["port"].as_u64().unwrap() as u16, token, url)
}

/// Where a scenario's screenshot goes: `target/web-board-NAME.png`.
fn screenshot(name: &str) -> PathBuf {
    let bin = std::path::Path::new(BIN);
    bin.parent()
        .and_then(std::path::Path::parent)
        .expect("target dir")
        .join(format!("web-board-{name}.png"))
}

/// Runs one scenario of board.py against the board; fails with its output.
fn browser(g: &Grove, scenario: &str, url: &str) {
    let shot = screenshot(scenario);
    let _ = std::fs::remove_file(&shot);
    let out = Command::new(test_env::python())
        .arg(BOARD_PY)
        .arg(scenario)
        .arg(BIN)
        .arg(&g.ws)
        .arg(url)
        .arg(&shot)
        .output()
        .expect("run board.py");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "board.py {scenario} failed ({:?}):\n{}{stderr}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!("{stderr}");
    assert!(shot.exists(), "no screenshot at {}", shot.display());
}

#[test]
fn the_board_lists_follows_spawns_and_cancels_tasks() {
    let mut g = Grove::new();
    g.serve();
    g.wait_primary();
    let (_, _, url) = web(&g);
    browser(&g, "tasks", &url);
}

#[test]
fn a_permission_request_is_approved_and_denied_from_the_page() {
    let mut g = Grove::scripted_acp("ask", "");
    g.serve();
    g.wait_primary();
    let (_, _, url) = web(&g);
    browser(&g, "approve", &url);
}

#[test]
fn an_open_page_keeps_up_across_a_kill_9_of_the_primary() {
    let mut g = Grove::new();
    g.serve();
    let (_, epoch) = g.wait_primary();
    g.serve();
    g.wait_secondaries_at(1, epoch);
    let (port, _, url) = web(&g);
    browser(&g, "failover", &url);
    // The next primary serves the board on the same port.
    let settings: Value =
        serde_json::from_slice(&std::fs::read(g.ws.join(".grove/web.json")).unwrap()).unwrap();
    assert_eq!(settings["port"], port);
}

#[test]
fn the_delegation_view_follows_awaits_and_counters() {
    let mut g = Grove::scripted_acp("allow_all", "");
    g.serve();
    g.wait_primary();
    let (_, _, url) = web(&g);
    browser(&g, "delegation", &url);
}

#[test]
fn the_goals_view_follows_a_goal_to_its_end() {
    let mut g = Grove::scripted_acp("allow_all", "");
    g.serve();
    g.wait_primary();
    let (_, _, url) = web(&g);
    browser(&g, "goals", &url);
}

/// One HTTP/1.1 request over a plain socket: (status, headers and body).
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: 2\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Content-Type: application/json\r\n\r\n{}");
    s.write_all(req.as_bytes()).unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// The board a member serves (`web = true` in its config): its port, its
/// token (checked private) and an authenticated answer of `/api/state`.
fn board_of(g: &Grove) -> (u16, String, String) {
    let settings = g.ws.join(".grove/web.json");
    let port = wait_for("the primary to store the board's port", DEADLINE, || {
        let v: Value = serde_json::from_slice(&std::fs::read(&settings).ok()?).ok()?;
        v["port"].as_u64().filter(|p| *p > 0)
    }) as u16;
    let token_file = g.ws.join(".grove/web.token");
    let token = wait_for("the token", DEADLINE, || {
        std::fs::read_to_string(&token_file).ok()
    });
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the token is private");
    let token = token.trim().to_string();
    let ok = wait_for("the board to answer", DEADLINE, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        let (status, text) = http(port, "GET", "/api/state", &[("X-Grove-Token", &token)]);
        (status == 200).then_some(text)
    });
    (port, token, ok)
}

/// Open descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn connections_that_send_nothing_cannot_exhaust_the_primarys_descriptors() {
    let mut g = Grove::with_config("web = true\n");
    g.serve();
    let (primary, _) = g.wait_primary();
    let (port, token, _) = board_of(&g);
    let before = open_fds(primary);
    // Anyone on the machine can connect without a token. Far more idle
    // connections than the board serves at once:
    let idle: Vec<_> = (0..150)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    // The primary holds at most its bound of them (the rest wait in the
    // kernel's backlog) and keeps answering its clients meanwhile.
    wait_for("the primary to accept up to its bound", DEADLINE, || {
        (open_fds(primary) >= before + 32).then_some(())
    });
    let id = g.task_create("true");
    assert!(!id.is_empty());
    let held = open_fds(primary);
    assert!(
        held <= before + 64 + 8,
        "{held} descriptors open, {before} before 150 idle connections"
    );
    // Each is closed once it sent no request head for 10 s.
    let mut first = idle[0].try_clone().unwrap();
    first.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        first.read(&mut byte).map_err(|e| e.kind()),
        Ok(0),
        "an idle connection is closed by the board"
    );
    drop((first, idle));
    wait_for("the board to answer again", DEADLINE, || {
        let (status, _) = http(port, "GET", "/api/state", &[("X-Grove-Token", &token)]);
        (status == 200).then_some(())
    });
}

/// A listener of another user on a loopback port (as root: `nobody`'s),
/// answering every connection "200" and printing what it was sent.
const IMPOSTOR_PY: &str = r#"
import os, socket, sys
os.setgid(65534); os.setuid(65534)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
print("listening", flush=True)
while True:
    c, _ = s.accept(); c.settimeout(2)
    try: print(repr(c.recv(65536)), flush=True)
    except OSError: pass
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"); c.close()
"#;

/// A child killed when the test ends, whether it passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_token_is_never_sent_to_another_users_listener_on_the_boards_port() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to listen as another user");
        return;
    }
    let mut g = Grove::new();
    g.serve();
    g.wait_primary();
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut impostor = Command::new("python3")
        .args(["-c", IMPOSTOR_PY, &port.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3");
    let mut heard = std::io::BufReader::new(impostor.stdout.take().unwrap());
    let mut impostor = KillOnDrop(impostor);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut heard, &mut line).unwrap();
    assert_eq!(line.trim(), "listening");
    let out = g.run(&["web", "--port", &port.to_string()]);
    let (stdout, stderr) = (stdout_of(&out), stderr_of(&out));
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("another user") && stderr.contains("uid 65534"),
        "{stderr}"
    );
    let token = std::fs::read_to_string(g.ws.join(".grove/web.token")).unwrap();
    assert!(
        !stdout.contains(token.trim()),
        "the URL is not printed: {stdout}"
    );
    impostor.0.kill().unwrap();
    impostor.0.wait().unwrap();
    let mut told = String::new();
    heard.read_to_string(&mut told).unwrap();
    assert!(
        !told.contains(token.trim()),
        "the impostor heard the token: {told}"
    );
    // Once the port is free the primary binds it, and the board is up.
    let (up, _, _) = wait_for("the board on the freed port", DEADLINE, || {
        let out = g.run(&["web", "--port", &port.to_string(), "--json"]);
        let v: Value = serde_json::from_str(&stdout_of(&out)).ok()?;
        (v["up"] == true).then(|| web(&g))
    });
    assert_eq!(up, port);
}

/// Another user's connection, token and all, is closed unread: browsers
/// send the board's login cookie to every port of 127.0.0.1, and a tab
/// open while another user holds the port sends them the token.
const FOREIGN_CLIENT_PY: &str = r#"
import os, socket, sys
os.setgid(65534); os.setuid(65534)
port, token = int(sys.argv[1]), sys.argv[2]
c = socket.socket(); c.settimeout(10); c.connect(("127.0.0.1", port))
got = b""
try:
    c.sendall(("GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-Grove-Token: %s\r\nConnection: close\r\n\r\n" % (port, token)).encode())
    while True:
        b = c.recv(65536)
        if not b: break
        got += b
except OSError: pass
print(repr(got[:200]), flush=True)
"#;

#[test]
fn another_users_connection_is_refused_even_with_the_token() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to connect as another user");
        return;
    }
    let mut g = Grove::with_config("heartbeat_ms = 100\nweb = true\n");
    g.serve();
    g.wait_primary();
    let (port, token, _) = board_of(&g);
    let out = Command::new("python3")
        .args(["-c", FOREIGN_CLIENT_PY, &port.to_string(), &token])
        .output()
        .expect("python3");
    let heard = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        heard.trim(),
        "b''",
        "another user got an answer: {heard}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Ours, the same request, is answered.
    let (status, _) = http(port, "GET", "/api/state", &[("X-Grove-Token", &token)]);
    assert_eq!(status, 200);
}

#[test]
fn requests_without_the_token_for_another_host_or_from_another_site_are_refused() {
    let notes = tempfile::tempdir().unwrap();
    let notes = notes.path().join("notes");
    // `web = true` in the config turns the board on without `grove web`;
    // the primary picks and stores the port.
    let mut g = Grove::with_config(&format!(
        "heartbeat_ms = 100\nweb = true\nnotify = \"printf '%s|%s\\\\n' >> '{}'\"\n",
        notes.display()
    ));
    g.serve();
    g.wait_primary();
    let (port, token, ok) = board_of(&g);
    let token = token.as_str();
    assert!(
        !ok.to_lowercase().contains("access-control-allow"),
        "no CORS: {ok}"
    );
    // No token, a wrong one: 401, and the body says what to do.
    let (status, text) = http(port, "GET", "/api/state", &[]);
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("grove web"), "{text}");
    let (status, _) = http(port, "GET", "/api/events", &[("X-Grove-Token", "nope")]);
    assert_eq!(status, 401);
    let (status, _) = http(port, "GET", "/", &[]);
    assert_eq!(status, 401);
    // DNS rebinding: a page of evil.example resolved to 127.0.0.1 sends its
    // own name as Host; even with a token it gets nothing.
    let (status, text) = http(
        port,
        "GET",
        &format!("/api/state?token={token}"),
        &[("Host", &format!("evil.example:{port}"))],
    );
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("evil.example"), "{text}");
    // A cross-site form or fetch carries the cookie but cannot set the
    // header: refused, and nothing is spawned.
    let cookie = format!("grove_token_{port}={token}");
    let (status, text) = http(port, "POST", "/api/tasks", &[("Cookie", &cookie)]);
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("X-Grove-Token"), "{text}");
    let (status, _) = http(
        port,
        "POST",
        "/api/tasks",
        &[("X-Grove-Token", token), ("Origin", "http://evil.example")],
    );
    assert_eq!(status, 403);
    assert_eq!(g.db().tasks(&Default::default()).unwrap().len(), 0);
    // A page of another port of 127.0.0.1 is sent the cookie: its event
    // stream (a read it could not see, but that costs us) is refused too.
    let (status, _) = http(
        port,
        "GET",
        "/api/events?since=1",
        &[("Cookie", &cookie), ("Origin", "http://127.0.0.1:1")],
    );
    assert_eq!(status, 403);
    // An `<img>` of such a page sends no `Origin`, but its browser says
    // where the request comes from.
    let (status, _) = http(
        port,
        "GET",
        "/api/events?since=1",
        &[("Cookie", &cookie), ("Sec-Fetch-Site", "same-site")],
    );
    assert_eq!(status, 403);
    // The board's own page sends the header and its origin: accepted (here
    // refused only for the empty prompt).
    let origin = format!("http://127.0.0.1:{port}");
    let (status, text) = http(
        port,
        "POST",
        "/api/tasks",
        &[("X-Grove-Token", token), ("Origin", &origin)],
    );
    assert_eq!(status, 400, "{text}");

    // Notifications: once per top-level task and state.
    let done = g.ok(&["spawn", "true"]);
    let slow = g.ok(&["spawn", "sleep 60"]);
    wait_status(&g, &slow, "running");
    g.ok(&["progress", "50", "--task", &slow]);
    g.ok(&["cancel", &slow]);
    wait_status(&g, &done, "completed");
    let lines = wait_for("two notifications", DEADLINE, || {
        let text = std::fs::read_to_string(&notes).ok()?;
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        (lines.len() >= 2).then_some(lines)
    });
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&done[..8]) && l.contains("completed")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&slow[..8]) && l.contains("cancelled")),
        "{lines:?}"
    );
    // A later update of a finished task (a second cancel is refused; a
    // relaunch would be a new state) does not notify again.
    let _ = g.run(&["cancel", &slow]);
    let marker = g.ok(&["spawn", "true"]);
    wait_for("the marker's notification", DEADLINE, || {
        std::fs::read_to_string(&notes)
            .ok()
            .filter(|t| t.contains(&marker[..8]))
    });
    let text = std::fs::read_to_string(&notes).unwrap();
    assert_eq!(
        text.lines().count(),
        3,
        "one line per task and state: {text}"
    );
}

/// What the fake `xdg-open` records: its command line as every local user
/// reads it (`/proc/PID/cmdline`), the file it was given, that file's mode,
/// owner and type, all in one directory renamed into place when whole.
const FAKE_XDG_OPEN: &str = r#"#!/bin/sh
seen="$GROVE_TEST_SEEN"
mkdir "$seen.tmp"
tr '\0' '\n' < /proc/$$/cmdline > "$seen.tmp/cmdline"
printf '%s\n' "$1" > "$seen.tmp/arg"
cat "$1" > "$seen.tmp/page"
stat -L -c '%a %u %F' "$1" > "$seen.tmp/stat"
mv "$seen.tmp" "$seen"
"#;

/// [`FAKE_XDG_OPEN`] first on `g`'s PATH; where it records what it saw.
fn fake_xdg_open(g: &mut Grove) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = g.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let fake = bin.join("xdg-open");
    std::fs::write(&fake, FAKE_XDG_OPEN).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let seen = g.dir.path().join("seen");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    g.env("PATH", &path);
    g.env("GROVE_TEST_SEEN", &seen.display().to_string());
    seen
}

#[test]
fn web_open_never_puts_the_token_on_a_command_line() {
    use std::os::unix::fs::MetadataExt;
    let mut g = Grove::new();
    let seen = fake_xdg_open(&mut g);
    // A link where the page goes is replaced, never written through.
    let victim = g.dir.path().join("victim");
    std::fs::write(&victim, "untouched").unwrap();
    let page = g.ws.join(".grove/web-open.html");
    std::os::unix::fs::symlink(&victim, &page).unwrap();
    g.serve();
    g.wait_primary();

    let out = g.run(&["web", "--open"]);
    let stdout = stdout_of(&out);
    assert!(out.status.success(), "{stdout}{}", stderr_of(&out));
    let token = std::fs::read_to_string(g.ws.join(".grove/web.token")).unwrap();
    let token = token.trim();
    let url = stdout.trim();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with(&format!("/?token={token}")),
        "the URL is still printed to our own terminal: {stdout}"
    );
    wait_for("xdg-open to run", DEADLINE, || seen.is_dir().then_some(()));
    let read = |name: &str| std::fs::read_to_string(seen.join(name)).unwrap();
    let cmdline = read("cmdline");
    assert!(
        !cmdline.contains(token),
        "xdg-open's command line carries the token: {cmdline}"
    );
    assert_eq!(
        std::path::Path::new(read("arg").trim()),
        page.canonicalize().unwrap(),
        "xdg-open is given the page in the state dir"
    );
    let html = read("page");
    assert!(
        html.contains(&format!("url={url}\""))
            && html.contains(&format!("location.replace(\"{url}\")")),
        "the page leads to the board's URL: {html}"
    );
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    assert_eq!(read("stat").trim(), format!("600 {me} regular file"));
    let meta = std::fs::symlink_metadata(&page).unwrap();
    assert!(meta.file_type().is_file(), "the planted link was replaced");
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, me));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    // In a browser, the page leads to the board (and the token out of the
    // address bar).
    browser(&g, "opener", &format!("file://{}", page.display()));
    // `--off` removes it.
    g.ok(&["web", "--off"]);
    assert!(!page.exists(), "the page outlives the board");
}

/// `git` in `dir` with a test identity, never the user's global config.
fn git(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .envs(GIT_IDENTITY)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?}: {}", stderr_of(&out));
}

const GIT_IDENTITY: [(&str, &str); 4] = [
    ("GIT_AUTHOR_NAME", "grove test"),
    ("GIT_AUTHOR_EMAIL", "test@grove.invalid"),
    ("GIT_COMMITTER_NAME", "grove test"),
    ("GIT_COMMITTER_EMAIL", "test@grove.invalid"),
];

/// The most of a patch the board serves (`web/api.rs`, `DIFF_MAX`).
const DIFF_MAX: usize = 8 << 20;

/// The body of an HTTP answer, as JSON.
fn json_body(text: &str) -> Value {
    let body = text.split_once("\r\n\r\n").expect("a head and a body").1;
    serde_json::from_str(body).expect("a JSON body")
}

/// Children of `pid` whose command is `name`.
fn children_named(pid: u32, name: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // pid (comm) state ppid ...
            let Some((comm, rest)) = stat.split_once(") ") else {
                return false;
            };
            let ppid = rest.split_whitespace().nth(1);
            comm.ends_with(&format!("({name}")) && ppid == Some(&pid.to_string())
        })
        .collect()
}

/// The command lines of every process whose command line holds `marker`.
fn commands_with(marker: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(marker))
        .collect()
}

/// A workspace that is a git repository with one commit (`.gitignore`,
/// and each of `files` with its text), its board on, not served yet.
fn board_repo(env: &[(&str, &str)], files: &[(&str, &str)]) -> Grove {
    let mut g = Grove::with_config("heartbeat_ms = 100\nweb = true\n");
    for (k, v) in GIT_IDENTITY.iter().chain(env) {
        g.env(k, v);
    }
    g.env("GIT_CONFIG_GLOBAL", "/dev/null");
    git(&g.ws, &["init", "-q", "-b", "main"]);
    for (name, text) in [(".gitignore", ".grove/\n")].iter().chain(files) {
        std::fs::write(g.ws.join(name), text).unwrap();
        git(&g.ws, &["add", name]);
    }
    git(&g.ws, &["commit", "-q", "-m", "start"]);
    g
}

#[test]
fn the_boards_diff_of_a_huge_change_is_capped_and_says_so() {
    let mut g = board_repo(&[], &[]);
    g.serve();
    let (primary, _) = g.wait_primary();
    let (port, token, _) = board_of(&g);
    // About 23 MiB of patch: three million added lines.
    let big = g.ok(&["spawn", "--worktree", "seq 1 3000000 > big.txt"]);
    let small = g.ok(&["spawn", "--worktree", "echo small > s.txt"]);
    wait_status(&g, &big, "completed");
    wait_status(&g, &small, "completed");
    let ask = |id: &str| {
        let (status, text) = http(
            port,
            "GET",
            &format!("/api/tasks/{id}/diff"),
            &[("X-Grove-Token", &token)],
        );
        assert_eq!(status, 200, "{}", &text[..text.len().min(500)]);
        text
    };

    let answer = ask(&big);
    assert!(
        answer.len() < 2 * DIFF_MAX,
        "the answer is bounded: {} bytes",
        answer.len()
    );
    let v = json_body(&answer);
    let changes = &v["changes"];
    assert_eq!(changes["truncated"], true, "{}", v["hint"]);
    let text = changes["text"].as_str().unwrap();
    assert!(
        text.len() <= DIFF_MAX && text.len() > DIFF_MAX / 2,
        "{}",
        text.len()
    );
    assert!(
        text.starts_with("diff --git a/big.txt b/big.txt"),
        "{}",
        &text[..200]
    );
    assert!(text.ends_with('\n'), "cut after a whole line");
    assert!(
        !text.contains("+3000000\n"),
        "the last line is past the cap"
    );
    let hint = v["hint"].as_str().unwrap();
    assert!(hint.contains(&format!("grove diff {big}")), "{hint}");
    // The file list is whole: it says how much there is.
    assert_eq!(changes["files"][0]["path"], "big.txt");
    assert_eq!(changes["files"][0]["added"], 3_000_000);
    // The git stopped at the cap was reaped before the answer.
    assert_eq!(children_named(primary, "git"), Vec::<String>::new());

    let v = json_body(&ask(&small));
    assert_eq!(v["changes"]["truncated"], false, "{v}");
    assert!(v["hint"].is_null(), "{v}");
    assert!(
        v["changes"]["text"]
            .as_str()
            .unwrap()
            .contains("\n+small\n"),
        "{v}"
    );

    // A terminal gets all of it.
    let out = g.run(&["diff", &big]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(out.stdout.len() > 3 * DIFF_MAX / 2, "{}", out.stdout.len());
    assert!(out.stdout.ends_with(b"\n+3000000\n"));
    // A reader that stops early ends it quietly, git included.
    let mut diff = Command::new(BIN)
        .args(["diff", &big, "--workspace"])
        .arg(&g.ws)
        .env("GROVE_NO_AUTOSTART", "1")
        .envs(GIT_IDENTITY)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 4096];
    diff.stdout.take().unwrap().read_exact(&mut head).unwrap();
    let status = wait_for("grove diff to end after its reader", DEADLINE, || {
        diff.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(0));
    let worktree = g.ws.join(".grove/worktrees").join(&big);
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.starts_with("git ") && c.contains(&*worktree.to_string_lossy()))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "git left running");
    // The page says the changes are cut, and where to see them all.
    let url = format!("http://127.0.0.1:{port}/?token={token}");
    browser(&g, "diff", &url);
}

/// A repository whose clean filter never ends (configuration a task's
/// agent may write): the board's diff, which copies the worktree into an
/// index and so runs the filter, answers with an error at its deadline,
/// and nothing it started is left running.
#[test]
fn the_boards_diff_stops_at_its_deadline_with_what_it_started() {
    let mut g = board_repo(
        &[("GROVE_TEST_DIFF_WITHIN_MS", "1500")],
        &[(".gitattributes", "*.txt filter=stuck\n")],
    );
    // A marker no other process has in its command line.
    git(&g.ws, &["config", "filter.stuck.clean", "sleep 607; cat"]);
    g.serve();
    let (primary, _) = g.wait_primary();
    let (port, token, _) = board_of(&g);
    let id = g.ok(&["spawn", "--worktree", "echo changed > a.txt"]);
    wait_status(&g, &id, "completed");

    let asked = std::time::Instant::now();
    let (status, text) = http(
        port,
        "GET",
        &format!("/api/tasks/{id}/diff"),
        &[("X-Grove-Token", &token)],
    );
    assert_eq!(status, 200, "{text}");
    let v = json_body(&text);
    let error = v["error"].as_str().unwrap_or_default();
    assert!(error.contains("did not end in the time allowed"), "{v}");
    assert!(asked.elapsed() < DEADLINE, "{:?}", asked.elapsed());
    assert_eq!(children_named(primary, "git"), Vec::<String>::new());
    wait_for("the stuck filter to be gone", DEADLINE, || {
        commands_with("sleep 607").is_empty().then_some(())
    });
    // The board still serves.
    let (status, _) = http(port, "GET", "/api/state", &[("X-Grove-Token", &token)]);
    assert_eq!(status, 200);
}

/// A FIFO that a repository's configuration includes: every git reading
/// it waits for a writer. Dropped, it lets such gits go (writers come and
/// go for a second), whatever the test's outcome.
struct Release(std::path::PathBuf);

impl Drop for Release {
    fn drop(&mut self) {
        use std::os::unix::fs::OpenOptionsExt;
        for _ in 0..200 {
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&self.0);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// The deadline covers every git the board's diff runs, not only the index
/// copy and the diff: configuration that makes git itself block (here an
/// `include.path` naming a FIFO, which git opens and waits on; the
/// repository's config is as writable to a task's agent as the clean
/// filter above) holds `git worktree list` in `worktree::state` before the
/// deadline's first git.
#[test]
fn the_boards_diff_deadline_covers_the_gits_before_the_index_copy() {
    let mut g = board_repo(&[("GROVE_TEST_DIFF_WITHIN_MS", "1500")], &[]);
    g.serve();
    g.wait_primary();
    let (port, token, _) = board_of(&g);
    let id = g.ok(&["spawn", "--worktree", "echo changed > a.txt"]);
    wait_status(&g, &id, "completed");

    let fifo = g.dir.path().join("config-fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    git(&g.ws, &["config", "include.path", fifo.to_str().unwrap()]);
    // Whatever the outcome, the gits waiting on the FIFO are let go.
    let _release = Release(fifo);

    let asked = std::time::Instant::now();
    let (status, text) = http(
        port,
        "GET",
        &format!("/api/tasks/{id}/diff"),
        &[("X-Grove-Token", &token)],
    );
    let took = asked.elapsed();
    assert!(
        took < std::time::Duration::from_secs(10),
        "the board's diff took {took:?} with a 1.5 s deadline (status {status}: {text})"
    );
    assert_eq!(status, 200, "{text}");
    let error = json_body(&text)["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("did not end in the time allowed"), "{text}");
}

/// `git` in `dir`: its output, trimmed.
fn git_stdout(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?}: {}", stderr_of(&out));
    stdout_of(&out).trim().to_string()
}

/// A change the board's page would send: `POST` with the token header.
fn post(port: u16, token: &str, path: &str) -> (u16, String) {
    http(port, "POST", path, &[("X-Grove-Token", token)])
}

/// git's lock files in a repository (`index.lock`, a ref's `.lock`): one
/// left behind makes every later git that would write there refuse.
fn git_locks(ws: &std::path::Path) -> Vec<PathBuf> {
    let mut todo = vec![ws.join(".git")];
    let mut found = Vec::new();
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "lock") {
                found.push(path);
            }
        }
    }
    found
}

/// What a stopped merge must leave of the workspace: `main` where it was,
/// a clean checkout, no journal, no copies, no lock file of git's, nothing
/// of the board's git running.
fn assert_untouched(g: &Grove, primary: u32, main: &str) {
    assert_eq!(children_named(primary, "git"), Vec::<String>::new());
    wait_for("the stuck filter to be gone", DEADLINE, || {
        commands_with("sleep 607").is_empty().then_some(())
    });
    assert_eq!(git_stdout(&g.ws, &["rev-parse", "main"]), main);
    let status = ["status", "--porcelain", "--untracked-files=all"];
    assert_eq!(git_stdout(&g.ws, &status), "");
    assert_eq!(git_locks(&g.ws), Vec::<PathBuf>::new());
    let state: Vec<String> = std::fs::read_dir(g.ws.join(".grove"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("merge.") && n != "merge.lock")
        .collect();
    assert_eq!(state, Vec::<String>::new(), "a journal or copies are left");
}

/// The board's merge commits what the task left uncommitted in its
/// worktree (`git add -A`, which runs the repository's clean filters):
/// one that never ends is stopped at the deadline, with every git the
/// merge started, and the answer (504) says that nothing was merged and
/// where to look; nothing moved, no lock file of git's is left (git is
/// told to end before it is killed), and once the filter is gone the same
/// merge goes through.
#[test]
fn the_boards_merge_stops_at_its_deadline_and_leaves_the_workspace_as_it_was() {
    let mut g = board_repo(
        &[("GROVE_TEST_MERGE_WITHIN_MS", "1500")],
        &[(".gitattributes", "*.txt filter=stuck\n")],
    );
    git(&g.ws, &["config", "filter.stuck.clean", "sleep 607; cat"]);
    g.serve();
    let (primary, _) = g.wait_primary();
    let (port, token, _) = board_of(&g);
    let id = g.ok(&["spawn", "--worktree", "echo changed > a.txt"]);
    wait_status(&g, &id, "completed");
    let main = git_stdout(&g.ws, &["rev-parse", "main"]);

    let asked = std::time::Instant::now();
    let (status, text) = post(port, &token, &format!("/api/tasks/{id}/merge"));
    let took = asked.elapsed();
    assert_eq!(status, 504, "{text}");
    assert!(took < std::time::Duration::from_secs(15), "{took:?}");
    assert!(
        text.contains("did not end within")
            && text.contains("nothing was merged")
            && text.contains(&format!("`grove merge {id}` in a terminal")),
        "{text}"
    );
    assert_untouched(&g, primary, &main);

    git(&g.ws, &["config", "--unset", "filter.stuck.clean"]);
    let (status, text) = post(port, &token, &format!("/api/tasks/{id}/merge"));
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        json_body(&text)["merged"]["result"],
        "fast_forward",
        "{text}"
    );
    let merged = std::fs::read_to_string(g.ws.join("a.txt")).unwrap();
    assert_eq!(merged, "changed\n");
    let status = ["status", "--porcelain", "--untracked-files=all"];
    assert_eq!(git_stdout(&g.ws, &status), "");
}

/// A deadline that stops the move into the user's checkout itself: git
/// writes the files (here the smudge filter of the second never ends),
/// then its index. Stopped before the index, the files it had written are
/// put back from the copies kept before it began: checkout, index and
/// branch as they were, and the next merge goes through.
#[test]
fn a_board_merge_stopped_while_it_moves_the_checkout_puts_the_files_back() {
    let mut g = board_repo(
        &[("GROVE_TEST_MERGE_WITHIN_MS", "4000")],
        &[
            (".gitattributes", "*.txt filter=stuck\n"),
            ("a.txt", "old\n"),
        ],
    );
    g.serve();
    let (primary, _) = g.wait_primary();
    let (port, token, _) = board_of(&g);
    let task = "echo new > a.txt && echo b > b.txt && echo c > c.txt";
    let id = g.ok(&["spawn", "--worktree", task]);
    wait_status(&g, &id, "completed");
    // git checks out a.txt, then b.txt (which never ends), then c.txt.
    let smudge = "case %f in *b.txt) sleep 607;; esac; cat";
    git(&g.ws, &["config", "filter.stuck.smudge", smudge]);
    let main = git_stdout(&g.ws, &["rev-parse", "main"]);

    let (status, text) = post(port, &token, &format!("/api/tasks/{id}/merge"));
    assert_eq!(status, 504, "{text}");
    assert!(text.contains("and so are the files, put back"), "{text}");
    assert_eq!(
        std::fs::read_to_string(g.ws.join("a.txt")).unwrap(),
        "old\n"
    );
    assert!(!g.ws.join("b.txt").exists() && !g.ws.join("c.txt").exists());
    assert_untouched(&g, primary, &main);

    git(&g.ws, &["config", "--unset", "filter.stuck.smudge"]);
    let (status, text) = post(port, &token, &format!("/api/tasks/{id}/merge"));
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        json_body(&text)["merged"]["result"],
        "fast_forward",
        "{text}"
    );
    for (name, text) in [("a.txt", "new\n"), ("b.txt", "b\n"), ("c.txt", "c\n")] {
        assert_eq!(std::fs::read_to_string(g.ws.join(name)).unwrap(), text);
    }
}

/// The board's discard runs git too: `git worktree remove --force` runs no
/// clean filter, but every git reads the repository's configuration, which
/// may include a FIFO. Stopped at the deadline, the discard answers 504
/// and goes no further (the worktree's directory is not removed behind
/// git's back); once the configuration is whole again, a discard finishes.
#[test]
fn the_boards_discard_stops_at_its_deadline_and_a_later_one_finishes() {
    let mut g = board_repo(&[("GROVE_TEST_MERGE_WITHIN_MS", "1500")], &[]);
    g.serve();
    let (primary, _) = g.wait_primary();
    let (port, token, _) = board_of(&g);
    let id = g.ok(&["spawn", "--worktree", "echo changed > a.txt"]);
    wait_status(&g, &id, "completed");
    let tree = g.ws.join(".grove/worktrees").join(&id);
    assert!(tree.join("a.txt").exists());

    let config = g.ws.join(".git/config");
    let whole = std::fs::read(&config).unwrap();
    let fifo = g.dir.path().join("config-fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    git(&g.ws, &["config", "include.path", fifo.to_str().unwrap()]);
    // Whatever the outcome, a git waiting on the FIFO is let go.
    let _release = Release(fifo);

    let asked = std::time::Instant::now();
    let (status, text) = post(port, &token, &format!("/api/tasks/{id}/discard"));
    let took = asked.elapsed();
    assert!(
        took < std::time::Duration::from_secs(15),
        "the board's discard took {took:?} with a 1.5 s deadline (status {status}: {text})"
    );
    assert_eq!(status, 504, "{text}");
    assert!(
        text.contains(&format!("`grove discard {id}` in a terminal")),
        "{text}"
    );
    assert_eq!(children_named(primary, "git"), Vec::<String>::new());
    assert!(tree.join("a.txt").exists(), "removed behind git's back");

    std::fs::write(&config, whole).unwrap();
    let (status, text) = post(port, &token, &format!("/api/tasks/{id}/discard"));
    assert_eq!(status, 200, "{text}");
    assert!(!tree.exists());
    assert_eq!(git_stdout(&g.ws, &["branch", "--list", "grove/*"]), "");
    assert_eq!(git_locks(&g.ws), Vec::<PathBuf>::new());
}

/// The token is renewed when the board goes off and when it moves, so one
/// that leaked (an open tab's cookie, sent to whoever binds the freed
/// port) is worth nothing; the URL is given, and opened, only once our own
/// board answers on the port; the first visit's page never leads off the
/// board (`/\host` is `//host` to a browser).
#[test]
fn the_token_is_renewed_and_the_url_given_only_when_our_board_answers() {
    let mut g = Grove::new();
    let seen = fake_xdg_open(&mut g);
    g.serve();
    g.wait_primary();

    let (port, first, _) = web(&g);
    let (status, page) = http(port, "GET", &format!("/\\evil.example/?token={first}"), &[]);
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("url=/evil.example/\"") && !page.contains("/\\"),
        "the page stays on the board: {page}"
    );

    g.ok(&["web", "--off"]);
    let (same_port, second, _) = web(&g);
    assert_eq!(same_port, port);
    assert_ne!(first, second, "a new token after --off");
    let (status, _) = http(port, "GET", "/api/state", &[("X-Grove-Token", &first)]);
    assert_eq!(status, 401, "the old token is worth nothing");

    let free = std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = g.run(&["web", "--port", &free.to_string(), "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let (moved, third, _) = web(&g);
    assert_eq!(moved, free);
    assert_ne!(second, third, "a new token on a new port");

    // A port that answers, but not as our board: no URL, nothing opened.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let out = g.run(&["web", "--port", &taken.to_string(), "--open"]);
    let (stdout, stderr) = (stdout_of(&out), stderr_of(&out));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        !stdout.contains("token=") && stderr.contains("its URL is not given"),
        "{stdout}{stderr}"
    );
    assert!(!seen.exists(), "nothing was opened");
    drop(squatter);
}

/// `--off` while the config's `web = true` keeps the board on leaves its
/// token as it is: the board goes on with it, and `grove web` still finds
/// it answering.
#[test]
fn off_while_the_config_keeps_the_board_on_keeps_its_token() {
    let mut g = Grove::with_config("heartbeat_ms = 100\nweb = true\n");
    g.serve();
    g.wait_primary();
    let (port, token, _) = board_of(&g);
    let out = g.run(&["web", "--off"]);
    assert!(
        stdout_of(&out).contains("keeps it on"),
        "{}",
        stdout_of(&out)
    );
    let (same_port, same_token, _) = web(&g);
    assert_eq!((same_port, same_token), (port, token));
}

/// While no member runs, anyone may hold the board's port and serve a
/// page of their own on its origin to a tab left open, which could read
/// the board, token and all, once it is back: a board that starts cold
/// starts with a new token. One that a failover moves keeps its token,
/// and open tabs their login.
#[test]
fn a_board_started_cold_has_a_new_token_and_a_failover_keeps_it() {
    let mut g = Grove::with_config("heartbeat_ms = 100\nweb = true\n");
    let first = g.serve();
    g.wait_primary();
    let (port, old, _) = board_of(&g);
    g.members[first].signal(libc::SIGTERM);
    g.members[first]
        .wait_exit(DEADLINE)
        .expect("the member stops");
    g.serve();
    g.wait_primary();
    let token_file = g.ws.join(".grove/web.token");
    let new = wait_for("a new token, answered", DEADLINE, || {
        let t = std::fs::read_to_string(&token_file)
            .ok()?
            .trim()
            .to_string();
        if t == old {
            return None;
        }
        let (status, _) = http(port, "GET", "/api/state", &[("X-Grove-Token", &t)]);
        (status == 200).then_some(t)
    });
    let (status, _) = http(port, "GET", "/api/state", &[("X-Grove-Token", &old)]);
    assert_eq!(status, 401, "the old token still works");
    // A failover: the secondary heard the primary moments ago.
    g.serve();
    let (primary, epoch) = g.wait_primary();
    g.wait_secondaries_at(1, epoch);
    g.member_by_pid(primary).signal(libc::SIGKILL);
    g.wait_new_primary(primary, epoch);
    wait_for("the board back with the same token", DEADLINE, || {
        let (status, _) = http_if_up(port, &new)?;
        (status == 200).then_some(())
    });
    let kept = std::fs::read_to_string(&token_file).unwrap();
    assert_eq!(kept.trim(), new);
}

/// `http` when something listens on the port, `None` otherwise.
fn http_if_up(port: u16, token: &str) -> Option<(u16, String)> {
    std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    Some(http(port, "GET", "/api/state", &[("X-Grove-Token", token)]))
}
