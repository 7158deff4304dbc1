//! The terminal side: plain progress lines when stdout is not a terminal,
//! the live view under a pseudo-terminal (`script` from util-linux),
//! `--no-progress`, and `agentswarm logs` (filter, `--json`, `--follow`,
//! unknown project). The real binary against the scripted model on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::process::{Output, Stdio};
use std::time::Duration;

/// Two tasks (two model turns each, `latency_ms` a turn) and a verify.
fn harness(latency_ms: u64) -> (Harness, String) {
    let h = Harness::new(json!({
        "latency_ms": latency_ms,
        "tasks": {
            "alpha": {"turns": [run_turn("echo alpha > alpha.txt"), finish_turn("alpha")]},
            "beta": {"turns": [write_turn("beta.txt", "beta\n"), finish_turn("beta")]},
        }
    }));
    let p = plan(
        "terminal",
        &[("alpha", &[]), ("beta", &[])],
        &["test -f alpha.txt", "test -f beta.txt"],
    );
    let path = h.home.path().join("plan.json");
    std::fs::write(&path, p.to_string()).unwrap();
    let path = path.to_str().unwrap().to_owned();
    (h, path)
}

/// The progress lines of the plain output: `   1.23s  …`.
fn plain_lines(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            t.split_once("s  ")
                .is_some_and(|(secs, _)| secs.parse::<f64>().is_ok())
        })
        .collect()
}

/// What a terminal would show, roughly: `\r` and colours removed, every
/// other escape sequence (cursor movement, line clearing) made a line break,
/// so that every line drawn is a line of its own.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // Parameters, then one final byte in @..~; colours
                    // (`m`) are dropped, anything else breaks the line.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            if c != 'm' {
                                out.push('\n');
                            }
                            break;
                        }
                    }
                } else {
                    chars.next();
                    out.push('\n');
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// `agentswarm ARGS` under a pseudo-terminal: `script -qec CMD /dev/null`,
/// whose stdout is everything the program wrote to its terminal.
fn under_pty(h: &Harness, args: &[&str]) -> Output {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut cmdline = quote(env!("CARGO_BIN_EXE_agentswarm"));
    for a in args {
        cmdline.push(' ');
        cmdline.push_str(&quote(a));
    }
    h.cmd_of(
        std::path::Path::new("script"),
        &["-qec", &cmdline, "/dev/null"],
    )
    .env("TERM", "xterm-256color")
    .output()
    .expect("script (util-linux) runs")
}

fn report_line(stdout: &str) -> bool {
    stdout
        .lines()
        .any(|l| l.starts_with("project ") && l.contains(": done — 3/3 tasks done"))
}

/// A run with stdout not a terminal prints today's plain lines and no escape
/// sequence; then `logs` reads its story back: one line per event, a task
/// filter, `--json`, and clear errors for an unknown task or project.
#[test]
fn plain_run_then_logs() {
    let (h, plan) = harness(20);
    let out = h.run(&["run", "--json", "--plan", &plan, "terminal goal"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(
        !stdout.contains('\u{1b}'),
        "escape sequences in plain output:\n{stdout}"
    );
    let lines = plain_lines(&stdout);
    for want in [
        "task alpha: ready -> running (attempt 1)",
        "task beta: merging -> done",
        "verify: `test -f alpha.txt` → ok",
        ": done",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(want)),
            "no {want:?} in:\n{stdout}"
        );
    }
    assert!(report_line(&stdout), "{stdout}");
    let report = last_json_line(&out);
    assert_eq!(report["status"], "done");
    let project = report["project_id"].as_str().unwrap().to_owned();

    // The raw events, and the readable lines: one per event.
    let raw = h.run(&["logs", &project, "--json"]);
    assert!(raw.status.success(), "{}", text(&raw));
    let events: Vec<Value> = String::from_utf8_lossy(&raw.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events.iter().any(|e| e["kind"] == "task_state"),
        "{events:?}"
    );
    let readable = h.run(&["logs", &project]);
    assert!(readable.status.success(), "{}", text(&readable));
    let readable = String::from_utf8(readable.stdout).unwrap();
    let lines: Vec<&str> = readable.lines().collect();
    assert_eq!(lines.len(), events.len(), "{readable}");
    for (line, e) in lines.iter().zip(&events) {
        let (time, rest) = line.split_once("  ").unwrap();
        assert_eq!(time.len(), 8, "local time first: {line}");
        assert!(!rest.contains('\u{1b}'));
        if e["kind"] == "task_state" {
            let mut want = format!(
                "{}  {} → {}",
                e["task_id"].as_str().unwrap(),
                e["data"]["from"].as_str().unwrap(),
                e["data"]["to"].as_str().unwrap(),
            );
            let attempt = e["data"]["attempt"].as_u64().unwrap();
            if attempt > 0 {
                want.push_str(&format!(" (attempt {attempt})"));
            }
            assert!(rest.starts_with(&want), "{line:?} is not {want:?}");
        }
    }
    for want in [
        "alpha  running → merging (attempt 1)",
        "alpha  merging → done (attempt 1)",
        "alpha  turn 1: run_command echo alpha > alpha.txt",
        "beta  turn 1: write_file",
        "verify  passed: test -f alpha.txt (",
        "project running → done",
        "plan: 3 tasks, given with --plan",
    ] {
        assert!(readable.contains(want), "no {want:?} in:\n{readable}");
    }

    // One task only.
    let alpha = h.run(&["logs", &project, "alpha"]);
    assert!(alpha.status.success(), "{}", text(&alpha));
    let alpha = String::from_utf8(alpha.stdout).unwrap();
    let n = alpha.lines().count();
    assert!(n >= 4, "{alpha}");
    assert!(alpha.lines().all(|l| l.contains("  alpha  ")), "{alpha}");
    assert_eq!(
        n,
        events.iter().filter(|e| e["task_id"] == "alpha").count(),
        "{alpha}"
    );

    // Unknown task, unknown project.
    let none = h.run(&["logs", &project, "gamma"]);
    assert!(!none.status.success());
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(
        err.contains("no task gamma") && err.contains("alpha"),
        "{err}"
    );
    let missing = h.run(&["logs", "p-nosuch"]);
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("p-nosuch") && err.contains("agentswarm status"),
        "{err}"
    );
}

