//! Issue 13, section 4: names and text that reach an operator.
//!
//! Through the real binary, under every sandbox mechanism, a scripted model
//! tries each attack:
//!
//! - a command (`printf` in `run_command`) makes files whose names hold a
//!   newline (a spoofed manifest.txt line) and an ESC sequence, and the
//!   model sends raw ESC sequences in a command and a `write_file` path:
//!   manifest.txt keeps one line per archived file, and no ESC byte reaches
//!   the manifests, the run's output (with `--show-tools`) or `logs`;
//! - a command makes a file named like an API key: neither the archive nor
//!   a manifest carries the key;
//! - a command prints the configured key (built from two halves, so that it
//!   is never in the model's own arguments) and `read_file` reads it: no
//!   request the scripted server recorded holds it.
//!
//! Each attack is first shown to work with the defence off, as noted where
//! it is checked: against the raw strings (what the old manifest.txt line
//! and progress line were: the payload itself), against the repository's
//! `main`, which holds the files the commands made, and against the same
//! command run by the test, whose output holds the key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use swarm_exec::sandbox::facilities;
use swarm_testkit::RequestKind;

const KEY: &str = "test-key-not-a-real-secret";
/// Shaped like an OpenAI key; not one.
const KEY_SHAPED: &str = "sk-proj-FAKEFAKEFAKEFAKEFAKEFAKE1234";
const SPOOF_LINE: &str =
    "0000000000000000000000000000000000000000000000000000000000000000  6  spoofed.txt";

fn mechanisms() -> Vec<&'static str> {
    let required = std::env::var("AGENTSWARM_TEST_SANDBOXES").unwrap_or_default();
    let f = facilities();
    let mut out = Vec::new();
    for (name, why) in [
        ("landlock", f.landlock.as_ref().err()),
        ("bubblewrap", f.bubblewrap.as_ref().err()),
    ] {
        match why {
            None => out.push(name),
            Some(why) if required.split(',').any(|r| r.trim() == name) => {
                panic!("AGENTSWARM_TEST_SANDBOXES names {name}, but {why}")
            }
            Some(why) => eprintln!("skipping the {name} sandbox: {why}"),
        }
    }
    out
}

