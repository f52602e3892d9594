//! Who gets each JSON-RPC message between one agent and the shims whose
//! sessions it serves. Pure bookkeeping, no I/O: every message comes in
//! as a line and leaves as [`Out`] deliveries that the host then writes.
//!
//! Ids are rewritten both ways, because every shim numbers its requests
//! from 0 and the agent numbers its own: a shim's request reaches the
//! agent under an id unique in the host, an agent's request reaches its
//! session's shim under another, and each answer goes back under the id
//! its asker used. Sessions belong to the shim whose `session/new` (or
//! `session/load`) opened them: their updates and the agent's requests
//! about them go to that shim only.

use serde_json::{Value, json};
use std::collections::HashMap;

/// A connected shim.
pub type ClientId = u64;

/// Where a line goes.
#[derive(Debug, PartialEq)]
pub enum Out {
    Agent(String),
    Client(ClientId, String),
}

/// A shim's request in flight at the agent.
struct Asked {
    client: ClientId,
    id: Value,
    method: String,
    /// The session a `session/load` reopens.
    session: Option<String>,
}

/// An agent's request in flight at a shim.
struct Asking {
    client: ClientId,
    id: Value,
    method: String,
}

#[derive(Default)]
pub struct Router {
    next_id: u64,
    /// The agent's `initialize` result, given to every shim as its own.
    init: Value,
    live: std::collections::HashSet<ClientId>,
    /// The shims of delegated tasks, counted against the warm cap.
    warm: std::collections::HashSet<ClientId>,
    sessions: HashMap<String, ClientId>,
    to_agent: HashMap<u64, Asked>,
    to_client: HashMap<u64, Asking>,
}

fn line(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn session_of(msg: &Value) -> Option<String> {
    msg["params"]["sessionId"].as_str().map(str::to_string)
}

fn error(id: &Value, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32603, "message": message}})
}

fn cancel(session: &str) -> Out {
    Out::Agent(line(&json!({
        "jsonrpc": "2.0", "method": "session/cancel", "params": {"sessionId": session}
    })))
}

impl Router {
    pub fn new(init: Value) -> Router {
        Router {
            init,
            ..Router::default()
        }
    }

    pub fn connected(&mut self, client: ClientId) {
        self.live.insert(client);
    }

    pub fn clients(&self) -> usize {
        self.live.len()
    }

    /// A delegated task's shim asks for a warm session: taken when fewer
    /// than `cap` delegated shims are connected, counted until it leaves.
    /// The answer (a grove line, not JSON-RPC) says which, with the count
    /// before this one; a refused shim is then disconnected by the host.
    pub fn warm(&mut self, client: ClientId, cap: u64) -> (bool, String) {
        let sessions = self.warm.len();
        let admitted = self.live.contains(&client) && (sessions as u64) < cap;
        if admitted {
            self.warm.insert(client);
        }
        let answer = json!({"grove": "warm", "admitted": admitted, "sessions": sessions});
        (admitted, line(&answer))
    }

