//! End-to-end: a project that starts from an existing repository
//! (`run --repo`), against the scripted model on loopback; the delivery
//! back into it (branch, changes.patch, bundle, PR.md); and the bad inputs
//! refused before any model call.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// `sh -c script` in `dir` with a fixed git identity and no user config.
fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Someone")
        .env("GIT_AUTHOR_EMAIL", "someone@example.com")
        .env("GIT_COMMITTER_NAME", "Someone")
        .env("GIT_COMMITTER_EMAIL", "someone@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const OPS_BUGGY: &str = "def add(a, b):\n    return a - b\n";
const OPS_FIXED: &str = "def add(a, b):\n    return a + b\n";
const TEXT_BUGGY: &str = "def shout(s):\n    return s.lower() + '!'\n";
const TEXT_FIXED: &str = "def shout(s):\n    return s.upper() + '!'\n";

/// A small Python project, on branch `trunk`, with two failing tests (two
/// commits of history), and a clone of it as the user's working copy.
fn python_project(dir: &Path) -> PathBuf {
    let repo = dir.join("calc-project");
    std::fs::create_dir_all(repo.join("calc")).unwrap();
    std::fs::create_dir_all(repo.join("tests")).unwrap();
    std::fs::write(repo.join("calc/__init__.py"), "").unwrap();
    std::fs::write(repo.join("calc/ops.py"), OPS_BUGGY).unwrap();
    std::fs::write(repo.join("calc/text.py"), TEXT_BUGGY).unwrap();
    std::fs::write(repo.join("tests/__init__.py"), "").unwrap();
    std::fs::write(
        repo.join("tests/test_calc.py"),
        "import unittest\nfrom calc.ops import add\nfrom calc.text import shout\n\n\
         class T(unittest.TestCase):\n    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n\n\
         \x20   def test_shout(self):\n        self.assertEqual(shout('hi'), 'HI!')\n",
    )
    .unwrap();
    std::fs::write(repo.join("README.md"), "# calc\n\nA calculator.\n").unwrap();
    std::fs::write(repo.join("AGENTS.md"), "Keep functions pure; no prints.\n").unwrap();
    sh(
        &repo,
        "git init -q -b trunk && git add README.md && git commit -qm 'Start' && git add -A && git commit -qm 'Add calc'",
    );
    repo
}

fn fix_plan() -> Value {
    json!({
        "name": "calc-fix",
        "summary": "Fix add and shout so the tests pass",
        "tasks": [
            {"id": "fix-ops", "title": "Fix add", "description": "calc/ops.py subtracts", "depends_on": [], "files": ["calc/ops.py"]},
            {"id": "fix-text", "title": "Fix shout", "description": "calc/text.py lowercases", "depends_on": [], "files": ["calc/text.py"]},
            {"id": "changelog", "title": "Changelog", "description": "Note the fixes", "depends_on": ["fix-ops", "fix-text"], "files": ["CHANGELOG.md"]},
            // No commands: the repository's own checks are detected.
            {"id": "verify", "title": "Run the tests", "kind": "verify", "depends_on": ["changelog"],
             "commands": []}
        ]
    })
}

fn fix_scenario() -> Value {
    json!({
        "planner": [fix_plan()],
        "tasks": {
            "fix-ops": {"turns": [write_turn("calc/ops.py", OPS_FIXED), finish_turn("add adds now")]},
            "fix-text": {"turns": [write_turn("calc/text.py", TEXT_FIXED), finish_turn("shout upper-cases now")]},
            "changelog": {"turns": [write_turn("CHANGELOG.md", "- fixed add and shout\n"), finish_turn("changelog written")]},
        }
    })
}

/// The goal's story: failing tests of an existing Python project fixed by
/// a 3-task plan; the work comes back as a branch of the user's
/// repository, a patch that `git apply` takes on the base, and a bundle.
#[test]
fn a_python_project_with_failing_tests_is_fixed_and_delivered_as_a_branch() {
    let h = Harness::new(fix_scenario());
    let repo = python_project(h.home.path());
    let base = sh(&repo, "git rev-parse trunk").trim().to_owned();
    // Untracked files in the user's working tree are not "dirty" and stay.
    std::fs::write(repo.join("notes.txt"), "my notes\n").unwrap();

    let out = h.run(&[
        "run",
        "--json",
        "--repo",
        repo.to_str().unwrap(),
        "Fix the failing tests",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let report = last_json_line(&out);
    assert_eq!(report["status"], "done", "{report}");
    let project = report["project_id"].as_str().unwrap();
    let branch = format!("agentswarm/{project}");
    assert_eq!(report["branch"], branch.as_str());
    assert_eq!(report["base"], base.as_str());

    // Verify ran the detected checks, and said which and why; the
    // baseline on the base commit showed the failures that were there.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "verify will run: python3 -m unittest discover -s tests -v (detected: Python tests under tests/)"
        ),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains(
            "baseline: verify already fails on the base commit (1 of 1 command(s) failed"
        ),
        "{}",
        text(&out)
    );

    // The planner saw the repository, not only the goal.
    let planner = h
        .server
        .requests()
        .into_iter()
        .find(|r| r.kind == swarm_testkit::RequestKind::Planner)
        .expect("a planner request");
    let first_user = planner.body["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        first_user.starts_with("Goal: Fix the failing tests"),
        "{first_user}"
    );

    // The project's main: the base with its history, then one merge per task.
    let main_repo = h.repo(project);
    sh(
        &main_repo,
        &format!("git merge-base --is-ancestor {base} main"),
    );
    assert_eq!(
        sh(
            &main_repo,
            "git rev-list --count main --first-parent --merges"
        )
        .trim(),
        "3"
    );
    let main_head = sh(&main_repo, "git rev-parse main").trim().to_owned();

    // The branch exists in the user's repository, at main; nothing else changed there.
    assert_eq!(
        sh(&repo, &format!("git rev-parse {branch}")).trim(),
        main_head
    );
    assert_eq!(sh(&repo, "git symbolic-ref --short HEAD").trim(), "trunk");
    assert_eq!(sh(&repo, "git rev-parse trunk").trim(), base);
    assert_eq!(
        std::fs::read_to_string(repo.join("calc/ops.py")).unwrap(),
        OPS_BUGGY
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("notes.txt")).unwrap(),
        "my notes\n"
    );
    assert!(sh(&repo, "git status --porcelain --untracked-files=no").is_empty());
    assert_eq!(
        sh(
            &repo,
            "git for-each-ref --format='%(refname:short)' refs/heads"
        )
        .trim(),
        format!("{branch}\ntrunk")
    );
    // The branch passes the tests, run outside the swarm.
    let check = h.home.path().join("check");
    sh(
        h.home.path(),
        &format!("git clone -q -b {branch} {} check", repo.display()),
    );
    sh(&check, "python3 -m unittest discover -s tests");

    // changes.patch on the base reproduces main.
    let patch = PathBuf::from(report["patch"].as_str().unwrap());
    assert_eq!(patch, h.outputs_dir().join(project).join("changes.patch"));
    let applied = h.home.path().join("applied");
    sh(
        h.home.path(),
        &format!(
            "git clone -q {} applied && cd applied && git checkout -q {base}",
            repo.display()
        ),
    );
    sh(&applied, &format!("git apply --index {}", patch.display()));
    assert_eq!(
        sh(&applied, "git write-tree").trim(),
        sh(&main_repo, "git rev-parse main^{tree}").trim(),
        "git apply of changes.patch on the base gives main's tree"
    );

    // The bundle brings the branch into a clone of the base.
    let bundle = h.outputs_dir().join(project).join("calc-fix.bundle");
    sh(
        &applied,
        &format!("git fetch -q {} {branch}:from-bundle", bundle.display()),
    );
    assert_eq!(sh(&applied, "git rev-parse from-bundle").trim(), main_head);

    // PR.md tells a reviewer what each task did and what verify said.
    let pr = std::fs::read_to_string(h.outputs_dir().join(project).join("PR.md")).unwrap();
    for want in [
        "Fix add",
        "add adds now",
        "Fix shout",
        "`calc/ops.py`",
        "Before (on the base commit): failed",
        "After: passed",
    ] {
        assert!(pr.contains(want), "PR.md lacks {want:?}:\n{pr}");
    }

    // Both manifests name the files beside the archive.
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(report["manifest"].as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(manifest["source"]["branch"], branch.as_str());
    assert_eq!(manifest["verify"]["passed"], true);
    assert_eq!(
        manifest["verify"]["results"][0]["command"],
        "python3 -m unittest discover -s tests -v"
    );
    assert_eq!(manifest["verify"]["baseline"]["passed"], false);
    assert_eq!(manifest["verify"]["baseline"]["base_commit"], base.as_str());
    let before = manifest["verify"]["baseline"]["results"][0]["output_tail"]
        .as_str()
        .unwrap();
    assert!(before.contains("FAILED (failures=2)"), "{before}");
    assert_eq!(manifest["source"]["base_commit"], base.as_str());
    assert_eq!(manifest["source"]["patch"], "changes.patch");
    let beside: Vec<&str> = manifest["beside"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["path"].as_str().unwrap())
        .collect();
    assert_eq!(beside, ["changes.patch", "calc-fix.bundle", "PR.md"]);
    let txt = std::fs::read_to_string(h.outputs_dir().join(project).join("manifest.txt")).unwrap();
    assert!(txt.contains("  changes.patch\n"), "{txt}");
    // The archive holds the whole tree (the user's files and the fixes).
    let files = check_delivery(
        &PathBuf::from(report["delivery"].as_str().unwrap()),
        "calc-fix",
    );
    assert_eq!(files["calc/ops.py"], OPS_FIXED.as_bytes());
    assert_eq!(files["README.md"], b"# calc\n\nA calculator.\n");
    assert!(
        h.server.violations().is_empty(),
        "{:?}",
        h.server.violations()
    );
}

/// Every bad `--repo`/`--base` is a clear error before any model call, no
/// project is stored, and nothing is written into the user's repository.
#[test]
fn bad_repositories_are_refused_before_any_model_call() {
    let h = Harness::new(json!({"planner": [fix_plan()]}));
    let dir = h.home.path();
    let repo = python_project(dir);
    let refs_before = sh(&repo, "git for-each-ref");

    let plain = dir.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let refused = |args: &[&str], want: &str| {
        let mut full = vec!["run", "--json"];
        full.extend_from_slice(args);
        full.push("Fix the failing tests");
        let out = h.run(&full);
        assert!(
            !out.status.success(),
            "{args:?} was accepted: {}",
            text(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(want),
            "{args:?}: wanted {want:?} in:\n{}",
            text(&out)
        );
    };
    refused(
        &["--repo", plain.to_str().unwrap()],
        "is not a git repository",
    );
    refused(
        &["--repo", dir.join("nowhere").to_str().unwrap()],
        "does not exist",
    );
    refused(
        &["--repo", repo.to_str().unwrap(), "--base", "no-such-branch"],
        "the base \"no-such-branch\" does not exist",
    );
    refused(
        &["--repo", "https://user:secret@example.invalid/x.git"],
        "holds a password or token",
    );

    // A dirty working tree: refused without --base; the user's change stays.
    std::fs::write(repo.join("calc/ops.py"), "# my unfinished work\n").unwrap();
    refused(
        &["--repo", repo.to_str().unwrap()],
        "uncommitted changes to 1 tracked file(s) (calc/ops.py)",
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("calc/ops.py")).unwrap(),
        "# my unfinished work\n"
    );
    sh(&repo, "git checkout -q -- calc/ops.py");

    // Submodules and LFS, each on a branch of its own.
    sh(
        &repo,
        "git checkout -q -b with-submodule && git update-index --add --cacheinfo 160000,$(git rev-parse HEAD),vendor/dep \
         && git commit -qm sub && git checkout -q trunk \
         && git checkout -q -b with-lfs && echo '*.bin filter=lfs diff=lfs merge=lfs -text' > .gitattributes \
         && git add .gitattributes && git commit -qm lfs && git checkout -q trunk",
    );
    let refs_before = {
        let _ = refs_before;
        sh(&repo, "git for-each-ref")
    };
    refused(
        &["--repo", repo.to_str().unwrap(), "--base", "with-submodule"],
        "has submodules (vendor/dep)",
    );
    refused(
        &["--repo", repo.to_str().unwrap(), "--base", "with-lfs"],
        "stores files in Git LFS",
    );

    // Larger than the configured limit.
    let config = dir.join("small.toml");
    std::fs::write(&config, "[repos]\nmax_files = 3\n").unwrap();
    refused(
        &[
            "--config",
            config.to_str().unwrap(),
            "--repo",
            repo.to_str().unwrap(),
        ],
        "has 7 files at its base commit, more than the 3 allowed",
    );

    assert!(h.server.requests().is_empty(), "a model was called");
    assert_eq!(
        sh(&repo, "git for-each-ref"),
        refs_before,
        "refs of the user's repository changed"
    );
    let status = h.run(&["status", "--json"]);
    assert_eq!(last_json_line(&status), json!([]), "a project was stored");
}

/// A Rust crate: `cargo test` is detected from Cargo.toml, fails on the
/// base commit, passes after the one task, and the branch holds the fix.
#[test]
fn a_rust_crate_is_fixed_with_its_own_cargo_test() {
    // The toolchain, readable by the sandboxed verify commands.
    let cargo = Command::new("rustup").args(["which", "cargo"]).output();
    let Some(bin) = cargo
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .and_then(|p| p.parent().map(Path::to_path_buf))
    else {
        eprintln!("skipping: no rustup toolchain to run cargo with");
        return;
    };
    let toolchain = bin.parent().unwrap().to_path_buf();
    let h = Harness::new(json!({
        "planner": [{
            "name": "adder", "summary": "Make add add",
            "tasks": [
                {"id": "fix-add", "title": "Fix add", "description": "src/lib.rs subtracts", "depends_on": [], "files": ["src/lib.rs"]},
                {"id": "verify", "title": "Test", "kind": "verify", "depends_on": ["fix-add"], "commands": []}
            ]
        }],
        "tasks": {"fix-add": {"turns": [
            write_turn("src/lib.rs", "pub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n\n#[test]\nfn adds() {\n    assert_eq!(add(2, 3), 5);\n}\n"),
            finish_turn("add adds"),
        ]}}
    }));
    let repo = h.home.path().join("adder");
    std::fs::create_dir_all(repo.join("src")).unwrap();
    std::fs::write(
        repo.join("Cargo.toml"),
        "[package]\nname = \"adder\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    std::fs::write(
        repo.join("src/lib.rs"),
        "pub fn add(a: i32, b: i32) -> i32 {\n    a - b\n}\n\n#[test]\nfn adds() {\n    assert_eq!(add(2, 3), 5);\n}\n",
    )
    .unwrap();
    sh(
        &repo,
        "git init -q -b main && git add -A && git commit -qm 'adder'",
    );
    let config = h.home.path().join("agentswarm.toml");
    std::fs::write(
        &config,
        format!(
            "sandbox_read_paths = [{:?}]\n",
            toolchain.display().to_string()
        ),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = h
        .cmd(&[
            "run",
            "--json",
            "--config",
            config.to_str().unwrap(),
            "--repo",
            repo.to_str().unwrap(),
            "Make the tests pass",
        ])
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let report = last_json_line(&out);
    assert_eq!(report["status"], "done", "{report}");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(report["manifest"].as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(manifest["verify"]["results"][0]["command"], "cargo test");
    assert_eq!(manifest["verify"]["passed"], true);
    assert_eq!(
        manifest["verify"]["baseline"]["passed"], false,
        "{}",
        manifest["verify"]
    );
    let branch = report["branch"].as_str().unwrap();
    let fixed = sh(&repo, &format!("git show {branch}:src/lib.rs"));
    assert!(fixed.contains("a + b"), "{fixed}");
    // Build output never reaches the branch.
    let files = sh(&repo, &format!("git ls-tree -r --name-only {branch}"));
    assert_eq!(files, "Cargo.toml\nsrc/lib.rs\n");
}

/// A git URL (a bare repository on `file://`, shallow with `clone_depth`),
/// `.agentswarm.toml`'s verify, set-up command and copied file, and
/// `--push`; a URL that cannot be cloned fails before any model call.
#[test]
fn a_url_is_cloned_prepared_by_its_config_and_the_branch_pushed() {
    let h = Harness::new(json!({
        "planner": [{
            "name": "calc-url", "summary": "Fix add",
            "tasks": [
                {"id": "fix-ops", "title": "Fix add", "description": "calc/ops.py", "depends_on": [], "files": ["calc/ops.py"]},
                {"id": "verify", "title": "Test", "kind": "verify", "depends_on": ["fix-ops"], "commands": []}
            ]
        }],
        "tasks": {"fix-ops": {"turns": [
            run_turn("cat build/setup-ran settings.ini"),
            write_turn("calc/ops.py", OPS_FIXED),
            finish_turn("add adds"),
        ]}}
    }));
    let dir = h.home.path();
    let work = python_project(dir);
    // Only the add test: this goal fixes add alone.
    sh(
        &work,
        "git rm -q calc/text.py && sed -i '/shout/d' tests/test_calc.py \
         && printf 'build/\\n' > .gitignore && printf 'secret = 1\\n' > settings.example.ini \
         && printf 'verify = [\"python3 -m unittest discover -s tests -v\"]\\nsetup = [\"mkdir -p build && echo prepared > build/setup-ran\"]\\n[copy]\\n\"settings.example.ini\" = \"settings.ini\"\\n' > .agentswarm.toml \
         && git add -A && git commit -qm 'Configure agentswarm'",
    );
    sh(
        dir,
        &format!("git clone -q --bare {} remote.git", work.display()),
    );
    let url = format!("file://{}", dir.join("remote.git").display());
    let config = dir.join("agentswarm.toml");
    std::fs::write(&config, "[repos]\nclone_depth = 1\n").unwrap();

    // A URL that cannot be cloned: failed, no model call.
    let bad = format!("file://{}", dir.join("nowhere.git").display());
    let out = h.run(&["run", "--json", "--repo", &bad, "Fix add"]);
    assert!(!out.status.success(), "{}", text(&out));
    let report = last_json_line(&out);
    assert_eq!(report["status"], "failed");
    assert!(
        report["error"].as_str().unwrap().contains("cannot clone"),
        "{report}"
    );
    assert!(h.server.requests().is_empty(), "a model was called");

    let out = h.run(&[
        "run",
        "--json",
        "--config",
        config.to_str().unwrap(),
        "--repo",
        &url,
        "--base",
        "trunk",
        "--push",
        "Fix add",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let report = last_json_line(&out);
    assert_eq!(report["status"], "done", "{report}");
    let project = report["project_id"].as_str().unwrap();
    let branch = format!("agentswarm/{project}");
    assert_eq!(report["branch"], branch.as_str());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(
            "verify will run: python3 -m unittest discover -s tests -v (.agentswarm.toml `verify`)"
        ),
        "{}",
        text(&out)
    );

    // The project repository: shallow, and no trace of the URL.
    let main_repo = h.repo(project);
    assert!(main_repo.join(".git/shallow").is_file());
    let git_config = std::fs::read_to_string(main_repo.join(".git/config")).unwrap();
    assert!(
        !git_config.contains("remote") && !git_config.contains("file://"),
        "{git_config}"
    );

    // The worker saw what set-up made and the copied file.
    let results = tool_results(&h, "fix-ops");
    assert!(
        results[0].contains("prepared") && results[0].contains("secret = 1"),
        "{results:?}"
    );
    // Neither reached the branch, which was pushed to the URL.
    let pushed = sh(
        &dir.join("remote.git"),
        &format!("git ls-tree -r --name-only {branch}"),
    );
    assert!(pushed.contains("calc/ops.py\n"), "{pushed}");
    assert!(
        !pushed.contains("settings.ini\n") && !pushed.contains("build/"),
        "{pushed}"
    );
    assert_eq!(
        sh(
            &dir.join("remote.git"),
            &format!("git show {branch}:calc/ops.py")
        ),
        OPS_FIXED
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(report["manifest"].as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(manifest["source"]["pushed"], true);
    assert_eq!(manifest["source"]["repo"], url.as_str());
}

/// `run --continue PROJECT "also do Y"`: more tasks on the same main, the
/// done ones kept (not run again), verify again, the branch moved on.
#[test]
fn a_done_project_is_continued_with_more_tasks() {
    let first = json!({
        "name": "calc-add", "summary": "Fix add",
        "tasks": [
            {"id": "fix-ops", "title": "Fix add", "description": "calc/ops.py", "depends_on": [], "files": ["calc/ops.py"]},
            {"id": "verify", "title": "Test add", "kind": "verify", "depends_on": ["fix-ops"],
             "commands": ["python3 -m unittest tests.test_calc.T.test_add"]}
        ]
    });
    let more = json!({
        "name": "calc-shout", "summary": "Fix shout",
        "tasks": [
            {"id": "fix-text", "title": "Fix shout", "description": "calc/text.py", "depends_on": [], "files": ["calc/text.py"]}
        ]
    });
    let h = Harness::new(json!({
        "planner": [first, more],
        "tasks": {
            "fix-ops": {"turns": [write_turn("calc/ops.py", OPS_FIXED), finish_turn("add adds now")]},
            "c1-fix-text": {"turns": [write_turn("calc/text.py", TEXT_FIXED), finish_turn("shout upper-cases now")]},
        }
    }));
    let repo = python_project(h.home.path());
    let out = h.run(&["run", "--json", "--repo", repo.to_str().unwrap(), "Fix add"]);
    assert!(out.status.success(), "{}", text(&out));
    let report = last_json_line(&out);
    let project = report["project_id"].as_str().unwrap().to_owned();
    let branch = format!("agentswarm/{project}");
    let first_head = sh(&repo, &format!("git rev-parse {branch}"))
        .trim()
        .to_owned();
    let workers_before = h
        .server
        .requests()
        .iter()
        .filter(|r| r.kind == swarm_testkit::RequestKind::Worker)
        .count();

    let out = h.run(&["run", "--json", "--continue", &project, "Also fix shout"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("continuing with 1 new task(s): c1-fix-text"),
        "{}",
        text(&out)
    );
    // The round's own baseline, on the main it starts from (add is fixed there).
    assert!(
        stdout.contains("baseline: verify passes on main as follow-up round 1 found it"),
        "{}",
        text(&out)
    );
    let report = last_json_line(&out);
    assert_eq!(report["project_id"], project.as_str());
    assert_eq!(report["status"], "done", "{report}");
    assert_eq!(report["tasks_total"], 3);
    assert_eq!(report["branch"], branch.as_str());

    // The continuation's planner request starts with the new goal and
    // names what is done.
    let planners: Vec<_> = h
        .server
        .requests()
        .into_iter()
        .filter(|r| r.kind == swarm_testkit::RequestKind::Planner)
        .collect();
    assert_eq!(planners.len(), 2);
    let asked = planners[1].body["messages"][1]["content"].as_str().unwrap();
    assert!(asked.starts_with("Goal: Also fix shout"), "{asked}");
    assert!(
        asked.contains("- fix-ops (Fix add): add adds now"),
        "{asked}"
    );
    // Only the new task ran: one worker request per turn of it.
    let workers: Vec<_> = h
        .server
        .requests()
        .into_iter()
        .filter(|r| r.kind == swarm_testkit::RequestKind::Worker)
        .collect();
    assert!(workers[workers_before..]
        .iter()
        .all(|r| r.task.as_deref() == Some("c1-fix-text")));
    let counts = trailer_counts(&h.repo(&project));
    assert_eq!(counts.get("fix-ops"), Some(&1));
    assert_eq!(counts.get("c1-fix-text"), Some(&1));

    // The branch moved on from the first delivery and holds both fixes;
    // the patch covers both.
    let head = sh(&repo, &format!("git rev-parse {branch}"))
        .trim()
        .to_owned();
    sh(
        &repo,
        &format!("git merge-base --is-ancestor {first_head} {head}"),
    );
    assert_ne!(head, first_head);
    assert_eq!(
        sh(&repo, &format!("git show {branch}:calc/text.py")),
        TEXT_FIXED
    );
    assert_eq!(
        sh(&repo, &format!("git show {branch}:calc/ops.py")),
        OPS_FIXED
    );
    let patch = std::fs::read_to_string(report["patch"].as_str().unwrap()).unwrap();
    assert!(
        patch.contains("calc/ops.py") && patch.contains("calc/text.py"),
        "{patch}"
    );
    let status = h.status_json(&project);
    let verify = status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "verify")
        .unwrap()
        .clone();
    assert_eq!(verify["state"], "done", "{verify}");

    // A project that does not exist, or an empty goal: clear errors.
    let out = h.run(&["run", "--continue", "no-such-project", "More"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-project"),
        "{}",
        text(&out)
    );
}

/// Crash recovery on an existing repository: killed with SIGKILL while the
/// planner thinks and then at random moments, `resume` carries on from
/// the project repository already made; each task merges once, the
/// baseline runs once, and the branch is delivered.
#[test]
fn kill_9_then_resume_on_an_existing_repository() {
    let ids = ["one", "two", "three", "four"];
    let tasks: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let deps: Vec<&str> = if i >= 2 { vec![ids[i - 2]] } else { vec![] };
            json!({"id": id, "title": format!("Write {id}"), "description": "", "depends_on": deps, "files": [format!("{id}.txt")]})
        })
        .chain(std::iter::once(json!({
            "id": "verify", "title": "Check", "kind": "verify", "depends_on": ["three", "four"],
            "commands": ["test -f one.txt && test -f four.txt && test -f README.md"]
        })))
        .collect();
    let mut scripts = serde_json::Map::new();
    for id in ids {
        scripts.insert(
            id.to_owned(),
            json!({"turns": [write_turn(&format!("{id}.txt"), id), run_turn("sleep 0.2"), finish_turn(id)]}),
        );
    }
    let h = Harness::new(json!({
        "latency_ms": 60,
        "planner": [{"name": "chaos", "summary": "s", "tasks": tasks}],
        "tasks": scripts,
        "errors": [{"kind": "planner", "delay_ms": 1500}]
    }));
    let repo = python_project(h.home.path());
    // The source's own history holds task commits of an earlier delivery
    // with the same ids: recovery must not take them for this run's.
    for id in ids {
        for attempt in 1..=3 {
            sh(
                &repo,
                &format!(
                    "git commit -q --allow-empty -m 'old {id}' -m 'Swarm-Project: old\nSwarm-Task: {id}\nSwarm-Attempt: {attempt}'"
                ),
            );
        }
    }
    let base = sh(&repo, "git rev-parse trunk").trim().to_owned();

    let (mut child, _, project) = h.spawn_run(&[
        "run",
        "--json",
        "--repo",
        repo.to_str().unwrap(),
        "chaos goal",
    ]);
    std::thread::sleep(Duration::from_millis(700));
    kill_9(child.id());
    child.wait().unwrap();

    let mut finished = false;
    for round in 0..12 {
        let mut child = h
            .cmd(&["resume", &project, "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline =
            std::time::Instant::now() + Duration::from_millis(400 + fastrand::u64(0..900));
        let mut exited = false;
        while std::time::Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !exited && round < 11 {
            kill_9(child.id());
        }
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            let report = last_json_line(&out);
            assert_eq!(report["status"], "done", "{}", text(&out));
            assert_eq!(report["base"], base.as_str());
            finished = true;
            break;
        }
    }
    assert!(finished, "the run never finished");
    // The run's task commits: those since the base.
    let log = sh(
        &h.repo(&project),
        &format!(
            "git log {base}..main --format='%(trailers:key=Swarm-Task,valueonly,separator=%x2C)'"
        ),
    );
    for id in ids {
        let n = log.lines().filter(|l| l.trim() == id).count();
        assert_eq!(n, 1, "{id} merged {n} times:\n{log}");
    }
    let status = h.status_json(&project);
    for t in status["tasks"].as_array().unwrap() {
        assert_eq!(t["state"], "done", "{t}");
    }
    let main = sh(&h.repo(&project), "git rev-parse main")
        .trim()
        .to_owned();
    assert_eq!(
        sh(&repo, &format!("git rev-parse agentswarm/{project}")).trim(),
        main
    );
    sh(
        &h.repo(&project),
        &format!("git merge-base --is-ancestor {base} main"),
    );
    assert_eq!(sh(&repo, "git rev-parse trunk").trim(), base);
    let logs = h.run(&["logs", &project, "--json"]);
    let baselines = String::from_utf8_lossy(&logs.stdout)
        .lines()
        .filter(|l| l.contains("\"kind\":\"baseline\""))
        .count();
    assert_eq!(baselines, 1, "the baseline ran {baselines} times");
}

fn kill_9(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

/// `--push` on a local path sends the branch on to the source's `origin`
/// (a bare repository here). With `--review delivery` the run ends done
/// but neither writes the branch nor pushes it: `review` shows the whole
/// change, `--reject` plans and runs a follow-up round with the comment as
/// its goal (held again), and `--approve` writes and pushes the branch.
#[test]
fn push_reaches_origin_and_a_held_delivery_waits_for_review() {
    let add = json!({
        "name": "calc-add", "summary": "Fix add",
        "tasks": [
            {"id": "fix-ops", "title": "Fix add", "description": "calc/ops.py", "depends_on": [], "files": ["calc/ops.py"]},
            {"id": "verify", "title": "Test add", "kind": "verify", "depends_on": ["fix-ops"],
             "commands": ["python3 -m unittest tests.test_calc.T.test_add"]}
        ]
    });
    let shout = json!({
        "name": "calc-shout", "summary": "Fix shout",
        "tasks": [
            {"id": "fix-text", "title": "Fix shout", "description": "calc/text.py", "depends_on": [], "files": ["calc/text.py"]}
        ]
    });
    let h = Harness::new(json!({
        "planner": [add.clone(), add, shout],
        "tasks": {
            "fix-ops": {"turns": [write_turn("calc/ops.py", OPS_FIXED), finish_turn("add adds now")]},
            "c1-fix-text": {"turns": [write_turn("calc/text.py", TEXT_FIXED), finish_turn("shout upper-cases now")]},
        }
    }));
    let repo = python_project(h.home.path());
    sh(
        h.home.path(),
        "git init -q --bare origin.git && git -C calc-project remote add origin ../origin.git && git -C calc-project push -q origin trunk",
    );
    let origin = h.home.path().join("origin.git");
    let branch_in = |dir: &Path, b: &str| {
        Command::new("git")
            .args(["rev-parse", "--verify", "-q", &format!("refs/heads/{b}")])
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .map(|o| {
                o.status
                    .success()
                    .then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            })
            .unwrap()
    };

    // 1. --push: the branch is in the source and in its origin, at main.
    let out = h.run(&[
        "run",
        "--json",
        "--repo",
        repo.to_str().unwrap(),
        "--push",
        "Fix add",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let report = last_json_line(&out);
    let pushed = report["project_id"].as_str().unwrap().to_owned();
    let branch = format!("agentswarm/{pushed}");
    let main = sh(&h.repo(&pushed), "git rev-parse main").trim().to_owned();
    assert_eq!(branch_in(&repo, &branch), Some(main.clone()));
    assert_eq!(
        branch_in(&origin, &branch),
        Some(main),
        "the branch reached origin"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("delivery: branch {branch} in")) && stdout.contains("(pushed)"),
        "{stdout}"
    );

    // 2. --review delivery: done, but the branch waits.
    let out = h.run(&[
        "run",
        "--json",
        "--repo",
        repo.to_str().unwrap(),
        "--push",
        "--review",
        "delivery",
        "Fix add",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let report = last_json_line(&out);
    assert_eq!(report["status"], "done", "{report}");
    assert_eq!(report["branch"], Value::Null, "{report}");
    let p = report["project_id"].as_str().unwrap().to_owned();
    let held = format!("agentswarm/{p}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("delivery: the branch {held} waits for review")),
        "{stdout}"
    );
    assert_eq!(branch_in(&repo, &held), None);
    assert_eq!(branch_in(&origin, &held), None);
    assert!(
        std::fs::read_to_string(h.outputs_dir().join(&p).join("changes.patch"))
            .unwrap()
            .contains("calc/ops.py")
    );
    let status = h.status_json(&p);
    assert_eq!(status["source"]["held"], true, "{status}");
    let status_text = String::from_utf8_lossy(&h.run(&["status", &p]).stdout).into_owned();
    assert!(
        status_text.contains(&format!("delivery branch: {held} waits for review")),
        "{status_text}"
    );
    assert!(
        status_text.contains(&format!("repository: {}", repo.display())),
        "{status_text}"
    );

    let shown = h.run(&["review", &p]);
    assert!(shown.status.success(), "{}", text(&shown));
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("the delivery waits for review"), "{shown}");
    assert!(shown.contains("=== calc/ops.py (+1 -1)"), "{shown}");
    assert!(shown.contains("+    return a + b"), "{shown}");
    // A task of it does not wait (it merged); the pushed project has nothing held.
    let e = h.run(&["review", &p, "fix-ops", "--approve"]);
    assert!(!e.status.success());
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("is done, not waiting for review"),
        "{}",
        text(&e)
    );
    let e = h.run(&["review", &pushed, "--approve"]);
    assert!(!e.status.success());
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("does not wait for review"),
        "{}",
        text(&e)
    );

    // Rejected with a comment: a follow-up round with it as the goal, held again.
    let out = h.run(&["review", &p, "--reject", "Also fix shout"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("continuing with 1 new task(s): c1-fix-text"),
        "{}",
        text(&out)
    );
    let planners: Vec<_> = h
        .server
        .requests()
        .into_iter()
        .filter(|r| r.kind == swarm_testkit::RequestKind::Planner)
        .collect();
    assert_eq!(planners.len(), 3);
    assert!(planners[2].body["messages"][1]["content"]
        .as_str()
        .unwrap()
        .starts_with("Goal: Also fix shout"));
    assert_eq!(h.status_json(&p)["state"], "done");
    assert_eq!(branch_in(&repo, &held), None, "still held after the round");

    // Approved: written and pushed, at main (both fixes).
    let out = h.run(&["review", &p, "--approve"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("branch {held} written in")) && said.contains("and pushed"),
        "{said}"
    );
    let main = sh(&h.repo(&p), "git rev-parse main").trim().to_owned();
    assert_eq!(branch_in(&repo, &held), Some(main.clone()));
    assert_eq!(branch_in(&origin, &held), Some(main));
    assert_eq!(
        sh(&repo, &format!("git show {held}:calc/text.py")),
        TEXT_FIXED
    );
    let status = h.status_json(&p);
    assert_eq!(status["source"]["branch"], held.as_str(), "{status}");
    assert!(status["source"].get("held").is_none() || status["source"]["held"] == false);
    let e = h.run(&["review", &p, "--approve"]);
    assert!(!e.status.success());
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("was written already"),
        "{}",
        text(&e)
    );
}