/// Every tool result of a task's conversation, in order.
fn all_tool_results(h: &Harness, task: &str) -> Vec<String> {
    let last = h
        .server
        .requests()
        .into_iter()
        .filter(|r| r.kind == RequestKind::Worker && r.task.as_deref() == Some(task))
        .max_by_key(|r| r.turn)
        .expect("the task asked the model");
    last.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn model_made_names_and_read_keys_never_reach_the_operator_or_the_model() {
    for mechanism in mechanisms() {
        let names = json!({"turns": [
            // Names made by a command: a newline that would add a manifest
            // line, an ESC sequence (clear screen, set the window title).
            run_turn(&format!(
                "printf 'hello\\n' > \"$(printf 'evil\\n{SPOOF_LINE}')\" && \
                 printf 'x\\n' > \"$(printf 'esc\\033[2J\\033]0;owned\\007.txt')\" && \
                 printf 'x\\n' > {KEY_SHAPED}.txt && echo MADE"
            )),
            // Raw ESC in what the model sends: a command, a path.
            run_turn("echo '\u{1b}[31mred\u{1b}[0m' && touch plain.txt"),
            write_turn("bell\u{7}\u{1b}[2J.txt", "x"),
            write_turn("ok.txt", "fine\n"),
            // The commit refuses the names with control characters; the
            // model is told, removes them and finishes again.
            finish_turn("made names \u{1b}[5mblink"),
            run_turn("rm -f -- evil* esc*"),
            finish_turn("made names \u{1b}[5mblink"),
        ]});
        let leak = json!({"turns": [
            // The configured key, put together by the command: the model's
            // arguments never hold it, only the output does.
            run_turn("printf 'OPENAI_API_KEY=test-key-not-a-%s\\n' 'real-secret' > leak.txt && cat leak.txt"),
            {"calls": [{"name": "read_file", "arguments": {"path": "leak.txt"}}]},
            run_turn("rm leak.txt"),
            finish_turn("read a key"),
        ]});
        let p = plan(
            "names",
            &[("names", &[]), ("leak", &[])],
            &["test -f ok.txt"],
        );
        let h = Harness::new(json!({
            "planner": [p],
            "tasks": {"names": names, "leak": leak},
        }));
        let out = h
            .cmd(&["run", "--json", "--show-tools", "make hostile names"])
            .env("AGENTSWARM_SANDBOX_MECHANISM", mechanism)
            .output()
            .unwrap();
        assert!(out.status.success(), "{mechanism}: {}", text(&out));
        let report = last_json_line(&out);
        assert_eq!(report["status"], "done", "{mechanism}: {}", text(&out));
        let project = report["project_id"].as_str().unwrap();
        let repo = h.repo(project);

        let results = all_tool_results(&h, "names");
        assert!(results[0].contains("MADE"), "{mechanism}: {}", results[0]);
        assert!(
            results[2].contains("control character (U+0007)"),
            "{mechanism}: write_file took a name with control characters: {}",
            results[2]
        );
        assert!(
            results[4].starts_with("error: the work was not committed"),
            "{mechanism}: the commit took names with control characters: {}",
            results[4]
        );

        // Defence off: the names were made and are on `main` (unless the
        // commit refused them); printed raw, the first would be two
        // manifest lines, the second holds an ESC.
        let raw_line = format!("{}  6  evil\n{SPOOF_LINE}\n", "0".repeat(64));
        assert_eq!(raw_line.lines().count(), 2, "the raw name splits a line");
        let tracked = git(&repo, &["ls-files", "-z"]);
        let on_main: Vec<&str> = tracked.split('\0').collect();
        assert!(
            on_main.contains(&format!("{KEY_SHAPED}.txt").as_str()),
            "{mechanism}: the key-shaped name is on main: {on_main:?}"
        );

        // Defence on: the delivery's manifests describe exactly its files,
        // one line each, and none of those names ships.
        let delivery = std::path::PathBuf::from(report["delivery"].as_str().unwrap());
        let payload = check_delivery(&delivery, "names");
        for name in payload.keys() {
            assert!(
                !name.contains('\n') && !name.contains('\u{1b}') && !name.contains(KEY_SHAPED),
                "{mechanism}: {name:?} shipped"
            );
        }
        assert!(payload.contains_key("ok.txt") && payload.contains_key("plain.txt"));
        let outputs = delivery.parent().unwrap();
        let txt = std::fs::read(outputs.join("manifest.txt")).unwrap();
        let manifest_json = std::fs::read(outputs.join("manifest.json")).unwrap();
        let archive = std::fs::read(&delivery).unwrap();
        let mut archive_raw = Vec::new();
        use std::io::Read;
        flate2::read::GzDecoder::new(&archive[..])
            .read_to_end(&mut archive_raw)
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&txt).contains(SPOOF_LINE.split("  ").last().unwrap())
                || !String::from_utf8_lossy(&txt)
                    .lines()
                    .any(|l| l == SPOOF_LINE)
        );
        for (what, bytes) in [
            ("manifest.txt", &txt),
            ("manifest.json", &manifest_json),
            ("the archive", &archive_raw),
        ] {
            assert!(!bytes.contains(&0x1b), "{mechanism}: ESC in {what}");
            assert!(
                !contains(bytes, KEY_SHAPED.as_bytes()),
                "{mechanism}: the key-shaped name is in {what}"
            );
            assert!(
                !contains(bytes, KEY.as_bytes()),
                "{mechanism}: the key in {what}"
            );
        }
        let manifest: Value = serde_json::from_slice(&manifest_json).unwrap();
        let excluded = manifest["excluded"].as_array().unwrap();
        assert!(
            excluded.iter().any(|e| e["path"] == "[REDACTED]"
                && e["reason"]
                    .as_str()
                    .unwrap()
                    .starts_with("its name holds an OpenAI-style key")),
            "{mechanism}: {excluded:?}"
        );

        // The run's output (progress with --show-tools) and `logs`: no ESC
        // and no line that is not the run's own.
        let logs = h.run(&["logs", project]);
        assert!(logs.status.success(), "{}", text(&logs));
        // stderr is the supervisor's log, which colours its own fields: it
        // must hold none of the model's sequences.
        let err = String::from_utf8_lossy(&out.stderr);
        for payload in [
            "\u{1b}[31mred",
            "\u{1b}[2J",
            "\u{1b}]0;owned",
            "\u{1b}[5mblink",
            "\u{7}",
        ] {
            assert!(
                !err.contains(payload),
                "{mechanism}: {payload:?} in stderr: {err}"
            );
        }
        assert!(!err.lines().any(|l| l.trim() == SPOOF_LINE));
        assert!(!err.contains(KEY), "{mechanism}: the key in stderr");
        for (what, bytes) in [("the run's stdout", &out.stdout), ("logs", &logs.stdout)] {
            assert!(
                !bytes.contains(&0x1b),
                "{mechanism}: ESC in {what}: {}",
                String::from_utf8_lossy(bytes)
            );
            assert!(!bytes.contains(&0x07), "{mechanism}: BEL in {what}");
            let s = String::from_utf8_lossy(bytes);
            assert!(
                !s.lines().any(|l| l.trim() == SPOOF_LINE),
                "{mechanism}: a spoofed line in {what}"
            );
            assert!(!s.contains(KEY), "{mechanism}: the key in {what}");
        }
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            shown.contains("\\e[31mred\\e[0m"),
            "{mechanism}: the tool line shows the ESC escaped: {shown}"
        );
        // Defence off: the raw event holds the ESC the model sent (what the
        // progress line printed before).
        let raw = h.run(&["logs", project, "--json"]);
        assert!(
            String::from_utf8_lossy(&raw.stdout).contains("\\u001b[31mred"),
            "{mechanism}: the event log keeps the raw text"
        );

        // The configured key: defence off, the command prints it...
        let sh = std::process::Command::new("sh")
            .arg("-c")
            .arg("printf 'OPENAI_API_KEY=test-key-not-a-%s\\n' 'real-secret'")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&sh.stdout).contains(KEY));
        // ...defence on, the model endpoint never sees it.
        let leak = all_tool_results(&h, "leak");
        assert!(
            leak[0].contains("OPENAI_API_KEY=[REDACTED]"),
            "{mechanism}: {}",
            leak[0]
        );
        assert!(
            leak[1].contains("OPENAI_API_KEY=[REDACTED]"),
            "{mechanism}: {}",
            leak[1]
        );
        for req in h.server.requests() {
            assert!(
                !req.body.to_string().contains(KEY),
                "{mechanism}: a request to the model holds the configured key"
            );
        }
        let transcripts = h
            .data_dir()
            .join("projects")
            .join(project)
            .join("transcripts");
        for entry in std::fs::read_dir(&transcripts).unwrap() {
            let t = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            assert!(!t.contains(KEY), "{mechanism}: a transcript holds the key");
        }
    }
}