    #[cfg(test)]
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    fn fresh(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A line from a shim. Lines that are not JSON-RPC are dropped: the
    /// shim's own ACP connection never writes one.
    pub fn client_line(&mut self, client: ClientId, text: &str) -> Vec<Out> {
        let Ok(mut msg) = serde_json::from_str::<Value>(text) else {
            return vec![];
        };
        let method = msg["method"].as_str().map(str::to_string);
        let id = msg.get("id").cloned();
        match (method, id) {
            (Some(m), Some(id)) if m == "initialize" => {
                let reply = json!({"jsonrpc": "2.0", "id": id, "result": self.init});
                vec![Out::Client(client, line(&reply))]
            }
            (Some(method), Some(id)) => {
                let session = session_of(&msg);
                // A shim speaks only for its own sessions.
                if let Some(s) = &session
                    && method != "session/load"
                    && self.sessions.get(s) != Some(&client)
                {
                    let e = error(&id, &format!("session {s} is not this connection's"));
                    return vec![Out::Client(client, line(&e))];
                }
                let host_id = self.fresh();
                msg["id"] = json!(host_id);
                let session = (method == "session/load").then_some(session).flatten();
                self.to_agent.insert(
                    host_id,
                    Asked {
                        client,
                        id,
                        method,
                        session,
                    },
                );
                vec![Out::Agent(line(&msg))]
            }
            (Some(_), None) => match session_of(&msg) {
                Some(s) if self.sessions.get(&s) != Some(&client) => vec![],
                _ => vec![Out::Agent(text.to_string())],
            },
            (None, Some(id)) => {
                let Some(host_id) = id.as_u64() else {
                    return vec![];
                };
                match self.to_client.get(&host_id) {
                    Some(a) if a.client == client => {
                        let a = self.to_client.remove(&host_id).expect("present");
                        msg["id"] = a.id;
                        vec![Out::Agent(line(&msg))]
                    }
                    _ => vec![],
                }
            }
            (None, None) => vec![],
        }
    }

    /// A line from the agent.
    pub fn agent_line(&mut self, text: &str) -> Vec<Out> {
        let Ok(mut msg) = serde_json::from_str::<Value>(text) else {
            return vec![];
        };
        let method = msg["method"].as_str().map(str::to_string);
        let id = msg.get("id").cloned();
        match (method, id) {
            (Some(method), Some(id)) => {
                let owner = session_of(&msg).and_then(|s| self.sessions.get(&s).copied());
                let Some(client) = owner else {
                    let e = error(&id, &format!("no task holds the session of this {method}"));
                    return vec![Out::Agent(line(&e))];
                };
                let host_id = self.fresh();
                msg["id"] = json!(host_id);
                self.to_client
                    .insert(host_id, Asking { client, id, method });
                vec![Out::Client(client, line(&msg))]
            }
            (Some(_), None) => {
                match session_of(&msg).and_then(|s| self.sessions.get(&s).copied()) {
                    Some(client) => vec![Out::Client(client, text.to_string())],
                    None => vec![],
                }
            }
            (None, Some(id)) => self.answer(&mut msg, &id),
            (None, None) => vec![],
        }
    }

    /// The agent's answer to a shim's request: back to it under its own
    /// id; a new or loaded session becomes that shim's.
    fn answer(&mut self, msg: &mut Value, id: &Value) -> Vec<Out> {
        let Some(asked) = id.as_u64().and_then(|h| self.to_agent.remove(&h)) else {
            return vec![];
        };
        let opened = match asked.method.as_str() {
            "session/new" => msg["result"]["sessionId"].as_str().map(str::to_string),
            "session/load" if msg.get("result").is_some() => asked.session.clone(),
            _ => None,
        };
        let live = self.live.contains(&asked.client);
        let mut out = Vec::new();
        if let Some(s) = opened {
            if live {
                self.sessions.insert(s, asked.client);
            } else {
                // Its shim left while the session was being opened.
                out.push(cancel(&s));
            }
        }
        if live {
            msg["id"] = asked.id;
            out.push(Out::Client(asked.client, line(msg)));
        }
        out
    }

    /// A shim disconnected (its task ended, was cancelled, or the shim
    /// died): its sessions are cancelled and forgotten, and the agent's
    /// requests it left unanswered are answered for it.
    pub fn gone(&mut self, client: ClientId) -> Vec<Out> {
        self.live.remove(&client);
        self.warm.remove(&client);
        let mut out = Vec::new();
        let mut mine: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, c)| **c == client)
            .map(|(s, _)| s.clone())
            .collect();
        mine.sort();
        for s in mine {
            self.sessions.remove(&s);
            out.push(cancel(&s));
        }
        let mut unanswered: Vec<u64> = self
            .to_client
            .iter()
            .filter(|(_, a)| a.client == client)
            .map(|(h, _)| *h)
            .collect();
        unanswered.sort();
        for h in unanswered {
            let a = self.to_client.remove(&h).expect("present");
            let reply = if a.method == "session/request_permission" {
                json!({"jsonrpc": "2.0", "id": a.id, "result": {"outcome": {"outcome": "cancelled"}}})
            } else {
                error(&a.id, "the task that held this session ended")
            };
            out.push(Out::Agent(line(&reply)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(o: &Out) -> (Option<ClientId>, Value) {
        match o {
            Out::Agent(l) => (None, serde_json::from_str(l).unwrap()),
            Out::Client(c, l) => (Some(*c), serde_json::from_str(l).unwrap()),
        }
    }

    #[test]
    fn two_clients_share_one_agent_each_with_its_own_sessions_and_ids() {
        let mut r = Router::new(json!({"protocolVersion": 1}));
        r.connected(1);
        r.connected(2);
        // initialize is answered from the cache, never sent to the agent.
        let o = r.client_line(
            1,
            r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}"#,
        );
        assert_eq!(
            parse(&o[0]),
            (
                Some(1),
                json!({"jsonrpc":"2.0","id":0,"result":{"protocolVersion":1}})
            )
        );
        // Both ask session/new with the same id 1.
        let a = r.client_line(
            1,
            r#"{"jsonrpc":"2.0","id":1,"method":"session/new","params":{}}"#,
        );
        let b = r.client_line(
            2,
            r#"{"jsonrpc":"2.0","id":1,"method":"session/new","params":{}}"#,
        );
        let (ha, hb) = (parse(&a[0]).1["id"].clone(), parse(&b[0]).1["id"].clone());
        assert_ne!(ha, hb);
        let o = r.agent_line(&format!(
            r#"{{"jsonrpc":"2.0","id":{hb},"result":{{"sessionId":"s1"}}}}"#
        ));
        assert_eq!(
            parse(&o[0]),
            (
                Some(2),
                json!({"jsonrpc":"2.0","id":1,"result":{"sessionId":"s1"}})
            )
        );
        let o = r.agent_line(&format!(
            r#"{{"jsonrpc":"2.0","id":{ha},"result":{{"sessionId":"s2"}}}}"#
        ));
        assert_eq!(parse(&o[0]).0, Some(1));
        // Updates go to the session's owner only.
        let o = r.agent_line(
            r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1"}}"#,
        );
        assert_eq!(parse(&o[0]).0, Some(2));
        // The agent's request reaches the owner under a host id, and the
        // answer returns under the agent's id.
        let o = r.agent_line(
            r#"{"jsonrpc":"2.0","id":7,"method":"fs/read_text_file","params":{"sessionId":"s2"}}"#,
        );
        let (to, req) = parse(&o[0]);
        assert_eq!(to, Some(1));
        let h = req["id"].clone();
        // Another client cannot answer it.
        assert!(
            r.client_line(2, &format!(r#"{{"jsonrpc":"2.0","id":{h},"result":{{}}}}"#))
                .is_empty()
        );
        let o = r.client_line(
            1,
            &format!(r#"{{"jsonrpc":"2.0","id":{h},"result":{{"content":"x"}}}}"#),
        );
        assert_eq!(parse(&o[0]).1["id"], 7);
        // A client cannot prompt or cancel another's session.
        let o = r.client_line(
            1,
            r#"{"jsonrpc":"2.0","id":3,"method":"session/prompt","params":{"sessionId":"s1"}}"#,
        );
        assert_eq!(parse(&o[0]).0, Some(1));
        assert!(parse(&o[0]).1.get("error").is_some());
        assert!(
            r.client_line(
                1,
                r#"{"jsonrpc":"2.0","method":"session/cancel","params":{"sessionId":"s1"}}"#
            )
            .is_empty()
        );
    }

    #[test]
    fn warm_sessions_are_capped_and_a_leaving_shim_frees_its_place() {
        let mut r = Router::new(json!({}));
        for c in 1..=3 {
            r.connected(c);
        }
        assert!(r.warm(1, 2).0);
        assert!(r.warm(2, 2).0);
        let (admitted, answer) = r.warm(3, 2);
        assert!(!admitted);
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(
            answer,
            json!({"grove": "warm", "admitted": false, "sessions": 2})
        );
        r.gone(1);
        assert!(r.warm(3, 2).0);
        // A cap of 0 admits nobody.
        r.connected(4);
        assert!(!r.warm(4, 0).0);
    }

    #[test]
    fn a_client_that_leaves_has_its_sessions_cancelled_and_its_requests_answered() {
        let mut r = Router::new(json!({}));
        r.connected(1);
        let a = r.client_line(
            1,
            r#"{"jsonrpc":"2.0","id":1,"method":"session/new","params":{}}"#,
        );
        let h = parse(&a[0]).1["id"].clone();
        r.agent_line(&format!(
            r#"{{"jsonrpc":"2.0","id":{h},"result":{{"sessionId":"s1"}}}}"#
        ));
        r.agent_line(r#"{"jsonrpc":"2.0","id":9,"method":"session/request_permission","params":{"sessionId":"s1"}}"#);
        let o = r.gone(1);
        assert_eq!(
            parse(&o[0]),
            (
                None,
                json!({"jsonrpc":"2.0","method":"session/cancel","params":{"sessionId":"s1"}})
            )
        );
        assert_eq!(
            parse(&o[1]).1,
            json!({"jsonrpc":"2.0","id":9,"result":{"outcome":{"outcome":"cancelled"}}})
        );
        assert_eq!((r.sessions(), r.clients()), (0, 0));
        // A session opened after its client left is cancelled at once.
        r.connected(2);
        let a = r.client_line(
            2,
            r#"{"jsonrpc":"2.0","id":1,"method":"session/new","params":{}}"#,
        );
        let h = parse(&a[0]).1["id"].clone();
        r.gone(2);
        let o = r.agent_line(&format!(
            r#"{{"jsonrpc":"2.0","id":{h},"result":{{"sessionId":"s2"}}}}"#
        ));
        assert_eq!(o.len(), 1);
        assert_eq!(parse(&o[0]).1["method"], "session/cancel");
    }
}
