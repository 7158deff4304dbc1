//! The offline demo: a goal, the plan the scripted planner returns, and each
//! task's scripted tool calls. The files the workers write are a real Python
//! package (`demo/wordstats/` in this crate) whose own unit tests the verify
//! step runs.

use serde_json::{json, Value};

pub const DEMO_GOAL: &str =
    "Build `wordstats`, a small Python package and command-line tool that reports word \
statistics for text files (most frequent words, totals, average length), with unit tests.";

const PYPROJECT: &str = include_str!("../demo/wordstats/pyproject.toml");
const INIT: &str = include_str!("../demo/wordstats/wordstats/__init__.py");
const README_STUB: &str = include_str!("../demo/wordstats/README.scaffold.md");
const TOKENIZE: &str = include_str!("../demo/wordstats/wordstats/tokenize.py");
const COUNTER: &str = include_str!("../demo/wordstats/wordstats/counter.py");
const STATS: &str = include_str!("../demo/wordstats/wordstats/stats.py");
const FORMATTING: &str = include_str!("../demo/wordstats/wordstats/formatting.py");
const CLI: &str = include_str!("../demo/wordstats/wordstats/cli.py");
const MAIN: &str = include_str!("../demo/wordstats/wordstats/__main__.py");
const TEST_CORE: &str = include_str!("../demo/wordstats/tests/test_core.py");
const TEST_CLI: &str = include_str!("../demo/wordstats/tests/test_cli.py");
const SAMPLE: &str = include_str!("../demo/wordstats/tests/fixtures/sample.txt");
const README: &str = include_str!("../demo/wordstats/README.md");

/// The verify commands of the demo plan.
pub const DEMO_VERIFY: &[&str] = &[
    "python3 -m unittest discover -s tests -v",
    "python3 -m wordstats --top 3 tests/fixtures/sample.txt",
];

fn task(id: &str, title: &str, description: &str, deps: &[&str], files: &[&str]) -> Value {
    json!({"id": id, "title": title, "description": description, "depends_on": deps, "files": files, "kind": "code"})
}

fn write(path: &str, content: &str) -> Value {
    json!({"name": "write_file", "arguments": {"path": path, "content": content}})
}

fn call(name: &str, arguments: Value) -> Value {
    json!({"name": name, "arguments": arguments})
}

fn turn(content: &str, calls: Vec<Value>) -> Value {
    json!({"content": content, "calls": calls})
}

fn finish(summary: &str) -> Value {
    turn("Done.", vec![call("finish", json!({"summary": summary}))])
}

/// The module tasks share a shape: look around, write the module, try it, finish.
fn module_script(path: &str, content: &str, check: &str, summary: &str) -> Value {
    json!({"turns": [
        turn("Let me see what the package has so far.", vec![call("list_files", json!({})), call("read_file", json!({"path": "wordstats/__init__.py"}))]),
        turn(&format!("Writing {path}."), vec![write(path, content)]),
        turn("Checking it works.", vec![call("run_command", json!({"command": check, "timeout_seconds": 60}))]),
        finish(summary),
    ]})
}

