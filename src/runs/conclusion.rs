//! Conclusions read from a run's output (see `protocol::Conclusion`): the
//! brief that asks an agent for one, the last `<grove:conclusion>` block of
//! its output, and one made from how the run ended when there is none.
//! Called by the shim when its run ends, so that the primary's store thread
//! never reads a log.

use crate::protocol::{Conclusion, ConclusionSource, ConclusionStatus, ExitOutcome};
use serde_json::Value;

pub const OPEN: &str = "<grove:conclusion>";
pub const CLOSE: &str = "</grove:conclusion>";

/// How much of a run's output is searched for the block (its end).
pub const TAIL_BYTES: u64 = 64 * 1024;

/// The largest block taken as a conclusion; a bigger one is malformed (it
/// travels in the run's exit report and in every event of its task).
pub const MAX_BLOCK: usize = 16 * 1024;

/// The longest summary grove makes up from an output's tail.
const SYNTH_SUMMARY: usize = 600;

/// The block the brief shows: never taken for the agent's own (a
/// transcript repeats the prompt).
const EXAMPLE: &str = "{\"status\": \"success|partial|failed|blocked\", \"summary\": \"what you did and found, in a few sentences\", \
\"artifacts\": [\"files, branches or URLs you produced\"], \"follow_up\": [\"what is left to do\"], \"confidence\": 0.9}";

/// What a delegated agent is told, after its prompt.
pub const BRIEF: &str = concat!(
    "\n\n---\nYou were delegated this task by another agent through grove. ",
    "When you are done, end your final message with one conclusion block in this form ",
    "(status one of success, partial, failed, blocked; confidence from 0 to 1):\n",
    "<grove:conclusion>",
    "{\"status\": \"success|partial|failed|blocked\", \"summary\": \"what you did and found, in a few sentences\", ",
    "\"artifacts\": [\"files, branches or URLs you produced\"], \"follow_up\": [\"what is left to do\"], \"confidence\": 0.9}",
    "</grove:conclusion>"
);

/// The run's conclusion from its output's tail: the last block, else one
/// made from the tail and how the run ended.
pub fn from_output(tail: &str, outcome: ExitOutcome, exit_code: Option<i32>) -> Conclusion {
    match last_block(tail) {
        Some(block) => parse_block(block).unwrap_or_else(|why| Conclusion {
            source: ConclusionSource::Malformed,
            error: Some(why),
            progress: None,
            next_step: None,
            blocked_reason: None,
            ..synthesized(tail, outcome, exit_code)
        }),
        None => synthesized(tail, outcome, exit_code),
    }
}

/// The text between the last opening tag and the closing tag after it,
/// the briefs' own examples (a delegation's, a goal's) left out.
fn last_block(text: &str) -> Option<&str> {
    let mut upto = text.len();
    loop {
        let start = text[..upto].rfind(OPEN)?;
        let rest = &text[start + OPEN.len()..];
        if let Some(end) = rest.find(CLOSE)
            && rest[..end] != *EXAMPLE
            && rest[..end] != *crate::protocol::GOAL_EXAMPLE
        {
            return Some(&rest[..end]);
        }
        upto = start;
    }
}

fn parse_block(block: &str) -> Result<Conclusion, String> {
    if block.len() > MAX_BLOCK {
        return Err(format!(
            "the block has {} bytes, more than {MAX_BLOCK}",
            block.len()
        ));
    }
    let v: Value =
        serde_json::from_str(block.trim()).map_err(|e| format!("the block is not JSON: {e}"))?;
    let status = v["status"]
        .as_str()
        .and_then(ConclusionStatus::parse)
        .ok_or("`status` must be one of success, partial, failed, blocked")?;
    let summary = v["summary"]
        .as_str()
        .filter(|s| !s.trim().is_empty())
        .ok_or("`summary` must be a non-empty string")?;
    let confidence = match &v["confidence"] {
        Value::Null => None,
        c => Some(
            c.as_f64()
                .filter(|c| (0.0..=1.0).contains(c))
                .ok_or("`confidence` must be a number from 0 to 1")?,
        ),
    };
    let progress = match &v["progress"] {
        Value::Null => None,
        p => Some(
            p.as_f64()
                .filter(|p| (0.0..=100.0).contains(p))
                .ok_or("`progress` must be a number from 0 to 100")?,
        ),
    };
    // A block may say that it is not an agent's report: `grove
    // delegate-run` passes on a conclusion grove made up in the other
    // workspace (with why, for a malformed one). An agent that says so of
    // its own block only lowers it: a made-up conclusion completes no goal.
    let (source, error) = match v["source"].as_str() {
        Some("synthesized") => (ConclusionSource::Synthesized, None),
        Some("malformed") => (
            ConclusionSource::Malformed,
            text(&v["error"], "error")?.or(Some("malformed".into())),
        ),
        _ => (ConclusionSource::Reported, None),
    };
    Ok(Conclusion {
        status,
        summary: summary.trim().to_string(),
        artifacts: strings(&v["artifacts"], "artifacts")?,
        follow_up: strings(&v["follow_up"], "follow_up")?,
        confidence,
        source,
        error,
        progress,
        next_step: text(&v["next_step"], "next_step")?,
        blocked_reason: text(&v["blocked_reason"], "blocked_reason")?,
    })
}

