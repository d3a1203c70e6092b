//! Progress output driven by scheduler events: a bar on a terminal, one line per event
//! otherwise (CI, logs).

use crate::scheduler::Event;
use cbsweep_common::{SweepId, TrialState};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

pub struct Progress {
    sweep: SweepId,
    short: Box<dyn Fn(&str) -> String + Send>,
    bar: Option<ProgressBar>,
    total: u64,
    finished: u64,
}

impl Progress {
    /// `already` trials of `total` were finished before this run started.
    /// `short` turns a cell key into the label shown.
    pub fn new(sweep: SweepId, total: u64, already: u64, short: Box<dyn Fn(&str) -> String + Send>) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/{len} trials  {elapsed_precise} (eta {eta})  {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(sweep.to_string());
            bar.set_position(already);
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            bar
        });
        if bar.is_none() {
            eprintln!("sweep {sweep}: {already}/{total} trials already finished");
        }
        Progress { sweep, short, bar, total, finished: already }
    }

    pub fn on_event(&mut self, e: &Event) {
        match e {
            Event::TrialFinished { sweep, cell, state, outcome, max_level, error, .. } if *sweep == self.sweep => {
                self.finished += 1;
                let cell = (self.short)(cell);
                let line = match state {
                    TrialState::Failed => format!("failed    {cell}: {}", error.as_deref().unwrap_or("unknown error")),
                    _ => format!("{outcome:<9} {cell}  max_level={max_level}"),
                };
                self.line(&line);
                if let Some(bar) = &self.bar {
                    bar.set_position(self.finished);
                }
            }
            Event::TrialRetry { sweep, trial, error } if *sweep == self.sweep => self.line(&format!("retrying  trial {trial}: {error}")),
            Event::Epoch { sweep, record, trial } if *sweep == self.sweep => {
                if let Some(bar) = &self.bar {
                    bar.set_message(format!(
                        "trial {} epoch {} level {} acc {:.3}",
                        &trial.0[..8.min(trial.0.len())],
                        record.epoch,
                        record.level,
                        record.test_accuracy
                    ));
                }
            }
            _ => {}
        }
    }

    /// A line above the bar (or on its own without a terminal).
    pub fn line(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.println(msg),
            None => eprintln!("[{:>width$}/{}] {msg}", self.finished, self.total, width = self.total.to_string().len()),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
