//! Parsing and validating plan documents (contract 1, docs/plan.md).

use std::collections::{HashMap, HashSet};
use swarm_protocol::ids::is_valid_task_id;
use swarm_protocol::{Plan, TaskId, TaskKind};

/// Extracts the plan document from a planner reply: the whole content as
/// bare JSON, or the content of exactly one ```json fenced block.
pub fn extract_plan(content: &str) -> Result<Plan, Vec<String>> {
    let text = content.trim();
    let json = if text.starts_with('{') {
        text.to_owned()
    } else {
        let blocks = fenced_json_blocks(text);
        match blocks.len() {
            1 => blocks[0].clone(),
            0 => {
                return Err(vec![
                    "the reply is neither a bare JSON object nor one ```json fenced block".into(),
                ])
            }
            n => {
                return Err(vec![format!(
                    "the reply holds {n} ```json blocks; send exactly one"
                )])
            }
        }
    };
    serde_json::from_str::<Plan>(&json)
        .map_err(|e| vec![format!("the plan is not valid plan JSON: {e}")])
}

/// A plan document a person wrote (`run --plan FILE`, the API's `plan`):
/// plain JSON, with errors that say where, and nothing about model replies.
pub fn plan_document(text: &str) -> Result<Plan, Vec<String>> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| vec![format!("it is not JSON: {e}")])?;
    if !value.is_object() {
        return Err(vec![
            "it must be a JSON object with `name`, `summary` and `tasks` (docs/plan.md)".into(),
        ]);
    }
    // Read again from the text: serde's errors then carry the line and column.
    serde_json::from_str::<Plan>(text).map_err(|e| {
        vec![format!(
            "it does not have the shape of a plan (docs/plan.md, docs/plan.schema.json): {e}"
        )]
    })
}

/// The bodies of ```json … ``` blocks (a bare ``` fence whose body starts with `{` counts too).
fn fenced_json_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if let Some(lang) = t.strip_prefix("```") {
            let lang = lang.trim();
            let mut body = String::new();
            let mut closed = false;
            for l in lines.by_ref() {
                if l.trim_start().starts_with("```") {
                    closed = true;
                    break;
                }
                body.push_str(l);
                body.push('\n');
            }
            if closed
                && (lang.eq_ignore_ascii_case("json")
                    || (lang.is_empty() && body.trim_start().starts_with('{')))
            {
                out.push(body);
            }
        }
    }
    out
}

