//! What `grove run` shows of its task: stdout in the chosen format, a
//! spinner and notes on stderr.

use crate::paths::Workspace;
use crate::protocol::{GoalRecord, GoalStatus, TaskRecord, TaskStatus};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
    StreamJson,
}

/// How much of the agent's message and of a command's output the result
/// document keeps (their ends): the whole output stays in the task's log.
const RESULT_KEEP: usize = 64 * 1024;
/// One read of a command's log.
const LOG_READ: usize = 64 * 1024;

pub struct View {
    format: OutputFormat,
    quiet: bool,
    acp: bool,
    spinner: Spinner,
    /// Text: stdout's last character is not a newline.
    mid_line: bool,
    /// Tool calls by id, shown once each when they end.
    tools: BTreeMap<String, Tool>,
    message: Tail,
    output: Tail,
    /// Where the next read of a command's log starts.
    log_offset: u64,
    /// The ACP turn began (the shim sent the prompt): a failure after it is
    /// the agent's, not a failure to start.
    pub saw_prompt: bool,
    /// The goal's iteration last announced.
    goal_iteration: u32,
}

struct Tool {
    title: String,
    kind: String,
    status: String,
    shown: bool,
}

impl View {
    pub fn new(format: OutputFormat, quiet: bool, acp: bool) -> View {
        let spin = !quiet && std::io::stderr().is_terminal();
        View {
            format,
            quiet,
            acp,
            spinner: Spinner::new(spin),
            mid_line: false,
            tools: BTreeMap::new(),
            message: Tail::default(),
            output: Tail::default(),
            log_offset: 0,
            saw_prompt: false,
            goal_iteration: 1,
        }
    }

    pub fn spin(&mut self, what: &str) {
        self.spinner.set(what);
    }

    /// A note for the person watching, on stderr (none with --quiet).
    pub fn note(&mut self, line: &str) {
        if !self.quiet {
            self.spinner.println(line);
        }
    }

    pub fn started(&mut self, t: &TaskRecord) {
        self.note(&format!("grove: task {} ({})", t.id, t.spec.engine));
        // Not before: what autostart says goes to stderr on its own.
        self.spinner.show();
        self.status(t);
    }

    /// The task's status changed.
    pub fn status(&mut self, t: &TaskRecord) {
        if self.format == OutputFormat::StreamJson {
            self.json_line(json!({
                "type": "status",
                "task_id": t.id,
                "status": t.status.as_str(),
                "failure_reason": t.failure_reason.map(|r| r.as_str()),
                "exit_code": t.exit_code,
            }));
        }
        if t.status == TaskStatus::Waiting {
            self.note(&format!(
                "grove: the agent asks for permission; answer with `grove approve {0}` or `grove deny {0}`",
                t.id
            ));
        }
        self.spin(t.status.as_str());
    }

    /// One update of the ACP agent's session (`kind`, its ACP JSON).
    pub fn agent_update(&mut self, id: &str, kind: &str, acp: &str) {
        let update: Value = serde_json::from_str(acp).unwrap_or(Value::String(acp.into()));
        if self.format == OutputFormat::StreamJson {
            self.json_line(json!({
                "type": "agent_update", "task_id": id, "kind": kind, "update": update,
            }));
        }
        match kind {
            "prompt" => {
                self.saw_prompt = true;
                // A new turn (a follow-up, a goal's next iteration) starts
                // on a line of its own.
                if self.mid_line && self.format == OutputFormat::Text {
                    self.text("\n");
                }
            }
            "agent_message_chunk" => {
                let text = update["content"]["text"].as_str().unwrap_or_default();
                self.message.push(text);
                self.spin("writing");
                if self.format == OutputFormat::Text {
                    self.text(text);
                }
            }
            "agent_thought_chunk" => self.spin("thinking"),
            "tool_call" | "tool_call_update" => self.tool(&update),
            "note" => {
                let text = update["text"].as_str().unwrap_or_default().to_string();
                self.note(&format!("grove: {text}"));
            }
            _ => {}
        }
    }

