//! `agentswarm review PROJECT [TASK] [--approve | --reject COMMENT]`:
//! what waits for a person, the diff, the decision (docs/existing-repos.md,
//! "Review"). Through the daemon's API when it is up, else on the store
//! (and the project's repository) directly; the same views either way.

use crate::cli::{Cli, LimitArgs, OutputArgs, TapeArgs};
use crate::client::{project_path, Client};
use crate::commands::{load_config, open_store};
use anyhow::{bail, Result};
use std::process::ExitCode;
use swarm_protocol::api::{ReviewDiff, ReviewList, ReviewOutcome};
use swarm_protocol::{ProjectId, TaskId};

/// What the command was asked to do.
pub struct ReviewArgs<'a> {
    pub project: &'a str,
    pub task: Option<&'a str>,
    pub approve: bool,
    pub reject: Option<&'a str>,
    pub json: bool,
}

fn task_path(project: &str, task: &str) -> Result<String> {
    let ok = !task.is_empty()
        && task
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !task.starts_with('.');
    if !ok {
        bail!("{task:?} is not a task id; `agentswarm review {project}` lists the tasks that wait");
    }
    Ok(format!("{}/tasks/{task}", project_path(project)?))
}

pub async fn review(cli: &Cli, args: ReviewArgs<'_>, tape: &TapeArgs) -> Result<ExitCode> {
    let config = load_config(cli, &LimitArgs::default(), None, None)?;
    let id = ProjectId::new(args.project);
    let decision = match (args.approve, args.reject) {
        (true, Some(_)) => bail!("give --approve or --reject, not both"),
        (true, None) => Some(None),
        (false, Some(c)) => {
            if let Some(why) = swarm_engine::review::comment_problem(c) {
                bail!("{why}");
            }
            Some(Some(c))
        }
        (false, None) => None,
    };
    if let Some(client) = Client::discover(&config).await? {
        let project = project_path(id.as_str())?;
        let base = match args.task {
            Some(t) => task_path(id.as_str(), t)?,
            None => format!("{project}/delivery"),
        };
        match decision {
            Some(None) => {
                let o: ReviewOutcome = client
                    .post(&format!("{base}/approve"), &serde_json::json!({}))
                    .await?;
                print_outcome(&o, args.json);
            }
            Some(Some(comment)) => {
                let o: ReviewOutcome = client
                    .post(
                        &format!("{base}/reject"),
                        &serde_json::json!({"comment": comment}),
                    )
                    .await?;
                print_outcome(&o, args.json);
            }
            None => match args.task {
                Some(_) => print_diff(&client.get(&format!("{base}/review")).await?, args.json),
                None => {
                    let list: ReviewList = client.get(&format!("{project}/review")).await?;
                    let whole = if list.delivery_waiting {
                        Some(client.get(&format!("{base}/review")).await?)
                    } else {
                        None
                    };
                    print_list(&list, whole.as_ref(), args.json);
                }
            },
        }
        return Ok(ExitCode::SUCCESS);
    }
    let store = open_store(&config)?;
    let r = swarm_engine::review::Reviewer::new(store.as_ref(), &config);
    match (args.task, decision) {
        (Some(t), Some(None)) => print_outcome(&r.approve_task(&id, &TaskId::new(t))?, args.json),
        (Some(t), Some(Some(c))) => {
            print_outcome(&r.reject_task(&id, &TaskId::new(t), c)?, args.json)
        }
        (Some(t), None) => print_diff(&r.task_diff(&id, &TaskId::new(t))?, args.json),
        (None, Some(None)) => print_outcome(&r.approve_delivery(&id)?, args.json),
        (None, Some(Some(c))) => {
            // A follow-up round with the comment as its goal, run here as
            // `run --continue` would (no daemon is up to run it).
            let outcome = r.reject_delivery(&id, c)?;
            print_outcome(&outcome, args.json);
            return crate::commands::continue_in_foreground(
                cli,
                &id,
                c,
                &OutputArgs {
                    json: args.json,
                    ..Default::default()
                },
                tape,
            )
            .await;
        }
        (None, None) => {
            let list = r.list(&id)?;
            let whole = if list.delivery_waiting {
                Some(r.delivery_diff(&id)?)
            } else {
                None
            };
            print_list(&list, whole.as_ref(), args.json);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_outcome(o: &ReviewOutcome, json: bool) {
    if json {
        println!("{}", serde_json::to_string(o).unwrap_or_default());
    } else {
        println!("{}", esc(&o.message));
    }
}

fn counts(added: Option<u64>, removed: Option<u64>) -> String {
    match (added, removed) {
        (Some(a), Some(r)) => format!("+{a} -{r}"),
        _ => "binary".into(),
    }
}

fn print_list(list: &ReviewList, whole: Option<&ReviewDiff>, json: bool) {
    if json {
        let mut v = serde_json::to_value(list).unwrap_or_default();
        if let (Some(obj), Some(d)) = (v.as_object_mut(), whole) {
            obj.insert(
                "delivery".into(),
                serde_json::to_value(d).unwrap_or_default(),
            );
        }
        println!("{v}");
        return;
    }
    let p = &list.project;
    if list.tasks.is_empty() && !list.delivery_waiting {
        println!(
            "project {p}: nothing waits for review (review = {})",
            list.review
        );
        return;
    }
    for t in &list.tasks {
        println!(
            "{} (attempt {}): {} — commit {}",
            t.task,
            t.attempt,
            esc(&t.title),
            short(&t.commit)
        );
        if let Some(s) = t.summary.as_deref().filter(|s| !s.trim().is_empty()) {
            println!("  {}", esc(s.trim().lines().next().unwrap_or_default()));
        }
        for f in &t.files {
            println!("  {} ({})", esc(&f.path), counts(f.added, f.removed));
        }
        println!(
            "  agentswarm review {p} {}    # the diff; --approve, or --reject \"what to change\"",
            t.task
        );
    }
    if let Some(d) = whole {
        println!(
            "project {p}: the delivery waits for review: the whole change from the base {} to main {}",
            short(&d.base),
            short(&d.commit)
        );
        print_files(d);
        println!(
            "agentswarm review {p} --approve    # write the branch (and push it); or --reject \"what to change\" for a follow-up round"
        );
    }
}

fn print_diff(d: &ReviewDiff, json: bool) {
    if json {
        println!("{}", serde_json::to_string(d).unwrap_or_default());
        return;
    }
    match (&d.task, d.attempt) {
        (Some(t), Some(a)) => println!(
            "task {t} attempt {a}: commit {} against {} (where it left main; main is at {} now)",
            short(&d.commit),
            short(&d.base),
            short(&d.main)
        ),
        _ => println!(
            "the delivery: main {} against the base {}",
            short(&d.commit),
            short(&d.base)
        ),
    }
    print_files(d);
}

fn print_files(d: &ReviewDiff) {
    println!("{} file(s) changed", d.files.len());
    for f in &d.files {
        println!("\n=== {} ({})", esc(&f.path), counts(f.added, f.removed));
        for line in f.diff.lines() {
            println!("{}", safe_line(line));
        }
    }
}

/// A model-written line as the terminal gets it: tabs kept, every other
/// control character (an escape sequence, a carriage return) escaped.
fn safe_line(line: &str) -> String {
    line.split('\t')
        .map(|part| esc(part).into_owned())
        .collect::<Vec<_>>()
        .join("\t")
}

fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    swarm_protocol::text::escape_control(s)
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_line_keeps_its_tabs_and_loses_its_escape_sequences() {
        assert_eq!(safe_line("+\tx = 1"), "+\tx = 1");
        assert_eq!(safe_line("+\u{1b}]0;owned\u{7}\r"), "+\\e]0;owned\\x07\\r");
    }
}
