//! What happened in a schedule, line by line, for its failure report.

use super::clock::Clock;

/// What happened in a schedule, for its failure report.
pub(super) struct Trace {
    pub(super) lines: Vec<String>,
    /// Printed as it happens (a schedule re-run alone).
    pub(super) echo: bool,
}

impl Trace {
    pub(super) fn note(&mut self, clock: &Clock, what: impl Into<String>) {
        let line = format!("{:>9} ms  {}", clock.ms, what.into());
        if self.echo {
            eprintln!("{line}");
        }
        self.lines.push(line);
    }
}
