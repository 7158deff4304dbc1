//! The texts sent to the model. Their first lines are contracts
//! (docs/plan.md, docs/worker-tools.md): a planner conversation starts with
//! `Goal: `, a fix request with `Verify failed`, a worker's first message
//! with `Task <id>: <title>` and holds an `Attempt: <n>` line.

use swarm_store::TaskRecord;

pub const PLANNER_SYSTEM: &str = "You are the planner of AgentSwarm, a swarm of coding agents. \
Split the user's software goal into a dependency graph of small tasks that separate agents can do \
in parallel, each in its own git worktree of the same repository, then merged into `main`.

Reply with the plan document only: one JSON object, bare or in a single ```json fenced block:
{\"name\": \"<slug>\", \"summary\": \"<one paragraph>\", \"tasks\": [
  {\"id\": \"<id>\", \"title\": \"<short>\", \"description\": \"<what to build, precisely>\",
   \"depends_on\": [\"<ids>\"], \"files\": [\"<paths it will write>\"], \"kind\": \"code\"},
  {\"id\": \"verify\", \"title\": \"Verify\", \"description\": \"…\", \"depends_on\": [\"…\"],
   \"kind\": \"verify\", \"commands\": [\"<shell commands that check the project, e.g. its tests>\"]}]}

Rules: ids match [a-z0-9][a-z0-9_-]{0,63} and are unique; every dependency is a task of the plan; no \
cycles; exactly one task of kind \"verify\", which depends directly or indirectly on every other task \
and whose commands exit 0 only when the project works; tasks that can run at the same time must not \
write the same files; a task depends on the tasks whose files it needs.";

pub const FIXER_SYSTEM: &str = "You are the planner of AgentSwarm. The project's verify commands \
failed on the merged `main`. Plan the smallest set of code tasks that fix the failure. Reply with a \
plan document only (bare JSON or one ```json block): {\"name\": \"<slug>\", \"summary\": \"…\", \
\"tasks\": [{\"id\", \"title\", \"description\", \"depends_on\", \"files\", \"kind\": \"code\"}]}. \
Do not include a verify task: verify runs again by itself after your tasks merge.";

pub const WORKER_SYSTEM: &str = "You are a coding agent in AgentSwarm. You work on one task in your \
own git worktree of the project; other agents work on other tasks in parallel and their work is \
merged into `main`. Use the tools: list_files, read_file, write_file, run_command (a shell command \
in the worktree root, with a timeout), and finish. Paths are relative to the worktree root. Do your \
task completely and only your task, check your work (run its tests when there are any), then call \
finish with a short summary of what you did and which files you changed. Everything you write is \
committed for you when you call finish.";

pub const CONTINUE_SYSTEM: &str = "You are the planner of AgentSwarm, a swarm of coding agents. \
The project below exists and its work so far is merged into `main`; the user asks for more. Plan the \
code tasks that do the new goal on top of `main`, split so that separate agents can do them in \
parallel, each in its own git worktree. Reply with a plan document only (bare JSON or one ```json \
block): {\"name\": \"<slug>\", \"summary\": \"…\", \"tasks\": [{\"id\", \"title\", \"description\", \
\"depends_on\", \"files\", \"kind\": \"code\"}]}. Tasks may edit existing files; tasks that can run \
at the same time must not write the same files. Do not include a verify task: the project's verify \
runs again by itself after your tasks merge.";

/// The first message of a follow-up plan (`run --continue`): the new goal
/// first (the contract of planner conversations), then what the project
/// is and what is done, then the repository map.
pub fn continue_request(
    goal: &str,
    project_goal: &str,
    done: &[(String, String, String)],
    map: &str,
    instructions: Option<&str>,
    max_tasks: u32,
) -> String {
    let mut s = format!(
        "Goal: {goal}\n\nThis continues an existing project whose goal was: {project_goal}\n\nDone and merged so far:\n"
    );
    for (id, title, summary) in done {
        s.push_str(&format!("- {id} ({title}): {}\n", summary.trim()));
    }
    s.push_str(&format!(
        "\n<repository-map>\n{}\n</repository-map>\n",
        map.trim_end()
    ));
    if let Some(i) = instructions {
        s.push_str(&format!(
            "\n<agent-instructions>\n{}\n</agent-instructions>\n",
            i.trim_end()
        ));
    }
    s.push_str(&format!(
        "\nPlan at most {max_tasks} tasks. Reply with the plan document only."
    ));
    s
}

/// The planner's first user message.
pub fn planner_request(goal: &str, max_tasks: u32) -> String {
    format!("Goal: {goal}\n\nPlan at most {max_tasks} tasks. Reply with the plan document only.")
}

/// The planner's first user message for a project on an existing
/// repository: the goal (still the first line), then the repository map
/// and the repository's instructions for agents.
pub fn planner_request_on_repo(
    goal: &str,
    max_tasks: u32,
    map: &str,
    instructions: Option<&str>,
    checks: Option<&crate::checks::Checks>,
) -> String {
    let mut s = format!(
        "Goal: {goal}\n\nThe project is an existing repository: work on what is there. Tasks may \
         edit existing files (name them in `files`); tasks that can run at the same time must \
         still not write the same files. The verify task's commands should be the repository's \
         own checks (its tests) where it has them.\n\n<repository-map>\n{}\n</repository-map>\n",
        map.trim_end()
    );
    if let Some(i) = instructions {
        s.push_str(&format!(
            "\nThe repository's instructions for agents (its workers get them too):\n<agent-instructions>\n{}\n</agent-instructions>\n",
            i.trim_end()
        ));
    }
    match checks {
        Some(c) => s.push_str(&format!(
            "\nThe repository's checks ({}): {}. Leave the verify task's `commands` empty to run \
             exactly these, or list the commands that check the goal.\n",
            c.why,
            c.commands
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        None => s.push_str(
            "\nNo test command was found in the repository: give the verify task the commands \
             that check the goal.\n",
        ),
    }
    s.push_str(&format!(
        "\nPlan at most {max_tasks} tasks. Reply with the plan document only."
    ));
    s
}

/// The worker's system prompt, with the repository's instructions for
/// agents when it has some.
pub fn worker_system(instructions: Option<&str>) -> String {
    match instructions {
        None => WORKER_SYSTEM.to_owned(),
        Some(i) => format!(
            "{WORKER_SYSTEM}\n\nThis project is an existing repository. Its own instructions for \
             agents follow; keep to them where they do not contradict your task.\n\
             <agent-instructions>\n{}\n</agent-instructions>",
            i.trim_end()
        ),
    }
}

/// A re-ask after a plan that broke rules.
pub fn planner_reask(problems: &[String]) -> String {
    let mut s = String::from("Your plan cannot be used; it has these problems:\n");
    for p in problems {
        s.push_str("- ");
        s.push_str(p);
        s.push('\n');
    }
    s.push_str("Reply with the corrected plan document only.");
    s
}

/// One verify command's result, for the fix request and the manifest.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CommandResult {
    pub command: String,
    pub exit: String,
    pub passed: bool,
    pub timed_out: bool,
    pub duration_ms: u64,
    pub output: String,
}

/// The fixer's first user message.
pub fn fix_request(goal: &str, round: u32, failed: &[CommandResult], max_tasks: u32) -> String {
    let mut s = format!(
        "Verify failed (fix round {round}).\n\nGoal of the project: {goal}\n\nFailing commands, run in a clean checkout of main:\n"
    );
    for r in failed.iter().filter(|r| !r.passed) {
        s.push_str(&format!(
            "\n$ {}\n{}\n{}\n",
            r.command,
            r.exit,
            r.output.trim_end()
        ));
    }
    s.push_str(&format!(
        "\nPlan at most {max_tasks} code tasks that fix this. Reply with the plan document only."
    ));
    s
}

/// The worker's first user message (contract: begins with `Task <id>: <title>`).
pub fn worker_prompt(task: &TaskRecord, goal: &str, deps: &[&TaskRecord], attempt: u32) -> String {
    let mut s = format!("Task {}: {}\nAttempt: {attempt}\n\n", task.id, task.title);
    if !task.description.trim().is_empty() {
        s.push_str(task.description.trim());
        s.push_str("\n\n");
    }
    if !task.files.is_empty() {
        s.push_str(&format!(
            "Files this task is expected to write: {}\n\n",
            task.files.join(", ")
        ));
    }
    s.push_str(&format!("Goal of the whole project: {goal}\n"));
    if deps.is_empty() {
        s.push_str("\nThis task depends on no other task.\n");
    } else {
        s.push_str(
            "\nWhat the tasks this one depends on produced (already merged in your worktree):\n",
        );
        for d in deps {
            // The changed files are listed in the background after a merge; a
            // dependent dispatched at once may see only the planned ones.
            let files = if !d.changed_files.is_empty() {
                d.changed_files.join(", ")
            } else if !d.files.is_empty() {
                format!("planned: {}", d.files.join(", "))
            } else {
                "see list_files".to_owned()
            };
            s.push_str(&format!(
                "- {} ({}): {} [files: {}]\n",
                d.id,
                d.title,
                d.summary.as_deref().unwrap_or("done").trim(),
                files
            ));
        }
    }
    if let Some(comment) = task.review_comment.as_deref().filter(|_| attempt > 1) {
        s.push_str(&format!(
            "\nA reviewer rejected an earlier attempt's change (it was not merged; your worktree holds \
             main without it) with this comment:\n<review-comment>\n{}\n</review-comment>\n\
             Do the task again, taking the comment into account.\n",
            comment.trim()
        ));
        if let Some(prev) = task.summary.as_deref().filter(|s| !s.trim().is_empty()) {
            s.push_str(&format!("What that attempt said it did: {}\n", prev.trim()));
        }
    } else if !task.conflict_paths.is_empty() {
        s.push_str(&format!(
            "\nYour previous attempt could not be merged: these paths conflicted with work merged into main \
             meanwhile: {}. Your worktree now holds the new main; read those files and redo your change on top of them.\n",
            task.conflict_paths.join(", ")
        ));
    } else if let Some(err) = task.last_error.as_deref().filter(|_| attempt > 1) {
        s.push_str(&format!("\nThe previous attempt failed: {err}\n"));
    }
    s
}