    /// A tool call began or changed: one line when it ends.
    fn tool(&mut self, u: &Value) {
        let id = u["toolCallId"].as_str().unwrap_or("?").to_string();
        let t = self.tools.entry(id).or_insert_with(|| Tool {
            title: String::new(),
            kind: "other".into(),
            status: "pending".into(),
            shown: false,
        });
        let field = |name: &str| u[name].as_str().map(str::to_string);
        if let Some(v) = field("title") {
            t.title = v;
        }
        if let Some(v) = field("kind") {
            t.kind = v;
        }
        if let Some(v) = field("status") {
            t.status = v;
        }
        let line = tool_line(t);
        let ended = matches!(t.status.as_str(), "completed" | "failed") && !t.shown;
        if ended {
            t.shown = true;
        }
        self.spin(&line);
        if ended && self.format == OutputFormat::Text {
            self.line(&line);
        }
    }

    /// Reads what a command wrote to its log since the last read (all of
    /// it when `at_end`, else whole characters only). ACP tasks' logs are
    /// transcripts: their updates are shown instead.
    pub fn read_log(&mut self, ws: &Workspace, id: &str, at_end: bool) {
        if self.acp {
            return;
        }
        let path = crate::runs::RunFiles::log(ws, id);
        let Ok(mut log) = crate::runs::log::LogReader::open(&path, self.log_offset, LOG_READ)
        else {
            return; // not started yet
        };
        loop {
            let bytes = match log.peek() {
                Ok(b) if !b.is_empty() => b,
                _ => break,
            };
            let used = if at_end {
                bytes.len()
            } else {
                whole_chars(bytes)
            };
            if used == 0 {
                break;
            }
            let chunk = bytes[..used].to_vec();
            log.consume(used);
            self.command_output(id, &chunk);
        }
        self.log_offset = log.offset();
    }

    fn command_output(&mut self, id: &str, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        self.output.push(&text);
        match self.format {
            OutputFormat::Text => {
                self.spinner.hide();
                crate::output::stdout_task_bytes(bytes);
                self.after_text(bytes.last() == Some(&b'\n'));
            }
            OutputFormat::StreamJson => {
                self.json_line(json!({"type": "output", "task_id": id, "text": text}));
            }
            OutputFormat::Json => {}
        }
    }

    /// The task ended: the result (json, stream-json), the last newline
    /// (text), the spinner gone.
    pub fn finish(&mut self, t: &TaskRecord) {
        let result = self.result(t);
        self.finish_with(result);
    }

    /// A goal changed: a line of stream-json; a note when an iteration
    /// begins.
    pub fn goal(&mut self, g: &GoalRecord) {
        if self.format == OutputFormat::StreamJson {
            self.json_line(json!({"type": "goal", "goal": g}));
        }
        if g.status == GoalStatus::Running && g.iteration > self.goal_iteration {
            self.goal_iteration = g.iteration;
            if g.iteration > 1 {
                let progress = g
                    .progress
                    .map(|p| format!(", progress {p}%"))
                    .unwrap_or_default();
                self.note(&format!(
                    "grove: goal iteration {} of at most {}{progress}",
                    g.iteration, g.max_iterations
                ));
            }
        }
        self.spin(&format!("iteration {}", g.iteration));
    }

    /// The end, with `result` as the result document (and the last line of
    /// stream-json, with `"type": "result"`).
    pub fn finish_with(&mut self, mut result: Value) {
        let open: Vec<String> = self
            .tools
            .values()
            .filter(|t| !t.shown)
            .map(tool_line)
            .collect();
        if self.format == OutputFormat::Text {
            for line in open {
                self.line(&line);
            }
            // A half-written last line is ended for a terminal's prompt,
            // and in an agent's conversation (text grove lays out); into a
            // pipe or a file a command's output goes as it was written
            // (`printf abc` gives `abc`, a binary stays whole).
            if self.mid_line && (self.acp || std::io::stdout().is_terminal()) {
                self.text("\n");
            }
        }
        self.spinner.stop();
        match self.format {
            OutputFormat::Text => {}
            OutputFormat::StreamJson => {
                if let Some(doc) = result.as_object_mut() {
                    doc.insert("type".into(), json!("result"));
                }
                self.json_line(result)
            }
            OutputFormat::Json => crate::output::print_json(&result),
        }
    }

