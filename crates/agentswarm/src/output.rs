//! What the commands print: live progress (plain lines, or the live view of
//! [`crate::live`] in a terminal), the final report, status tables.

use crate::cli::OutputArgs;
use std::future::Future;
use std::io::Write;
use swarm_engine::{Engine, Progress, RunReport};
use swarm_protocol::text::escape_control;
use swarm_protocol::{api, ProjectId, TaskState};
use tokio::sync::broadcast;

/// What shows a run's progress: the live view in a terminal
/// ([`crate::live`]), else plain lines ([`spawn_progress`]) with a
/// heartbeat ([`Heartbeat`]).
pub enum Printer {
    Plain(tokio::task::JoinHandle<()>, Heartbeat),
    Live(Box<crate::live::LiveView>),
}

impl Printer {
    /// The live view when stdout is a terminal and `--no-progress` was not
    /// given; plain lines otherwise.
    pub fn start(engine: &Engine, project: &ProjectId, out: &OutputArgs) -> Self {
        if crate::live::wanted(out.no_progress) {
            Printer::Live(Box::new(crate::live::LiveView::start(
                engine,
                project,
                out.show_tools,
            )))
        } else {
            let beat = Heartbeat::new(project.clone());
            Printer::Plain(
                spawn_progress(engine.subscribe(), out.show_tools, beat.clone()),
                beat,
            )
        }
    }

    /// Runs `run` to its end, keeping the live view (if any) up to date, or
    /// the plain output from going silent.
    pub async fn watch<F: Future>(&mut self, engine: &Engine, run: F) -> F::Output {
        match self {
            Printer::Plain(_, beat) => {
                tokio::pin!(run);
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    tokio::select! {
                        out = &mut run => return out,
                        _ = tick.tick() => beat.check(engine),
                    }
                }
            }
            Printer::Live(view) => view.watch(engine, run).await,
        }
    }

    /// Prints what is still queued and takes the bars off the screen: what
    /// follows (the report) is printed below the story.
    pub async fn finish(self) {
        match self {
            Printer::Plain(handle, _) => {
                // Let the printer drain what is queued.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                handle.abort();
            }
            Printer::Live(view) => view.finish(),
        }
    }
}

