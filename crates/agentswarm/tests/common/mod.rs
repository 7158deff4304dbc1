//! Helpers for end-to-end tests: the real `agentswarm` binary, a temp home,
//! the scripted model server on loopback, and readers for what it delivers.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use swarm_testkit::{BlockingServer, Scenario, ScriptedServer};

pub struct Harness {
    pub home: tempfile::TempDir,
    pub server: BlockingServer,
}

impl Harness {
    pub fn new(scenario: Value) -> Harness {
        let scenario = Scenario::from_json_str(&scenario.to_string()).expect("scenario parses");
        let server = ScriptedServer::start_blocking(scenario).expect("scripted server starts");
        Harness {
            home: reachable_home(),
            server,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.home.path().join("data")
    }

    pub fn outputs_dir(&self) -> PathBuf {
        self.home.path().join("outputs")
    }

    /// `agentswarm ARGS` with this harness's home, endpoint and a fake key;
    /// nothing from the test process's own environment leaks in but PATH.
    pub fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_of(Path::new(env!("CARGO_BIN_EXE_agentswarm")), args)
    }

    /// `program ARGS` with the environment of [`Harness::cmd`].
    pub fn cmd_of(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.args(args)
            .current_dir(self.home.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("AGENTSWARM_HOME", self.data_dir())
            .env("OUTPUTS_DIR", self.outputs_dir())
            .env("OPENAI_BASE_URL", self.server.base_url())
            .env("OPENAI_API_KEY", "test-key-not-a-real-secret")
            .env("AGENTSWARM_MODEL", "scripted-test-model")
            // The suite loads the machine; the gate has tests of its own.
            .env("MIN_FREE_MEMORY_MB", "0")
            .env("MAX_LOAD_AVERAGE", "0")
            // The scripted model has no quota; the rate limit has tests of its own.
            .env("API_RATE_LIMIT_RPM", "0")
            // Tests run in parallel: each `serve` takes a free port and
            // advertises it in <data dir>/serve.json.
            .env("AGENTSWARM_BIND", "127.0.0.1:0")
            .stdin(Stdio::null());
        c
    }

    /// `agentswarm ARGS` (a `run`) in the background, stderr discarded; the
    /// child, its stdout after the first line, and the project that line
    /// names (`project <id>`).
    pub fn spawn_run(
        &self,
        args: &[&str],
    ) -> (
        std::process::Child,
        std::io::BufReader<std::process::ChildStdout>,
        String,
    ) {
        use std::io::BufRead;
        let mut child = self
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("agentswarm starts");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut first = String::new();
        stdout.read_line(&mut first).expect("a first line");
        let project = first
            .trim()
            .strip_prefix("project ")
            .unwrap_or_else(|| panic!("the first line names the project: {first:?}"))
            .to_owned();
        (child, stdout, project)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("agentswarm runs")
    }

    /// Writes `plan` to a file and runs it with `--json`; returns the output
    /// and the JSON report from the last stdout line.
    pub fn run_plan(&self, plan: &Value, extra: &[&str]) -> (Output, Value) {
        let path = self.home.path().join("plan.json");
        std::fs::write(&path, serde_json::to_vec_pretty(plan).unwrap()).unwrap();
        let mut args = vec!["run", "--json", "--plan", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push("test goal");
        let out = self.run(&args);
        let report = last_json_line(&out);
        (out, report)
    }

    pub fn repo(&self, project: &str) -> PathBuf {
        self.data_dir().join("projects").join(project).join("repo")
    }

    pub fn status_json(&self, project: &str) -> Value {
        let out = self.run(&["status", project, "--json"]);
        assert!(out.status.success(), "status failed: {}", text(&out));
        last_json_line(&out)
    }

    /// The ids of the project's tasks that are `done`, per `status --json`.
    pub fn done_tasks(&self, project: &str) -> Vec<String> {
        self.status_json(project)["tasks"]
            .as_array()
            .expect("status lists tasks")
            .iter()
            .filter(|t| t["state"] == "done")
            .map(|t| t["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

/// A temporary home other users may search (not list): a root service's
/// sandboxed commands run as an unprivileged uid and must reach their
/// worktree below it (docs/security.md).
pub fn reachable_home() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o711))
        .expect("chmod the home");
    home
}

pub fn text(out: &Output) -> String {
    format!(
        "exit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn last_json_line(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("last stdout line is not JSON ({e}):\n{}", text(out)))
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How many commits reachable from main carry `Swarm-Task: <id>`, per id.
pub fn trailer_counts(repo: &Path) -> HashMap<String, usize> {
    let log = git(
        repo,
        &[
            "log",
            "main",
            "--format=%(trailers:key=Swarm-Task,valueonly,separator=%x2C)",
        ],
    );
    let mut counts = HashMap::new();
    for line in log.lines().map(str::trim).filter(|l| !l.is_empty()) {
        *counts.entry(line.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// Every regular file in a .tar.gz, by path.
pub fn read_archive(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let f =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut files = BTreeMap::new();
    for entry in ar.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type().is_dir() {
            continue;
        }
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        files.insert(path, data);
    }
    files
}

/// Checks that manifest.txt and manifest.json in the delivery describe
/// exactly the files the archive holds (sizes and hashes included), and that
/// the copies beside the archive are identical. Returns the archive's files
/// under the deliverable's prefix, without the prefix.
pub fn check_delivery(delivery: &Path, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    use sha2::Digest;
    let files = read_archive(delivery);
    let txt = String::from_utf8(
        files
            .get("manifest.txt")
            .expect("manifest.txt in archive")
            .clone(),
    )
    .unwrap();
    let json: Value = serde_json::from_slice(
        files
            .get("manifest.json")
            .expect("manifest.json in archive"),
    )
    .unwrap();
    let dir = delivery.parent().unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("manifest.txt")).unwrap(),
        txt,
        "manifest.txt beside = inside"
    );
    assert_eq!(
        std::fs::read(dir.join("manifest.json")).unwrap(),
        files["manifest.json"],
        "manifest.json beside = inside"
    );

    let payload: BTreeMap<String, Vec<u8>> = files
        .iter()
        .filter_map(|(p, d)| {
            p.strip_prefix(&format!("{prefix}/"))
                .map(|rest| (rest.to_owned(), d.clone()))
        })
        .collect();
    assert_eq!(
        payload.len() + 2,
        files.len(),
        "archive holds only the manifests and {prefix}/…: {:?}",
        files.keys()
    );

    let lines: Vec<&str> = txt
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    let header_count: usize = txt
        .lines()
        .find_map(|l| l.strip_prefix("# files: "))
        .expect("files header")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        header_count,
        payload.len(),
        "manifest.txt header count = archive files"
    );
    assert_eq!(
        lines.len(),
        payload.len(),
        "manifest.txt lines = archive files"
    );
    assert_eq!(
        json["file_count"].as_u64().unwrap() as usize,
        payload.len(),
        "manifest.json file_count"
    );
    for line in lines {
        let parts: Vec<&str> = line.split("  ").collect();
        assert_eq!(parts.len(), 3, "line {line:?}");
        let data = payload
            .get(parts[2])
            .unwrap_or_else(|| panic!("{} listed but not in archive", parts[2]));
        assert_eq!(
            parts[1].parse::<usize>().unwrap(),
            data.len(),
            "size of {}",
            parts[2]
        );
        assert_eq!(
            parts[0],
            hex::encode(sha2::Sha256::digest(data)),
            "sha256 of {}",
            parts[2]
        );
    }
    payload
}

/// A plan: `tasks` as (id, deps, files), plus a verify task over all of them.
pub fn plan(name: &str, tasks: &[(&str, &[&str])], verify_commands: &[&str]) -> Value {
    let mut list: Vec<Value> = tasks
        .iter()
        .map(|(id, deps)| json!({"id": id, "title": format!("Task {id}"), "description": format!("Do {id}."), "depends_on": deps}))
        .collect();
    let all: Vec<&str> = tasks.iter().map(|(id, _)| *id).collect();
    list.push(json!({"id": "verify", "title": "Verify", "kind": "verify", "depends_on": all, "commands": verify_commands}));
    json!({"name": name, "summary": "test plan", "tasks": list})
}

/// A script turn that runs one shell command.
pub fn run_turn(command: &str) -> Value {
    json!({"calls": [{"name": "run_command", "arguments": {"command": command}}]})
}

/// A script turn that writes one file.
pub fn write_turn(path: &str, content: &str) -> Value {
    json!({"calls": [{"name": "write_file", "arguments": {"path": path, "content": content}}]})
}

pub fn finish_turn(summary: &str) -> Value {
    json!({"calls": [{"name": "finish", "arguments": {"summary": summary}}]})
}

/// The address a `serve` of this harness advertised in `<data dir>/serve.json`
/// (it binds 127.0.0.1:0, a free port), once that daemon answers
/// `/healthz` with 200; `None` until then.
pub fn ready_daemon(h: &Harness) -> Option<String> {
    let text = std::fs::read_to_string(h.data_dir().join("serve.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let base = v["url"].as_str()?.to_owned();
    let addr = base.strip_prefix("http://")?;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    use std::io::Write;
    write!(
        s,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 16];
    let n = s.read(&mut head).ok()?;
    String::from_utf8_lossy(&head[..n])
        .starts_with("HTTP/1.1 200")
        .then_some(base)
}

/// The sandbox mechanisms to run a test under: those this machine has; one
/// that `AGENTSWARM_TEST_SANDBOXES` (set by `.ci/run`) names but is missing
/// fails the test instead of being skipped.
pub fn mechanisms() -> Vec<&'static str> {
    let required = std::env::var("AGENTSWARM_TEST_SANDBOXES").unwrap_or_default();
    let f = swarm_exec::sandbox::facilities();
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

/// The tool result each worker turn of `task` got, by the turn that ran it.
pub fn tool_results(h: &Harness, task: &str) -> Vec<String> {
    let mut reqs: Vec<_> = h
        .server
        .requests()
        .into_iter()
        .filter(|r| r.kind == swarm_testkit::RequestKind::Worker && r.task.as_deref() == Some(task))
        .collect();
    reqs.sort_by_key(|r| r.turn);
    reqs.iter()
        .skip(1)
        .map(|r| {
            r.body["messages"]
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["content"].as_str())
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// The attempts of `task` as (outcome, reason), from `status --json`.
pub fn attempts_of(status: &Value, task: &str) -> Vec<(String, String)> {
    status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == task)
        .unwrap_or_else(|| panic!("no task {task} in {status}"))["attempt_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["outcome"].as_str().unwrap_or("").to_owned(),
                a["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}
