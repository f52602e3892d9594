//! Live views: progress bars (indicatif) on a terminal, plain lines when
//! stdout/stderr is not a TTY (logs, CI, pipes).

use crate::protocol::TaskRecord;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;

pub struct TaskBars {
    multi: Option<MultiProgress>,
    bars: HashMap<String, ProgressBar>,
    last_line: HashMap<String, String>,
}

impl TaskBars {
    pub fn new() -> TaskBars {
        let multi = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        TaskBars {
            multi,
            bars: HashMap::new(),
            last_line: HashMap::new(),
        }
    }

    /// Shows the task's state: a bar on a terminal, a line on change otherwise.
    pub fn update(&mut self, t: &TaskRecord) {
        let short = &t.id[..12.min(t.id.len())];
        let pct = t.progress_pct.unwrap_or(0) as u64;
        let text = t.progress_text.clone().unwrap_or_default();
        let state = match (t.status.is_terminal(), t.exit_code) {
            (true, Some(c)) => format!("{} (exit {c})", t.status.as_str()),
            _ => t.status.as_str().to_string(),
        };
        let Some(multi) = &self.multi else {
            let line = format!("{short} {state} {pct}% {text}");
            if self.last_line.get(&t.id) != Some(&line) {
                errln!("{line}");
                self.last_line.insert(t.id.clone(), line);
            }
            return;
        };
        let bar = self.bars.entry(t.id.clone()).or_insert_with(|| {
            let b = multi.add(ProgressBar::new(100));
            let style =
                ProgressStyle::with_template("{prefix} [{bar:30.cyan/blue}] {pos:>3}% {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
            b.set_style(style.progress_chars("=> "));
            b.set_prefix(short.to_string());
            b
        });
        bar.set_position(if t.status == crate::protocol::TaskStatus::Completed {
            100
        } else {
            pct
        });
        bar.set_message(format!("{state} {text}"));
        if t.status.is_terminal() {
            bar.finish();
        }
    }

    /// Removes bars of tasks that are no longer shown.
    pub fn retain(&mut self, keep: &[String]) {
        self.bars.retain(|id, bar| {
            let k = keep.contains(id);
            if !k {
                bar.finish_and_clear();
            }
            k
        });
    }

    /// Prints a header line above the bars (or as a plain line).
    pub fn println(&self, line: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(line);
            }
            None => errln!("{line}"),
        }
    }
}
