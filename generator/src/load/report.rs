//! The result of a load run: the summary printed at the end and, with `--report FILE`,
//! the same numbers as JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Serialize;

use super::LoadError;
use super::schedule::Arrivals;
use super::stats::LatencySummary;

/// Why the run stopped sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// `--duration` elapsed.
    Duration,
    /// Every event sold out (`--until-sold-out`, or nothing was left to ask for).
    SoldOut,
    /// Ctrl-C or SIGTERM.
    Interrupted,
}

/// Everything a run measured. Serialised as the `--report` JSON.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub target: String,
    pub arrivals: Arrivals,
    /// The mean rate asked for, per second.
    pub rate: f64,
    pub concurrency: usize,
    /// The seed of the request stream (events, quantities, gaps), to repeat it.
    pub seed: u64,
    pub stopped_because: StopReason,
    /// Seconds from the first scheduled send until sending stopped.
    pub sending_seconds: f64,
    /// Seconds of the whole run, waiting for the last answers included.
    pub elapsed_seconds: f64,
    /// Purchases sent.
    pub sent: u64,
    /// Sends the schedule wanted before the end but that never left, because the
    /// concurrency cap was full.
    pub behind_schedule: u64,
    /// `sent / sending_seconds`.
    pub achieved_rate: f64,
    /// Purchases with a final answer or error.
    pub completed: u64,
    /// Purchases that sold tickets (201).
    pub purchases: u64,
    pub tickets_sold: u64,
    pub revenue_cents: u64,
    /// `sold_out` answers.
    pub sold_out: u64,
    /// Events that sold out during the run, in the order they did.
    pub events_sold_out: Vec<String>,
    /// Repeats of a purchase whose outcome was unknown, with the same key.
    pub retries: u64,
    pub errors_total: u64,
    /// Errors by kind: the target's error code, `http_NNN`, `timeout`, `connect`, ...
    pub errors: BTreeMap<String, u64>,
    /// Latency from scheduled send to final answer, in milliseconds.
    pub latency_ms: LatencySummary,
    /// Answers per `X-Node` header value.
    pub nodes: BTreeMap<String, u64>,
}

impl LoadReport {
    /// Writes the report as pretty JSON to `path`.
    pub fn write_json(&self, path: &Path) -> Result<(), LoadError> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| LoadError::Report {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        std::fs::write(path, json).map_err(|e| LoadError::Report {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stopped = match self.stopped_because {
            StopReason::Duration => "duration elapsed",
            StopReason::SoldOut => "every event sold out",
            StopReason::Interrupted => "interrupted",
        };
        writeln!(f, "load on {} ({stopped})", self.target)?;
        writeln!(
            f,
            "  sent        {} in {:.2}s: {:.1}/s achieved, {:.1}/s asked ({}), {} behind schedule",
            self.sent,
            self.sending_seconds,
            self.achieved_rate,
            self.rate,
            self.arrivals,
            self.behind_schedule
        )?;
        writeln!(
            f,
            "  sold        {} tickets in {} purchases, ${}.{:02}",
            self.tickets_sold,
            self.purchases,
            self.revenue_cents / 100,
            self.revenue_cents % 100
        )?;
        writeln!(f, "  sold out    {} answers", self.sold_out)?;
        if !self.events_sold_out.is_empty() {
            writeln!(f, "  events sold out: {}", self.events_sold_out.join(", "))?;
        }
        writeln!(
            f,
            "  errors      {} ({} retries)",
            self.errors_total, self.retries
        )?;
        for (kind, count) in &self.errors {
            writeln!(f, "    {kind:<24} {count}")?;
        }
        let l = &self.latency_ms;
        writeln!(
            f,
            "  latency ms  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (mean {:.2}, {} samples)",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.count
        )?;
        writeln!(f, "  per node")?;
        if self.nodes.is_empty() {
            writeln!(f, "    (no X-Node header seen)")?;
        }
        for (node, count) in &self.nodes {
            writeln!(f, "    {node:<24} {count}")?;
        }
        Ok(())
    }
}