/// Every rule a plan breaks, in a form the planner can act on. Empty = valid.
pub fn validate_plan(plan: &Plan, max_tasks: u32) -> Vec<String> {
    let mut problems = Vec::new();
    if plan.name.trim().is_empty() {
        problems.push("`name` is empty; give the deliverable a slug such as \"wordstats\"".into());
    } else if !is_slug(&plan.name) {
        problems.push(format!(
            "`name` {:?} is not a slug: use lowercase letters, digits, '-' and '_' only (at most 64)",
            plan.name
        ));
    }
    if plan.tasks.is_empty() {
        problems.push("the plan has no tasks".into());
        return problems;
    }
    if plan.tasks.len() > max_tasks as usize {
        problems.push(format!(
            "the plan has {} tasks; at most {max_tasks} are allowed",
            plan.tasks.len()
        ));
    }
    common_task_rules(&plan.tasks, &HashSet::new(), &mut problems);

    let verify: Vec<&TaskId> = plan
        .tasks
        .iter()
        .filter(|t| t.kind == TaskKind::Verify)
        .map(|t| &t.id)
        .collect();
    match verify.as_slice() {
        [] => problems.push(
            "there is no task of kind \"verify\"; add exactly one that depends on all others"
                .into(),
        ),
        [v] => {
            let reach = reachable(plan, v);
            let missing: Vec<&str> = plan
                .tasks
                .iter()
                .filter(|t| &t.id != *v && !reach.contains(&t.id))
                .map(|t| t.id.as_str())
                .collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "the verify task {v} must depend, directly or not, on every other task; it does not reach: {}",
                    missing.join(", ")
                ));
            }
            if plan.tasks.iter().any(|t| t.depends_on.contains(v)) {
                problems.push(format!(
                    "no task may depend on the verify task {v}; it must come last"
                ));
            }
            if plan
                .tasks
                .iter()
                .find(|t| &t.id == *v)
                .is_some_and(|t| t.commands.is_empty())
            {
                problems.push(format!("the verify task {v} has no `commands`; list the shell commands that check the project"));
            }
        }
        many => problems.push(format!(
            "there are {} verify tasks ({}); exactly one is allowed",
            many.len(),
            many.iter()
                .map(|i| i.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
    for t in &plan.tasks {
        if t.kind == TaskKind::Code && !t.commands.is_empty() {
            problems.push(format!(
                "task {}: `commands` are only for the verify task",
                t.id
            ));
        }
    }
    problems
}

/// Rules for the tasks of a fix round: no verify task; dependencies may name
/// other fix tasks or tasks that already exist (`existing`).
pub fn validate_fix_tasks(plan: &Plan, existing: &HashSet<TaskId>, max_tasks: u32) -> Vec<String> {
    let mut problems = Vec::new();
    if plan.tasks.is_empty() {
        problems
            .push("the fix plan has no tasks; add at least one task that fixes the failure".into());
        return problems;
    }
    if plan.tasks.len() > max_tasks as usize {
        problems.push(format!(
            "the fix plan has {} tasks; at most {max_tasks} are allowed",
            plan.tasks.len()
        ));
    }
    common_task_rules(&plan.tasks, existing, &mut problems);
    for t in &plan.tasks {
        if t.kind == TaskKind::Verify {
            problems.push(format!("task {}: a fix plan must not contain a verify task; the engine runs verify again itself", t.id));
        }
    }
    problems
}

fn common_task_rules(
    tasks: &[swarm_protocol::PlanTask],
    existing: &HashSet<TaskId>,
    problems: &mut Vec<String>,
) {
    let mut seen = HashSet::new();
    for t in tasks {
        if !is_valid_task_id(t.id.as_str()) {
            problems.push(format!(
                "task id {:?} is invalid: ids match [a-z0-9][a-z0-9_-]{{0,63}}",
                t.id.as_str()
            ));
        }
        if !seen.insert(&t.id) {
            problems.push(format!("task id {} is used more than once", t.id));
        }
        if t.title.trim().is_empty() {
            problems.push(format!("task {} has an empty title", t.id));
        }
    }
    let ids: HashSet<&TaskId> = tasks.iter().map(|t| &t.id).collect();
    for t in tasks {
        for d in &t.depends_on {
            if d == &t.id {
                problems.push(format!("task {} depends on itself", t.id));
            } else if !ids.contains(d) && !existing.contains(d) {
                problems.push(format!(
                    "task {} depends on {d}, which is not a task of the plan",
                    t.id
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(tasks) {
        problems.push(format!(
            "the dependencies form a cycle: {}",
            cycle
                .iter()
                .map(|i| i.as_str())
                .collect::<Vec<_>>()
                .join(" -> ")
        ));
    }
}

fn is_slug(s: &str) -> bool {
    s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
        && !s.starts_with(['-', '_'])
}

/// Every task `from` depends on, directly or not.
fn reachable(plan: &Plan, from: &TaskId) -> HashSet<TaskId> {
    let deps: HashMap<&TaskId, &Vec<TaskId>> =
        plan.tasks.iter().map(|t| (&t.id, &t.depends_on)).collect();
    let mut seen = HashSet::new();
    let mut stack = vec![from.clone()];
    while let Some(id) = stack.pop() {
        if let Some(ds) = deps.get(&id) {
            for d in ds.iter() {
                if seen.insert(d.clone()) {
                    stack.push(d.clone());
                }
            }
        }
    }
    seen
}

/// A dependency cycle among `tasks` (ignoring unknown ids), as a path that
/// starts and ends at the same id.
fn find_cycle(tasks: &[swarm_protocol::PlanTask]) -> Option<Vec<TaskId>> {
    // A duplicated id (reported on its own) keeps the dependencies of all its copies.
    let mut deps: HashMap<&TaskId, Vec<TaskId>> = HashMap::new();
    for t in tasks {
        deps.entry(&t.id)
            .or_default()
            .extend(t.depends_on.iter().cloned());
    }
    // 0 = unvisited, 1 = on the stack, 2 = done
    let mut mark: HashMap<&TaskId, u8> = HashMap::new();
    for t in tasks {
        if mark.get(&t.id).copied().unwrap_or(0) != 0 {
            continue;
        }
        // iterative DFS with an explicit path
        let mut path: Vec<(&TaskId, usize)> = vec![(&t.id, 0)];
        mark.insert(&t.id, 1);
        while let Some((node, idx)) = path.last().copied() {
            let children = deps.get(node).map(|v| v.as_slice()).unwrap_or(&[]);
            if idx < children.len() {
                if let Some(top) = path.last_mut() {
                    top.1 += 1;
                }
                let child = &children[idx];
                let Some((child_key, _)) = deps.get_key_value(child) else {
                    continue;
                };
                match mark.get(child_key).copied().unwrap_or(0) {
                    0 => {
                        mark.insert(child_key, 1);
                        path.push((child_key, 0));
                    }
                    1 => {
                        let start = path.iter().position(|(n, _)| *n == *child_key).unwrap_or(0);
                        let mut cycle: Vec<TaskId> =
                            path[start..].iter().map(|(n, _)| (*n).clone()).collect();
                        cycle.push((*child_key).clone());
                        return Some(cycle);
                    }
                    _ => {}
                }
            } else {
                mark.insert(node, 2);
                path.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_protocol::PlanTask;

    fn task(id: &str, deps: &[&str], kind: TaskKind) -> PlanTask {
        PlanTask {
            id: id.into(),
            title: format!("do {id}"),
            description: String::new(),
            depends_on: deps.iter().map(|d| TaskId::from(*d)).collect(),
            files: vec![],
            kind,
            commands: if kind == TaskKind::Verify {
                vec!["true".into()]
            } else {
                vec![]
            },
            agent: None,
            requires: vec![],
        }
    }

    fn plan(tasks: Vec<PlanTask>) -> Plan {
        Plan {
            name: "demo".into(),
            summary: String::new(),
            tasks,
        }
    }

    #[test]
    fn a_good_plan_passes() {
        let p = plan(vec![
            task("a", &[], TaskKind::Code),
            task("b", &["a"], TaskKind::Code),
            task("c", &["a"], TaskKind::Code),
            task("verify", &["b", "c"], TaskKind::Verify),
        ]);
        assert_eq!(validate_plan(&p, 64), Vec::<String>::new());
    }

    #[test]
    fn each_rule_is_reported() {
        let p = plan(vec![
            task("a", &["c"], TaskKind::Code),
            task("b", &["a"], TaskKind::Code),
            task("c", &["b"], TaskKind::Code),
            task("d", &["nope"], TaskKind::Code),
            task("Bad Id", &[], TaskKind::Code),
            task("a", &[], TaskKind::Code),
        ]);
        let problems = validate_plan(&p, 3).join("\n");
        for needle in [
            "cycle",
            "nope",
            "Bad Id",
            "more than once",
            "no task of kind \"verify\"",
            "at most 3",
        ] {
            assert!(
                problems.contains(needle),
                "missing {needle:?} in:\n{problems}"
            );
        }
    }

    #[test]
    fn verify_must_reach_everything_and_come_last() {
        let p = plan(vec![
            task("a", &[], TaskKind::Code),
            task("b", &[], TaskKind::Code),
            task("verify", &["a"], TaskKind::Verify),
            task("after", &["verify"], TaskKind::Code),
        ]);
        let problems = validate_plan(&p, 64).join("\n");
        assert!(problems.contains("does not reach: b"), "{problems}");
        assert!(problems.contains("must come last"), "{problems}");
        let two = plan(vec![
            task("v1", &[], TaskKind::Verify),
            task("v2", &["v1"], TaskKind::Verify),
        ]);
        assert!(validate_plan(&two, 64).join("\n").contains("exactly one"));
    }

    #[test]
    fn extracts_bare_and_fenced_json() {
        let bare = r#"{"name":"x","summary":"","tasks":[]}"#;
        assert_eq!(extract_plan(bare).unwrap().name, "x");
        let fenced = "Here is the plan:\n```json\n{\"name\":\"y\",\"tasks\":[]}\n```\nGood luck.";
        assert_eq!(extract_plan(fenced).unwrap().name, "y");
        assert!(extract_plan("no plan here").is_err());
        let two = "```json\n{\"name\":\"a\",\"tasks\":[]}\n```\n```json\n{\"name\":\"b\",\"tasks\":[]}\n```";
        assert!(extract_plan(two).unwrap_err()[0].contains("2"));
        let unknown = r#"{"name":"x","tasks":[],"extra":1}"#;
        assert!(extract_plan(unknown).unwrap_err()[0].contains("extra"));
    }

    #[test]
    fn fix_plans_may_depend_on_existing_tasks_but_not_verify() {
        let existing: HashSet<TaskId> = ["a".into()].into_iter().collect();
        let p = plan(vec![task("fix", &["a"], TaskKind::Code)]);
        assert!(validate_fix_tasks(&p, &existing, 64).is_empty());
        let p = plan(vec![task("v", &[], TaskKind::Verify)]);
        assert!(validate_fix_tasks(&p, &existing, 64)
            .join("")
            .contains("must not contain a verify"));
    }
}
