//! Build progress on the terminal, in BuildKit's two styles:
//! - plain (`--progress=plain`, the default when stderr is not a terminal): `#N [stage 1/3]
//!   STEP`, every output line as `#N line`, then `#N DONE 0.1s` or `#N CACHED`;
//! - tty (the default on a terminal): a live view redrawn ten times a second, one line per step
//!   with its timer or CACHED mark and the last output lines of running steps.
//!
//! `--progress=quiet` prints nothing (the image ID is printed at the end).

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::executor::build::Progress;

/// How to show progress (`--progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    Auto,
    Tty,
    Plain,
    Quiet,
}

/// A progress display the build command can also add its own lines to.
pub trait Display: Progress + Sync {
    /// A line outside any step (`#N writing image …`).
    fn note(&self, id: usize, text: &str);
    /// The build is over: draw the final state.
    fn finish(&self);
}

/// The display for a mode (`auto` picks tty on a terminal).
pub fn display(mode: ProgressMode) -> Box<dyn Display> {
    match mode {
        ProgressMode::Auto if std::io::stderr().is_terminal() => Box::new(TtyProgress::start()),
        ProgressMode::Tty => Box::new(TtyProgress::start()),
        ProgressMode::Quiet => Box::new(PlainProgress {
            quiet: true,
            out: Mutex::new(std::io::stderr()),
        }),
        _ => Box::new(PlainProgress {
            quiet: false,
            out: Mutex::new(std::io::stderr()),
        }),
    }
}

/// Plain lines on stderr (stdout stays for results such as `-q`'s image ID).
pub struct PlainProgress {
    quiet: bool,
    out: Mutex<std::io::Stderr>,
}

impl PlainProgress {
    fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{text}");
        }
    }
}

impl Progress for PlainProgress {
    fn started(&self, id: usize, name: &str) {
        self.line(&format!("#{id} {name}"));
    }

    fn done(&self, id: usize, seconds: f64) {
        self.line(&format!("#{id} DONE {seconds:.1}s"));
    }

    fn cached(&self, id: usize) {
        self.line(&format!("#{id} CACHED"));
    }

    fn log(&self, id: usize, line: &str) {
        self.line(&format!("#{id} {line}"));
    }
}

impl Display for PlainProgress {
    fn note(&self, id: usize, text: &str) {
        self.line(&format!("#{id} {text}"));
    }

    fn finish(&self) {}
}

/// One step as the live view shows it.
#[derive(Debug, Clone)]
struct Step {
    id: usize,
    name: String,
    started: Instant,
    finished: Option<f64>,
    cached: bool,
    tail: VecDeque<String>,
}

#[derive(Debug)]
struct State {
    began: Instant,
    steps: Vec<Step>,
    /// Lines drawn last time (to move the cursor back over them).
    drawn: usize,
    finished: bool,
}

const TAIL: usize = 6;

/// Renders the live view: a header, then one line per step (running steps with their last
/// output lines). Pure, for tests.
fn render(state: &State, now: Instant, width: usize) -> Vec<String> {
    let done = state
        .steps
        .iter()
        .filter(|s| s.finished.is_some() || s.cached)
        .count();
    let mut lines = vec![format!(
        "[+] Building {:.1}s ({done}/{}){}",
        now.duration_since(state.began).as_secs_f64(),
        state.steps.len(),
        if state.finished { " FINISHED" } else { "" }
    )];
    for s in &state.steps {
        let (mark, time) = match (s.cached, s.finished) {
            (true, _) => ("CACHED ", String::new()),
            (false, Some(t)) => ("", format!("{t:.1}s")),
            (false, None) => (
                "",
                format!("{:.1}s", now.duration_since(s.started).as_secs_f64()),
            ),
        };
        let label = format!(" => {mark}{}", s.name);
        let room = width.saturating_sub(time.len() + 1).max(10);
        let label: String = if label.chars().count() > room {
            label
                .chars()
                .take(room.saturating_sub(1))
                .chain(std::iter::once('…'))
                .collect()
        } else {
            label
        };
        let pad = width
            .saturating_sub(label.chars().count() + time.len())
            .max(1);
        lines.push(format!("{label}{}{time}", " ".repeat(pad)));
        if s.finished.is_none() && !s.cached {
            for l in &s.tail {
                let l: String = l.chars().take(width.saturating_sub(4)).collect();
                lines.push(format!(" => => {l}"));
            }
        }
    }
    lines
}