/// Before any project exists, `logs` says so without creating the store.
#[test]
fn logs_without_a_store_names_status() {
    let (h, _) = harness(0);
    let out = h.run(&["logs", "p-1", "--follow"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("p-1") && err.contains("agentswarm status"),
        "{err}"
    );
    assert!(!h.data_dir().join("agentswarm.db").exists());
}

/// Under a terminal: the overall bar, a running task's line and the model
/// totals are drawn; the story lines stay; the report and the JSON line end it.
#[test]
fn run_under_a_pty_shows_the_live_view() {
    let (h, plan) = harness(400);
    let out = under_pty(&h, &["run", "--json", "--plan", &plan, "terminal goal"]);
    assert!(out.status.success(), "{}", text(&out));
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        raw.contains("\u{1b}["),
        "no escape sequence: not drawn live?\n{raw}"
    );
    let screen = strip_ansi(&raw);
    assert!(screen.contains("tasks ["), "no overall bar:\n{screen}");
    assert!(
        (0..=3).any(|d| screen.contains(&format!("] {d}/3 done"))),
        "no done/total count:\n{screen}"
    );
    // A running task's line: its id, then its turn or that it is starting.
    assert!(
        screen
            .lines()
            .any(|l| (l.contains("alpha") || l.contains("beta"))
                && (l.contains("turn ") || l.contains("starting"))
                && !l.contains("task ")),
        "no running task line:\n{screen}"
    );
    assert!(screen.contains("model: "), "no totals line:\n{screen}");
    // The story is printed above the bars.
    assert!(screen.contains("task alpha: merging -> done"), "{screen}");
    assert!(
        screen.contains("verify: `test -f beta.txt` → ok"),
        "{screen}"
    );
    // Tool lines only with --show-tools.
    assert!(!screen.contains("run_command echo alpha"), "{screen}");
    // It ends with the report and the JSON line, bars cleared before them.
    assert!(report_line(&screen), "{screen}");
    let tail: Vec<&str> = screen.lines().filter(|l| !l.trim().is_empty()).collect();
    let last: Value = serde_json::from_str(tail.last().unwrap()).unwrap();
    assert_eq!(last["status"], "done");
    let report_at = raw.rfind(": done — 3/3 tasks done").unwrap();
    assert!(
        !raw[report_at..].contains("tasks ["),
        "a bar was drawn after the report:\n{}",
        &raw[report_at..]
    );
}

