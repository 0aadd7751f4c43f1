//! Build progress (DESIGN §4): a live per-step display on a terminal (indicatif), plain
//! lines otherwise, JSON lines with `--progress json`, or nothing.
//!
//! The solver reports step events through [`Progress::step`] (after [`Progress::plan`]
//! and [`Progress::describe`]), each export through [`Progress::export`], and ends with
//! [`Progress::summary`], an optional [`Progress::warn`] and [`Progress::finish`].
//! Plugins' task events arrive through the [`ProgressSink`] implementation and become
//! `progress` events of the step they belong to; [`Unit`] says how their numbers are
//! shown.
//!
//! The live display works like buildx's: running steps (`#N [name] description`,
//! elapsed time) with their task bars and the last lines of their output stay at the
//! bottom under a `[+] Building` header; a finished step is printed above it for good.

use std::collections::{HashMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use crate::job::{ProgressSink, ProgressUpdate};

/// How progress is shown (`--progress`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProgressMode {
    /// `tty` when stderr is a terminal, else `plain`.
    #[default]
    Auto,
    /// A live display.
    Tty,
    /// One line per event.
    Plain,
    /// One JSON object per line.
    Json,
    /// Nothing.
    Quiet,
}

impl std::str::FromStr for ProgressMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => Self::Auto,
            "tty" => Self::Tty,
            "plain" => Self::Plain,
            "json" => Self::Json,
            "quiet" => Self::Quiet,
            other => {
                return Err(format!(
                    "unknown progress mode {other:?} (expected auto, tty, plain, json or quiet)"
                ))
            }
        })
    }
}

/// What happened to a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepEvent {
    /// Work on the step began.
    Start,
    /// The step's result came from the cache.
    Cached,
    /// A task inside the step started, moved on or finished.
    Progress {
        /// The task (a download, a checkout).
        task: String,
        /// What happened to the task: started, moved on, or finished.
        kind: TaskKind,
        /// Units done.
        current: u64,
        /// Units in all (0: unknown).
        total: u64,
    },
    /// A line of a run step's output.
    Log(String),
    /// The step finished.
    Done,
    /// The step failed.
    Error(String),
}

/// What a [`StepEvent::Progress`] says about its task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    /// The task started.
    Start,
    /// The task moved on.
    Update,
    /// The task finished (see the event's counts; a failure is in its task text).
    Finish,
}

impl TaskKind {
    fn name(self) -> &'static str {
        match self {
            TaskKind::Start => "start",
            TaskKind::Update => "update",
            TaskKind::Finish => "finish",
        }
    }
}

impl StepEvent {
    fn name(&self) -> &'static str {
        match self {
            StepEvent::Start => "start",
            StepEvent::Cached => "cached",
            StepEvent::Progress { .. } => "progress",
            StepEvent::Log(_) => "log",
            StepEvent::Done => "done",
            StepEvent::Error(_) => "error",
        }
    }
}

/// What the numbers of a task count.
///
/// Plugins report a task's name and two numbers; the ABI carries no unit. The rule,
/// applied to the task's name: a name that mentions files, entries, objects or items
/// counts those; otherwise a name whose first word is a transfer verb of the standard
/// plugins (`GET`, `HEAD`, `download`, `pull`, `push`, `upload`, `unpack`) counts bytes;
/// anything else (the local plugin's `transferring NAME`, git's `fetch` and `checkout`,
/// a third party's task) is a count, so a count is never shown as bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Bytes: shown with binary units and a rate.
    Bytes,
    /// Items (files, entries, objects): shown as plain numbers.
    Count,
}

impl Unit {
    /// The unit of a task named `task` (see the rule on [`Unit`]).
    pub fn of_task(task: &str) -> Unit {
        let lower = task.to_ascii_lowercase();
        // Words of the name itself: a URL or a path may say anything.
        let mut words = lower
            .split_whitespace()
            .filter(|w| !w.contains(['/', ':']))
            .map(|w| w.trim_matches(|c: char| !c.is_ascii_alphanumeric()));
        let counted = ["file", "files", "entries", "objects", "items"];
        if words.clone().any(|w| counted.contains(&w)) {
            return Unit::Count;
        }
        match words.next().unwrap_or_default() {
            "get" | "head" | "download" | "pull" | "push" | "upload" | "unpack" => Unit::Bytes,
            _ => Unit::Count,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Unit::Bytes => "bytes",
            Unit::Count => "count",
        }
    }