/// The live display; a thread redraws it until [`Display::finish`].
pub struct TtyProgress {
    state: Arc<Mutex<State>>,
    ticker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(100)
}

fn draw(state: &mut State) {
    let lines = render(state, Instant::now(), terminal_width());
    let mut out = std::io::stderr().lock();
    let mut buf = String::new();
    if state.drawn > 0 {
        buf.push_str(&format!("\x1b[{}A", state.drawn));
    }
    for l in &lines {
        buf.push_str("\x1b[2K");
        buf.push_str(l);
        buf.push('\n');
    }
    buf.push_str("\x1b[J");
    let _ = out.write_all(buf.as_bytes());
    let _ = out.flush();
    state.drawn = lines.len();
}

impl TtyProgress {
    fn start() -> TtyProgress {
        let state = Arc::new(Mutex::new(State {
            began: Instant::now(),
            steps: Vec::new(),
            drawn: 0,
            finished: false,
        }));
        let s = state.clone();
        let ticker = std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(100));
            let Ok(mut st) = s.lock() else { return };
            if st.finished {
                return;
            }
            draw(&mut st);
        });
        TtyProgress {
            state,
            ticker: Mutex::new(Some(ticker)),
        }
    }

    fn with_step(&self, id: usize, f: impl FnOnce(&mut Step)) {
        if let Ok(mut st) = self.state.lock() {
            if let Some(step) = st.steps.iter_mut().find(|s| s.id == id) {
                f(step);
            }
        }
    }
}

impl Progress for TtyProgress {
    fn started(&self, id: usize, name: &str) {
        if let Ok(mut st) = self.state.lock() {
            st.steps.push(Step {
                id,
                name: name.to_string(),
                started: Instant::now(),
                finished: None,
                cached: false,
                tail: VecDeque::new(),
            });
        }
    }

    fn done(&self, id: usize, seconds: f64) {
        self.with_step(id, |s| s.finished = Some(seconds));
    }

    fn cached(&self, id: usize) {
        self.with_step(id, |s| s.cached = true);
    }

    fn log(&self, id: usize, line: &str) {
        self.with_step(id, |s| {
            if s.tail.len() == TAIL {
                s.tail.pop_front();
            }
            s.tail.push_back(line.to_string());
        });
    }
}

impl Display for TtyProgress {
    fn note(&self, id: usize, text: &str) {
        self.started(id, text);
        self.done(id, 0.0);
    }

    fn finish(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.finished = true;
            draw(&mut st);
        }
        if let Some(t) = self.ticker.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

impl Drop for TtyProgress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_view_shows_timers_cached_marks_and_tails() {
        let began = Instant::now();
        let step =
            |id: usize, name: &str, finished: Option<f64>, cached: bool, tail: &[&str]| Step {
                id,
                name: name.into(),
                started: began,
                finished,
                cached,
                tail: tail.iter().map(|s| s.to_string()).collect(),
            };
        let state = State {
            began,
            steps: vec![
                step(1, "[build 1/3] COPY . .", None, true, &[]),
                step(
                    2,
                    "[build 2/3] RUN make",
                    Some(1.25),
                    false,
                    &["hidden once done"],
                ),
                step(
                    3,
                    "[build 3/3] RUN make test",
                    None,
                    false,
                    &["ok 1", "ok 2"],
                ),
            ],
            drawn: 0,
            finished: false,
        };
        let lines = render(&state, began + Duration::from_millis(2500), 40);
        assert_eq!(lines[0], "[+] Building 2.5s (2/3)");
        assert!(
            lines[1].starts_with(" => CACHED [build 1/3] COPY . .") && !lines[1].ends_with('s'),
            "{lines:?}"
        );
        assert!(
            lines[2].starts_with(" => [build 2/3] RUN make") && lines[2].ends_with("1.2s"),
            "{lines:?}"
        );
        assert!(lines[3].ends_with("2.5s"), "{lines:?}");
        assert_eq!(
            &lines[4..],
            &[" => => ok 1".to_string(), " => => ok 2".to_string()]
        );
        assert!(lines.iter().all(|l| l.chars().count() <= 40), "{lines:?}");
    }
}
