//! A task's conclusion: what a delegated agent says it achieved, in a form
//! its parent can act on. The agent reports it as the last
//! `<grove:conclusion>{json}</grove:conclusion>` block of its output; a
//! block that does not parse is kept as `malformed`, and without one grove
//! makes one from how the run ended (`synthesized`).

use super::task::{FailureReason, TaskStatus};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConclusionStatus {
    Success,
    Partial,
    Failed,
    Blocked,
}

pub const CONCLUSION_STATUSES: &[ConclusionStatus] = &[
    ConclusionStatus::Success,
    ConclusionStatus::Partial,
    ConclusionStatus::Failed,
    ConclusionStatus::Blocked,
];

impl ConclusionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConclusionStatus::Success => "success",
            ConclusionStatus::Partial => "partial",
            ConclusionStatus::Failed => "failed",
            ConclusionStatus::Blocked => "blocked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        CONCLUSION_STATUSES
            .iter()
            .copied()
            .find(|c| c.as_str() == s)
    }
}

/// Where a conclusion came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConclusionSource {
    /// The agent's own block.
    Reported,
    /// The agent wrote a block that is not a conclusion (`error` says why);
    /// the status and summary are grove's, as for `synthesized`.
    Malformed,
    /// No block: made from the output's tail or how the run ended.
    Synthesized,
}

pub const CONCLUSION_SOURCES: &[ConclusionSource] = &[
    ConclusionSource::Reported,
    ConclusionSource::Malformed,
    ConclusionSource::Synthesized,
];

impl ConclusionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ConclusionSource::Reported => "reported",
            ConclusionSource::Malformed => "malformed",
            ConclusionSource::Synthesized => "synthesized",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conclusion {
    pub status: ConclusionStatus,
    pub summary: String,
    /// Files, branches, URLs the work produced.
    #[serde(default)]
    pub artifacts: Vec<String>,
    /// What is left to do, as the agent sees it.
    #[serde(default)]
    pub follow_up: Vec<String>,
    /// 0.0..=1.0, when the agent gave one.
    #[serde(default)]
    pub confidence: Option<f64>,
    pub source: ConclusionSource,
    /// Why a block was malformed.
    #[serde(default)]
    pub error: Option<String>,
    /// Goals: how much of the objective is done, 0 to 100.
    #[serde(default)]
    pub progress: Option<f64>,
    /// Goals: what the agent means to do next.
    #[serde(default)]
    pub next_step: Option<String>,
    /// Goals: why the agent cannot go on (with status blocked).
    #[serde(default)]
    pub blocked_reason: Option<String>,
}

/// The most of a conclusion's summary a task record keeps.
pub const MAX_SUMMARY_BYTES: usize = 32 * 1024;
/// The most artifacts or follow-ups kept, and the most of each.
pub const MAX_LIST_ITEMS: usize = 32;
pub const MAX_ITEM_BYTES: usize = 1024;
/// The most of any other text of a conclusion.
pub const MAX_NOTE_BYTES: usize = 4 * 1024;

/// Room kept for the note a cut ends with.
const CUT_NOTE_BYTES: usize = 32;

/// Cuts `text` to at most `max` bytes, the note saying how much was cut
/// included (at a character boundary). A text within `max` is left as it
/// is, so bounding what was bounded before changes nothing (every save of
/// a record bounds it again).
pub fn cut_text(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max.saturating_sub(CUT_NOTE_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = text.len() - end;
    text.truncate(end);
    text.push_str(&format!(" … ({cut} bytes cut)"));
}

impl Conclusion {
    /// This conclusion as a task record keeps it: every text bounded. A
    /// task's record travels whole in every event about it, and an event
    /// bigger than a frame could not be read by any follower; an agent's
    /// conclusion is whatever it wrote (a review found one of 1 MB).
    pub fn bounded(mut self) -> Conclusion {
        cut_text(&mut self.summary, MAX_SUMMARY_BYTES);
        for list in [&mut self.artifacts, &mut self.follow_up] {
            // The marker takes the last place: bounded again, the list is
            // as it was.
            if list.len() > MAX_LIST_ITEMS {
                let more = list.len() - (MAX_LIST_ITEMS - 1);
                list.truncate(MAX_LIST_ITEMS - 1);
                list.push(format!("… ({more} more left out)"));
            }
            for item in list.iter_mut() {
                cut_text(item, MAX_ITEM_BYTES);
            }
        }
        for note in [
            &mut self.error,
            &mut self.next_step,
            &mut self.blocked_reason,
        ]
        .into_iter()
        .flatten()
        {
            cut_text(note, MAX_NOTE_BYTES);
        }
        self
    }

    /// For a task that ended without a run to read (cancelled or failed
    /// before it started, its supervisor lost): made from its status alone.
    pub fn from_status(
        status: TaskStatus,
        reason: Option<FailureReason>,
        note: Option<&str>,
    ) -> Conclusion {
        let (status, summary) = match (status, reason) {
            (TaskStatus::Completed, _) => (ConclusionStatus::Success, "completed".to_string()),
            (TaskStatus::Cancelled, _) => (ConclusionStatus::Failed, "cancelled".to_string()),
            (_, Some(FailureReason::DependencyFailed)) => (
                ConclusionStatus::Blocked,
                "not run: a task it depends on failed".to_string(),
            ),
            (_, r) => (
                ConclusionStatus::Failed,
                format!("failed ({})", r.unwrap_or(FailureReason::ExitCode).as_str()),
            ),
        };
        let summary = match note {
            Some(n) if !n.is_empty() => format!("{summary}: {n}"),
            _ => summary,
        };
        Conclusion {
            status,
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
}

#[cfg(test)]
mod bound_tests {
    use super::*;

    #[test]
    fn bounding_twice_changes_nothing_and_cuts_say_how_much() {
        let mut t = "é".repeat(1000);
        cut_text(&mut t, 101);
        assert!(t.len() <= 101, "{}", t.len());
        assert!(t.ends_with("bytes cut)"), "{t}");
        let once = t.clone();
        cut_text(&mut t, 101);
        assert_eq!(t, once);
        let c = Conclusion {
            status: ConclusionStatus::Success,
            summary: "s".repeat(100_000),
            artifacts: vec!["a".into(); 1000],
            follow_up: Vec::new(),
            confidence: None,
            source: ConclusionSource::Reported,
            error: None,
            progress: None,
            next_step: None,
            blocked_reason: None,
        };
        let once = c.bounded();
        assert_eq!(once.artifacts.len(), MAX_LIST_ITEMS);
        assert_eq!(once.artifacts.last().unwrap(), "… (969 more left out)");
        assert_eq!(once.clone().bounded(), once);
    }
}
