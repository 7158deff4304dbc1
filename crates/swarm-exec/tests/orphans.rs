//! A leftover that forks and `setsid`s in a loop must not outlive
//! `reap_orphans` (issue 13, section 2). Its own test binary: this process
//! becomes a child subreaper, and `reap_orphans` kills every child it did
//! not spawn through swarm-exec, which would include other tests' children.
//!
//! With the defence off — the one-pass `reap_orphans` of before (one
//! `/proc` snapshot, then `signal_tree` of each adopted process) put back
//! in place of the loop — this test failed three runs out of three with
//! "a generation survived".

use std::path::Path;
use std::time::{Duration, Instant};
use swarm_exec::{run_shell, ShellOptions};

/// Forks ~1000 times a second: each generation starts a new session, writes
/// its pid and exits right after its fork, so the one alive is never the
/// one listed a moment ago.
const FLIPPER: &str = r#"
import os, sys, time
while True:
    if os.fork():
        os._exit(0)
    os.setsid()
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(0.001)
"#;

fn alive(pid: i32) -> bool {
    // A zombie has been killed: it only waits to be reaped.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn last_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[test]
fn a_forking_setsid_leftover_does_not_survive() {
    if std::process::Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        eprintln!("skipped: python3 is not installed");
        return;
    }
    swarm_exec::tree::become_subreaper().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flipper.py"), FLIPPER).unwrap();
    let pidfile = dir.path().join("pid");
    let out = run_shell(
        "setsid python3 flipper.py pid >/dev/null 2>&1 < /dev/null & sleep 0.3",
        &ShellOptions {
            cwd: dir.path().to_owned(),
            env: vec![],
            timeout: Duration::from_secs(10),
            output_cap: 1024,
            enclosure: None,
            sandbox: None,
        },
    )
    .unwrap();
    assert!(out.exit.success(), "{}", out.output);
    // The command's group is gone; the flipper is not (python may take a
    // while to start on a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(20);
    while last_pid(&pidfile).is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = last_pid(&pidfile).expect("the flipper started");
    let deadline = Instant::now() + Duration::from_secs(10);
    while last_pid(&pidfile) == Some(first) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_ne!(last_pid(&pidfile), Some(first), "the flipper forks");

    let found = swarm_exec::reap_orphans();
    assert!(found >= 1, "found {found}");
    // Nothing forks any more: the pid file stays the same and its last
    // writer is dead.
    let settled = last_pid(&pidfile).unwrap();
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(last_pid(&pidfile), Some(settled), "a generation survived");
    }
    assert!(!alive(settled), "pid {settled} survived");
    assert!(swarm_exec::tree::own_children().is_empty());
}