    /// `current` (of `total`, when known) in this unit.
    fn amount(self, current: u64, total: u64) -> String {
        match (self, total) {
            (Unit::Bytes, 0) => human(current),
            (Unit::Bytes, t) => format!("{} / {}", human(current), human(t)),
            (Unit::Count, 0) => current.to_string(),
            (Unit::Count, t) => format!("{current}/{t}"),
        }
    }
}

/// The longest step description the live display shows (in characters).
const DESC_CHARS: usize = 48;

/// How many output lines of a running step the live display keeps under it.
const LOG_TAIL: usize = 6;

/// One task of a step, as last reported.
struct Task {
    name: String,
    unit: Unit,
    began: Instant,
    current: u64,
    total: u64,
    /// Set once the task finished: how long it took.
    took: Option<Duration>,
    bar: Option<ProgressBar>,
    /// The template `bar` is drawn with.
    template: &'static str,
}

/// One step (or export) of the display.
struct StepState {
    /// `#N`: the order in which steps first showed up.
    num: usize,
    /// The first event's time: a step's time includes its source transfer.
    began: Instant,
    /// Shown after the name in the live display (`local://context`, `RUN make`).
    desc: String,
    /// An export rather than a step of the definition.
    export: bool,
    /// Plain mode: the `=> step` header was written.
    header_shown: bool,
    ended: bool,
    tasks: Vec<Task>,
    tail: VecDeque<String>,
    bar: Option<ProgressBar>,
    log_bars: Vec<ProgressBar>,
}

impl StepState {
    /// The label in the live display: `#3 [app] copy, mkdir` or `#5 exporting to …`.
    fn label(&self, step: &str) -> String {
        if self.export {
            format!("#{} {}", self.num, self.desc)
        } else if self.desc.is_empty() {
            format!("#{} [{step}]", self.num)
        } else {
            format!("#{} [{step}] {}", self.num, self.desc)
        }
    }

    fn last_bar(&self) -> Option<&ProgressBar> {
        self.log_bars
            .last()
            .or_else(|| self.tasks.iter().rev().find_map(|t| t.bar.as_ref()))
            .or(self.bar.as_ref())
    }

    fn last_task_bar(&self) -> Option<&ProgressBar> {
        self.tasks
            .iter()
            .rev()
            .find_map(|t| t.bar.as_ref())
            .or(self.bar.as_ref())
    }

    /// Removes every bar of this step from the live display.
    fn clear_bars(&mut self, multi: &MultiProgress) {
        let bars = self
            .bar
            .take()
            .into_iter()
            .chain(self.tasks.iter_mut().filter_map(|t| t.bar.take()))
            .chain(self.log_bars.drain(..));
        for b in bars {
            b.finish_and_clear();
            multi.remove(&b);
        }
    }
}

enum Out {
    Quiet,
    Plain(Box<dyn Write + Send>),
    Json(Box<dyn Write + Send>),
    Tty {
        multi: MultiProgress,
        /// `[+] Building 1.2s (3/5)`, at the top of the live area; made with the
        /// first event, so a build that fails before any step shows nothing.
        header: Option<ProgressBar>,
    },
}

struct State {
    out: Out,
    began: Instant,
    steps: HashMap<String, StepState>,
    /// Descriptions given before a step's first event.
    descs: HashMap<String, String>,
    next_num: usize,
    /// Steps and exports the build will show (0: unknown).
    planned: usize,
    ended: usize,
    cached: usize,
    failed: usize,
    exports: usize,
    /// The closing line was written.
    closed: bool,
}

/// How a build ended, for [`Progress::summary`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every step and export finished.
    Finished,
    /// A step or an export failed.
    Failed,
}

/// The progress display of one build. Thread-safe; cheap to share in an `Arc`.
pub struct Progress {
    state: Mutex<State>,
}

