//! Progress and summary output of `cartwise-tech`'s long operations: a progress bar on stderr
//! (redrawn in place on a terminal, one line per step otherwise, so logs stay readable) and a
//! summary table on stdout.

use std::io::{IsTerminal, Write};

/// Width of the bar, in characters.
const BAR_WIDTH: usize = 24;

/// A progress bar for `total` steps, on stderr.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: usize,
    done: usize,
    terminal: bool,
}

impl Progress {
    /// Starts a progress bar (prints the empty bar).
    pub fn new(label: impl Into<String>, total: usize) -> Self {
        let progress = Self {
            label: label.into(),
            total,
            done: 0,
            terminal: std::io::stderr().is_terminal(),
        };
        progress.draw("");
        progress
    }

    /// One step done; `item` says which.
    pub fn step(&mut self, item: &str) {
        self.done = (self.done + 1).min(self.total.max(1));
        self.draw(item);
    }

    /// Ends the bar with a last word (e.g. "done", "failed").
    pub fn finish(self, outcome: &str) {
        let mut stderr = std::io::stderr().lock();
        let line = self.line(outcome);
        let _ = if self.terminal {
            writeln!(stderr, "\r{line}\x1b[K")
        } else {
            writeln!(stderr, "{line}")
        };
    }

    fn line(&self, item: &str) -> String {
        let total = self.total.max(1);
        let filled = BAR_WIDTH * self.done.min(total) / total;
        format!(
            "{} [{}{}] {}/{} {}",
            self.label,
            "#".repeat(filled),
            " ".repeat(BAR_WIDTH - filled),
            self.done,
            self.total,
            item
        )
    }

    fn draw(&self, item: &str) {
        let mut stderr = std::io::stderr().lock();
        let line = self.line(item);
        let _ = if self.terminal {
            write!(stderr, "\r{line}\x1b[K").and_then(|()| stderr.flush())
        } else {
            writeln!(stderr, "{line}")
        };
    }
}

/// A summary: a title and aligned `key: value` rows, printed to stdout.
#[derive(Debug, Default)]
pub struct Summary {
    title: String,
    rows: Vec<(String, String)>,
}

impl Summary {
    /// An empty summary under `title`.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, key: impl Into<String>, value: impl ToString) -> &mut Self {
        self.rows.push((key.into(), value.to_string()));
        self
    }

    /// The text that [`Self::print`] writes.
    pub fn render(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(|(key, _)| key.len())
            .max()
            .unwrap_or(0);
        let mut out = format!("{}\n", self.title);
        for (key, value) in &self.rows {
            out.push_str(&format!("  {key:<width$}  {value}\n"));
        }
        out
    }

    /// Prints the summary to stdout.
    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// A duration in ms as a short human age ("3 min", "2 h 5 min", "4 d").
pub fn age(ms: i64) -> String {
    let minutes = ms.max(0) / 60_000;
    match minutes {
        0 => "under a minute".to_owned(),
        1..60 => format!("{minutes} min"),
        60..1440 => format!("{} h {} min", minutes / 60, minutes % 60),
        _ => format!("{} d {} h", minutes / 1440, minutes % 1440 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_aligns_rows_and_age_reads_well() {
        let mut summary = Summary::new("push");
        summary.row("bundles", 3).row("already at hub", 1);
        assert_eq!(
            summary.render(),
            "push\n  bundles         3\n  already at hub  1\n"
        );
        assert_eq!(age(30_000), "under a minute");
        assert_eq!(age(125 * 60_000), "2 h 5 min");
        assert_eq!(age(2 * 86_400_000 + 3_600_000), "2 d 1 h");
    }

    #[test]
    fn progress_line_fills_with_steps() {
        let mut progress = Progress::new("push", 4);
        progress.terminal = false;
        progress.step("a");
        progress.step("b");
        assert!(
            progress
                .line("b")
                .contains("[############            ] 2/4 b")
        );
        progress.finish("done");
    }
}