/// `--no-progress` under a terminal: the plain lines, no bars.
#[test]
fn no_progress_under_a_pty_prints_plain_lines() {
    let (h, plan) = harness(20);
    let out = under_pty(
        &h,
        &["run", "--no-progress", "--plan", &plan, "terminal goal"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    // No line clearing or cursor movement (what the bars are drawn with).
    assert!(!raw.contains("\u{1b}[2K"), "{raw:?}");
    assert!(!raw.contains("\u{1b}[1A"), "{raw:?}");
    let screen = raw.replace('\r', "");
    assert!(!screen.contains("tasks ["), "{screen}");
    let lines = plain_lines(&screen);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("task alpha: merging -> done")),
        "{screen}"
    );
    assert!(report_line(&screen), "{screen}");
}

/// `logs --follow` of a project a background `run` is running prints as it
/// goes and exits 0 once the project is done, its last line printed.
#[test]
fn logs_follow_exits_when_the_project_is_done() {
    let (h, plan) = harness(300);
    let (mut run, mut stdout, project) = h.spawn_run(&["run", "--plan", &plan, "terminal goal"]);

    let mut follow = h
        .cmd(&["logs", &project, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    let ended = swarm_testkit::wait_for(Duration::from_secs(120), || {
        status = follow.try_wait().unwrap();
        status.is_some()
    });
    if !ended {
        let _ = follow.kill();
    }
    let followed = follow.wait_with_output().unwrap();
    assert!(ended, "logs --follow did not end: {}", text(&followed));
    assert!(followed.status.success(), "{}", text(&followed));
    let log = String::from_utf8(followed.stdout).unwrap();
    let last = log.lines().last().unwrap_or("");
    let done_line = log
        .lines()
        .position(|l| l.contains("project running → done"))
        .unwrap_or_else(|| panic!("no done line:\n{log}"));
    assert!(
        log.lines().count() - done_line <= 2,
        "the done line is among the last:\n{log}\nlast: {last}"
    );
    for want in [
        "alpha  merging → done",
        "beta  merging → done",
        "verify  passed:",
    ] {
        assert!(log.contains(want), "no {want:?} in:\n{log}");
    }
    // Each event once, though it was polled many times.
    let mut seen = std::collections::HashSet::new();
    for l in log.lines().filter(|l| l.contains(" → ")) {
        assert!(
            seen.insert(l.split_once("  ").unwrap().1),
            "twice: {l}\n{log}"
        );
    }

    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(run.wait().unwrap().success(), "{rest}");
}

/// `doctor | head -n1`, `status | head -n1`: a reader that goes away ends
/// the command quietly (SIGPIPE, as `cat` would), never with a panic
/// (exit 101, "failed printing to stdout").
#[test]
fn a_closed_pipe_ends_printing_commands_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (h, _) = harness(0);
    for args in [&["doctor"][..], &["doctor", "--json"], &["status"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = h.cmd(args).stdout(writer).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked") && out.status.code() != Some(101),
            "{args:?}: {:?} {stderr}",
            out.status
        );
        assert!(
            out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
            "{args:?}: {:?} {stderr}",
            out.status
        );
    }
}

/// Log lines written to a file (or the journal) are plain text: no colour
/// escapes unless stderr is a terminal.
#[test]
fn log_lines_to_a_file_have_no_colour_escapes() {
    let (h, plan) = harness(0);
    let out = h
        .cmd(&["run", "--json", "--plan", &plan, "terminal goal"])
        .env("AGENTSWARM_LOG", "debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("DEBUG") || stderr.contains("INFO"),
        "no log line: {stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}

/// Shell completions and the man page come from the binary itself.
#[test]
fn completions_and_the_man_page_name_every_command() {
    let (h, _) = harness(0);
    for shell in ["bash", "zsh", "fish"] {
        let out = h.run(&["completions", shell]);
        assert!(out.status.success(), "{}", text(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        for cmd in [
            "run", "resume", "serve", "submit", "status", "logs", "doctor",
        ] {
            assert!(script.contains(cmd), "{shell}: no `{cmd}`");
        }
    }
    let out = h.run(&["man"]);
    assert!(out.status.success(), "{}", text(&out));
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH agentswarm 1"), "{page}");
    assert!(page.contains("resume") && page.contains("serve"), "{page}");
}

/// A goal that cannot be one is refused before anything is stored or sent:
/// only whitespace, longer than 256 Ki characters, a goal file of megabytes.
#[test]
fn an_oversized_or_empty_goal_is_refused_before_it_is_stored() {
    let (h, _) = harness(0);
    let long = h.home.path().join("long.txt");
    std::fs::write(&long, "x".repeat(300 * 1024)).unwrap();
    let file = h.home.path().join("goal.txt");
    std::fs::write(&file, "y".repeat(5 * 1024 * 1024)).unwrap();
    let cases: [(&[&str], &str); 3] = [
        (&["run", "   "], "the goal is empty"),
        (
            &["submit", "--goal-file", long.to_str().unwrap()],
            "more than the 262144",
        ),
        (
            &["run", "--goal-file", file.to_str().unwrap()],
            "more than a goal may be",
        ),
    ];
    for (args, want) in cases {
        let out = h.run(args);
        assert!(!out.status.success(), "{:?}: {}", &args[..1], text(&out));
        assert!(
            text(&out).contains(want),
            "{:?}: {}",
            &args[..1],
            text(&out)
        );
    }
    assert!(h.server.requests().is_empty(), "a model was asked");
    let out = h.run(&["status", "--json"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("\"id\""),
        "a project was stored: {}",
        text(&out)
    );
}

/// `submit` with no daemon queues the project and says that nothing runs it
/// yet, and how to change that; it takes only the flags it uses.
#[test]
fn submit_without_a_daemon_says_so_and_takes_only_its_flags() {
    let (h, plan) = harness(0);
    let out = h.run(&[
        "submit",
        "--json",
        "--plan",
        &plan,
        "--max-attempts",
        "2",
        "queued goal",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(last_json_line(&out)["daemon"], false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no `agentswarm serve` is running") && err.contains("agentswarm resume"),
        "{err}"
    );
    for flag in [
        &["--record", "x"][..],
        &["--replay", "x"],
        &["--show-tools"],
        &["--no-progress"],
        &["--max-workers", "2"],
        &["--model", "m"],
    ] {
        let mut args = vec!["submit"];
        args.extend_from_slice(flag);
        args.push("goal");
        let out = h.run(&args);
        assert!(!out.status.success(), "{flag:?} was accepted");
        assert!(
            text(&out).contains("unexpected argument"),
            "{flag:?}: {}",
            text(&out)
        );
    }
}

/// A project that did not finish says its delivery is partial.
#[test]
fn a_failed_run_says_its_delivery_is_partial() {
    let (h, _) = harness(0);
    let p = plan("terminal", &[("alpha", &[]), ("beta", &[])], &["false"]);
    let path = h.home.path().join("failing.json");
    std::fs::write(&path, p.to_string()).unwrap();
    let out = h.run(&[
        "run",
        "--no-progress",
        "--max-fix-rounds",
        "0",
        "--plan",
        path.to_str().unwrap(),
        "a goal whose verify fails",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("delivery: "))
        .unwrap_or_else(|| panic!("{}", text(&out)));
    assert!(
        line.contains("(partial: what main holds after 2 of 3 tasks)"),
        "{line}"
    );
}

/// Plain output is never silent for long: while the planner's answer takes
/// 12 s, a line at about 10 s says what the run waits for; likewise while a
/// worker's model turn takes that long.
#[test]
fn plain_output_says_what_it_waits_for_at_least_every_10_seconds() {
    let p = plan("slow", &[("s1", &[])], &["test -f s1.txt"]);
    let h = Harness::new(json!({
        "latency_ms": 12_000,
        "planner": [p],
        // One turn: write the file and finish.
        "tasks": {"s1": {"turns": [{"calls": [
            {"name": "write_file", "arguments": {"path": "s1.txt", "content": "1\n"}},
            {"name": "finish", "arguments": {"summary": "s1"}}
        ]}]}},
    }));
    let out = h.run(&["run", "--no-progress", "slow goal"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let still: Vec<&str> = stdout.lines().filter(|l| l.contains("  still: ")).collect();
    assert!(
        still
            .iter()
            .any(|l| l.contains("planning: waiting for the planner model's answer")),
        "{stdout}"
    );
    assert!(
        still
            .iter()
            .any(|l| l.contains("running: s1 attempt 1: turn 1, ")),
        "{stdout}"
    );
    // No two printed lines more than 11 s apart (one tick of slack).
    let times: Vec<f64> = stdout
        .lines()
        .filter_map(|l| {
            l.trim_start()
                .split_once("s  ")
                .and_then(|(t, _)| t.parse().ok())
        })
        .collect();
    for w in times.windows(2) {
        assert!(
            w[1] - w[0] < 11.5,
            "silent from {} s to {} s:\n{stdout}",
            w[0],
            w[1]
        );
    }
}
