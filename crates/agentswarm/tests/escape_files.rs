//! Issue 13, section 2: the worker's file tools race a process that swaps a
//! directory for a symlink (`renameat2(RENAME_EXCHANGE)`), and that process
//! survives the leftover kill by forking and `setsid`ing in a loop.
//!
//! - [`a_symlink_swap_wins_against_check_then_open_but_not_against_the_tools`]
//!   shows the attack working with the defence off — the old check-then-open
//!   path (`check_then_read`/`check_then_write` below are the old
//!   `paths::resolve` check followed by `std::fs::read`/`write`, which is
//!   how the tools opened files before) against a flipper the test runs
//!   itself — then failing against `swarm_agent::Tools`, with `openat2` and
//!   with the fallback walk, at the first, a middle and the last component.
//! - [`a_leftover_flipper_reaches_nothing_through_read_file`] runs the whole
//!   attack through the real binary under every sandbox mechanism: a task's
//!   command leaves a re-`setsid`ing flipper behind, then reads
//!   `flip/secrets.env` 300 times; the flipper must be gone after the
//!   command and no read may return the secrets file (nor may any request
//!   the scripted server recorded hold it).
//!   The leftover kill with the defence off is shown in
//!   crates/swarm-exec/tests/orphans.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use swarm_agent::paths::beneath::Resolver;
use swarm_agent::Tools;
use swarm_testkit::RequestKind;

const CANARY: &str = "CANARY-FROM-OUTSIDE-THE-WORKTREE";

/// Exchanges two names as fast as it can.
const EXCHANGER: &str = r#"
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
a, b = sys.argv[1].encode(), sys.argv[2].encode()
while True:
    libc.renameat2(-100, a, -100, b, 2)  # AT_FDCWD, RENAME_EXCHANGE
"#;

struct Flipper(Child);

impl Flipper {
    fn start(dir: &Path, a: &str, b: &str) -> Flipper {
        let script = dir.join("exchanger.py");
        std::fs::write(&script, EXCHANGER).unwrap();
        let child = Command::new("python3")
            .arg(&script)
            .args([a, b])
            .current_dir(dir)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        Flipper(child)
    }
}

impl Drop for Flipper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The old `paths::resolve` check (the longest existing prefix must
/// canonicalize inside the root), then a plain read: the defence off.
fn old_check(root: &Path, rel: &str) -> Option<PathBuf> {
    let real_root = root.canonicalize().ok()?;
    let candidate = root.join(rel);
    let mut existing = candidate.as_path();
    while std::fs::symlink_metadata(existing).is_err() {
        existing = existing.parent()?;
    }
    let real = existing.canonicalize().ok()?;
    real.starts_with(&real_root).then_some(candidate)
}

fn check_then_read(root: &Path, rel: &str) -> String {
    match old_check(root, rel) {
        Some(p) => std::fs::read_to_string(p).unwrap_or_default(),
        None => "error: refused".into(),
    }
}

fn check_then_write(root: &Path, rel: &str) {
    if let Some(p) = old_check(root, rel) {
        let _ = std::fs::write(p, "planted");
    }
}

/// A worktree `wt` and a directory `outside` beside it holding the secrets;
/// inside, `*_decoy` names a harmless twin and `*_link` a symlink out.
fn layout(dir: &Path) -> (PathBuf, PathBuf) {
    let outside = dir.join("outside");
    let root = dir.join("wt");
    std::fs::create_dir_all(outside.join("deep")).unwrap();
    std::fs::write(outside.join("secrets.env"), CANARY).unwrap();
    std::fs::write(outside.join("deep/secrets.env"), CANARY).unwrap();
    // First component: `flip` is a directory or a symlink to `outside`.
    std::fs::create_dir_all(root.join("flip/deep")).unwrap();
    std::fs::write(root.join("flip/secrets.env"), "decoy").unwrap();
    std::fs::write(root.join("flip/deep/secrets.env"), "decoy").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("flip_link")).unwrap();
    // A middle component: `d/flip` likewise.
    std::fs::create_dir_all(root.join("d/flip")).unwrap();
    std::fs::write(root.join("d/flip/secrets.env"), "decoy").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("d/flip_link")).unwrap();
    // The last component: a file or a symlink to the secrets file.
    std::fs::write(root.join("leaf.env"), "decoy").unwrap();
    std::os::unix::fs::symlink(outside.join("secrets.env"), root.join("leaf_link")).unwrap();
    (root, outside)
}

