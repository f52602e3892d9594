//! Who may use the board. It listens on 127.0.0.1, which every local user
//! (and every web page in a local browser) can reach, so:
//!
//! - every request needs the workspace's token: from the URL `grove web`
//!   prints (`?token=`, then kept as an HttpOnly, SameSite=Strict cookie
//!   named after the port, since cookies do not tell ports apart), the
//!   cookie, or the `X-Grove-Token` header;
//! - the `Host` header must be `127.0.0.1:PORT` or `localhost:PORT`, so a
//!   DNS name rebound to 127.0.0.1 reaches nothing (its pages send their
//!   own host name);
//! - a request that changes anything (every POST) needs the token in the
//!   `X-Grove-Token` header, which a page of another origin cannot set
//!   without a CORS preflight the board never answers, and an `Origin`,
//!   when sent, must be the board's own;
//! - no CORS header is ever sent;
//! - and before any of that, a connection whose peer is another user is
//!   closed unread (`connections.rs`): browsers send the cookie to every
//!   port of 127.0.0.1, so another user's page can learn the token.

use super::api::Board;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

pub const TOKEN_HEADER: &str = "x-grove-token";

/// The middleware in front of every route.
pub async fn guard(State(board): State<Arc<Board>>, req: Request, next: Next) -> Response {
    if let Err((status, why)) = check(&board, &req) {
        // Closed after the refusal: a peer without the token gets nothing
        // more from this connection, and frees its slot
        // (`connections::MAX_CONNECTIONS`).
        let mut resp = (status, format!("{why}\n")).into_response();
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return harden(resp);
    }
    board.touch();
    // A first visit with `?token=`: keep it as a cookie and take it out of
    // the address bar. Not by a redirect: a visit that came from another
    // site or a file (`grove web --open`'s page, `cli/web.rs`) stays
    // cross-site through redirects, so the browser would not send the
    // SameSite=Strict cookie with the next request. A page that moves on
    // by itself (meta refresh; the CSP forbids inline scripts) makes that
    // request same-site.
    let from_query = query_token(req.uri().query()).is_some();
    if from_query && req.method() == Method::GET && !req.uri().path().starts_with("/api/") {
        // One leading slash: `//host` (or `/\host`, which browsers read
        // alike) would lead to another site.
        let path = super::escape_html(&format!(
            "/{}",
            req.uri().path().trim_start_matches(['/', '\\'])
        ));
        let page = format!(
            "<!doctype html>\n<meta charset=\"utf-8\">\n<meta http-equiv=\"refresh\" content=\"0; url={path}\">\n<title>grove board</title>\n<a href=\"{path}\">grove board</a>\n"
        );
        let mut resp = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response();
        if let Ok(v) = HeaderValue::from_str(&board.cookie()) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
        return harden(resp);
    }
    harden(next.run(req).await)
}

/// Why a request is refused, if it is: the status and a reason for people.
fn check(board: &Board, req: &Request) -> Result<(), (StatusCode, String)> {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let port = board.port;
    if host != format!("127.0.0.1:{port}") && host != format!("localhost:{port}") {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            &format!(
                "grove board: refused a request for host '{host}': only http://127.0.0.1:{port}/ or http://localhost:{port}/ are served (a page of another site cannot reach the board through its own name)"
            ),
        ));
    }
    // Every cookie of the name counts: a page of another port of
    // 127.0.0.1 can set one (cookies do not tell ports apart) with a
    // longer path, which browsers send first, and would lock the user out.
    let matches = |t: &String| same(t, &board.token);
    let given = header_token(headers).is_some_and(|t| matches(&t))
        || cookie_tokens(headers, &board.cookie_name()).any(|t| matches(&t))
        || query_token(req.uri().query()).is_some_and(|t| matches(&t));
    if !given {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "grove board: this needs the workspace's token; open the URL that `grove web` prints (http://127.0.0.1:PORT/?token=...)",
        ));
    }
    if req.method() != Method::GET
        && req.method() != Method::HEAD
        && !header_token(headers).is_some_and(|t| same(&t, &board.token))
    {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "grove board: a change needs the token in the X-Grove-Token header (the board's page sends it; a page of another site cannot)",
        ));
    }
    // The API is the board page's own: a request a browser marks as made
    // by another site's page, or another port's of this one (an `<img>`
    // or `<script>` sends no `Origin`, but does send the cookie), is not.
    // Programs (curl, the CLI) send no such header.
    if req.uri().path().starts_with("/api/")
        && let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && (site == "same-site" || site == "cross-site")
    {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            &format!("grove board: refused an API request made by another site's page ({site})"),
        ));
    }
    // Any method: a page of another port of 127.0.0.1 is sent the cookie
    // and could open event streams (replaying the whole log) it cannot
    // read. Browsers send `Origin` with every cross-origin request a page
    // makes; the board's own reads are same-origin, navigations carry none.
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok())
        && origin != format!("http://127.0.0.1:{port}")
        && origin != format!("http://localhost:{port}")
    {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            &format!("grove board: refused a request sent from another origin ({origin})"),
        ));
    }
    Ok(())
}

fn refuse(status: StatusCode, why: &str) -> (StatusCode, String) {
    (status, why.to_string())
}

/// Headers every answer carries: no framing (clickjacking), no referrer
/// (the first URL holds the token), scripts and styles only from the board.
fn harden(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn header_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn cookie_tokens<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = String> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn query_token(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| v.to_string())
}

/// Compares in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Board {
    pub fn cookie_name(&self) -> String {
        format!("grove_token_{}", self.port)
    }

    fn cookie(&self) -> String {
        format!(
            "{}={}; HttpOnly; SameSite=Strict; Path=/",
            self.cookie_name(),
            self.token
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_where_they_are_sent() {
        assert_eq!(query_token(Some("a=1&token=xyz")).as_deref(), Some("xyz"));
        assert_eq!(query_token(Some("tokens=1")), None);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("other=1; grove_token_80=abc"),
        );
        let all = |h: &HeaderMap, name: &str| cookie_tokens(h, name).collect::<Vec<_>>();
        assert_eq!(all(&h, "grove_token_80"), vec!["abc".to_string()]);
        assert!(all(&h, "grove_token_81").is_empty());
        // A planted cookie of the same name, sent first, hides nothing.
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("grove_token_80=planted; grove_token_80=abc"),
        );
        assert_eq!(all(&h, "grove_token_80"), vec!["planted", "abc"]);
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
    }
}
