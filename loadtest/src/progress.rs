//! The progress bar on stderr: indicatif's bar when stderr is a terminal; otherwise (a log file, CI) the same
//! figures as a plain line at most every 5 s, so a long run shows it is alive.

use std::io::IsTerminal as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    bar: ProgressBar,
    what: String,
    unit: String,
    /// Plain lines: when the last one was written (`None`: draw with indicatif).
    plain: Option<Mutex<Option<Instant>>>,
}

impl Progress {
    /// A bar of `len` steps named `what` (e.g. `joining`), counting `unit` (e.g. `subscribers`).
    pub fn new(len: u64, what: &str, unit: &str) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let bar = if terminal {
            ProgressBar::new(len)
        } else {
            ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden())
        };
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{what:<9} {{bar:40}} {{pos}}/{{len}} {unit} {{msg}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Progress {
            bar,
            what: what.to_string(),
            unit: unit.to_string(),
            plain: (!terminal).then(|| Mutex::new(None)),
        }
    }

    fn line(&self) {
        eprintln!(
            "{:<9} {}/{} {} {}",
            self.what,
            self.bar.position(),
            self.bar.length().unwrap_or(0),
            self.unit,
            self.bar.message()
        );
    }

    fn tick(&self) {
        let Some(last) = &self.plain else {
            return;
        };
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= PLAIN_EVERY) {
            *last = Some(Instant::now());
            drop(last);
            self.line();
        }
    }

    pub fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
        self.tick();
    }

    pub fn inc(&self, delta: u64) {
        self.bar.inc(delta);
        self.tick();
    }

    pub fn set_message(&self, msg: String) {
        self.bar.set_message(msg);
        self.tick();
    }

    pub fn position(&self) -> u64 {
        self.bar.position()
    }

    /// Remove the bar (a terminal), or write the final plain line.
    pub fn finish_and_clear(&self) {
        if self.plain.is_some() {
            self.line();
        }
        self.bar.finish_and_clear();
    }
}