/// An optional string (blank counts as none).
fn text(v: &Value, name: &str) -> Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => Ok(Some(s.trim().to_string())),
        _ => Err(format!("`{name}` must be a string")),
    }
}

/// A list of strings; a lone string is a list of one.
fn strings(v: &Value, name: &str) -> Result<Vec<String>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| format!("`{name}` must be a list of strings")),
        _ => Err(format!("`{name}` must be a list of strings")),
    }
}

/// No block: success when the run succeeded, with the output's last lines
/// as the summary; failed otherwise, saying how it ended.
fn synthesized(tail: &str, outcome: ExitOutcome, exit_code: Option<i32>) -> Conclusion {
    let ok = matches!(
        (outcome, exit_code),
        (ExitOutcome::Exited, Some(0)) | (ExitOutcome::EndTurn, _)
    );
    let last = last_chars(tail.trim(), SYNTH_SUMMARY);
    let how = match (outcome, exit_code) {
        (ExitOutcome::Exited, Some(c)) => format!("exited with code {c}"),
        (other, _) => format!("ended: {}", outcome_name(other)),
    };
    let summary = match (ok, last.is_empty()) {
        (_, true) => format!("no output; {how}"),
        (true, false) => last,
        (false, false) => format!("{how}; last output: {last}"),
    };
    Conclusion {
        status: if ok {
            ConclusionStatus::Success
        } else {
            ConclusionStatus::Failed
        },
        summary,
        artifacts: Vec::new(),
        follow_up: Vec::new(),
        confidence: None,
        source: ConclusionSource::Synthesized,
        error: None,
        progress: None,
        next_step: None,
        blocked_reason: None,
    }
}

fn outcome_name(o: ExitOutcome) -> String {
    serde_json::to_value(o)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn last_chars(s: &str, n: usize) -> String {
    let count = s.chars().count();
    s.chars().skip(count.saturating_sub(n)).collect()
}

/// Reads what a run wrote to `log` after `from` (at most the last
/// [`TAIL_BYTES`]), as text.
pub fn read_tail(log: &std::path::Path, from: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(log) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(TAIL_BYTES)).min(len);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_ok() {
        let _ = f.take(TAIL_BYTES).read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_block_wins() {
        let out = "x <grove:conclusion>{\"status\":\"failed\",\"summary\":\"a\"}</grove:conclusion>\n\
                   <grove:conclusion>{\"status\":\"partial\",\"summary\":\"b\",\"artifacts\":\"f.rs\",\"confidence\":0.5}</grove:conclusion>";
        let c = from_output(out, ExitOutcome::Exited, Some(0));
        assert_eq!(c.status, ConclusionStatus::Partial);
        assert_eq!(c.summary, "b");
        assert_eq!(c.artifacts, vec!["f.rs"]);
        assert_eq!(c.confidence, Some(0.5));
        assert_eq!(c.source, ConclusionSource::Reported);
    }

    #[test]
    fn a_block_passed_on_keeps_its_source() {
        let block = |extra: &str| {
            let out = format!(
                "<grove:conclusion>{{\"status\":\"success\",\"summary\":\"s\"{extra}}}</grove:conclusion>"
            );
            from_output(&out, ExitOutcome::Exited, Some(0))
        };
        assert_eq!(
            block(",\"source\":\"synthesized\"").source,
            ConclusionSource::Synthesized
        );
        let m = block(",\"source\":\"malformed\",\"error\":\"not JSON\"");
        assert_eq!(
            (m.source, m.error.as_deref()),
            (ConclusionSource::Malformed, Some("not JSON"))
        );
        assert_eq!(
            block(",\"source\":\"trusted\"").source,
            ConclusionSource::Reported
        );
        assert_eq!(block("").source, ConclusionSource::Reported);
    }

    #[test]
    fn the_briefs_example_is_not_a_conclusion() {
        assert!(BRIEF.contains(EXAMPLE));
        let c = from_output(BRIEF, ExitOutcome::EndTurn, None);
        assert_eq!(c.source, ConclusionSource::Synthesized);
        let goal = crate::protocol::goal_brief(20, true);
        assert!(goal.contains(crate::protocol::GOAL_EXAMPLE));
        let c = from_output(&goal, ExitOutcome::EndTurn, None);
        assert_eq!(c.source, ConclusionSource::Synthesized);
    }

    #[test]
    fn a_bad_block_is_malformed_and_says_why() {
        let out = "<grove:conclusion>{\"status\":\"great\",\"summary\":\"b\"}</grove:conclusion>";
        let c = from_output(out, ExitOutcome::Exited, Some(3));
        assert_eq!(c.source, ConclusionSource::Malformed);
        assert_eq!(c.status, ConclusionStatus::Failed);
        assert!(c.error.unwrap().contains("status"));
    }

    #[test]
    fn without_a_block_the_tail_and_exit_speak() {
        let c = from_output("built 3 crates\n", ExitOutcome::Exited, Some(0));
        assert_eq!(
            (c.status, c.source, c.summary.as_str()),
            (
                ConclusionStatus::Success,
                ConclusionSource::Synthesized,
                "built 3 crates"
            )
        );
        let c = from_output("", ExitOutcome::Timeout, None);
        assert_eq!(c.status, ConclusionStatus::Failed);
        assert_eq!(c.summary, "no output; ended: timeout");
    }
}
