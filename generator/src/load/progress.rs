//! Live progress of a load run on standard error: an `indicatif` line redrawn in place
//! when standard error is a terminal, plain lines every few seconds otherwise (logs, CI).

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::stats::Stats;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// A live line on a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// Plain lines every [`LINE_INTERVAL`].
    Lines,
    /// Nothing.
    Off,
}

/// How often a plain progress line is printed.
pub const LINE_INTERVAL: Duration = Duration::from_secs(5);
/// How often the live line is redrawn.
const REDRAW_INTERVAL: Duration = Duration::from_millis(250);

/// A running progress display; [`Progress::finish`] stops it.
pub struct Progress {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts showing `stats` of a run that began at `start` and may last `planned`.
    pub fn start(
        mode: ProgressMode,
        stats: Arc<Mutex<Stats>>,
        start: Instant,
        planned: Option<Duration>,
    ) -> Self {
        let live = match mode {
            ProgressMode::Off => {
                return Self {
                    stop: None,
                    task: None,
                };
            }
            ProgressMode::Auto => std::io::stderr().is_terminal(),
            ProgressMode::Lines => false,
        };
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let bar = live.then(|| live_bar(planned));
            let mut ticks =
                tokio::time::interval(if live { REDRAW_INTERVAL } else { LINE_INTERVAL });
            // The first tick is immediate; nothing has happened yet.
            ticks.tick().await;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = ticks.tick() => {}
                }
                let line = status_line(&stats, start);
                match &bar {
                    Some(bar) => {
                        if let Some(planned) = planned {
                            bar.set_position(start.elapsed().min(planned).as_millis() as u64);
                        }
                        bar.set_message(line);
                    }
                    None => eprintln!("progress: {line}"),
                }
            }
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
        });
        Self {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the display and clears the live line.
    pub async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

fn live_bar(planned: Option<Duration>) -> ProgressBar {
    let bar = match planned {
        Some(planned) => {
            let bar = ProgressBar::new(planned.as_millis() as u64);
            if let Ok(style) = ProgressStyle::with_template("{bar:30} {elapsed_precise} {msg}") {
                bar.set_style(style);
            }
            bar
        }
        None => {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}") {
                bar.set_style(style);
            }
            bar
        }
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar
}

/// Rate (over the last full second and on average), sales, errors and p99 so far, in
/// one line.
fn status_line(stats: &Mutex<Stats>, start: Instant) -> String {
    let elapsed = start.elapsed().as_secs_f64();
    let last_full_second = start.elapsed().as_secs().checked_sub(1);
    let Ok(s) = stats.lock() else {
        return String::from("(statistics unavailable)");
    };
    let rate = if elapsed > 0.0 {
        s.sent as f64 / elapsed
    } else {
        0.0
    };
    let now = last_full_second.map_or(0, |second| s.timeline.sent_in(second));
    format!(
        "{elapsed:.1}s rate {now}/s (mean {rate:.1}/s) sent {} in flight {} sold {} tickets in \
         {} purchases, sold out {}, errors {}, p99 {:.1} ms",
        s.sent,
        s.sent.saturating_sub(s.completed),
        s.tickets_sold,
        s.purchases,
        s.sold_out,
        s.errors_total(),
        s.latency().p99
    )
}
