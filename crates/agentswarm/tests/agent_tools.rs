//! The built-in agent's tools and context policy end to end: the real
//! binary, its worker in the sandbox, and the scripted model server on
//! loopback (docs/worker-tools.md, docs/providers.md#context).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use swarm_testkit::RequestKind;

fn call(name: &str, arguments: Value) -> Value {
    json!({"calls": [{"name": name, "arguments": arguments}]})
}

/// The tool call the model made on `turn` (0-based), as the next request
/// carries it back.
fn call_arguments(h: &Harness, task: &str, turn: u32) -> String {
    let next = h
        .server
        .requests()
        .into_iter()
        .find(|r| {
            r.kind == RequestKind::Worker
                && r.task.as_deref() == Some(task)
                && r.turn == Some(turn + 1)
        })
        .expect("the request after the call");
    let messages = next.body["messages"].as_array().unwrap();
    let assistant = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "assistant")
        .unwrap();
    assistant["tool_calls"][0]["function"]["arguments"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// One task edits a 5,000-line file with `edit_file`, finds the change with
/// `search`, changes two files at once with `apply_patch`, lists and reads
/// pages; the merged `main` holds every change and verify checks them.
#[test]
fn the_editing_tools_work_through_the_model_server() {
    let make_big = "python3 -c \"open('big.py','w').write(''.join(f'value_{i} = {i}\\n' for i in range(1, 5001)))\"";
    let patch = "*** Begin Patch\n*** Add File: pkg/notes.py\n+NOTE = 'patched'\n*** Update File: big.py\n@@ value_4999 = 4999\n-value_5000 = 5000\n+value_5000 = -1\n*** End Patch";
    let p = plan(
        "tools",
        &[("t1", &[])],
        &[
            "python3 -c \"import big; assert big.value_2500 == 0 and big.value_5000 == -1 and big.value_1 == 1\"",
            "python3 -c \"import pkg.notes as n; assert n.NOTE == 'patched'\"",
        ],
    );
    let h = Harness::new(json!({
        "tasks": {"t1": {"turns": [
            run_turn(make_big),
            call("edit_file", json!({"path": "big.py", "old_string": "value_2500 = 2500\n", "new_string": "value_2500 = 0\n"})),
            call("search", json!({"pattern": "^value_2500 =", "glob": "*.py"})),
            call("apply_patch", json!({"patch": patch})),
            call("list_files", json!({"depth": 2})),
            call("read_file", json!({"path": "big.py", "start_line": 4998})),
            call("edit_file", json!({"path": "big.py", "old_string": "value_7 = 7\n", "new_string": "x\n", "insert_line": 3})),
            call("edit_file", json!({"path": "big.py", "old_string": "= 1", "new_string": "= 2"})),
            finish_turn("edited big.py and added pkg/notes.py"),
        ]}},
    }));
    let (out, report) = h.run_plan(&p, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(report["status"], "done", "{report}");

    let results = tool_results(&h, "t1");
    // edit_file: the edited region with line numbers, not the file.
    assert!(
        results[1].starts_with("edited big.py: replaced lines 2500-2500"),
        "{}",
        results[1]
    );
    assert!(
        results[1].contains("2500\tvalue_2500 = 0"),
        "{}",
        results[1]
    );
    assert!(results[1].len() < 1_000, "{} bytes", results[1].len());
    // search: path:line: text, with the count.
    assert!(
        results[2].contains("big.py:2500: value_2500 = 0"),
        "{}",
        results[2]
    );
    // apply_patch: both files, all or nothing.
    assert!(
        results[3].contains("pkg/notes.py") && results[3].contains("big.py"),
        "{}",
        results[3]
    );
    // list_files and read_file pages with numbered lines.
    assert!(
        results[4].contains("pkg/notes.py") && results[4].contains("big.py"),
        "{}",
        results[4]
    );
    assert!(
        results[5].starts_with("  4998\tvalue_4998 = 4998\n"),
        "{}",
        results[5]
    );
    assert!(
        results[5].contains("5000\tvalue_5000 = -1"),
        "{}",
        results[5]
    );
    // Errors the model can act on: both old_string and insert_line; a
    // string that is not unique shows the candidate lines.
    assert!(results[6].starts_with("error:"), "{}", results[6]);
    assert!(
        results[7].starts_with("error: old_string occurs 1111 times in `big.py`")
            && results[7].contains("    10\tvalue_10 = 10\n"),
        "{}",
        results[7]
    );

    // What the edit cost the model to send, against rewriting the file whole.
    let edit = call_arguments(&h, "t1", 1);
    let whole = std::fs::read(
        h.repo(report["project_id"].as_str().unwrap())
            .join("big.py"),
    )
    .map(|b| b.len())
    .unwrap_or(0);
    let main_file = git(
        &h.repo(report["project_id"].as_str().unwrap()),
        &["show", "main:big.py"],
    );
    assert!(main_file.contains("value_2500 = 0\n") && main_file.contains("value_5000 = -1"));
    let rewrite = json!({"path": "big.py", "content": main_file})
        .to_string()
        .len();
    assert!(
        edit.len() * 500 < rewrite,
        "edit_file sent {} bytes; write_file would send {rewrite} (worktree copy {whole})",
        edit.len()
    );
    assert!(
        h.server.violations().is_empty(),
        "{:?}",
        h.server.violations()
    );
}

/// A 300-turn attempt against a 32k-token window (the default for an
/// unknown model): every request stays inside it, the oldest turns are
/// summarised by the model, the task's first message and the latest turns
/// are kept whole, and the attempt still ends with its own `finish`.
#[test]
fn a_300_turn_attempt_stays_inside_a_32k_window_through_the_model_server() {
    const WINDOW_TOKENS: usize = 32_768;
    let make = "python3 -c \"open('f.txt','w').write(''.join(f'line {i:>5}: some code that the agent reads again\\n' for i in range(1, 3001)))\"";
    let mut turns = vec![run_turn(make)];
    for t in 1..299u32 {
        let from = (t as usize * 37) % 2900 + 1;
        turns.push(call(
            "read_file",
            json!({"path": "f.txt", "start_line": from, "end_line": from + 60}),
        ));
    }
    turns.push(finish_turn("read the file 298 times"));
    let p = plan("long", &[("t1", &[])], &["test -f f.txt"]);
    let h = Harness::new(json!({"tasks": {"t1": {"turns": turns}}}));
    let (out, report) = h.run_plan(&p, &["--max-turns", "300", "--max-attempts", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(report["status"], "done", "{report}");

    let reqs = h.server.requests();
    let worker: Vec<_> = reqs
        .iter()
        .filter(|r| r.kind == RequestKind::Worker && r.task.as_deref() == Some("t1"))
        .collect();
    assert_eq!(
        worker.len(),
        300,
        "one request a turn, through every condensation"
    );
    let summaries = reqs
        .iter()
        .filter(|r| r.kind == RequestKind::Summary)
        .count();
    assert!(summaries > 0, "the model was asked for summaries");
    let task_message = worker[0].body["messages"][1]["content"].clone();
    let mut largest = 0;
    for r in &worker {
        // The estimate's own measure (4 bytes a token) of the whole body,
        // tool declarations and JSON included: a bound from above.
        let tokens = r.body.to_string().len() / 4;
        largest = largest.max(tokens);
        assert!(
            tokens < WINDOW_TOKENS,
            "turn {:?}: about {tokens} tokens",
            r.turn
        );
        assert_eq!(
            r.body["messages"][1]["content"], task_message,
            "the task message is kept"
        );
    }
    assert!(
        largest > WINDOW_TOKENS / 2,
        "{largest}: the window was never nearly full"
    );
    // The last request: a summary message, then the latest turns whole.
    let last = worker.last().unwrap();
    let messages = last.body["messages"].as_array().unwrap();
    assert!(
        messages[2]["content"]
            .as_str()
            .unwrap()
            .starts_with("[Condensed:"),
        "{}",
        messages[2]
    );
    let last_read = &messages[messages.len() - 2];
    assert_eq!(last_read["role"], "assistant");
    assert!(
        last_read["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap()
            .contains(&format!("\"start_line\":{}", (298 * 37) % 2900 + 1)),
        "{last_read}"
    );
    // The transcript's tool events record the condensations.
    let logs = text(&h.run(&["logs", report["project_id"].as_str().unwrap(), "t1"]));
    assert!(logs.contains("context condensed from about"), "{logs}");
    assert!(
        h.server.violations().is_empty(),
        "{:?}",
        h.server.violations()
    );
}

/// A model that repeats itself: the same call with the same result. It is
/// told what was seen, then the attempt ends `stuck` (counted); the next
/// attempt's prompt says why, and that attempt does the work.
#[test]
fn a_looping_attempt_is_nudged_then_ends_stuck_and_the_next_one_is_told() {
    let same = run_turn("cat missing.txt");
    let p = plan("loop", &[("t1", &[])], &["test -f done.txt"]);
    let h = Harness::new(json!({"tasks": {"t1": {"attempts": [
        vec![same; 12],
        vec![write_turn("done.txt", "ok\n"), finish_turn("done")],
    ]}}}));
    let (out, report) = h.run_plan(&p, &["--max-attempts", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(report["status"], "done", "{report}");
    let status = h.status_json(report["project_id"].as_str().unwrap());
    let t1 = &status["tasks"][0];
    let first = &t1["attempt_history"][0];
    assert_eq!(first["outcome"], "stuck", "{t1}");
    let reason = first["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("stuck: the same `run_command` call"),
        "{reason}"
    );
    assert_eq!(t1["attempts_counted"], 1, "a stuck attempt counts: {t1}");

    let worker: Vec<_> = h
        .server
        .requests()
        .into_iter()
        .filter(|r| r.kind == RequestKind::Worker)
        .collect();
    // The nudge reached the model within the first attempt.
    let nudged = worker.iter().filter(|r| r.attempt == Some(1)).any(|r| {
        r.body["messages"].as_array().unwrap().iter().any(|m| {
            m["role"] == "user"
                && m["content"]
                    .as_str()
                    .is_some_and(|c| c.contains("same result"))
        })
    });
    assert!(nudged, "the model was told it repeats itself");
    let ended_at = worker.iter().filter(|r| r.attempt == Some(1)).count();
    assert!(
        ended_at < 12,
        "the attempt ended before its script did ({ended_at} turns)"
    );
    // The second attempt's task message says what went wrong.
    let second = worker.iter().find(|r| r.attempt == Some(2)).unwrap();
    let prompt = second.body["messages"][1]["content"].as_str().unwrap();
    assert!(
        prompt.contains("The previous attempt failed: stuck:"),
        "{prompt}"
    );
}
