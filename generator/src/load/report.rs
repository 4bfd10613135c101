//! The result of a load run: the summary table printed at the end, with `--report FILE`
//! the same numbers as JSON, and with `--chart FILE` the run second by second as SVG.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Serialize;

use super::LoadError;
use super::chart;
use super::schedule::Arrivals;
use super::stats::LatencySummary;
use super::timeline::SecondPoint;

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
    /// Every outcome by name: `purchased`, `sold_out`, and with the box-office mix
    /// `held`, `confirmed`, `released`, `cancelled`, `abandoned` (holds left to expire),
    /// `expired` (a confirm answered `hold_expired`, or a release found the hold expired),
    /// `tickets_unavailable`,
    /// `customer_limit`, `no_seats` (a seat pick found none available), ...
    pub outcomes: BTreeMap<String, u64>,
    /// Latency from scheduled send to the final answer of each buyer's first write
    /// (purchase or hold), in milliseconds.
    pub latency_ms: LatencySummary,
    /// Latency of the requests after the first write, by kind (`pick`, `confirm`,
    /// `release`, `cancel`), from their own send, in milliseconds.
    pub step_latency_ms: BTreeMap<String, LatencySummary>,
    /// Answers per `X-Node` header value.
    pub nodes: BTreeMap<String, u64>,
    /// The run second by second, from its first scheduled send.
    pub per_second: Vec<SecondPoint>,
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

    /// Draws the run second by second (latency percentiles, rates) as SVG into `path`.
    pub fn write_chart(&self, path: &Path) -> Result<(), LoadError> {
        let title = format!(
            "generator load on {}: {:.0}/s asked, {} arrivals",
            self.target, self.rate, self.arrivals
        );
        Ok(chart::write_svg(path, &self.per_second, &title)?)
    }
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stopped = match self.stopped_because {
            StopReason::Duration => "duration elapsed",
            StopReason::SoldOut => "every event sold out",
            StopReason::Interrupted => "interrupted",
        };
        writeln!(f, "load on {} ({stopped})", self.target)?;
        writeln!(f)?;
        let row = |f: &mut fmt::Formatter<'_>, label: &str, value: String| {
            writeln!(f, "  {label:<16}{value}")
        };
        row(
            f,
            "sent",
            format!(
                "{} in {:.2} s, {} behind schedule",
                thousands(self.sent),
                self.sending_seconds,
                thousands(self.behind_schedule)
            ),
        )?;
        row(
            f,
            "rate",
            format!(
                "{:.1}/s achieved, {:.1}/s asked ({} arrivals)",
                self.achieved_rate, self.rate, self.arrivals
            ),
        )?;
        row(
            f,
            "sold",
            format!(
                "{} tickets in {} purchases, ${}.{:02}",
                thousands(self.tickets_sold),
                thousands(self.purchases),
                thousands(self.revenue_cents / 100),
                self.revenue_cents % 100
            ),
        )?;
        row(
            f,
            "sold out",
            format!("{} answers", thousands(self.sold_out)),
        )?;
        if !self.events_sold_out.is_empty() {
            row(f, "events sold out", self.events_sold_out.join(", "))?;
        }
        row(
            f,
            "errors",
            format!(
                "{} ({} retries)",
                thousands(self.errors_total),
                thousands(self.retries)
            ),
        )?;
        row(
            f,
            "finished in",
            format!("{:.2} s (last answers included)", self.elapsed_seconds),
        )?;

        let l = &self.latency_ms;
        writeln!(f)?;
        writeln!(
            f,
            "  {:<16}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}{:>10}",
            "latency (ms)", "p50", "p90", "p99", "p99.9", "max", "mean", "samples"
        )?;
        writeln!(
            f,
            "  {:<16}{:>9.2}{:>9.2}{:>9.2}{:>9.2}{:>9.2}{:>9.2}{:>10}",
            "", l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.count
        )?;

        if self
            .outcomes
            .keys()
            .any(|k| k != "purchased" && k != "sold_out")
        {
            writeln!(f)?;
            writeln!(f, "  {:<32}{:>10}", "outcomes", "count")?;
            for (name, count) in &self.outcomes {
                writeln!(f, "  {name:<32}{:>10}", thousands(*count))?;
            }
        }

        if !self.step_latency_ms.is_empty() {
            writeln!(f)?;
            writeln!(
                f,
                "  {:<16}{:>9}{:>9}{:>9}{:>9}{:>10}",
                "step (ms)", "p50", "p99", "max", "mean", "samples"
            )?;
            for (kind, l) in &self.step_latency_ms {
                writeln!(
                    f,
                    "  {kind:<16}{:>9.2}{:>9.2}{:>9.2}{:>9.2}{:>10}",
                    l.p50, l.p99, l.max, l.mean, l.count
                )?;
            }
        }

        if !self.errors.is_empty() {
            writeln!(f)?;
            writeln!(f, "  {:<32}{:>10}", "errors by kind", "count")?;
            for (kind, count) in &self.errors {
                writeln!(f, "  {kind:<32}{:>10}", thousands(*count))?;
            }
        }

        writeln!(f)?;
        writeln!(
            f,
            "  {:<32}{:>10}{:>9}",
            "answered by node", "answers", "share"
        )?;
        if self.nodes.is_empty() {
            writeln!(f, "  (no X-Node header seen)")?;
        }
        let answers: u64 = self.nodes.values().sum();
        for (node, count) in &self.nodes {
            let share = 100.0 * *count as f64 / answers.max(1) as f64;
            writeln!(f, "  {node:<32}{:>10}{share:>8.1}%", thousands(*count))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated_by_commas() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
