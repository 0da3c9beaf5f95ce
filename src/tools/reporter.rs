//! The one owner of the terminal's stderr: progress per cluster (indicatif on a terminal, one
//! line per event otherwise), warnings, and verbose command lines. Logic never prints.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::tools::step::Step;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A live line per cluster (terminals).
    Human,
    /// One line per step start and end (logs, CI).
    Plain,
    /// Nothing on stderr but warnings and errors; the command prints JSON on stdout.
    Json,
}

pub struct Reporter {
    mode: Mode,
    quiet: bool,
    verbose: bool,
    multi: Option<MultiProgress>,
    bars: Mutex<BTreeMap<String, ProgressBar>>,
    /// Serialises plain lines so they never interleave.
    lock: Mutex<()>,
}

impl Reporter {
    pub fn new(mode: Mode, quiet: bool, verbose: bool) -> Self {
        let multi = (mode == Mode::Human && !quiet)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Self {
            mode,
            quiet,
            verbose,
            multi,
            bars: Mutex::new(BTreeMap::new()),
            lock: Mutex::new(()),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Prints a line on stderr without tearing progress bars.
    pub fn line(&self, text: &str) {
        match &self.multi {
            Some(multi) => {
                let _ = multi.println(text);
            }
            None => {
                let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{text}");
            }
        }
    }

    /// Progress information; dropped under --quiet and in JSON mode.
    pub fn info(&self, text: &str) {
        if !self.quiet && self.mode != Mode::Json {
            self.line(text);
        }
    }

    /// A warning; always shown.
    pub fn warn(&self, text: &str) {
        self.line(&format!("warning: {text}"));
    }

    /// A step of `cluster` started.
    pub fn started(&self, cluster: &str, what: &str) {
        if self.quiet || self.mode == Mode::Json {
            return;
        }
        match &self.multi {
            Some(multi) => {
                let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
                let bar = bars.entry(cluster.to_string()).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{spinner} {prefix:.bold} {wide_msg} {elapsed:>4}",
                        )
                        .expect("a valid template"),
                    );
                    bar.set_prefix(cluster.to_string());
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bar
                });
                bar.set_message(format!("{what}…"));
            }
            None => self.line(&format!("[{cluster}] {what}: started")),
        }
    }

    /// A step of `cluster` ended with `outcome` ("installed", "unchanged", "failed", ...).
    pub fn finished(&self, cluster: &str, what: &str, outcome: &str, elapsed: Duration) {
        if self.quiet || self.mode == Mode::Json {
            return;
        }
        let text = format!("{what}: {outcome} ({:.1}s)", elapsed.as_secs_f64());
        match &self.multi {
            Some(_) => {
                if let Some(bar) = self
                    .bars
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(cluster)
                {
                    bar.set_message(text);
                }
            }
            None => self.line(&format!("[{cluster}] {text}")),
        }
    }

    /// All of `cluster`'s steps in this batch are over.
    pub fn cluster_done(&self, cluster: &str, summary: &str) {
        if let Some(bar) = self
            .bars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(cluster)
        {
            bar.finish_and_clear();
            self.line(&format!("{cluster}: {summary}"));
        }
    }

    /// With --verbose, the command line of a step about to run. Stdin is only counted.
    pub fn command(&self, step: &Step) {
        if !self.verbose {
            return;
        }
        let stdin = match &step.stdin {
            Some(bytes) => format!(" < ({} bytes on stdin, not shown)", bytes.expose().len()),
            None => String::new(),
        };
        let who = if step.cluster.is_empty() {
            String::new()
        } else {
            format!("[{}] ", step.cluster)
        };
        self.line(&format!("{who}$ {}{stdin}", step.command_line()));
    }
}
