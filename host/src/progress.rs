//! Build progress (DESIGN §4): a live per-step display on a terminal (indicatif), plain
//! lines otherwise, JSON lines with `--progress json`, or nothing.
//!
//! The solver reports step events through [`Progress::step`]; plugins' task events
//! arrive through the [`ProgressSink`] implementation and become `progress` events of
//! the step they belong to.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

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

enum Out {
    Quiet,
    Lines {
        json: bool,
        w: Box<dyn Write + Send>,
    },
    Tty {
        multi: MultiProgress,
        bars: HashMap<String, ProgressBar>,
    },
}

struct State {
    out: Out,
    started: HashMap<String, Instant>,
}

/// The progress display of one build. Thread-safe; cheap to share in an `Arc`.
pub struct Progress {
    state: Mutex<State>,
}

impl Progress {
    /// A display on stderr in `mode` (`Auto` picks `Tty` on a terminal).
    pub fn stderr(mode: ProgressMode) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Tty,
            ProgressMode::Auto => ProgressMode::Plain,
            m => m,
        };
        let out = match mode {
            ProgressMode::Tty => Out::Tty {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                bars: HashMap::new(),
            },
            ProgressMode::Quiet => Out::Quiet,
            m => Out::Lines {
                json: m == ProgressMode::Json,
                w: Box::new(std::io::stderr()),
            },
        };
        Self::with_out(out)
    }

    /// Line output (`json` or plain) into `w`: for tests and embedding.
    pub fn to_writer(json: bool, w: Box<dyn Write + Send>) -> Self {
        Self::with_out(Out::Lines { json, w })
    }

    /// No output.
    pub fn quiet() -> Self {
        Self::with_out(Out::Quiet)
    }

    fn with_out(out: Out) -> Self {
        Self {
            state: Mutex::new(State {
                out,
                started: HashMap::new(),
            }),
        }
    }

    /// Reports `event` for `step` (a step name or a source identifier).
    pub fn step(&self, step: &str, event: StepEvent) {
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
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = match &event {
            StepEvent::Start => {
                st.started.insert(step.to_string(), Instant::now());
                None
            }
            StepEvent::Done | StepEvent::Error(_) | StepEvent::Cached => {
                st.started.remove(step).map(|t| t.elapsed())
            }
            StepEvent::Progress { .. } | StepEvent::Log(_) => None,
        };
        match &mut st.out {
            Out::Quiet => {}
            Out::Lines { json: true, w } => {
                let mut obj = serde_json::json!({
                    "step": step,
                    "event": event.name(),
                    "time": rfc3339(SystemTime::now()),
                });
                match &event {
                    StepEvent::Progress {
                        task,
                        kind,
                        current,
                        total,
                    } => {
                        obj["task"] = task.as_str().into();
                        obj["kind"] = kind.name().into();
                        obj["current"] = (*current).into();
                        obj["total"] = (*total).into();
                    }
                    StepEvent::Error(m) | StepEvent::Log(m) => obj["message"] = m.as_str().into(),
                    _ => {}
                }
                let _ = writeln!(w, "{obj}");
                let _ = w.flush();
            }
            Out::Lines { json: false, w } => {
                let step = &shown_step;
                let line = match &event {
                    StepEvent::Start => format!("=> {step}"),
                    StepEvent::Cached => format!("=> {step} CACHED"),
                    StepEvent::Done => format!("=> {step} DONE {}", secs(elapsed)),
                    StepEvent::Error(m) => format!(
                        "=> {step} ERROR {}: {}",
                        secs(elapsed),
                        crate::text::escape(m)
                    ),
                    StepEvent::Log(m) => format!("   {step} | {}", crate::text::escape(m)),
                    StepEvent::Progress {
                        task,
                        kind,
                        current,
                        total,
                    } => {
                        // Plain output shows a task's start and end, not every update.
                        if *kind == TaskKind::Update {
                            return;
                        }
                        if *total > 0 {
                            format!("   {step}: {} {current}/{total}", crate::text::escape(task))
                        } else {
                            format!("   {step}: {}", crate::text::escape(task))
                        }
                    }
                };
                let _ = writeln!(w, "{line}");
                let _ = w.flush();
            }
            Out::Tty { multi, bars } => {
                let bar = bars
                    .entry(step.to_string())
                    .or_insert_with(|| {
                        let b = multi.add(ProgressBar::new_spinner());
                        b.set_style(
                            ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg}")
                                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                        );
                        b.set_prefix(shown_step.clone());
                        b.enable_steady_tick(Duration::from_millis(120));
                        b
                    })
                    .clone();
                match &event {
                    StepEvent::Start => bar.set_message("running"),
                    StepEvent::Cached => bar.finish_with_message("CACHED"),
                    StepEvent::Done => bar.finish_with_message(format!("DONE {}", secs(elapsed))),
                    StepEvent::Error(m) => {
                        bar.abandon_with_message(format!("ERROR: {}", crate::text::escape(m)))
                    }
                    // The running step shows its latest output line.
                    StepEvent::Log(m) => bar.set_message(format!("| {}", crate::text::escape(m))),
                    StepEvent::Progress {
                        task,
                        current,
                        total,
                        ..
                    } => bar.set_message(if *total > 0 {
                        format!(
                            "{} {}/{}",
                            crate::text::escape(task),
                            human(*current),
                            human(*total)
                        )
                    } else {
                        format!("{} {}", crate::text::escape(task), human(*current))
                    }),
                }
            }
        }
    }

    /// Ends the live display (a no-op for line output).
    pub fn finish(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Out::Tty { bars, .. } = &mut st.out {
            for b in bars.values() {
                if !b.is_finished() {
                    b.abandon();
                }
            }
        }
    }
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

fn secs(d: Option<Duration>) -> String {
    format!("{:.2}s", d.unwrap_or_default().as_secs_f64())
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

    #[test]
    fn modes_parse() {
        assert_eq!("json".parse::<ProgressMode>(), Ok(ProgressMode::Json));
        assert!("loud".parse::<ProgressMode>().unwrap_err().contains("loud"));
    }
}
