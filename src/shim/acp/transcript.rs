//! The readable transcript of a conversation, written to the task's log as
//! it happens (so `grove logs -f` follows it): the prompt, the agent's
//! text as it streams, its thoughts, tool calls with their diffs, plans.

use serde_json::Value;
use std::io::Write;

pub struct Transcript {
    log: std::fs::File,
    /// The kind of text chunk being streamed, to head a new section when
    /// it changes.
    streaming: Option<String>,
    /// The agent's message in the current turn (its end, at most
    /// `TURN_KEEP` bytes): a turn's conclusion block is read from it.
    turn_text: String,
}

/// How much of a turn's message is kept for its conclusion (the block is
/// at its end).
const TURN_KEEP: usize = crate::runs::conclusion::TAIL_BYTES as usize;

impl Transcript {
    pub fn new(log: std::fs::File) -> Transcript {
        Transcript {
            log,
            streaming: None,
            turn_text: String::new(),
        }
    }

    fn write(&mut self, text: &str) {
        // The log is a convenience; the events are the record.
        let _ = self.log.write_all(text.as_bytes());
    }

    fn end_stream(&mut self) {
        if self.streaming.take().is_some() {
            self.write("\n");
        }
    }

    /// A line of grove's own (`## ...`).
    pub fn note(&mut self, text: &str) {
        self.end_stream();
        self.write(&format!("## {text}\n"));
    }

    /// The agent's message so far in this turn (its end).
    pub fn turn_text(&self) -> &str {
        &self.turn_text
    }

    fn keep_turn_text(&mut self, text: &str) {
        self.turn_text.push_str(text);
        if self.turn_text.len() > 2 * TURN_KEEP {
            let mut from = self.turn_text.len() - TURN_KEEP;
            while !self.turn_text.is_char_boundary(from) {
                from += 1;
            }
            self.turn_text.drain(..from);
        }
    }

    pub fn prompt(&mut self, text: &str) {
        self.turn_text.clear();
        self.end_stream();
        self.write(&format!("## prompt\n{}\n", text.trim_end()));
    }

    pub fn update(&mut self, kind: &str, u: &Value) {
        match kind {
            "agent_message_chunk" | "agent_thought_chunk" | "user_message_chunk" => {
                let text = match u["content"]["text"].as_str() {
                    Some(t) => t.to_string(),
                    None => format!("[{}]", u["content"]["type"].as_str().unwrap_or("content")),
                };
                if self.streaming.as_deref() != Some(kind) {
                    self.end_stream();
                    let head = match kind {
                        "agent_message_chunk" => "agent",
                        "agent_thought_chunk" => "thought",
                        _ => "user",
                    };
                    self.write(&format!("## {head}\n"));
                    self.streaming = Some(kind.to_string());
                }
                self.write(&text);
                if kind == "agent_message_chunk" {
                    self.keep_turn_text(&text);
                }
            }
            "tool_call" | "tool_call_update" => self.tool(kind, u),
            "plan" => {
                self.end_stream();
                let mut out = String::from("## plan\n");
                for e in u["entries"].as_array().into_iter().flatten() {
                    out += &format!(
                        "- [{}] {}\n",
                        e["status"].as_str().unwrap_or("?"),
                        e["content"].as_str().unwrap_or("")
                    );
                }
                self.write(&out);
            }
            "current_mode_update" => {
                let mode = u["currentModeId"].as_str().unwrap_or("?").to_string();
                self.note(&format!("mode: {mode}"));
            }
            // Command lists, usage and the like are in the events.
            _ => {}
        }
    }

    fn tool(&mut self, kind: &str, u: &Value) {
        self.end_stream();
        let id = u["toolCallId"].as_str().unwrap_or("?");
        let mut out = if kind == "tool_call" {
            format!(
                "## tool {id} [{}] {} ({})\n",
                u["kind"].as_str().unwrap_or("other"),
                u["title"].as_str().unwrap_or(""),
                u["status"].as_str().unwrap_or("pending")
            )
        } else {
            let mut line = format!("## tool {id}");
            if let Some(t) = u["title"].as_str() {
                line += &format!(" {t}");
            }
            if let Some(s) = u["status"].as_str() {
                line += &format!(" ({s})");
            }
            line + "\n"
        };
        for l in u["locations"].as_array().into_iter().flatten() {
            out += &format!("   at {}\n", l["path"].as_str().unwrap_or("?"));
        }
        for c in u["content"].as_array().into_iter().flatten() {
            match c["type"].as_str() {
                Some("diff") => {
                    out += &format!("   diff {}\n", c["path"].as_str().unwrap_or("?"));
                    for l in c["oldText"].as_str().unwrap_or("").lines() {
                        out += &format!("   - {l}\n");
                    }
                    for l in c["newText"].as_str().unwrap_or("").lines() {
                        out += &format!("   + {l}\n");
                    }
                }
                Some("content") => {
                    if let Some(t) = c["content"]["text"].as_str() {
                        for l in t.lines() {
                            out += &format!("   | {l}\n");
                        }
                    }
                }
                _ => {}
            }
        }
        self.write(&out);
    }
}