#[test]
fn a_symlink_swap_wins_against_check_then_open_but_not_against_the_tools() {
    let dir = tempfile::tempdir().unwrap();
    let (root, outside) = layout(dir.path());
    let tools = Tools::new(&root, Duration::from_secs(10), 4096);
    for (a, b, target) in [
        ("flip", "flip_link", "flip/secrets.env"),
        ("flip", "flip_link", "flip/deep/secrets.env"),
        ("d/flip", "d/flip_link", "d/flip/secrets.env"),
        ("leaf.env", "leaf_link", "leaf.env"),
    ] {
        let _flipper = Flipper::start(&root, a, b);

        // Defence off: the old check-then-open leaks within a few seconds.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut leaks = 0;
        let mut tries = 0;
        while leaks < 3 && Instant::now() < deadline {
            tries += 1;
            if check_then_read(&root, target).contains(CANARY) {
                leaks += 1;
            }
        }
        assert!(
            leaks > 0,
            "{target}: the attack never won in {tries} tries against check-then-open"
        );
        eprintln!("{target}: check-then-open leaked {leaks} times in {tries} tries");

        // Defence on: thousands of reads, each either the decoy or refused.
        for how in [Resolver::Auto, Resolver::Walk] {
            let mut refused = 0;
            for _ in 0..3000 {
                let r = tools.read_file_with(target, how);
                assert!(!r.contains(CANARY), "{how:?} {target}: leaked");
                if r.starts_with("error: ") {
                    assert!(r.contains("symlink"), "{how:?} {target}: {r}");
                    refused += 1;
                } else {
                    assert_eq!(r, "     1\tdecoy\n[no newline at the end of the file]");
                }
            }
            assert!(refused > 0, "{how:?} {target}: the flipper was not racing");
        }
    }

    // Writes: the old path plants a file outside; write_file never does.
    let planted = outside.join("planted.txt");
    {
        let _flipper = Flipper::start(&root, "flip", "flip_link");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !planted.exists() && Instant::now() < deadline {
            check_then_write(&root, "flip/planted.txt");
        }
        assert!(planted.exists(), "the write attack never won");
        std::fs::remove_file(&planted).unwrap();
        for _ in 0..3000 {
            let r = tools.execute(
                "write_file",
                r#"{"path": "flip/planted.txt", "content": "planted"}"#,
            );
            assert!(
                r.text.starts_with("wrote") || r.text.contains("symlink"),
                "{}",
                r.text
            );
            let r = tools.execute(
                "write_file",
                r#"{"path": "flip/new/dir/planted.txt", "content": "planted"}"#,
            );
            assert!(
                r.text.starts_with("wrote") || r.text.contains("symlink"),
                "{}",
                r.text
            );
        }
    }
    assert!(!planted.exists(), "write_file wrote outside the worktree");
    assert!(
        !outside.join("new").exists(),
        "write_file made a directory outside"
    );
}

/// Starts a leftover that forks and `setsid`s hundreds of times a second;
/// in every generation a thread exchanges `flip` with `swap` (a symlink to
/// the vault) without pause, and the generation writes its pid to `beat`.
/// With both defences off (the one-pass leftover kill and the
/// check-then-open tools of before put back), 46 of the 300 reads below
/// returned the vault's file under Landlock (one run); with the new
/// leftover kill and the old tools, none did (the flipper was gone). The
/// tools alone are shown by the test above.
const LEFTOVER: &str = r#"
import ctypes, os, threading, time
libc = ctypes.CDLL(None, use_errno=True)
def spin():
    while True:
        libc.renameat2(-100, b"flip", -100, b"swap", 2)
while True:
    if os.fork():
        os._exit(0)
    os.setsid()
    threading.Thread(target=spin, daemon=True).start()
    with open("beat", "w") as f:
        f.write(str(os.getpid()))
    time.sleep(0.001)
"#;

/// Every tool result a task's conversation holds, in order (the last request
/// carries the whole conversation).
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

#[test]
fn a_leftover_flipper_reaches_nothing_through_read_file() {
    for mechanism in mechanisms() {
        let home = reachable_home();
        let vault = home.path().join("vault");
        std::fs::create_dir(&vault).unwrap();
        std::fs::write(vault.join("secrets.env"), CANARY).unwrap();

        // Each read asks for another line range: the same call over and over
        // would end the attempt as stuck (docs/worker-tools.md#loops-and-stalls).
        let reads = |turn: usize| -> Vec<Value> {
            (0..100)
                .map(|i| json!({"name": "read_file", "arguments": {"path": "flip/secrets.env", "start_line": 1, "end_line": turn * 100 + i + 1}}))
                .collect()
        };
        let mut turns = vec![
            write_turn("leftover.py", LEFTOVER),
            run_turn(&format!(
                "mkdir -p flip && echo decoy > flip/secrets.env && ln -s {} swap && \
                 (setsid python3 leftover.py > /dev/null 2>&1 < /dev/null &) ; \
                 for i in $(seq 100); do test -s beat && break; sleep 0.1; done; \
                 test -s beat && echo STARTED",
                vault.display()
            )),
        ];
        for turn in 0..3 {
            turns.push(json!({ "calls": reads(turn) }));
        }
        turns.push(run_turn(
            "a=$(cat beat); sleep 0.5; b=$(cat beat); \
             if [ \"$a\" = \"$b\" ]; then echo LEFTOVER-GONE; else echo LEFTOVER-ALIVE; fi",
        ));
        turns.push(finish_turn("raced"));
        let p = plan("race", &[("race", &[])], &["true"]);
        let mut h = Harness::new(json!({
            "planner": [p],
            "tasks": {"race": {"turns": turns}},
        }));
        h.home = home;

        let out = h
            .cmd(&["run", "--json", "race the file tools"])
            .env("AGENTSWARM_SANDBOX_MECHANISM", mechanism)
            .output()
            .unwrap();
        assert!(out.status.success(), "{mechanism}: {}", text(&out));
        let results = all_tool_results(&h, "race");
        assert!(
            results[1].starts_with("exit code 0") && results[1].contains("STARTED"),
            "{mechanism}: the flipper did not start: {}",
            results[1]
        );
        let reads = &results[2..2 + 300];
        for r in reads {
            assert!(!r.contains(CANARY), "{mechanism}: read_file leaked: {r}");
            assert!(
                r == "     1\tdecoy\n" || r.contains("symlink"),
                "{mechanism}: {r}"
            );
        }
        assert!(
            results[302].contains("LEFTOVER-GONE"),
            "{mechanism}: the flipper outlived its command: {}",
            results[302]
        );
        for req in h.server.requests() {
            assert!(
                !req.body.to_string().contains(CANARY),
                "{mechanism}: a request to the model holds the secrets file"
            );
        }
    }
}
