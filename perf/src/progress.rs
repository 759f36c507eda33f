//! The progress bar on the terminal (stderr, drawn only when it is a TTY).
//!
//! A single scenario run owns a bar of its own, advanced by the scenario as
//! a fraction of its planned work. Under the comparison runner there is one
//! bar for the whole suite (runs done out of runs planned) and scenarios only
//! change its message.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Steps of a standalone bar.
const STEPS: u64 = 1000;

/// Where a scenario reports how far it is.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    bar: ProgressBar,
    /// Part of a suite: fractions are not ours to set.
    nested: bool,
    label: String,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl Progress {
    /// A bar for one scenario run.
    pub(crate) fn standalone(label: &str) -> Self {
        let bar = ProgressBar::new(STEPS);
        bar.set_style(style(
            "{prefix:>12} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg}",
        ));
        bar.set_prefix(label.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        Self {
            bar,
            nested: false,
            label: label.to_owned(),
        }
    }

    /// The bar of a suite of `runs` runs.
    pub(crate) fn suite(runs: u64) -> Self {
        let bar = ProgressBar::new(runs);
        bar.set_style(style(
            "[{elapsed_precise}] {wide_bar} {pos}/{len} runs (eta {eta}) {msg}",
        ));
        bar.enable_steady_tick(Duration::from_millis(200));
        Self {
            bar,
            nested: true,
            label: String::new(),
        }
    }

    /// A handle for one run of the suite, labelled `label`.
    pub(crate) fn run(&self, label: &str) -> Self {
        self.bar.set_message(label.to_owned());
        Self {
            bar: self.bar.clone(),
            nested: true,
            label: label.to_owned(),
        }
    }

    /// Reports that `fraction` (0..1) of the run is done, and a status.
    pub(crate) fn update(&self, fraction: f64, status: &str) {
        if self.nested {
            self.bar.set_message(format!("{}: {status}", self.label));
        } else {
            self.bar
                .set_position((fraction.clamp(0.0, 1.0) * STEPS as f64) as u64);
            self.bar.set_message(status.to_owned());
        }
    }

    /// One run of the suite finished.
    pub(crate) fn run_done(&self) {
        self.bar.inc(1);
    }

    /// Prints a line above the bar.
    pub(crate) fn println(&self, line: &str) {
        self.bar.suspend(|| eprintln!("{line}"));
    }

    /// Removes the bar.
    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
