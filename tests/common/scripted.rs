//! Helpers for tests of the scripted ACP agent on a `shared` engine
//! (`acp_shared_agent.rs`, `warm_reuse.rs`).

use super::{DEADLINE, Grove, message_text, updates, wait_for};

/// A workspace whose `scripted` engine is shared (the engine's table is
/// the last one of the config, so the line lands in it).
pub fn shared(settings: &str) -> Grove {
    let g = Grove::scripted_acp("ask", settings);
    let path = g.ws.join(".grove/grove.toml");
    let mut toml = std::fs::read_to_string(&path).unwrap();
    toml.push_str("shared = true\n");
    std::fs::write(&path, toml).unwrap();
    g
}

/// `grove spawn PROMPT -e scripted EXTRA...`: the new task's id.
pub fn spawn(g: &Grove, prompt: &str, extra: &[&str]) -> String {
    let mut args = vec!["spawn", prompt, "-e", "scripted"];
    args.extend_from_slice(extra);
    g.ok(&args)
}

/// The last turn's message, once it says something starting with `word`.
pub fn said(g: &Grove, id: &str, word: &str) -> String {
    wait_for(&format!("{id} to say {word}"), DEADLINE, || {
        let u = updates(g, id);
        let last_prompt = u.iter().rposition(|(k, _)| k == "prompt").unwrap_or(0);
        let text = message_text(&u[last_prompt..]);
        text.starts_with(word).then_some(text)
    })
}

/// The agent's pid, as the scripted agent says it (`pid`).
pub fn pid_of(g: &Grove, id: &str) -> u32 {
    said(g, id, "pid ")
        .trim_start_matches("pid ")
        .parse()
        .unwrap()
}
