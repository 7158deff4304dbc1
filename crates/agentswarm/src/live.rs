//! The live view of `run`, `resume` and `demo` in a terminal: an overall bar
//! (tasks done of the project's total), one line per running task (id,
//! attempt, elapsed time, turn, last tool), the model totals (calls, tokens,
//! cost, worker slots) and, while either holds work back, the resource gate
//! or the rate limit. The lines the plain output prints (task done/failed,
//! verify results, the project's end, errors — tool calls only with
//! `--show-tools`) are printed above the bars, so the scrollback keeps the
//! story.
//!
//! Sources: the engine's progress broadcast for the story lines, and every
//! [`TICK`] the engine's live worker table, its status snapshot and the
//! store (tasks, usage, why the project waits).

use crate::output::one_line;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use swarm_engine::{Engine, Progress};
use swarm_protocol::text::escape_control;
use swarm_protocol::{ProjectId, TaskId, TaskKind, TaskState};
use tokio::sync::broadcast;

/// How often the bars are refreshed.
const TICK: Duration = Duration::from_millis(250);
/// The store and the status snapshot (which reads `/proc`) are read every
/// this many ticks, and at the next tick after a task changes state.
const SLOW_EVERY: u32 = 4;

/// The overall line before the plan is known, and after.
const NO_PLAN: &str = "{prefix:.bold} (no plan yet){msg}";
const WITH_PLAN: &str = "{prefix:.bold} [{bar:30.cyan/blue}] {pos}/{len} done{msg}";

/// The view on screen now, for [`release_terminal`].
static ACTIVE: Mutex<Option<MultiProgress>> = Mutex::new(None);
/// Set by [`release_terminal`]: the view stops touching its bars.
static RELEASED: AtomicBool = AtomicBool::new(false);

/// Whether the live view can be drawn: stdout is a terminal that can move
/// its cursor (`TERM` set and not `dumb`), and `--no-progress` was not given.
pub fn wanted(no_progress: bool) -> bool {
    let dumb = std::env::var("TERM").map_or(true, |t| t.is_empty() || t == "dumb");
    !no_progress && !dumb && std::io::stdout().is_terminal()
}

/// Stops drawing for good and moves below the bars, so that what is printed
/// next (the Ctrl-C messages on stderr) is not drawn over; the rest of the
/// run prints plain lines. The bars are left on screen as they were: a `^C`
/// echoed by the terminal has already moved the cursor past them (a line
/// of the bars fills the width), so clearing them would miss a line.
pub fn release_terminal() {
    if let Some(mp) = deactivate() {
        mp.set_draw_target(ProgressDrawTarget::hidden());
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out);
        let _ = out.flush();
    }
}

/// Stops the view's drawing; returns the bars if they were still drawn.
fn deactivate() -> Option<MultiProgress> {
    RELEASED.store(true, Ordering::SeqCst);
    ACTIVE.lock().unwrap_or_else(PoisonError::into_inner).take()
}

/// The live view of one project's run.
pub struct LiveView {
    project: ProjectId,
    show_tools: bool,
    rx: broadcast::Receiver<Progress>,
    started: Instant,
    mp: MultiProgress,
    overall: ProgressBar,
    totals: ProgressBar,
    held: ProgressBar,
    held_shown: bool,
    /// Whether the project has tasks (the overall bar is drawn).
    planned: bool,
    workers: HashMap<(TaskId, u32), ProgressBar>,
    kinds: HashMap<TaskId, TaskKind>,
    ticks: u32,
    /// The progress channel has closed (no more story lines).
    closed: bool,
    /// A task changed state since the store was last read.
    dirty: bool,
}

