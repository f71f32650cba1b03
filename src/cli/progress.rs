//! Build progress on the terminal, BuildKit's plain format: `#N [stage 1/3] STEP` then
//! `#N DONE 0.1s`. `--progress=quiet` prints nothing (the image ID is printed at the end).

use std::io::Write;
use std::sync::Mutex;

use crate::executor::build::Progress;

/// How to show progress (`--progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    Auto,
    Tty,
    Plain,
    Quiet,
}

/// Writes progress lines to stderr (stdout stays for results such as `-q`'s image ID).
pub struct PlainProgress {
    quiet: bool,
    out: Mutex<std::io::Stderr>,
}

impl PlainProgress {
    pub fn new(mode: ProgressMode) -> PlainProgress {
        PlainProgress {
            quiet: mode == ProgressMode::Quiet,
            out: Mutex::new(std::io::stderr()),
        }
    }

    /// A line outside any step (`#N writing image …`).
    pub fn note(&self, id: usize, text: &str) {
        self.line(&format!("#{id} {text}"));
    }

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