    /// The result document of `--output-format json` (and the last line
    /// of stream-json).
    fn result(&self, t: &TaskRecord) -> Value {
        let started = t.started_at.unwrap_or(t.created_at);
        let duration = t.finished_at.map(|end| end.saturating_sub(started));
        let failed = !matches!(t.status, TaskStatus::Completed);
        json!({
            "type": "result",
            "task_id": t.id,
            "status": t.status.as_str(),
            "exit_code": t.exit_code,
            "failure_reason": t.failure_reason.map(|r| r.as_str()),
            "error": if failed { t.progress_text.clone() } else { None },
            "duration_ms": duration,
            "engine": t.spec.engine,
            "model": t.spec.model,
            "message": self.acp.then(|| self.message.text.clone()),
            "output": (!self.acp).then(|| self.output.text.clone()),
            "truncated": self.message.cut || self.output.cut,
            // Recorded for a task that asked for one (--conclusion).
            "conclusion": t.conclusion,
        })
    }

    fn json_line(&mut self, v: Value) {
        self.spinner.hide();
        crate::output::stdout_bytes(format!("{v}\n").as_bytes());
        self.spinner.show();
    }

    /// Text on stdout, as it came (onto a terminal, without what would
    /// drive it: an agent's words and tool titles are its to choose).
    fn text(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        self.spinner.hide();
        crate::output::stdout_task_bytes(s.as_bytes());
        self.after_text(s.ends_with('\n'));
    }

    /// A whole line on stdout, on a line of its own.
    fn line(&mut self, s: &str) {
        let start = if self.mid_line { "\n" } else { "" };
        self.text(&format!("{start}{s}\n"));
    }

    /// The spinner comes back only at the start of a line: drawn in the
    /// middle of one, it would erase the text before it on the terminal.
    fn after_text(&mut self, ends_line: bool) {
        self.mid_line = !ends_line;
        if ends_line {
            self.spinner.show();
        }
    }
}

fn tool_line(t: &Tool) -> String {
    format!("[tool] {} ({}) {}", t.title, t.kind, t.status)
}

/// How much of `bytes` to show now: all of it, except an incomplete UTF-8
/// sequence at its end (the rest of it is not written yet).
fn whole_chars(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        _ => bytes.len(),
    }
}

/// The end of a growing text, at most `RESULT_KEEP` bytes of it.
#[derive(Default)]
struct Tail {
    text: String,
    /// Its beginning was dropped.
    cut: bool,
}

impl Tail {
    fn push(&mut self, s: &str) {
        self.text.push_str(s);
        if self.text.len() > RESULT_KEEP {
            let mut from = self.text.len() - RESULT_KEEP;
            while !self.text.is_char_boundary(from) {
                from += 1;
            }
            self.text.drain(..from);
            self.cut = true;
        }
    }
}

/// A spinner on stderr with what the task is doing, when stderr is a
/// terminal and not --quiet. Hidden while stdout (the same terminal, most
/// likely) is in the middle of a line.
struct Spinner {
    enabled: bool,
    /// stdout is a terminal: the spinner must step aside for its text.
    shares_terminal: bool,
    bar: Option<ProgressBar>,
    what: String,
    since: Instant,
}

impl Spinner {
    fn new(enabled: bool) -> Spinner {
        Spinner {
            enabled,
            shares_terminal: std::io::stdout().is_terminal(),
            bar: None,
            what: String::new(),
            since: Instant::now(),
        }
    }

    fn set(&mut self, what: &str) {
        self.what = what.chars().take(70).collect();
        if let Some(b) = &self.bar {
            b.set_message(self.what.clone());
        }
    }

    fn show(&mut self) {
        if !self.enabled || self.bar.is_some() {
            return;
        }
        let style = ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
            .with_style(style)
            .with_elapsed(self.since.elapsed())
            .with_message(self.what.clone());
        bar.enable_steady_tick(Duration::from_millis(100));
        self.bar = Some(bar);
    }

    fn hide(&mut self) {
        if self.shares_terminal
            && let Some(b) = self.bar.take()
        {
            b.finish_and_clear();
        }
    }

    /// Gone for good (the task ended).
    fn stop(&mut self) {
        self.enabled = false;
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    fn println(&mut self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => errln!("{line}"),
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop();
    }
}