impl LiveView {
    /// Draws the (empty) bars on stdout.
    pub fn start(engine: &Engine, project: &ProjectId, show_tools: bool) -> Self {
        let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stdout_with_hz(10));
        let overall = mp.add(ProgressBar::new(0).with_style(style(NO_PLAN)));
        overall.set_prefix("tasks");
        let totals = mp.add(ProgressBar::new(0).with_style(style("{msg}")));
        // Not drawn until it is inserted (a new bar would draw on stderr).
        let held = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden())
            .with_style(style("{msg:.yellow}"));
        RELEASED.store(false, Ordering::SeqCst);
        *ACTIVE.lock().unwrap_or_else(PoisonError::into_inner) = Some(mp.clone());
        let mut view = Self {
            project: project.clone(),
            show_tools,
            rx: engine.subscribe(),
            started: Instant::now(),
            mp,
            overall,
            totals,
            held,
            held_shown: false,
            planned: false,
            workers: HashMap::new(),
            kinds: HashMap::new(),
            ticks: 0,
            closed: false,
            dirty: false,
        };
        view.refresh(engine, true);
        view
    }

    /// Drives `run` to its end while keeping the view up to date.
    pub async fn watch<F: Future>(&mut self, engine: &Engine, run: F) -> F::Output {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tokio::pin!(run);
        loop {
            tokio::select! {
                out = &mut run => return out,
                msg = self.rx.recv(), if !self.closed => {
                    self.closed = matches!(msg, Err(broadcast::error::RecvError::Closed));
                    // The counts are read again at the next tick: the run
                    // future is polled by this loop, so it stays short.
                    self.dirty |= self.story(msg);
                }
                _ = tick.tick() => {
                    self.ticks = (self.ticks + 1) % SLOW_EVERY;
                    let slow = self.dirty || self.ticks == 0;
                    self.dirty = false;
                    self.refresh(engine, slow);
                }
            }
        }
    }

    /// Prints what is still queued, then clears the bars (the report follows).
    pub fn finish(mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(p) => {
                    self.story(Ok(p));
                }
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    self.story(Err(broadcast::error::RecvError::Lagged(n)));
                }
                Err(
                    broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed,
                ) => break,
            }
        }
        if deactivate().is_some() {
            let _ = self.mp.clear();
            self.mp.set_draw_target(ProgressDrawTarget::hidden());
        }
    }

    /// Prints one progress event above the bars (as the plain output would);
    /// returns whether it was a task state change.
    fn story(&mut self, msg: Result<Progress, broadcast::error::RecvError>) -> bool {
        let (line, state_change) = match msg {
            Ok(p) => {
                if p.kind == "tool" && !self.show_tools {
                    return false;
                }
                let secs = self.started.elapsed().as_secs_f64();
                (
                    format!("{secs:7.2}s  {}", escape_control(&p.message)),
                    p.kind == "task_state",
                )
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                (format!("          … {n} progress lines skipped"), true)
            }
            Err(broadcast::error::RecvError::Closed) => return false,
        };
        if self.mp.is_hidden() {
            // After Ctrl-C (see `release_terminal`): plain lines.
            println!("{line}");
        } else {
            let _ = self.mp.println(line);
        }
        state_change
    }

    /// Updates the bars: the worker lines every tick, the rest (store and
    /// status snapshot) when `slow`.
    fn refresh(&mut self, engine: &Engine, slow: bool) {
        if RELEASED.load(Ordering::SeqCst) {
            return;
        }
        if slow {
            self.refresh_slow(engine);
        }
        let cols = columns();
        let now = swarm_store::now_ms();
        let live: Vec<_> = engine
            .live_workers()
            .into_iter()
            .filter(|w| w.project == self.project)
            .collect();
        let keys: Vec<(TaskId, u32)> = live.iter().map(|w| (w.task.clone(), w.attempt)).collect();
        self.workers.retain(|key, bar| {
            let keep = keys.contains(key);
            if !keep {
                bar.finish_and_clear();
                self.mp.remove(bar);
            }
            keep
        });
        let width = live
            .iter()
            .map(|w| w.task.as_str().len())
            .max()
            .unwrap_or(0);
        for w in &live {
            let key = (w.task.clone(), w.attempt);
            let bar = match self.workers.get(&key) {
                Some(bar) => bar.clone(),
                None => {
                    let bar = self.mp.insert_before(
                        &self.totals,
                        ProgressBar::new(0).with_style(style("  {spinner:.green} {msg}")),
                    );
                    self.workers.insert(key, bar.clone());
                    bar
                }
            };
            let doing = if self.kinds.get(&w.task) == Some(&TaskKind::Verify) {
                "running the verify commands".to_owned()
            } else {
                match (&w.last_tool, w.turns) {
                    (Some(tool), turn) => format!("turn {turn}  {}", escape_control(tool)),
                    (None, 0) => "starting".to_owned(),
                    (None, turn) => format!("turn {turn}  thinking"),
                }
            };
            let attempt = if w.attempt > 1 {
                format!("  (attempt {})", w.attempt)
            } else {
                String::new()
            };
            // The template adds 4 columns: "  ⠂ ".
            bar.set_message(fit(
                &format!(
                    "{:<width$}  {:>6}  {doing}{attempt}",
                    w.task.as_str(),
                    elapsed(now - w.started_ms),
                ),
                cols.saturating_sub(4),
            ));
            bar.tick();
        }
        let secs = self.started.elapsed().as_secs();
        self.overall.set_message(format!(
            " · {} running · {}",
            live.len(),
            elapsed(i64::try_from(secs).unwrap_or(0) * 1000)
        ));
    }

    fn refresh_slow(&mut self, engine: &Engine) {
        let cols = columns();
        let store = engine.store();
        let mut waiting = None;
        let mut review = None;
        if let Ok(tasks) = store.tasks(&self.project) {
            review = review_line(&self.project, &tasks);
            let done = tasks.iter().filter(|t| t.state == TaskState::Done).count();
            let failed = tasks
                .iter()
                .filter(|t| matches!(t.state, TaskState::Failed | TaskState::Blocked))
                .count();
            if !self.planned && !tasks.is_empty() {
                self.overall.set_style(style(WITH_PLAN));
                self.planned = true;
            }
            self.overall.set_length(tasks.len() as u64);
            self.overall.set_position(done as u64);
            self.overall.set_prefix(if failed > 0 {
                format!("tasks ({failed} failed)")
            } else {
                "tasks".to_owned()
            });
            self.kinds = tasks.into_iter().map(|t| (t.id, t.kind)).collect();
        }
        if let Ok(p) = store.project(&self.project) {
            waiting = p.waiting.filter(|_| !p.state.is_terminal());
        }
        let status = engine.swarm_status();
        if let Ok(usage) = store.usage(&self.project) {
            let (calls, tin, tout, cost) = usage.iter().fold((0, 0, 0, 0.0), |a, u| {
                (
                    a.0 + u.calls,
                    a.1 + u.input_tokens,
                    a.2 + u.output_tokens,
                    a.3 + u.cost_usd,
                )
            });
            let unpriced = usage.iter().any(|u| u.unpriced_calls > 0);
            let cost = match (cost > 0.0, unpriced) {
                (_, false) => format!("${cost:.4}"),
                (true, true) => format!("${cost:.4} + unpriced"),
                (false, true) => "cost unknown".to_owned(),
            };
            self.totals.set_message(fit(
                &format!(
                    "model: {calls} calls · {} tokens ({tin} in, {tout} out) · {cost} · workers {}/{}",
                    tin + tout,
                    status.workers_running,
                    status.workers_cap
                ),
                cols,
            ));
        }
        let mut held = held_lines(waiting.as_deref(), &status);
        held.extend(review);
        if held.is_empty() {
            if self.held_shown {
                self.held.set_message("");
                self.mp.remove(&self.held);
                self.held_shown = false;
            }
        } else {
            if !self.held_shown {
                self.held = self.mp.insert_after(&self.totals, self.held.clone());
                self.held_shown = true;
            }
            let lines: Vec<String> = held.iter().map(|l| fit(l, cols)).collect();
            self.held.set_message(lines.join("\n"));
        }
    }
}