/// Plain output never stays silent longer than [`Heartbeat::SILENCE`]: when
/// no progress line was printed for that long, one line says what the run
/// is doing or what holds it back (the rate limit, the gate, a provider's
/// quota, a planner or worker waiting on its model).
#[derive(Clone)]
pub struct Heartbeat {
    project: ProjectId,
    started: std::time::Instant,
    /// Milliseconds after `started` of the last line printed.
    last: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Heartbeat {
    pub const SILENCE: std::time::Duration = std::time::Duration::from_secs(10);

    fn new(project: ProjectId) -> Self {
        Self {
            project,
            started: std::time::Instant::now(),
            last: Default::default(),
        }
    }

    fn printed(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Prints the heartbeat line if the output was silent long enough.
    fn check(&self, engine: &Engine) {
        let now = self.started.elapsed();
        let last =
            std::time::Duration::from_millis(self.last.load(std::sync::atomic::Ordering::Relaxed));
        if now.saturating_sub(last) < Self::SILENCE {
            return;
        }
        let line = self.describe(engine);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{:7.2}s  {}", now.as_secs_f64(), escape_control(&line));
        drop(out);
        self.printed();
    }

    fn describe(&self, engine: &Engine) -> String {
        let project = engine.store().project(&self.project).ok();
        let waiting = project.as_ref().and_then(|p| p.waiting.clone());
        let status = engine.swarm_status();
        let mut parts = crate::live::held_lines(waiting.as_deref(), &status);
        if let Ok(tasks) = engine.store().tasks(&self.project) {
            parts.extend(crate::live::review_line(&self.project, &tasks));
        }
        let now = swarm_store::now_ms();
        let workers: Vec<String> = engine
            .live_workers()
            .into_iter()
            .filter(|w| w.project == self.project)
            .map(|w| {
                let secs = (now - w.started_ms).max(0) / 1000;
                match (w.turns, &w.last_tool) {
                    (0, _) if w.pid.is_none() => format!("{} verify {secs} s", w.task),
                    (0, _) => format!("{} attempt {}: starting, {secs} s", w.task, w.attempt),
                    (t, Some(tool)) => format!(
                        "{} attempt {}: turn {t}, last tool {tool}, {secs} s",
                        w.task, w.attempt
                    ),
                    (t, None) => format!("{} attempt {}: turn {t}, {secs} s", w.task, w.attempt),
                }
            })
            .collect();
        if !workers.is_empty() {
            parts.push(format!("running: {}", workers.join("; ")));
        }
        match project.map(|p| p.state) {
            Some(swarm_protocol::ProjectState::Planning) if parts.is_empty() => {
                parts.push("planning: waiting for the planner model's answer".into())
            }
            Some(swarm_protocol::ProjectState::Running) if parts.is_empty() => {
                parts.push("merging and checking: no worker is running".into())
            }
            _ => {}
        }
        if parts.is_empty() {
            parts.push("working".into());
        }
        format!("still: {}", parts.join(" · "))
    }
}

/// Prints one line per progress event (tool calls only with `show_tools`).
pub fn spawn_progress(
    mut rx: broadcast::Receiver<Progress>,
    show_tools: bool,
    beat: Heartbeat,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(p) => {
                    if p.kind == "tool" && !show_tools {
                        continue;
                    }
                    let secs = beat.started.elapsed().as_secs_f64();
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{secs:7.2}s  {}", escape_control(&p.message));
                    beat.printed();
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    println!("          … {n} progress lines skipped");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    })
}

pub fn print_report(r: &RunReport, json: bool) {
    println!();
    println!(
        "project {}: {} — {}/{} tasks done",
        r.project_id, r.status, r.tasks_done, r.tasks_total
    );
    if let Some(e) = &r.error {
        println!("why: {}", escape_control(e));
    }
    if let Some(d) = &r.delivery {
        // A run that did not finish ships what main holds: say so.
        let files = r
            .manifest
            .as_ref()
            .and_then(|m| std::fs::read(m).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["files"].as_array().map(Vec::len));
        match (r.status, files) {
            (swarm_protocol::ProjectState::Done, _) => println!("delivery: {}", d.display()),
            (_, Some(0)) => println!(
                "delivery: {} (empty: no task's work was merged)",
                d.display()
            ),
            _ => println!(
                "delivery: {} (partial: what main holds after {} of {} tasks)",
                d.display(),
                r.tasks_done,
                r.tasks_total
            ),
        }
    }
    if let Some(m) = &r.manifest {
        println!("manifest: {}", m.display());
    }
    if let Some(b) = &r.branch {
        println!("branch: {b}");
    }
    if let Some(p) = &r.patch {
        println!("patch: {}", p.display());
    }
    match r.status {
        swarm_protocol::ProjectState::Interrupted | swarm_protocol::ProjectState::Paused => {
            println!("resume with: agentswarm resume {}", r.project_id);
        }
        swarm_protocol::ProjectState::BudgetExhausted => println!(
            "resume with a higher budget: agentswarm resume {} --max-cost-usd N (or --max-tokens N)",
            r.project_id
        ),
        swarm_protocol::ProjectState::Queued
        | swarm_protocol::ProjectState::Planning
        | swarm_protocol::ProjectState::Running
        | swarm_protocol::ProjectState::Done
        | swarm_protocol::ProjectState::Failed
        | swarm_protocol::ProjectState::Cancelled => {}
    }
    if json {
        let v = serde_json::json!({
            "project_id": r.project_id,
            "status": r.status,
            "delivery": r.delivery,
            "manifest": r.manifest,
            "tasks_total": r.tasks_total,
            "tasks_done": r.tasks_done,
            "error": r.error,
        });
        let mut v = v;
        // On an existing repository (`--repo`): where the work went.
        if let (Some(obj), true) = (v.as_object_mut(), r.base.is_some()) {
            obj.insert("branch".into(), serde_json::json!(r.branch));
            obj.insert("base".into(), serde_json::json!(r.base));
            obj.insert("patch".into(), serde_json::json!(r.patch));
        }
        println!("{v}");
    }
}

/// `agentswarm status` without a project: the list, from the daemon's API
/// or the store (the same view either way).
pub fn print_projects(list: &api::ProjectList, json: bool) {
    if json {
        let v: Vec<serde_json::Value> = list
            .projects
            .iter()
            .map(|p| serde_json::json!({
                "project_id": p.id, "name": p.name, "state": p.state, "goal": p.goal,
                "tasks_done": p.tasks_done, "tasks_total": p.tasks_total, "delivery": p.delivery, "error": p.error,
            }))
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return;
    }
    if list.projects.is_empty() {
        println!("no projects yet");
        return;
    }
    println!(
        "{:<22} {:<12} {:>7}  {:<16} GOAL",
        "PROJECT", "STATE", "TASKS", "NAME"
    );
    for p in &list.projects {
        println!(
            "{:<22} {:<12} {:>7}  {:<16} {}",
            p.id,
            p.state.as_str(),
            format!("{}/{}", p.tasks_done, p.tasks_total),
            escape_control(&p.name),
            one_line(&p.goal, 60)
        );
    }
}

/// A cost total, saying when some calls had no price in the config.
fn cost_text(cost: f64, unpriced: bool) -> String {
    match (cost > 0.0, unpriced) {
        (_, false) => format!("${cost:.4}"),
        (true, true) => format!("${cost:.4} + unpriced calls"),
        (false, true) => "cost unknown (no [prices] for the model)".to_owned(),
    }
}

/// `agentswarm status PROJECT`, from the daemon's API or the store (the
/// same view either way).
pub fn print_project_status(d: &api::ProjectDetail, json: bool) {
    let p = &d.project;
    let usage = &d.usage;
    if json {
        let v = serde_json::json!({
            "project_id": p.id, "name": p.name, "state": p.state, "goal": p.goal, "error": p.error,
            "tasks_total": p.tasks_total, "tasks_done": p.tasks_done, "fix_rounds": d.fix_round,
            "planner_calls": d.planner_calls, "delivery": p.delivery, "final_commit": d.final_commit,
            "waiting": p.waiting,
            "source": d.source,
            "review": d.options.get("review").cloned().unwrap_or(serde_json::Value::Null),
            "tasks_in_review": d.tasks.iter().filter(|t| t.state == TaskState::Review).map(|t| t.id.as_str()).collect::<Vec<_>>(),
            "usage": usage,
            "cost_usd": d.totals.cost_usd,
            "tasks": d.tasks.iter().map(|t| serde_json::json!({
                "id": t.id, "title": t.title, "kind": t.kind, "state": t.state,
                "attempts": t.attempt, "attempts_counted": t.attempts_counted,
                "last_error": t.last_error, "depends_on": t.depends_on, "commit": t.commit,
                "attempt_history": t.attempts.iter().map(|a| serde_json::json!({
                    "attempt": a.attempt, "outcome": a.outcome, "reason": a.reason, "turns": a.turns,
                    "started_ms": a.started_ms, "ended_ms": a.ended_ms,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        println!("{v}");
        return;
    }
    println!(
        "project {}  {}  state: {}  tasks: {}/{} done",
        p.id,
        escape_control(&p.name),
        p.state,
        p.tasks_done,
        p.tasks_total
    );
    println!("goal: {}", one_line(&p.goal, 100));
    if let Some(e) = &p.error {
        println!("error: {}", escape_control(e));
    }
    if let Some(w) = p.waiting.as_ref().filter(|_| !p.state.is_terminal()) {
        println!("{}", escape_control(w));
    }
    if let Some(path) = &p.delivery {
        println!("delivery: {path}");
    }
    if let Some(src) = &d.source {
        println!(
            "repository: {} at {} ({})",
            escape_control(&src.repo),
            escape_control(src.base.as_deref().unwrap_or("HEAD")),
            src.base_commit
                .as_deref()
                .map_or("not cloned yet", |c| c.get(..12).unwrap_or(c))
        );
        let branch = swarm_protocol::source::delivery_branch(&p.id);
        match (&src.branch, src.held) {
            (_, true) => println!(
                "delivery branch: {branch} waits for review (`agentswarm review {}`)",
                p.id
            ),
            (Some(b), false) => println!(
                "delivery branch: {b}{}",
                if src.push { " (with --push)" } else { "" }
            ),
            (None, false) => println!("delivery branch: {branch} (written when the run ends)"),
        }
    }
    let in_review: Vec<&str> = d
        .tasks
        .iter()
        .filter(|t| t.state == TaskState::Review)
        .map(|t| t.id.as_str())
        .collect();
    if !in_review.is_empty() {
        println!(
            "waiting for review: {} (`agentswarm review {} TASK` shows a diff; --approve or --reject \"…\")",
            in_review.join(", "),
            p.id
        );
    }
    println!(
        "model: {} calls, {} input + {} output tokens, {} (planner asked {} time(s))",
        d.totals.calls,
        d.totals.input_tokens,
        d.totals.output_tokens,
        cost_text(
            d.totals.cost_usd,
            usage.iter().any(|u| u.unpriced_calls > 0)
        ),
        d.planner_calls
    );
    for u in usage {
        println!(
            "  {:<8} {:<36} {:>5} calls ({} failed, {} retries)  {} in + {} out tokens  {}",
            u.role,
            format!("{}/{}", u.provider, u.model),
            u.calls,
            u.failed_calls,
            u.retries,
            u.input_tokens,
            u.output_tokens,
            cost_text(u.cost_usd, u.unpriced_calls > 0)
        );
    }
    println!();
    println!(
        "{:<24} {:<9} {:>8}  {:<36} LAST ERROR",
        "TASK", "STATE", "ATTEMPTS", "TITLE"
    );
    for t in &d.tasks {
        let err = t
            .last_error
            .as_deref()
            .filter(|_| t.state != TaskState::Done)
            .unwrap_or("");
        println!(
            "{:<24} {:<9} {:>8}  {:<36} {}",
            t.id,
            t.state.as_str(),
            t.attempt,
            one_line(&t.title, 36),
            one_line(err, 80)
        );
    }
    let ended: Vec<(&api::Task, &api::Attempt)> = d
        .tasks
        .iter()
        .flat_map(|t| t.attempts.iter().map(move |a| (t, a)))
        .filter(|(_, a)| {
            !matches!(
                a.outcome,
                swarm_protocol::AttemptOutcome::Merged
                    | swarm_protocol::AttemptOutcome::Running
                    | swarm_protocol::AttemptOutcome::Review
            )
        })
        .collect();
    if !ended.is_empty() {
        println!();
        println!("attempts that did not land:");
        for (t, a) in ended {
            println!(
                "  {} #{}: {} — {}",
                t.id,
                a.attempt,
                a.outcome,
                one_line(a.reason.as_deref().unwrap_or(""), 100)
            );
        }
    }
}

/// `s` on one line of at most `n` characters: runs of whitespace become one
/// space and the other control characters are escaped (docs/outputs.md).
pub(crate) fn one_line(s: &str, n: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let flat = escape_control(&flat).into_owned();
    if flat.chars().count() > n {
        format!(
            "{}…",
            flat.chars().take(n.saturating_sub(1)).collect::<String>()
        )
    } else {
        flat
    }
}

/// The daemon's worker nodes (`GET /api/v1/status`), a line each, when it
/// has any besides `local`.
pub fn print_nodes(status: &serde_json::Value) {
    let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
    if nodes.len() < 2 {
        return;
    }
    println!();
    println!("nodes:");
    for n in &nodes {
        let mut line = format!(
            "  {:<12} {:<10} {}/{} busy",
            n["name"].as_str().unwrap_or("?"),
            n["state"].as_str().unwrap_or("?"),
            n["busy"],
            n["slots"]
        );
        if let (Some(m), Some(l)) = (n["free_memory_mb"].as_u64(), n["load_1m"].as_f64()) {
            line.push_str(&format!(", free memory {m} MB, load {l:.2}"));
        }
        if let Some(s) = n["sandbox"].as_str() {
            line.push_str(&format!(", sandbox {s}"));
        }
        for key in ["reason", "gate"] {
            if let Some(r) = n[key].as_str() {
                line.push_str(&format!(" — {}", one_line(r, 160)));
            }
        }
        println!("{}", escape_control(&line));
    }
}
