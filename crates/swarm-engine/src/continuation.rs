//! `agentswarm run --continue PROJECT "also do Y"`: more tasks on a
//! project's `main`, keeping what is done (docs/existing-repos.md).
//!
//! The planner is asked for code tasks for the new goal (with the map of
//! `main` and what is done); they get ids `c<n>-<id>`, the verify task
//! depends on them and runs again, and the delivery (for an existing
//! repository also the branch, patch and bundle) is written again.

use crate::{planner, prompts, repomap, verify, Engine, Error, ProjectLock, Result};
use std::collections::HashSet;
use swarm_protocol::{ProjectState, TaskId, TaskKind, TaskState};

/// Plans the follow-up `goal` and adds its tasks to the locked project,
/// leaving it ready for [`Engine::run`]. Returns the new tasks' ids. The
/// project must have a plan and not be queued, running or cancelled.
pub async fn continue_project(
    engine: &Engine,
    lock: &ProjectLock,
    goal: &str,
) -> Result<Vec<TaskId>> {
    let id = lock.id().clone();
    if let Some(why) = crate::goal_problem(goal) {
        return Err(Error::InvalidGoal(why));
    }
    let store = engine.store();
    let project = store.project(&id)?;
    match project.state {
        ProjectState::Done
        | ProjectState::Failed
        | ProjectState::Interrupted
        | ProjectState::BudgetExhausted
        | ProjectState::Paused => {}
        ProjectState::Cancelled => return Err(Error::Cancelled(id)),
        ProjectState::Queued | ProjectState::Planning | ProjectState::Running => {
            return Err(Error::NotResumable(id, project.state));
        }
    }
    if project.plan.is_none() {
        return Err(Error::Other(format!(
            "project {id} has no plan yet; `agentswarm resume {id}` plans and runs it"
        )));
    }
    let tasks = store.tasks(&id)?;
    let verify_id = tasks
        .iter()
        .find(|t| t.kind == TaskKind::Verify)
        .map(|t| t.id.clone())
        .ok_or_else(|| Error::Other(format!("project {id} has no verify task")))?;
    let existing: HashSet<TaskId> = tasks.iter().map(|t| t.id.clone()).collect();
    let done: Vec<(String, String, String)> = tasks
        .iter()
        .filter(|t| t.kind == TaskKind::Code && t.state == TaskState::Done)
        .map(|t| {
            (
                t.id.to_string(),
                t.title.clone(),
                t.summary.clone().unwrap_or_default(),
            )
        })
        .collect();
    let limits = engine.limits_of(&project.options);
    let root = engine.config().project_dir(id.as_str()).join("repo");
    let budget = engine.config().repos.map_tokens * repomap::CHARS_PER_TOKEN;
    let (map, instructions, main) = tokio::task::spawn_blocking(move || {
        (
            repomap::map(&root, budget),
            repomap::instructions(&root),
            swarm_git::review::rev_parse(&root, "main"),
        )
    })
    .await
    .map_err(|e| Error::Other(e.to_string()))?;
    let map = map?;
    // Where this round starts: its baseline verify runs there.
    let main = main?;
    let request = prompts::continue_request(
        goal,
        &project.goal,
        &done,
        &map,
        instructions.as_deref(),
        limits.max_tasks,
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let account = engine.gateway().open(&id, &limits, cancel)?;
    let outcome = if let Some(halt) = account.check_budget() {
        engine.gateway().close(&id);
        return Err(Error::Other(format!(
            "project {id} cannot be continued: {}; raise its budget with `agentswarm resume {id} --max-cost-usd N`",
            halt.message()
        )));
    } else {
        planner::continue_plan(engine.gateway(), &id, request, &existing, limits.max_tasks).await
    };
    engine.gateway().close(&id);
    store.set_planner_calls(&id, project.planner_calls + outcome.calls)?;
    let plan = outcome
        .result
        .map_err(|e| Error::Other(format!("project {id} was not continued: {e}")))?;
    let round = store.events_of_kind(&id, "continue", 10_000)?.len() + 1;
    let new = verify::prefixed_tasks(&plan, &format!("c{round}"), 0, &existing);
    store.add_fix_tasks(&id, project.fix_round, &new, &verify_id)?;
    let ids: Vec<TaskId> = new.iter().map(|t| t.id.clone()).collect();
    store.append_event(
        &id,
        None,
        "continue",
        &serde_json::json!({"round": round, "goal": goal, "tasks": ids, "main": main}),
    )?;
    // A done project runs again; a failed one is reopened by the run itself
    // (its failed tasks get fresh attempts).
    if project.state == ProjectState::Done {
        crate::run::set_project(engine, &id, ProjectState::Interrupted, None)?;
    }
    engine.emit(
        &id,
        None,
        "plan",
        format!(
            "continue {round}: {} task(s): {}",
            ids.len(),
            ids.iter()
                .map(TaskId::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    Ok(ids)
}