/// The tasks of `project` waiting for a person's review, and the command
/// that shows them; none when no task waits.
pub fn review_line(
    project: &swarm_protocol::ProjectId,
    tasks: &[swarm_store::TaskRecord],
) -> Option<String> {
    let waiting: Vec<&str> = tasks
        .iter()
        .filter(|t| t.state == TaskState::Review)
        .map(|t| t.id.as_str())
        .collect();
    (!waiting.is_empty()).then(|| {
        format!(
            "waiting for review: {} — `agentswarm review {project}` lists them, `agentswarm review {project} TASK --approve` merges one",
            waiting.join(", ")
        )
    })
}

/// What holds work back now, one line each: the project's `waiting`
/// (else a closed resource gate while tasks are ready), providers out of
/// quota, model requests waiting for the rate limit. Shared by the live
/// view and the plain output's heartbeat.
pub fn held_lines(waiting: Option<&str>, status: &swarm_engine::SwarmStatus) -> Vec<String> {
    let mut held = Vec::new();
    match waiting {
        Some(w) => held.push(one_line(w, 200)),
        None if !status.gate.open && status.ready_tasks > 0 => held.push(format!(
            "waiting: resource gate closed: {}",
            status.gate.reason.as_deref().unwrap_or("?")
        )),
        None => {}
    }
    for n in status.nodes.iter().filter(|n| n.state != "up") {
        held.push(format!(
            "node {} is {}{}: its attempts run elsewhere",
            n.name,
            n.state,
            n.reason
                .as_deref()
                .map(|r| format!(" ({})", one_line(r, 160)))
                .unwrap_or_default()
        ));
    }
    for q in &status.quota_blocked {
        held.push(format!(
            "quota: provider {} is out of quota; work that needs it resumes in {} s",
            q.provider, q.resets_in_secs
        ));
    }
    let rl = &status.rate_limit;
    if rl.waiting > 0 {
        held.push(format!(
            "rate limit: {} model request(s) waiting ({} of {} per minute started)",
            rl.waiting, rl.started_in_window, rl.rpm
        ));
    }
    held
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// The terminal's width in columns.
fn columns() -> usize {
    usize::from(console::Term::stdout().size().1)
}

/// `s` cut to fewer than `cols` characters, so that a line of the bars never
/// wraps (the bars are redrawn by moving the cursor up their line count);
/// control characters are escaped, so none moves the cursor either.
fn fit(s: &str, cols: usize) -> String {
    let s = escape_control(s);
    let room = cols.saturating_sub(1).max(10);
    if s.chars().count() > room {
        let mut cut: String = s.chars().take(room - 1).collect();
        cut.push('…');
        cut
    } else {
        s.into_owned()
    }
}

/// `12s`, `3m05s`, `1h02m`.
fn elapsed(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn elapsed_reads_well() {
        assert_eq!(elapsed(-5), "0s");
        assert_eq!(elapsed(12_300), "12s");
        assert_eq!(elapsed(185_000), "3m05s");
        assert_eq!(elapsed(3_720_000), "1h02m");
    }

    #[test]
    fn long_lines_are_cut_to_the_terminal() {
        assert_eq!(fit("short", 80), "short");
        let long = "x".repeat(100);
        assert_eq!(fit(&long, 80).chars().count(), 79);
        assert!(fit(&long, 80).ends_with('…'));
        assert_eq!(fit(&"y".repeat(79), 80).chars().count(), 79);
        assert_eq!(fit("a\nb\u{1b}[2J", 80), "a\\nb\\e[2J");
    }

    #[test]
    fn every_template_parses() {
        for t in [
            NO_PLAN,
            WITH_PLAN,
            "{msg}",
            "{msg:.yellow}",
            "  {spinner:.green} {msg}",
        ] {
            assert!(ProgressStyle::with_template(t).is_ok(), "{t}");
        }
    }
}
