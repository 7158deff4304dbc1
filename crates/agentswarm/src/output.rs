//! What the commands print: live progress lines, the final report, status tables.

use anyhow::Result;
use std::io::Write;
use swarm_engine::{Progress, RunReport};
use swarm_protocol::{ProjectId, TaskState};
use swarm_store::Store;
use tokio::sync::broadcast;

/// Prints one line per progress event (tool calls only with `show_tools`).
pub fn spawn_progress(
    mut rx: broadcast::Receiver<Progress>,
    show_tools: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        loop {
            match rx.recv().await {
                Ok(p) => {
                    if p.kind == "tool" && !show_tools {
                        continue;
                    }
                    let secs = started.elapsed().as_secs_f64();
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{secs:7.2}s  {}", p.message);
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
        println!("why: {e}");
    }
    if let Some(d) = &r.delivery {
        println!("delivery: {}", d.display());
    }
    if let Some(m) = &r.manifest {
        println!("manifest: {}", m.display());
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
        | swarm_protocol::ProjectState::Verifying
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
        println!("{v}");
    }
}

pub fn print_projects(store: &dyn Store, json: bool) -> Result<()> {
    let projects = store.list_projects()?;
    let mut rows = Vec::new();
    for p in &projects {
        let tasks = store.tasks(&p.id)?;
        let done = tasks.iter().filter(|t| t.state == TaskState::Done).count();
        rows.push((p, done, tasks.len()));
    }
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(p, done, total)| serde_json::json!({
                "project_id": p.id, "name": p.name, "state": p.state, "goal": p.goal,
                "tasks_done": done, "tasks_total": total, "delivery": p.delivery, "error": p.error,
            }))
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    if rows.is_empty() {
        println!("no projects yet");
        return Ok(());
    }
    println!(
        "{:<22} {:<12} {:>7}  {:<16} GOAL",
        "PROJECT", "STATE", "TASKS", "NAME"
    );
    for (p, done, total) in rows {
        println!(
            "{:<22} {:<12} {:>7}  {:<16} {}",
            p.id,
            p.state.as_str(),
            format!("{done}/{total}"),
            p.name,
            one_line(&p.goal, 60)
        );
    }
    Ok(())
}

/// A cost total, saying when some calls had no price in the config.
fn cost_text(cost: f64, unpriced: bool) -> String {
    match (cost > 0.0, unpriced) {
        (_, false) => format!("${cost:.4}"),
        (true, true) => format!("${cost:.4} + unpriced calls"),
        (false, true) => "cost unknown (no [prices] for the model)".to_owned(),
    }
}

pub fn print_project_status(store: &dyn Store, id: &ProjectId, json: bool) -> Result<()> {
    let p = store.project(id)?;
    let tasks = store.tasks(id)?;
    let usage = store.usage(id)?;
    let done = tasks.iter().filter(|t| t.state == TaskState::Done).count();
    // Every attempt with how it ended: exit code or signal, memory_limit,
    // timeout, interrupted, conflict…
    let mut attempts = Vec::new();
    for t in &tasks {
        attempts.push(store.attempts(id, &t.id)?);
    }
    if json {
        let v = serde_json::json!({
            "project_id": p.id, "name": p.name, "state": p.state, "goal": p.goal, "error": p.error,
            "tasks_total": tasks.len(), "tasks_done": done, "fix_rounds": p.fix_round,
            "planner_calls": p.planner_calls, "delivery": p.delivery, "final_commit": p.final_commit,
            "waiting": p.waiting,
            "usage": usage,
            "cost_usd": usage.iter().map(|u| u.cost_usd).sum::<f64>(),
            "tasks": tasks.iter().zip(&attempts).map(|(t, a)| serde_json::json!({
                "id": t.id, "title": t.title, "kind": t.kind.as_str(), "state": t.state,
                "attempts": t.attempt, "attempts_counted": t.attempts_counted,
                "last_error": t.last_error, "depends_on": t.depends_on, "commit": t.commit,
                "attempt_history": a.iter().map(|a| serde_json::json!({
                    "attempt": a.attempt, "outcome": a.outcome, "reason": a.reason, "turns": a.turns,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "project {}  {}  state: {}  tasks: {done}/{} done",
        p.id,
        p.name,
        p.state,
        tasks.len()
    );
    println!("goal: {}", one_line(&p.goal, 100));
    if let Some(e) = &p.error {
        println!("error: {e}");
    }
    if let Some(w) = p.waiting.as_ref().filter(|_| !p.state.is_terminal()) {
        println!("{w}");
    }
    if let Some(d) = &p.delivery {
        println!("delivery: {d}");
    }
    let (calls, tin, tout, cost) = usage.iter().fold((0, 0, 0, 0.0), |a, u| {
        (
            a.0 + u.calls,
            a.1 + u.input_tokens,
            a.2 + u.output_tokens,
            a.3 + u.cost_usd,
        )
    });
    println!(
        "model: {calls} calls, {tin} input + {tout} output tokens, {} (planner asked {} time(s))",
        cost_text(cost, usage.iter().any(|u| u.unpriced_calls > 0)),
        p.planner_calls
    );
    for u in &usage {
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
    for t in &tasks {
        let err = t
            .last_error
            .as_deref()
            .filter(|_| t.state != TaskState::Done)
            .unwrap_or("");
        println!(
            "{:<24} {:<9} {:>8}  {:<36} {}",
            t.id.as_str(),
            t.state.as_str(),
            t.attempt,
            one_line(&t.title, 36),
            one_line(err, 80)
        );
    }
    let ended: Vec<_> = attempts
        .iter()
        .flatten()
        .filter(|a| {
            !matches!(
                a.outcome,
                swarm_protocol::AttemptOutcome::Merged | swarm_protocol::AttemptOutcome::Running
            )
        })
        .collect();
    if !ended.is_empty() {
        println!();
        println!("attempts that did not land:");
        for a in ended {
            println!(
                "  {} #{}: {} — {}",
                a.task_id,
                a.attempt,
                a.outcome,
                one_line(a.reason.as_deref().unwrap_or(""), 100)
            );
        }
    }
    Ok(())
}

fn one_line(s: &str, n: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > n {
        format!(
            "{}…",
            flat.chars().take(n.saturating_sub(1)).collect::<String>()
        )
    } else {
        flat
    }
}