/// The scenario `agentswarm demo` runs (docs/testkit.md describes the format).
pub fn demo_scenario() -> Value {
    let plan = json!({
        "name": "wordstats",
        "summary": "A Python package with a tokenizer, counter, statistics and formatting modules, a CLI on top, unit tests and a README.",
        "tasks": [
            task("scaffold", "Package skeleton", "Create pyproject.toml, the wordstats package (__init__ with __version__) and a stub README.", &[], &["pyproject.toml", "wordstats/__init__.py", "README.md"]),
            task("tokenize", "Tokenizer", "wordstats/tokenize.py: tokenize(text) -> lower-cased words, keeping digits and apostrophes.", &["scaffold"], &["wordstats/tokenize.py"]),
            task("counter", "Word counter", "wordstats/counter.py: count_words(tokens) -> dict; top_n(counts, n) ordered by count, then word.", &["scaffold"], &["wordstats/counter.py"]),
            task("stats", "Summary statistics", "wordstats/stats.py: summary(tokens) -> total, unique, average_length (2 decimals), longest.", &["scaffold"], &["wordstats/stats.py"]),
            task("formatting", "Output formatting", "wordstats/formatting.py: format_table(rows, headers) and format_json(data) with sorted keys.", &["scaffold"], &["wordstats/formatting.py"]),
            task("cli", "Command line", "wordstats/cli.py (argparse: files, --top, --json, --version) and wordstats/__main__.py.", &["tokenize", "counter", "stats", "formatting"], &["wordstats/cli.py", "wordstats/__main__.py"]),
            task("tests-core", "Unit tests of the modules", "tests/test_core.py: unittest cases for tokenize, counter, stats and formatting.", &["tokenize", "counter", "stats", "formatting"], &["tests/test_core.py"]),
            task("tests-cli", "Tests of the command line", "tests/test_cli.py and tests/fixtures/sample.txt: the table, --json, a missing file, python -m wordstats.", &["cli"], &["tests/test_cli.py", "tests/fixtures/sample.txt"]),
            task("docs", "README", "README.md: what wordstats does, usage, layout and how to run the tests.", &["cli"], &["README.md"]),
            {"id": "verify", "title": "Run the test suite", "description": "The unit tests pass and the CLI runs on the sample.", "depends_on": ["tests-core", "tests-cli", "docs"], "kind": "verify", "commands": DEMO_VERIFY},
        ]
    });
    let tasks = json!({
        "scaffold": {"turns": [
            turn("Starting from an empty repository.", vec![call("list_files", json!({}))]),
            turn("Creating the skeleton.", vec![write("pyproject.toml", PYPROJECT), write("wordstats/__init__.py", INIT), write("README.md", README_STUB)]),
            turn("Checking the package imports.", vec![call("run_command", json!({"command": "python3 -c 'import wordstats; print(wordstats.__version__)'"}))]),
            finish("Created pyproject.toml, wordstats/__init__.py and a stub README.md."),
        ]},
        "tokenize": module_script("wordstats/tokenize.py", TOKENIZE,
            "python3 -c \"from wordstats.tokenize import tokenize; print(tokenize(\\\"It's 2 o'clock, Hello!\\\"))\"",
            "Added wordstats/tokenize.py with tokenize()."),
        "counter": module_script("wordstats/counter.py", COUNTER,
            "python3 -c \"from wordstats.counter import count_words, top_n; print(top_n(count_words(['a','b','a']), 1))\"",
            "Added wordstats/counter.py with count_words() and top_n()."),
        "stats": module_script("wordstats/stats.py", STATS,
            "python3 -c \"from wordstats.stats import summary; print(summary(['the','cat','sat']))\"",
            "Added wordstats/stats.py with summary()."),
        "formatting": module_script("wordstats/formatting.py", FORMATTING,
            "python3 -c \"from wordstats.formatting import format_table; print(format_table([('a', 1)]))\"",
            "Added wordstats/formatting.py with format_table() and format_json()."),
        "cli": {"turns": [
            turn("Reading the modules the CLI ties together.", vec![call("read_file", json!({"path": "wordstats/counter.py"})), call("read_file", json!({"path": "wordstats/formatting.py"}))]),
            turn("Writing the CLI.", vec![write("wordstats/cli.py", CLI), write("wordstats/__main__.py", MAIN)]),
            turn("Trying it.", vec![call("run_command", json!({"command": "echo 'the cat and the hat' | python3 -m wordstats --top 2"}))]),
            finish("Added wordstats/cli.py and wordstats/__main__.py."),
        ]},
        "tests-core": {"turns": [
            turn("Writing the module tests.", vec![write("tests/test_core.py", TEST_CORE)]),
            turn("Running them.", vec![call("run_command", json!({"command": "python3 -m unittest discover -s tests -p 'test_core.py' -v"}))]),
            finish("Added tests/test_core.py (10 tests)."),
        ]},
        "tests-cli": {"turns": [
            turn("Writing the CLI tests and a sample text.", vec![write("tests/fixtures/sample.txt", SAMPLE), write("tests/test_cli.py", TEST_CLI)]),
            turn("Running them.", vec![call("run_command", json!({"command": "python3 -m unittest discover -s tests -p 'test_cli.py' -v"}))]),
            finish("Added tests/test_cli.py and tests/fixtures/sample.txt."),
        ]},
        "docs": {"turns": [
            turn("Reading the CLI to document it.", vec![call("read_file", json!({"path": "wordstats/cli.py"}))]),
            turn("Writing the README.", vec![write("README.md", README)]),
            finish("Rewrote README.md with usage, layout and tests."),
        ]},
    });
    json!({"latency_ms": 40, "planner": [plan], "tasks": tasks})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_plan_is_wide_enough() {
        let sc = demo_scenario();
        let tasks = sc["planner"][0]["tasks"].as_array().unwrap();
        assert!(tasks.len() >= 8);
        let after_scaffold = tasks
            .iter()
            .filter(|t| t["depends_on"] == json!(["scaffold"]))
            .count();
        assert!(after_scaffold >= 3, "at least 3 tasks can run in parallel");
        crate::Scenario::from_json_str(&sc.to_string()).unwrap();
    }

    /// The files the demo's workers write are a working package: its own
    /// tests pass (the same commands verify runs).
    #[test]
    fn the_demo_package_passes_its_own_tests() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/wordstats");
        let dir = tempfile::tempdir().unwrap();
        let copy = std::process::Command::new("cp")
            .arg("-r")
            .arg(format!("{}/.", src.display()))
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(copy.success());
        for cmd in DEMO_VERIFY {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{cmd}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
