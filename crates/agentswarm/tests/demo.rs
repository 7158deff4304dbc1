//! `agentswarm demo`: offline, scripted model, real verify of real tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

#[test]
fn demo_runs_offline_and_delivers_a_verified_project() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agentswarm"))
        .args(["demo", "--json", "--max-workers", "4"])
        .current_dir(home.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("AGENTSWARM_HOME", home.path().join("data"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("SCRIPTED"),
        "the demo says plainly that the model is scripted"
    );
    let report = common::last_json_line(&out);
    assert_eq!(report["status"], "done");
    assert!(report["tasks_total"].as_u64().unwrap() >= 8);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report["manifest"].as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(manifest["verify"]["passed"], true);
    let results = manifest["verify"]["results"].as_array().unwrap();
    assert!(
        results
            .iter()
            .any(|r| r["command"].as_str().unwrap().contains("unittest")),
        "{results:?}"
    );
    // The verify output shows real tests ran.
    assert!(
        results
            .iter()
            .any(|r| r["output_tail"].as_str().unwrap().contains("OK")),
        "{results:?}"
    );
    let name = manifest["name"].as_str().unwrap();
    let files = common::check_delivery(
        std::path::Path::new(report["delivery"].as_str().unwrap()),
        name,
    );
    assert!(files.keys().any(|k| k.ends_with(".py")));
}

/// The plain demo ends with next steps, and the first ones work as printed:
/// the delivery unpacks and its tests pass outside the swarm.
#[test]
fn the_demo_ends_with_next_steps_that_work() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agentswarm"))
        .args(["demo", "--no-progress"])
        .current_dir(home.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("AGENTSWARM_HOME", home.path().join("data"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let next = stdout.split("\nnext:\n").nth(1).expect("next steps");
    assert!(
        next.contains("agentswarm logs") && next.contains("--check-model"),
        "{next}"
    );
    let delivery = stdout
        .lines()
        .find_map(|l| l.strip_prefix("delivery: "))
        .expect("a delivery line");
    let dir = home.path().join("unpacked");
    std::fs::create_dir_all(&dir).unwrap();
    let ok = Command::new("tar")
        .args(["-xzf", delivery, "-C"])
        .arg(&dir)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let tests = Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "tests"])
        .current_dir(dir.join("wordstats"))
        .output()
        .unwrap();
    assert!(tests.status.success(), "{}", common::text(&tests));
    assert!(String::from_utf8_lossy(&tests.stderr).contains("OK"));
}