impl Progress {
    /// A display on stderr in `mode` (`Auto` picks `Tty` on a terminal). `Tty` without
    /// a terminal falls back to plain lines, with a note saying so.
    pub fn stderr(mode: ProgressMode) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let mode = match mode {
            ProgressMode::Auto if terminal => ProgressMode::Tty,
            ProgressMode::Auto => ProgressMode::Plain,
            ProgressMode::Tty if !terminal => {
                eprintln!("note: --progress tty: stderr is not a terminal, showing plain progress");
                ProgressMode::Plain
            }
            m => m,
        };
        let out = match mode {
            ProgressMode::Tty => Out::Tty {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                header: None,
            },
            ProgressMode::Quiet => Out::Quiet,
            ProgressMode::Json => Out::Json(Box::new(std::io::stderr())),
            _ => Out::Plain(Box::new(std::io::stderr())),
        };
        Self::with_out(out)
    }

    /// Line output (`json` or plain) into `w`: for tests and embedding.
    pub fn to_writer(json: bool, w: Box<dyn Write + Send>) -> Self {
        Self::with_out(if json { Out::Json(w) } else { Out::Plain(w) })
    }

    /// No output.
    pub fn quiet() -> Self {
        Self::with_out(Out::Quiet)
    }

    fn with_out(out: Out) -> Self {
        Self {
            state: Mutex::new(State {
                out,
                began: Instant::now(),
                steps: HashMap::new(),
                descs: HashMap::new(),
                next_num: 1,
                planned: 0,
                ended: 0,
                cached: 0,
                failed: 0,
                exports: 0,
                closed: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Says how many steps and exports the build will show (the live header's `(3/5)`).
    pub fn plan(&self, count: usize) {
        self.lock().planned = count;
    }

    /// Gives `step` a description for the live display (`local://context`, `RUN make`).
    pub fn describe(&self, step: &str, desc: &str) {
        let mut desc = crate::text::one_line(desc);
        if desc.chars().count() > DESC_CHARS {
            desc = desc.chars().take(DESC_CHARS - 1).collect::<String>() + "…";
        }
        let mut st = self.lock();
        match st.steps.get_mut(step) {
            Some(s) => s.desc = desc,
            None => {
                st.descs.insert(step.to_string(), desc);
            }
        }
    }

    /// Reports `event` for `step` (a step name or a source identifier).
    pub fn step(&self, step: &str, event: StepEvent) {
        self.report(step, event, false)
    }

    /// Reports `event` for the export described by `what` (`exporting to local
    /// directory /out`): numbered like a step, but not a step of the definition, so
    /// JSON events name it under `export` instead of `step`.
    pub fn export(&self, what: &str, event: StepEvent) {
        self.report(what, event, true)
    }

    fn report(&self, step: &str, event: StepEvent, export: bool) {
        // Step names, identifiers, task names and messages come from input and from
        // the network: every mode shows them shortened, and the text modes escaped
        // (JSON escapes control characters itself).
        let shown_step = crate::text::one_line(step);
        let event = match event {
            StepEvent::Progress {
                task,
                kind,
                current,
                total,
            } => StepEvent::Progress {
                task: crate::text::shorten_words(&task).into_owned(),
                kind,
                current,
                total,
            },
            StepEvent::Error(m) => StepEvent::Error(crate::text::shorten_words(&m).into_owned()),
            e => e,
        };
        let mut guard = self.lock();
        let st = &mut *guard;
        if !st.steps.contains_key(step) {
            let desc = if export {
                shown_step.clone()
            } else {
                st.descs.remove(step).unwrap_or_default()
            };
            st.steps.insert(
                step.to_string(),
                StepState {
                    num: st.next_num,
                    began: Instant::now(),
                    desc,
                    export,
                    header_shown: false,
                    ended: false,
                    tasks: Vec::new(),
                    tail: VecDeque::new(),
                    bar: None,
                    log_bars: Vec::new(),
                },
            );
            st.next_num += 1;
        }
        let s = st.steps.get_mut(step).expect("inserted above");
        let elapsed = s.began.elapsed();

        // The model: tasks, their final counts, the log tail, the tallies.
        let mut event = event;
        let mut unit = Unit::Count;
        let mut task_index = None;
        if let StepEvent::Progress {
            task,
            kind,
            current,
            total,
        } = &mut event
        {
            let i = match s
                .tasks
                .iter()
                .rposition(|t| t.name == *task && t.took.is_none())
            {
                Some(i) if *kind != TaskKind::Start => i,
                _ => {
                    s.tasks.push(Task {
                        name: task.clone(),
                        unit: Unit::of_task(task),
                        began: Instant::now(),
                        current: 0,
                        total: 0,
                        took: None,
                        bar: None,
                        template: "",
                    });
                    s.tasks.len() - 1
                }
            };
            let t = &mut s.tasks[i];
            // A finish that reports nothing keeps the counts its updates reported
            // (the git plugin finishes its tasks with 0/0).
            if *kind == TaskKind::Finish && *current == 0 && *total == 0 {
                (*current, *total) = (t.current, t.total);
            }
            (t.current, t.total) = (*current, *total);
            if *kind == TaskKind::Finish {
                t.took = Some(t.began.elapsed());
            }
            unit = t.unit;
            task_index = Some(i);
        }
        let ends = matches!(
            event,
            StepEvent::Cached | StepEvent::Done | StepEvent::Error(_)
        );
        let first_end = ends && !s.ended;
        match &event {
            StepEvent::Log(line) => {
                s.tail.push_back(crate::text::escape(line).into_owned());
                while s.tail.len() > LOG_TAIL {
                    s.tail.pop_front();
                }
            }
            _ if first_end => s.ended = true,
            _ => {}
        }
        if first_end {
            st.ended += 1;
            match (&event, export) {
                (_, true) => st.exports += 1,
                (StepEvent::Cached, _) => st.cached += 1,
                _ => {}
            }
            if matches!(event, StepEvent::Error(_)) {
                st.failed += 1;
            }
        }
        let s = st.steps.get_mut(step).expect("inserted above");

        match &mut st.out {
            Out::Quiet => {}
            Out::Json(w) => {
                // Keys in this order (DESIGN §4): the step (or export), event, time.
                let mut obj = serde_json::Value::Object(Default::default());
                obj[if export { "export" } else { "step" }] = step.into();
                obj["event"] = event.name().into();
                obj["time"] = rfc3339(SystemTime::now()).into();
                match &event {
                    StepEvent::Progress {
                        task,
                        kind,
                        current,
                        total,
                    } => {
                        obj["task"] = task.as_str().into();
                        obj["kind"] = kind.name().into();
                        obj["unit"] = unit.name().into();
                        obj["current"] = (*current).into();
                        obj["total"] = (*total).into();
                    }
                    StepEvent::Error(m) | StepEvent::Log(m) => obj["message"] = m.as_str().into(),
                    _ => {}
                }
                if ends {
                    obj["elapsed_ms"] = (elapsed.as_millis() as u64).into();
                }
                let _ = writeln!(w, "{obj}");
                let _ = w.flush();
            }
            Out::Plain(w) => {
                let name = &shown_step;
                let mut lines = Vec::new();
                // A step's header comes before its detail lines; a step that ends at
                // once (CACHED) is one line.
                if !s.header_shown && !ends {
                    lines.push(format!("=> {name}"));
                }
                s.header_shown = true;
                match &event {
                    StepEvent::Start => {}
                    StepEvent::Cached => lines.push(format!("=> {name} CACHED")),
                    StepEvent::Done => lines.push(format!("=> {name} DONE {}", secs(elapsed))),
                    StepEvent::Error(m) => lines.push(format!(
                        "=> {name} ERROR {}: {}",
                        secs(elapsed),
                        crate::text::escape(m)
                    )),
                    StepEvent::Log(m) => {
                        lines.push(format!("   {name} | {}", crate::text::escape(m)))
                    }
                    StepEvent::Progress { task, kind, .. } => {
                        let t = &s.tasks[task_index.expect("a progress event has a task")];
                        let task = crate::text::escape(task);
                        // Plain output shows a task's start and end, not every update.
                        match kind {
                            TaskKind::Update => {}
                            TaskKind::Start if t.total > 0 => lines
                                .push(format!("   {name}: {task} {}", t.unit.amount(0, t.total))),
                            TaskKind::Start => lines.push(format!("   {name}: {task}")),
                            TaskKind::Finish => {
                                lines.push(format!("   {name}: {task}: {}", finished_task(t)))
                            }
                        }
                    }
                }
                for l in lines {
                    let _ = writeln!(w, "{l}");
                }
                let _ = w.flush();
            }
            Out::Tty { multi, header } => {
                let header = header.get_or_insert_with(|| {
                    let h = multi.insert(0, ProgressBar::new_spinner());
                    h.set_style(
                        ProgressStyle::with_template("[+] Building {secs} {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner())
                            .with_key("secs", secs_key),
                    );
                    h.enable_steady_tick(Duration::from_millis(100));
                    h
                });
                header.set_message(counts(st.ended, st.planned));
                tty_event(multi, s, step, &event, task_index, elapsed, first_end);
            }
        }
    }

    /// Writes the closing summary line: the outcome, the total time, the counts.
    pub fn summary(&self, outcome: Outcome) {
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.closed {
            return;
        }
        st.closed = true;
        let took = st.began.elapsed();
        let word = match outcome {
            Outcome::Finished => "FINISHED",
            Outcome::Failed => "FAILED",
        };
        let steps = st.ended - st.exports;
        let line = format!(
            "[+] Building {:.1}s {} {word}: {} ({} cached), {}",
            took.as_secs_f64(),
            counts(st.ended, st.planned),
            plural(steps, "step"),
            st.cached,
            plural(st.exports, "export"),
        );
        match &mut st.out {
            Out::Quiet => {}
            Out::Json(w) => {
                let obj = serde_json::json!({
                    "event": "summary",
                    "time": rfc3339(SystemTime::now()),
                    "status": word.to_ascii_lowercase(),
                    "elapsed_ms": took.as_millis() as u64,
                    "steps": steps,
                    "cached": st.cached,
                    "failed": st.failed,
                    "exports": st.exports,
                });
                let _ = writeln!(w, "{obj}");
                let _ = w.flush();
            }
            Out::Plain(w) => {
                let _ = writeln!(w, "{line}");
                let _ = w.flush();
            }
            Out::Tty { multi, header } => {
                for s in st.steps.values_mut() {
                    s.clear_bars(multi);
                }
                let header = header.get_or_insert_with(|| multi.add(ProgressBar::new_spinner()));
                header.set_style(
                    ProgressStyle::with_template("{msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                header.finish_with_message(line);
            }
        }
    }

    /// Writes a warning after the display (`WARNING: …`).
    pub fn warn(&self, message: &str) {
        let message = crate::text::for_terminal(message);
        let mut st = self.lock();
        match &mut st.out {
            Out::Quiet => {}
            Out::Json(w) => {
                let obj = serde_json::json!({
                    "event": "warning",
                    "time": rfc3339(SystemTime::now()),
                    "message": message,
                });
                let _ = writeln!(w, "{obj}");
                let _ = w.flush();
            }
            Out::Plain(w) => {
                let _ = writeln!(w, "WARNING: {message}");
                let _ = w.flush();
            }
            Out::Tty { multi, header } => {
                if header.as_ref().is_none_or(|h| h.is_finished()) {
                    eprintln!("WARNING: {message}");
                } else {
                    let _ = multi.println(format!("WARNING: {message}"));
                }
            }
        }
    }

    /// Ends the live display (a no-op for line output).
    pub fn finish(&self) {
        let mut guard = self.lock();
        let st = &mut *guard;
        if let Out::Tty { multi, header } = &mut st.out {
            for s in st.steps.values_mut() {
                s.clear_bars(multi);
            }
            if let Some(h) = header.as_ref().filter(|h| !h.is_finished()) {
                h.finish_and_clear();
            }
        }
    }
}

/// A step's description for the live display: the source identifier, the actions,
/// the layers, or the command (`RUN sh -c make`).
pub fn describe_step(step: &crate::definition::Step) -> String {
    use crate::definition::Step;
    match step {
        Step::Source(s) => s.identifier.clone(),
        Step::File(f) => {
            let names: Vec<&str> = f.actions.iter().map(|a| a.name()).collect();
            names.join(", ")
        }
        Step::Merge(m) => format!("merge {}", m.inputs.join(" + ")),
        Step::Run(r) => format!("RUN {}", r.args.join(" ")),
    }
}

/// What an export is called in the display: `exporting to local directory /out`.
pub fn export_label(spec: &crate::export::OutputSpec) -> String {
    use crate::export::{OutputSpec, TarDest};
    match spec {
        OutputSpec::Local { dest } => format!("exporting to local directory {}", dest.display()),
        OutputSpec::Tar {
            dest: TarDest::Stdout,
        } => "exporting to tar stream on stdout".to_string(),
        OutputSpec::Tar {
            dest: TarDest::File(p),
        } => format!("exporting to tar archive {}", p.display()),
        OutputSpec::Oci { dest, name: None } => {
            format!("exporting to oci image archive {}", dest.display())
        }
        OutputSpec::Oci {
            dest,
            name: Some(n),
        } => format!("exporting to oci image archive {} ({n})", dest.display()),
    }
}

/// The live display's part of an event.
fn tty_event(
    multi: &MultiProgress,
    s: &mut StepState,
    step: &str,
    event: &StepEvent,
    task_index: Option<usize>,
    elapsed: Duration,
    first_end: bool,
) {
    if s.ended && !first_end {
        return; // already ended and printed: a late event draws nothing
    }
    if first_end {
        s.header_shown = true;
        let status = match event {
            StepEvent::Cached => "CACHED".to_string(),
            StepEvent::Done => format!("DONE {}", secs(elapsed)),
            // The first line: the whole message follows the display as the error.
            StepEvent::Error(m) => format!(
                "ERROR {}: {}",
                secs(elapsed),
                crate::text::escape(m.lines().next().unwrap_or_default())
            ),
            _ => unreachable!("ends"),
        };
        let mut lines = vec![format!("{:<56} {status}", s.label(step))];
        for t in &s.tasks {
            lines.push(format!(
                "   => {}: {}",
                crate::text::escape(&t.name),
                finished_task(t)
            ));
        }
        // Like buildx: the output of a failed step stays on screen.
        if matches!(event, StepEvent::Error(_)) {
            lines.extend(s.tail.iter().map(|l| format!("   | {l}")));
        }
        s.clear_bars(multi);
        let _ = multi.println(lines.join("\n"));
        return;
    }
    s.header_shown = true;
    if s.bar.is_none() {
        let b = multi.add(ProgressBar::new_spinner());
        b.set_style(
            ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg} {secs:>6}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner())
                .with_key("secs", secs_key),
        );
        b.set_prefix(s.label(step));
        b.enable_steady_tick(Duration::from_millis(100));
        s.bar = Some(b);
    }
    match event {
        StepEvent::Log(_) => {
            while s.log_bars.len() < s.tail.len() {
                let after = s.last_bar().expect("the step bar exists").clone();
                let b = multi.insert_after(&after, ProgressBar::new_spinner());
                b.set_style(
                    ProgressStyle::with_template("   {wide_msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                s.log_bars.push(b);
            }
            for (b, l) in s.log_bars.iter().zip(&s.tail) {
                b.set_message(format!("| {l}"));
            }
        }
        StepEvent::Progress { kind, .. } => {
            let i = task_index.expect("a progress event has a task");
            let t = &s.tasks[i];
            let template = match (t.unit, t.total > 0) {
                (Unit::Bytes, true) => "   => {msg} [{bar:24}] {binary_bytes} / {binary_total_bytes} {binary_bytes_per_sec}",
                (Unit::Bytes, false) => "   => {msg} {binary_bytes} {binary_bytes_per_sec}",
                (Unit::Count, true) => "   => {msg} [{bar:24}] {pos}/{len}",
                (Unit::Count, false) => "   => {msg} {pos}",
            };
            let style = || {
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ")
            };
            if *kind == TaskKind::Finish {
                if let Some(b) = s.tasks[i].bar.take() {
                    b.finish_and_clear();
                    multi.remove(&b);
                }
                return;
            }
            let total = (t.total > 0).then_some(t.total);
            match &s.tasks[i].bar {
                Some(b) if s.tasks[i].template == template => {
                    if let Some(n) = total {
                        b.set_length(n);
                    }
                }
                Some(b) => {
                    b.set_style(style());
                    match total {
                        Some(n) => b.set_length(n),
                        None => b.unset_length(),
                    }
                }
                None => {
                    let b = ProgressBar::with_draw_target(total, ProgressDrawTarget::hidden())
                        .with_style(style())
                        .with_message(crate::text::escape(&t.name).into_owned());
                    let after = s.last_task_bar().expect("the step bar exists").clone();
                    s.tasks[i].bar = Some(multi.insert_after(&after, b));
                }
            }
            let t = &mut s.tasks[i];
            t.template = template;
            if let Some(b) = &t.bar {
                b.set_position(t.current);
            }
        }
        _ => {}
    }
}

/// A finished task's amount, rate (bytes) and time: `3.4MiB (12.0MiB/s) done 0.28s`.
fn finished_task(t: &Task) -> String {
    let took = t.took.unwrap_or_else(|| t.began.elapsed());
    let state = if t.took.is_some() { "done" } else { "stopped" };
    let amount = t
        .unit
        .amount(t.current, if t.current == t.total { 0 } else { t.total });
    match t.unit {
        Unit::Bytes if took.as_secs_f64() > 0.0 && t.current > 0 => format!(
            "{amount} ({}/s) {state} {}",
            human((t.current as f64 / took.as_secs_f64()) as u64),
            secs(took)
        ),
        _ => format!("{amount} {state} {}", secs(took)),
    }
}

/// `1 step`, `2 steps`.
fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `(3/5)` when the plan is known, else `(3)`.
fn counts(ended: usize, planned: usize) -> String {
    if planned >= ended && planned > 0 {
        format!("({ended}/{planned})")
    } else {
        format!("({ended})")
    }
}

/// A template key for a bar's elapsed time in seconds: `1.2s`.
fn secs_key(state: &ProgressState, w: &mut dyn std::fmt::Write) {
    let _ = write!(w, "{:.1}s", state.elapsed().as_secs_f64());
}

impl ProgressSink for Progress {
    fn event(&self, step: &str, event: ProgressUpdate) {
        let ev = match event {
            ProgressUpdate::TaskStart { task, total } => StepEvent::Progress {
                task,
                kind: TaskKind::Start,
                current: 0,
                total,
            },
            ProgressUpdate::TaskUpdate {
                task,
                current,
                total,
            } => StepEvent::Progress {
                task,
                kind: TaskKind::Update,
                current,
                total,
            },
            // The counts the plugin sent, not a made-up 1/1.
            ProgressUpdate::TaskFinish {
                task,
                current,
                total,
                error,
            } => StepEvent::Progress {
                task: match error {
                    Some(e) => format!("{task} failed: {e}"),
                    None => task,
                },
                kind: TaskKind::Finish,
                current,
                total,
            },
        };
        self.step(step, ev);
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1}GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1}MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1}KiB", n as f64 / 1024.0),
        n => format!("{n}B"),
    }
}

/// `t` as RFC 3339 UTC with milliseconds, e.g. `2026-11-29T10:45:42.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789); // leap-year Feb 29
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn json_lines_carry_the_contract_fields() {
        let buf = Buf::default();
        let p = Progress::to_writer(true, Box::new(buf.clone()));
        p.step("app", StepEvent::Start);
        p.event(
            "app",
            ProgressUpdate::TaskUpdate {
                task: "GET x".into(),
                current: 5,
                total: 10,
            },
        );
        p.step("app", StepEvent::Done);
        p.step("ctx", StepEvent::Cached);
        p.step("bad", StepEvent::Error("boom".into()));
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
        assert_eq!(events, ["start", "progress", "done", "cached", "error"]);
        assert_eq!(lines[1]["current"], 5);
        assert_eq!(lines[1]["kind"], "update");
        assert_eq!(lines[1]["total"], 10);
        assert_eq!(lines[4]["message"], "boom");
        assert_eq!(lines[3]["step"], "ctx");
        assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn plain_lines_say_cached() {
        let buf = Buf::default();
        let p = Progress::to_writer(false, Box::new(buf.clone()));
        p.step("a", StepEvent::Cached);
        p.step("b", StepEvent::Start);
        p.step("b", StepEvent::Done);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("=> a CACHED\n"), "{text}");
        assert!(text.contains("=> b DONE "), "{text}");
    }

    fn written(buf: &Buf) -> String {
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn units_follow_the_task_name() {
        for (task, unit) in [
            ("GET https://host/file", Unit::Bytes),
            ("download sha256:0123456789ab", Unit::Bytes),
            ("pull sha256:0123456789ab", Unit::Bytes),
            ("unpack sha256:0123456789ab", Unit::Bytes),
            // The local plugin counts entries, git objects and files.
            ("transferring context", Unit::Count),
            ("fetch https://host/repo.git", Unit::Count),
            ("checkout 0123456789ab", Unit::Count),
            ("download 3 files", Unit::Count),
            ("GET https://host/files/objects", Unit::Bytes),
            ("twin counted", Unit::Count),
        ] {
            assert_eq!(Unit::of_task(task), unit, "{task}");
        }
        assert_eq!(Unit::Bytes.amount(3 << 20, 0), "3.0MiB");
        assert_eq!(Unit::Bytes.amount(1 << 20, 4 << 20), "1.0MiB / 4.0MiB");
        assert_eq!(Unit::Count.amount(1200, 0), "1200");
        assert_eq!(Unit::Count.amount(5, 10), "5/10");
    }

    #[test]
    fn plain_headers_come_before_detail_lines() {
        let buf = Buf::default();
        let p = Progress::to_writer(false, Box::new(buf.clone()));
        // A source transfers before it knows whether it is cached.
        p.event(
            "ctx",
            ProgressUpdate::TaskStart {
                task: "transferring context".into(),
                total: 0,
            },
        );
        p.event(
            "ctx",
            ProgressUpdate::TaskFinish {
                task: "transferring context".into(),
                current: 7,
                total: 7,
                error: None,
            },
        );
        p.step("ctx", StepEvent::Start);
        p.step("ctx", StepEvent::Done);
        p.step("run", StepEvent::Start);
        p.step("run", StepEvent::Log("one".into()));
        p.step("run", StepEvent::Log("two\x1b[2J".into()));
        p.step("run", StepEvent::Cached);
        let text = written(&buf);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "=> ctx", "{text}");
        assert_eq!(lines[1], "   ctx: transferring context", "{text}");
        assert!(
            lines[2].starts_with("   ctx: transferring context: 7 done "),
            "{text}"
        );
        assert!(lines[3].starts_with("=> ctx DONE "), "{text}");
        assert_eq!(
            &lines[4..],
            [
                "=> run",
                "   run | one",
                "   run | two\\e[2J",
                "=> run CACHED"
            ],
            "{text}"
        );
    }

    #[test]
    fn a_finish_without_counts_keeps_the_last_reported_ones() {
        let buf = Buf::default();
        let p = Progress::to_writer(true, Box::new(buf.clone()));
        let task = "fetch https://host/repo.git".to_string();
        p.event(
            "src",
            ProgressUpdate::TaskStart {
                task: task.clone(),
                total: 0,
            },
        );
        p.event(
            "src",
            ProgressUpdate::TaskUpdate {
                task: task.clone(),
                current: 40,
                total: 42,
            },
        );
        p.event(
            "src",
            ProgressUpdate::TaskFinish {
                task,
                current: 0,
                total: 0,
                error: None,
            },
        );
        let text = written(&buf);
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["kind"], "finish", "{text}");
        assert_eq!(last["unit"], "count", "{text}");
        assert_eq!((&last["current"], &last["total"]), (&40.into(), &42.into()));
    }

    #[test]
    fn the_summary_counts_steps_cached_failed_and_exports() {
        let buf = Buf::default();
        let p = Progress::to_writer(true, Box::new(buf.clone()));
        p.plan(4);
        p.step("a", StepEvent::Cached);
        p.step("b", StepEvent::Start);
        p.step("b", StepEvent::Done);
        p.step("b", StepEvent::Done); // a shared vertex reported twice counts once
        p.step("c", StepEvent::Error("boom".into()));
        p.export("exporting to tar archive /x", StepEvent::Start);
        p.export("exporting to tar archive /x", StepEvent::Done);
        p.summary(Outcome::Failed);
        p.warn("careful");
        let text = written(&buf);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let export = &lines[5];
        assert_eq!(export["export"], "exporting to tar archive /x", "{text}");
        assert!(export.get("step").is_none(), "{text}");
        let summary = &lines[lines.len() - 2];
        assert_eq!(summary["event"], "summary", "{text}");
        assert_eq!(summary["status"], "failed");
        assert_eq!(summary["steps"], 3);
        assert_eq!(summary["cached"], 1);
        assert_eq!(summary["failed"], 1);
        assert_eq!(summary["exports"], 1);
        assert_eq!(lines[lines.len() - 1]["event"], "warning");

        let buf = Buf::default();
        let p = Progress::to_writer(false, Box::new(buf.clone()));
        p.plan(2);
        p.step("a", StepEvent::Cached);
        p.step("b", StepEvent::Cached);
        p.summary(Outcome::Finished);
        let text = written(&buf);
        let last = text.lines().last().unwrap();
        assert!(last.starts_with("[+] Building "), "{text}");
        assert!(
            last.ends_with("s (2/2) FINISHED: 2 steps (2 cached), 0 exports"),
            "{text}"
        );
    }

    #[test]
    fn modes_parse() {
        assert_eq!("json".parse::<ProgressMode>(), Ok(ProgressMode::Json));
        assert!("loud".parse::<ProgressMode>().unwrap_err().contains("loud"));
    }
}
