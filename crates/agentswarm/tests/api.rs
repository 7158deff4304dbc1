#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The HTTP API of `agentswarm serve`, end to end: the real binary, the
//! scripted model on loopback, plain HTTP from the test. Every answer the
//! test gets is checked against docs/openapi.json (the status must be one
//! the document lists for that path, and the body must match its schema),
//! so the served API and the document cannot drift apart unnoticed.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

// ---- the daemon ----

struct Daemon {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Daemon {
    /// `agentswarm serve ARGS` with the harness's environment plus `env`;
    /// waits until /healthz says ready.
    fn start(h: &Harness, env: &[(&str, &str)], args: &[&str]) -> Daemon {
        let log = h
            .home
            .path()
            .join(format!("serve-{}.log", fastrand::u32(..)));
        let _ = std::fs::remove_file(h.data_dir().join("serve.json"));
        let mut all = vec!["serve"];
        all.extend_from_slice(args);
        let mut c = h.cmd(&all);
        for (k, v) in env {
            c.env(k, v);
        }
        let child = c
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut base = String::new();
        let ok = swarm_testkit::wait_for(Duration::from_secs(30), || match ready_daemon(h) {
            Some(url) => {
                base = url;
                true
            }
            None => false,
        });
        let d = Daemon { child, base, log };
        assert!(ok, "serve did not become ready; log:\n{}", d.log_text());
        d
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; the exit code and the log.
    fn stop(mut self) -> (i32, String) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = self.child.wait().unwrap();
        (status.code().unwrap_or(-1), self.log_text())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- the document ----

fn openapi_text() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json"))
        .unwrap()
}

fn openapi() -> Value {
    serde_json::from_str(&openapi_text()).unwrap()
}

/// Checks an answer against the document: `status` must be listed for
/// `method path`, and a JSON body must match that answer's schema.
fn conform(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let op = &doc["paths"][path][method];
    assert!(
        op.is_object(),
        "{method} {path} is not in docs/openapi.json"
    );
    let answer = &op["responses"][status.to_string()];
    assert!(
        answer.is_object(),
        "{method} {path} answered {status}, which docs/openapi.json does not list; body: {body}"
    );
    let Some(schema) = answer["content"]["application/json"].get("schema") else {
        return;
    };
    let mut root = doc.clone();
    let obj = root.as_object_mut().unwrap();
    for (k, v) in schema.as_object().unwrap() {
        obj.insert(k.clone(), v.clone());
    }
    let validator = jsonschema::validator_for(&root).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} → {status} does not match docs/openapi.json:\n  {}\nbody: {body}",
        errors.join("\n  ")
    );
}

struct Api<'a> {
    daemon: &'a Daemon,
    doc: Value,
    token: Option<String>,
    http: reqwest::blocking::Client,
}

impl<'a> Api<'a> {
    fn new(daemon: &'a Daemon) -> Api<'a> {
        Api {
            daemon,
            doc: openapi(),
            token: None,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        }
    }

    /// `method path` (`template` is the document's path); checks the
    /// answer against the document and returns its status and JSON body.
    fn call(&self, method: &str, template: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut r = self
            .http
            .request(method.parse().unwrap(), self.daemon.url(path));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(b);
        }
        let resp = r.send().unwrap();
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = resp.bytes().unwrap();
        let v = if ct.starts_with("application/json") {
            serde_json::from_slice(&bytes).unwrap()
        } else {
            Value::Null
        };
        conform(&self.doc, &method.to_lowercase(), template, status, &v);
        (status, v)
    }

    fn get(&self, template: &str, path: &str) -> (u16, Value) {
        self.call("GET", template, path, None)
    }

    fn bytes(&self, path: &str) -> (u16, String, Vec<u8>) {
        let mut r = self.http.get(self.daemon.url(path));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().unwrap();
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, ct, resp.bytes().unwrap().to_vec())
    }

    fn wait_state(&self, id: &str, secs: u64, want: &[&str]) -> Value {
        let mut last = Value::Null;
        let ok = swarm_testkit::wait_for(Duration::from_secs(secs), || {
            last = self
                .get(
                    "/api/v1/projects/{project}",
                    &format!("/api/v1/projects/{id}"),
                )
                .1;
            want.contains(&last["project"]["state"].as_str().unwrap_or_default())
        });
        assert!(
            ok,
            "project {id} did not reach {want:?} in {secs} s: {last}"
        );
        last
    }
}

/// Reads Server-Sent Events until `stop` says so; returns (id, event, data).
fn read_sse(
    api: &Api,
    path: &str,
    last_event_id: Option<i64>,
    mut stop: impl FnMut(&(i64, String, Value)) -> bool,
) -> Vec<(i64, String, Value)> {
    let mut r = api
        .http
        .get(api.daemon.url(path))
        .header("accept", "text/event-stream")
        .timeout(Duration::from_secs(120));
    if let Some(id) = last_event_id {
        r = r.header("last-event-id", id.to_string());
    }
    let resp = r.send().unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut out = Vec::new();
    let (mut id, mut event, mut data) = (0i64, String::new(), String::new());
    for line in BufReader::new(resp).lines() {
        let line = line.unwrap();
        if let Some(v) = line.strip_prefix("id:") {
            id = v.trim().parse().unwrap();
        } else if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        } else if line.is_empty() && !data.is_empty() {
            let item = (
                id,
                std::mem::take(&mut event),
                serde_json::from_str(&data).unwrap(),
            );
            data.clear();
            let done = stop(&item);
            out.push(item);
            if done {
                break;
            }
        }
    }
    out
}

/// Tasks a and b of [`two_task_plan`]; the model answers after `latency_ms`.
fn two_task_harness_slow(latency_ms: u64) -> Harness {
    let mut tasks = serde_json::Map::new();
    for id in ["a", "b"] {
        tasks.insert(
            id.to_owned(),
            json!({"turns": [
                write_turn(&format!("{id}.txt"), &format!("{id}\n")),
                run_turn(&format!("cat {id}.txt")),
                finish_turn(&format!("wrote {id}.txt")),
            ]}),
        );
    }
    Harness::new(json!({"latency_ms": latency_ms, "tasks": tasks}))
}

fn two_task_harness() -> Harness {
    two_task_harness_slow(0)
}

fn two_task_plan() -> Value {
    plan(
        "apidemo",
        &[("a", &[]), ("b", &["a"])],
        &["test -f a.txt && test -f b.txt"],
    )
}

// ---- tests ----

#[test]
fn the_served_routes_are_the_documented_ones() {
    let doc = openapi();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let mut served: Vec<(String, String)> = swarm_server::route_table()
        .into_iter()
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
    served.sort();
    assert_eq!(
        served, documented,
        "swarm_server::route_table() and docs/openapi.json disagree"
    );
    // docs/api.md describes every documented path.
    let api_md =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/api.md"))
            .unwrap();
    for (method, path) in &documented {
        let line = format!("{} {path}", method.to_uppercase());
        assert!(
            api_md.contains(&line),
            "docs/api.md does not describe `{line}`"
        );
    }
}

#[test]
fn a_project_through_the_api_from_submit_to_download() {
    let h = two_task_harness();
    let daemon = Daemon::start(&h, &[], &[]);
    let api = Api::new(&daemon);

    let (code, health) = api.get("/healthz", "/healthz");
    assert_eq!((code, health["status"].as_str()), (200, Some("ready")));
    let (code, _, served_doc) = api.bytes("/openapi.json");
    assert_eq!(code, 200);
    assert_eq!(String::from_utf8(served_doc).unwrap(), openapi_text());
    let (code, ct, page) = api.bytes("/");
    assert_eq!(code, 200);
    assert!(ct.starts_with("text/html"), "{ct}");
    assert!(String::from_utf8_lossy(&page).contains("assets/app.js"));

    let (code, created) = api.call(
        "POST",
        "/api/v1/projects",
        "/api/v1/projects",
        Some(
            &json!({"goal": "two files", "plan": two_task_plan(), "options": {"max_attempts": 2}}),
        ),
    );
    assert_eq!(code, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["tasks_total"], 3);

    // The project's event stream, live, until the project is done.
    let base = format!("/api/v1/projects/{id}");
    let events = read_sse(&api, &format!("{base}/events"), None, |(_, kind, data)| {
        kind == "project_state" && data["data"]["to"] == "done"
    });
    let ids: Vec<i64> = events.iter().map(|e| e.0).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    for (_, kind, data) in &events {
        conform(
            &api.doc,
            "get",
            "/api/v1/projects/{project}/events",
            200,
            &json!({"events": [data]}),
        );
        assert_eq!(data["project_id"], id.as_str());
        assert_eq!(&data["kind"], kind);
    }
    let merged: Vec<&str> = events
        .iter()
        .filter(|(_, k, d)| k == "task_state" && d["data"]["to"] == "done")
        .map(|(_, _, d)| d["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(merged, ["a", "b", "verify"]);

    // Resumable: after the id of the third event, the stream gives the
    // fourth next — with Last-Event-ID, and with `after`.
    let resumed = read_sse(&api, &format!("{base}/events"), Some(ids[2]), |_| true);
    assert_eq!(resumed[0].0, ids[3]);
    let resumed = read_sse(
        &api,
        &format!("{base}/events?after={}", ids[2]),
        None,
        |_| true,
    );
    assert_eq!(resumed[0].0, ids[3]);
    // The daemon-wide stream has the same events.
    let all = read_sse(&api, "/api/v1/events", Some(ids[0]), |(i, _, _)| {
        *i >= ids[3]
    });
    assert_eq!(all[0].0, ids[1]);
    // A JSON page without Accept: text/event-stream.
    let (code, page) = api.get(
        "/api/v1/projects/{project}/events",
        &format!("{base}/events?after={}&limit=2", ids[0]),
    );
    assert_eq!(code, 200);
    let page_ids: Vec<i64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(page_ids, ids[1..3]);

    let (code, p) = api.get("/api/v1/projects/{project}", &base);
    assert_eq!(code, 200);
    assert_eq!(p["project"]["state"], "done");
    assert_eq!(p["project"]["tasks_done"], 3);
    assert_eq!(
        p["options"]["max_attempts"], 2,
        "the submitted option is stored"
    );
    assert_eq!(p["verify"]["passed"], true, "{}", p["verify"]);
    assert_eq!(
        p["verify"]["results"][0]["command"],
        "test -f a.txt && test -f b.txt"
    );
    assert!(
        p["totals"]["calls"].as_u64().unwrap() >= 6,
        "{}",
        p["totals"]
    );
    let tasks = p["tasks"].as_array().unwrap();
    assert_eq!(tasks[1]["depends_on"], json!(["a"]));
    assert!(tasks.iter().all(|t| t["duration_ms"].as_i64().is_some()));

    let (code, list) = api.get("/api/v1/projects", "/api/v1/projects");
    assert_eq!(code, 200);
    assert_eq!(list["projects"][0]["id"], id.as_str());

    // A task, its transcript and its command output.
    let (code, task) = api.get(
        "/api/v1/projects/{project}/tasks/{task}",
        &format!("{base}/tasks/b"),
    );
    assert_eq!(code, 200);
    assert_eq!(task["attempts"][0]["outcome"], "merged");
    let transcript_url = task["attempts"][0]["transcript_url"].as_str().unwrap();
    let (code, transcript) = api.get(
        "/api/v1/projects/{project}/tasks/{task}/attempts/{attempt}/transcript",
        transcript_url,
    );
    assert_eq!(code, 200);
    let text = transcript["messages"].to_string();
    assert!(
        text.contains("write_file") && text.contains("b.txt"),
        "{text}"
    );
    let (code, output) = api.get(
        "/api/v1/projects/{project}/tasks/{task}/attempts/{attempt}/output",
        task["attempts"][0]["output_url"].as_str().unwrap(),
    );
    assert_eq!(code, 200);
    assert_eq!(output["commands"][0]["command"], "cat b.txt");
    assert!(
        output["commands"][0]["output"]
            .as_str()
            .unwrap()
            .contains("b\n"),
        "{output}"
    );
    let (code, verify_output) = api.get(
        "/api/v1/projects/{project}/tasks/{task}/attempts/{attempt}/output",
        &format!("{base}/tasks/verify/attempts/1/output"),
    );
    assert_eq!(code, 200);
    assert_eq!(verify_output["commands"][0]["passed"], true);

    // Downloads: the delivery and a task archive are real gzip tarballs.
    let (code, ct, delivery) = api.bytes(p["project"]["delivery_url"].as_str().unwrap());
    assert_eq!((code, ct.as_str()), (200, "application/gzip"));
    let dir = h.home.path().join("download");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("d.tar.gz"), &delivery).unwrap();
    let files = read_archive(&dir.join("d.tar.gz"));
    assert!(
        files.keys().any(|k| k.ends_with("manifest.json")),
        "{:?}",
        files.keys()
    );
    assert!(
        files.keys().any(|k| k.ends_with("b.txt")),
        "{:?}",
        files.keys()
    );
    let (code, ct, archive) = api.bytes(task["archive_url"].as_str().unwrap());
    assert_eq!((code, ct.as_str()), (200, "application/gzip"));
    std::fs::write(dir.join("b.tar.gz"), &archive).unwrap();
    assert!(read_archive(&dir.join("b.tar.gz"))
        .keys()
        .any(|k| k.ends_with("b.txt")));
    let (code, manifest) = api.get(
        "/api/v1/projects/{project}/manifest",
        &format!("{base}/manifest"),
    );
    assert_eq!(code, 200);
    assert_eq!(manifest["goal"], "two files");

    // Metrics of what just happened.
    let (code, ct, metrics) = api.bytes("/metrics");
    assert_eq!(code, 200);
    assert!(ct.starts_with("text/plain"), "{ct}");
    let metrics = String::from_utf8(metrics).unwrap();
    for needle in [
        "agentswarm_workers_max 10",
        "agentswarm_model_calls_total{role=\"worker\",provider=\"default\",model=\"scripted-test-model\",outcome=\"ok\"} 6",
        "agentswarm_attempt_duration_seconds_count{kind=\"code\",outcome=\"merged\"} 2",
        "agentswarm_task_duration_seconds_count{kind=\"code\"} 2",
        "agentswarm_projects{state=\"done\"} 1",
        "agentswarm_rate_limit_wait_seconds_total",
        "agentswarm_gate_open 1",
    ] {
        assert!(metrics.contains(needle), "metrics lack {needle:?}:\n{metrics}");
    }
    let (code, status) = api.get("/api/v1/status", "/api/v1/status");
    assert_eq!(code, 200);
    assert_eq!(
        (status["workers_cap"].as_u64(), status["ready"].as_bool()),
        (Some(10), Some(true))
    );

    // Errors: JSON with the right status, each as documented.
    let (code, e) = api.get("/api/v1/projects/{project}", "/api/v1/projects/nope");
    assert_eq!(code, 404);
    assert!(e["error"].as_str().unwrap().contains("nope"));
    let (code, _) = api.get(
        "/api/v1/projects/{project}/tasks/{task}",
        &format!("{base}/tasks/zzz"),
    );
    assert_eq!(code, 404);
    let (code, _) = api.call(
        "POST",
        "/api/v1/projects/{project}/cancel",
        &format!("{base}/cancel"),
        None,
    );
    assert_eq!(code, 409, "a done project cannot be cancelled");
    let (code, e) = api.call(
        "POST",
        "/api/v1/projects/{project}/resume",
        &format!("{base}/resume"),
        None,
    );
    assert_eq!(code, 409, "{e}");
    let (code, e) = api.call(
        "POST",
        "/api/v1/projects",
        "/api/v1/projects",
        Some(&json!({"goal": "  "})),
    );
    assert_eq!(code, 422);
    assert!(e["error"].as_str().unwrap().contains("goal is empty"));
    let (code, e) = api.call(
        "POST",
        "/api/v1/projects",
        "/api/v1/projects",
        Some(&json!({"goal": "g", "options": {"max_cost": 1}})),
    );
    assert_eq!(code, 422);
    assert!(e["error"].as_str().unwrap().contains("max_cost"), "{e}");
    let bad_plan =
        json!({"name": "x", "tasks": [{"id": "a", "title": "A", "depends_on": ["ghost"]}]});
    let (code, e) = api.call(
        "POST",
        "/api/v1/projects",
        "/api/v1/projects",
        Some(&json!({"goal": "g", "plan": bad_plan})),
    );
    assert_eq!(code, 422);
    assert!(e["error"].as_str().unwrap().contains("ghost"), "{e}");
    let raw = |body: Vec<u8>, ct: &str| {
        // On a connection of its own: the server answers a body it refuses
        // (413) without reading it and closes the connection, which a pooled
        // connection would only notice on the next request.
        let resp = api
            .http
            .post(daemon.url("/api/v1/projects"))
            .header("content-type", ct)
            .header("connection", "close")
            .body(body)
            .send()
            .unwrap();
        let code = resp.status().as_u16();
        let v: Value = resp.json().unwrap();
        conform(&api.doc, "post", "/api/v1/projects", code, &v);
        (code, v)
    };
    assert_eq!(raw(b"{\"goal\": ".to_vec(), "application/json").0, 400);
    assert_eq!(
        raw(b"goal=x".to_vec(), "application/x-www-form-urlencoded").0,
        415
    );
    let huge = format!("{{\"goal\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    assert_eq!(raw(huge.into_bytes(), "application/json").0, 413);
    let (code, _) = api.get(
        "/api/v1/projects/{project}/tasks/{task}/attempts/{attempt}/transcript",
        &format!("{base}/tasks/a/attempts/x/transcript"),
    );
    assert_eq!(code, 400);
    let (code, _) = api.get(
        "/api/v1/projects/{project}/events",
        &format!("{base}/events?after=soon"),
    );
    assert_eq!(code, 400);
    // A path that is not UTF-8: axum's own rejection, as a JSON error too.
    let (code, e) = api.get("/api/v1/projects/{project}", "/api/v1/projects/%FF");
    assert_eq!(code, 400, "{e}");

    // Without a token: only loopback names (no DNS rebinding), no
    // cross-site writes (no CSRF).
    let forbidden = |r: reqwest::blocking::RequestBuilder, template: &str, method: &str| {
        let resp = r.send().unwrap();
        let code = resp.status().as_u16();
        let v: Value = resp.json().unwrap();
        conform(&api.doc, method, template, code, &v);
        code
    };
    let port = daemon.base.rsplit(':').next().unwrap().to_owned();
    assert_eq!(
        forbidden(
            api.http
                .get(daemon.url("/api/v1/projects"))
                .header("host", format!("rebound.example:{port}")),
            "/api/v1/projects",
            "get"
        ),
        403
    );
    let running = api.call(
        "POST",
        "/api/v1/projects",
        "/api/v1/projects",
        Some(&json!({"goal": "queued only", "plan": two_task_plan()})),
    );
    let queued = running.1["id"].as_str().unwrap().to_owned();
    assert_eq!(
        forbidden(
            api.http
                .post(daemon.url(&format!("/api/v1/projects/{queued}/cancel")))
                .header("origin", "https://attacker.example"),
            "/api/v1/projects/{project}/cancel",
            "post"
        ),
        403
    );
    assert_eq!(
        forbidden(
            api.http
                .post(daemon.url(&format!("/api/v1/projects/{queued}/cancel")))
                .header("origin", daemon.base.clone())
                .header("sec-fetch-site", "same-origin"),
            "/api/v1/projects/{project}/cancel",
            "post"
        ),
        200,
        "the dashboard's own origin may cancel"
    );

    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
    assert!(
        !h.data_dir().join("serve.json").exists(),
        "the advertisement is removed at a clean stop"
    );
}

#[test]
fn budget_exhausted_then_resumed_through_the_api_and_cancel_stops_a_run() {
    let h = two_task_harness();
    let daemon = Daemon::start(&h, &[], &[]);
    let api = Api::new(&daemon);
    let (code, created) = api.call(
        "POST",
        "/api/v1/projects",
        "/api/v1/projects",
        Some(&json!({"goal": "two files", "plan": two_task_plan(), "options": {"max_tokens": 1}})),
    );
    assert_eq!(code, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let p = api.wait_state(&id, 60, &["budget_exhausted"]);
    assert_eq!(p["options"]["max_tokens"], 1);
    // A task whose attempt was stopped waits for the next one: no
    // duration ticking on while nothing runs.
    let waiting: Vec<&Value> = p["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == "ready" && t["started_ms"].is_i64())
        .collect();
    assert!(!waiting.is_empty(), "{p}");
    assert!(waiting.iter().all(|t| t["duration_ms"].is_null()), "{p}");
    let base = format!("/api/v1/projects/{id}");
    let (code, e) = api.call(
        "POST",
        "/api/v1/projects/{project}/resume",
        &format!("{base}/resume"),
        Some(&json!({"options": {"max_tokens": 0}})),
    );
    assert_eq!(code, 422, "{e}");
    // A cost budget for a model without a price could not be enforced:
    // refused, naming the model, for a resume and for a new project.
    let (code, e) = api.call(
        "POST",
        "/api/v1/projects/{project}/resume",
        &format!("{base}/resume"),
        Some(&json!({"options": {"max_cost_usd": 5}})),
    );
    assert_eq!(code, 422, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("\"scripted-test-model\""),
        "{e}"
    );
    let (code, e) = api.call(
        "POST",
        "/api/v1/projects",
        "/api/v1/projects",
        Some(&json!({"goal": "g", "options": {"max_cost_usd": 5}})),
    );
    assert_eq!(code, 422, "{e}");
    assert!(e["error"].as_str().unwrap().contains("[prices."), "{e}");
    assert_eq!(
        api.get("/api/v1/projects", "/api/v1/projects").1["projects"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "a project was stored"
    );
    let (code, resumed) = api.call(
        "POST",
        "/api/v1/projects/{project}/resume",
        &format!("{base}/resume"),
        Some(&json!({"options": {"max_tokens": 100000000}})),
    );
    assert_eq!(code, 202, "{resumed}");
    let p = api.wait_state(&id, 90, &["done"]);
    assert_eq!(p["options"]["max_tokens"], 100000000);
    assert_eq!(p["project"]["tasks_done"], 3);

    // Cancel a project while its first task runs (the model is slow).
    let slow = Harness::new(json!({"latency_ms": 400, "tasks": {
        "a": {"turns": [run_turn("true"), run_turn("true"), run_turn("true"), run_turn("true"), finish_turn("a")]},
        "b": {"turns": [finish_turn("b")]}}}));
    drop(api);
    let (code, _) = daemon.stop();
    assert_eq!(code, 0);
    let daemon = Daemon::start(&slow, &[], &[]);
    let api = Api::new(&daemon);
    let (_, created) = api.call(
        "POST",
        "/api/v1/projects",
        "/api/v1/projects",
        Some(&json!({"goal": "slow", "plan": two_task_plan()})),
    );
    let id = created["id"].as_str().unwrap().to_owned();
    let base = format!("/api/v1/projects/{id}");
    let ok = swarm_testkit::wait_for(Duration::from_secs(30), || {
        let t = api
            .get(
                "/api/v1/projects/{project}/tasks/{task}",
                &format!("{base}/tasks/a"),
            )
            .1;
        t["state"] == "running" && t["worker"]["pid"].as_u64().is_some()
    });
    assert!(ok, "task a never showed its worker");
    let (code, c) = api.call(
        "POST",
        "/api/v1/projects/{project}/cancel",
        &format!("{base}/cancel"),
        None,
    );
    assert_eq!((code, c["state"].as_str()), (200, Some("cancelled")));
    let ok = swarm_testkit::wait_for(Duration::from_secs(30), || {
        api.get("/api/v1/status", "/api/v1/status").1["workers_running"] == 0
    });
    assert!(ok, "the cancelled project's worker is still running");
    let (code, _) = api.call(
        "POST",
        "/api/v1/projects/{project}/resume",
        &format!("{base}/resume"),
        None,
    );
    assert_eq!(code, 409);
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
}

#[test]
fn beyond_loopback_a_token_is_required_and_never_logged() {
    let h = two_task_harness_slow(150);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let open = format!("0.0.0.0:{port}");
    let out = h.run(&["serve", "--bind", &open]);
    assert!(!out.status.success());
    let err = text(&out);
    assert!(
        err.contains("AGENTSWARM_API_TOKEN") && err.contains("without a token"),
        "{err}"
    );

    let token = "test-token-not-a-real-secret-4f9c2a";
    let daemon = Daemon::start(&h, &[("AGENTSWARM_API_TOKEN", token)], &["--bind", &open]);
    let mut api = Api::new(&daemon);
    let (code, e) = api.get("/api/v1/projects", "/api/v1/projects");
    assert_eq!(code, 401);
    assert!(e["error"]
        .as_str()
        .unwrap()
        .contains("Authorization: Bearer"));
    let resp = api.http.get(daemon.url("/metrics")).send().unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert!(resp.headers().get("set-cookie").is_none());
    api.token = Some("wrong-token".into());
    assert_eq!(api.get("/api/v1/projects", "/api/v1/projects").0, 401);
    api.token = Some(token.into());
    assert_eq!(api.get("/api/v1/projects", "/api/v1/projects").0, 200);
    // Health, the document and the dashboard's own files hold no data.
    api.token = None;
    assert_eq!(api.get("/healthz", "/healthz").0, 200);
    assert_eq!(api.bytes("/").0, 200);
    assert_eq!(api.bytes("/assets/app.js").0, 200);

    // The CLI on this machine reads the token from its environment.
    let plan_path = h.home.path().join("plan.json");
    std::fs::write(&plan_path, two_task_plan().to_string()).unwrap();
    let out = h
        .cmd(&[
            "submit",
            "--json",
            "--plan",
            plan_path.to_str().unwrap(),
            "with a token",
        ])
        .env("AGENTSWARM_API_TOKEN", token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let id = last_json_line(&out)["project_id"]
        .as_str()
        .unwrap()
        .to_owned();
    api.token = Some(token.into());
    api.wait_state(&id, 60, &["done"]);

    // `status`, `logs` and `cancel` go through the API too, with the same
    // output as from the store.
    let with_token = |args: &[&str]| {
        let out = h
            .cmd(args)
            .env("AGENTSWARM_API_TOKEN", token)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let via_api: Value =
        serde_json::from_str(with_token(&["status", &id, "--json"]).trim()).unwrap();
    assert_eq!(via_api["state"], "done");
    assert_eq!(via_api["tasks_done"], 3);
    assert_eq!(
        via_api["tasks"][1]["attempt_history"][0]["outcome"],
        "merged"
    );
    let list = with_token(&["status"]);
    assert!(list.contains(&id) && list.contains("3/3"), "{list}");
    let logs = with_token(&["logs", &id, "b"]);
    assert!(
        logs.contains("running → merging") || logs.contains("merging → done"),
        "{logs}"
    );
    assert!(!logs.contains(" a  "), "only task b's events: {logs}");
    let (_, queued) = api.call(
        "POST",
        "/api/v1/projects",
        "/api/v1/projects",
        Some(
            &json!({"goal": "to cancel", "plan": two_task_plan(), "options": {"max_attempts": 1}}),
        ),
    );
    let cancel_id = queued["id"].as_str().unwrap().to_owned();
    let cancelled = with_token(&["cancel", &cancel_id]);
    assert!(cancelled.contains(": cancelled (was "), "{cancelled}");
    // Without the token the CLI cannot use the daemon and says so, then
    // reads the store itself (it is on this machine).
    let out = h.run(&["status", &id, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("not usable"), "{}", text(&out));
    let from_store: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(
        from_store["tasks"], via_api["tasks"],
        "the same view from the store and the API"
    );

    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("cancelled through the API"), "{log}");
    assert!(
        log.contains("submitted through the API"),
        "the CLI went through the API:\n{log}"
    );
    assert!(!log.contains(token), "the token is in the log");
    for entry in walk(&h.data_dir()) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(token),
            "the token is in {}",
            entry.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out
}

/// The daemon's threads now.
fn threads_of(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// 200 open event streams while a project runs: every stream gets the
/// project's events, and the daemon does not grow a thread per stream (one
/// reader of the store serves them all).
#[test]
fn two_hundred_event_streams_share_one_reader() {
    use std::io::{Read, Write};
    let h = two_task_harness_slow(30);
    let daemon = Daemon::start(&h, &[], &[]);
    let api = Api::new(&daemon);
    let addr = daemon.base.trim_start_matches("http://").to_owned();
    let before = threads_of(daemon.child.id());
    let mut streams: Vec<std::net::TcpStream> = (0..200)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            write!(
                s,
                "GET /api/v1/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
            )
            .unwrap();
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            s
        })
        .collect();
    let (code, created) = api.call(
        "POST",
        "/api/v1/projects",
        "/api/v1/projects",
        Some(&json!({"goal": "two files", "plan": two_task_plan()})),
    );
    assert_eq!(code, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    // Read every stream while the project runs; note the daemon's threads.
    let mut seen: Vec<String> = vec![String::new(); streams.len()];
    let mut most = before;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 65536];
    loop {
        most = most.max(threads_of(daemon.child.id()));
        for (s, text) in streams.iter_mut().zip(seen.iter_mut()) {
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
        let done = |t: &String| {
            t.contains(&id) && t.contains(r#""to":"done""#) && t.contains("event: project_state")
        };
        if seen.iter().all(done) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of 200 streams saw the project end",
            seen.iter().filter(|t| done(t)).count()
        );
    }
    eprintln!("daemon threads with 200 streams: {before} -> {most}");
    // Without the shared reader: ~165 threads here (a blocking read per
    // stream per wake-up). The project's own work (git, the store) takes a
    // few blocking threads too, more on a loaded machine.
    assert!(
        most < before + 40,
        "the daemon went from {before} to {most} threads with 200 streams open"
    );
}

/// Bodies are read as docs/openapi.json describes them: an object (an array
/// of the fields is refused), `plan: null` means no plan, an integer may be
/// written `2.0`, and a whitespace goal is refused.
#[test]
fn submit_bodies_are_read_as_the_schema_says() {
    let h = two_task_harness();
    let daemon = Daemon::start(&h, &[], &[]);
    let api = Api::new(&daemon);
    let submit =
        |body: Value| api.call("POST", "/api/v1/projects", "/api/v1/projects", Some(&body));

    let (code, err) = submit(json!(["a goal"]));
    assert_eq!(code, 422, "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("must be a JSON object"),
        "{err}"
    );
    let (code, err) = submit(json!({"goal": " \n\t "}));
    assert_eq!(code, 422, "{err}");
    let (code, err) = submit(json!({"goal": "g", "options": {"max_attempts": 2.5}}));
    assert_eq!(code, 422, "{err}");

    let (code, made) = submit(
        json!({"goal": "two files", "plan": two_task_plan(), "options": {"max_attempts": 2.0}}),
    );
    assert_eq!(code, 201, "{made}");
    let id = made["id"].as_str().unwrap().to_owned();
    api.wait_state(&id, 60, &["done"]);
    let (code, made) = submit(json!({"goal": "ask the planner", "plan": null}));
    assert_eq!(code, 201, "{made}");
    assert_eq!(
        made["tasks_total"], 0,
        "no plan given: the planner is asked"
    );
}

/// `repo` and `base` in the API: a path that is not a repository is a 422
/// before anything is stored; a repository's project is delivered as a
/// branch there, and the project's detail has its source.
#[test]
fn a_project_on_an_existing_repository_through_the_api() {
    let h = two_task_harness();
    let repo = h.home.path().join("src-repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("README.md"), "# existing\n").unwrap();
    let git_in = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(&repo)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    git_in(&["init", "-q", "-b", "main"]);
    git_in(&["add", "-A"]);
    git_in(&["commit", "-qm", "start"]);
    let daemon = Daemon::start(&h, &[], &[]);
    let api = Api::new(&daemon);

    let plain = h.home.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let (code, err) = api.call(
        "POST",
        "/api/v1/projects",
        "/api/v1/projects",
        Some(&json!({"goal": "two files", "plan": two_task_plan(), "repo": plain})),
    );
    assert_eq!(code, 422, "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("is not a git repository"),
        "{err}"
    );
    let (code, err) = api.call(
        "POST",
        "/api/v1/projects",
        "/api/v1/projects",
        Some(&json!({"goal": "two files", "plan": two_task_plan(), "repo": repo, "base": "nope"})),
    );
    assert_eq!(code, 422, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("does not exist"),
        "{err}"
    );
    let (_, list) = api.get("/api/v1/projects", "/api/v1/projects");
    assert_eq!(list["projects"].as_array().unwrap().len(), 0, "{list}");

    let (code, created) = api.call(
        "POST",
        "/api/v1/projects",
        "/api/v1/projects",
        Some(&json!({"goal": "two files", "plan": two_task_plan(), "repo": repo, "base": "main"})),
    );
    assert_eq!(code, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let detail = api.wait_state(&id, 120, &["done"]);
    let branch = format!("agentswarm/{id}");
    assert_eq!(detail["source"]["branch"], branch.as_str(), "{detail}");
    assert_eq!(detail["source"]["base"], "main");
    assert_eq!(
        detail["source"]["base_commit"].as_str().unwrap(),
        git_in(&["rev-parse", "main"])
    );
    assert_eq!(git_in(&["show", &format!("{branch}:b.txt")]), "b");
    assert_eq!(
        git_in(&["show", &format!("{branch}:README.md")]),
        "# existing"
    );

    // review = "delivery": done, the branch held until POST …/delivery/approve.
    let (code, created) = api.call(
        "POST",
        "/api/v1/projects",
        "/api/v1/projects",
        Some(&json!({"goal": "two files", "plan": two_task_plan(), "repo": repo, "options": {"review": "delivery"}})),
    );
    assert_eq!(code, 201, "{created}");
    let held = created["id"].as_str().unwrap().to_owned();
    let base = format!("/api/v1/projects/{held}");
    let d = "/api/v1/projects/{project}/delivery";
    let detail = api.wait_state(&held, 120, &["done"]);
    assert_eq!(detail["source"]["held"], true, "{detail}");
    assert_eq!(detail["source"]["branch"], Value::Null, "{detail}");
    let branch = format!("agentswarm/{held}");
    let listed = std::process::Command::new("git")
        .args(["branch", "--list", &branch])
        .current_dir(&repo)
        .output()
        .unwrap();
    assert!(listed.stdout.is_empty(), "the held branch was written");
    let (code, list) = api.get(
        "/api/v1/projects/{project}/review",
        &format!("{base}/review"),
    );
    assert_eq!(code, 200);
    assert_eq!(list["delivery_waiting"], true, "{list}");
    let (code, diff) = api.get(&format!("{d}/review"), &format!("{base}/delivery/review"));
    assert_eq!(code, 200, "{diff}");
    assert_eq!(diff["task"], Value::Null);
    let paths: Vec<&str> = diff["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["a.txt", "b.txt"]);
    let (code, e) = api.call(
        "POST",
        &format!("{d}/reject"),
        &format!("{base}/delivery/reject"),
        Some(&json!({"comment": " "})),
    );
    assert_eq!(code, 422, "{e}");
    let (code, o) = api.call(
        "POST",
        &format!("{d}/approve"),
        &format!("{base}/delivery/approve"),
        Some(&json!({})),
    );
    assert_eq!(code, 200, "{o}");
    assert!(
        o["message"]
            .as_str()
            .unwrap()
            .contains(&format!("branch {branch} written")),
        "{o}"
    );
    assert_eq!(git_in(&["show", &format!("{branch}:b.txt")]), "b");
    let (code, _) = api.call(
        "POST",
        &format!("{d}/approve"),
        &format!("{base}/delivery/approve"),
        None,
    );
    assert_eq!(code, 409);
    let (_, detail) = api.get("/api/v1/projects/{project}", &base);
    assert_eq!(detail["source"]["branch"], branch.as_str(), "{detail}");
}

/// Review before merge through the API (`review: "tasks"` as a submit
/// option): the task waits in `review`, the list and the per-file diff,
/// bad decisions refused (404, 409, 422), a rejection whose comment the
/// next attempt's prompt carries, approvals that merge; the SSE stream
/// has the review events, /metrics and the status count the task waiting.
#[test]
fn tasks_reviewed_through_the_api_reject_then_approve() {
    let mut tasks = serde_json::Map::new();
    tasks.insert(
        "a".into(),
        json!({"attempts": [
            [write_turn("a.txt", "first\n"), finish_turn("wrote a")],
            [write_turn("a.txt", "second\n"), finish_turn("rewrote a")]
        ]}),
    );
    tasks.insert(
        "b".into(),
        json!({"turns": [write_turn("b.txt", "b\n"), finish_turn("wrote b")]}),
    );
    let h = Harness::new(json!({"tasks": tasks}));
    let daemon = Daemon::start(&h, &[], &[]);
    let api = Api::new(&daemon);
    let (code, created) = api.call(
        "POST",
        "/api/v1/projects",
        "/api/v1/projects",
        Some(&json!({"goal": "reviewed", "plan": two_task_plan(), "options": {"review": "tasks"}})),
    );
    assert_eq!(code, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let base = format!("/api/v1/projects/{id}");
    let (_, bad) = api.call(
        "POST",
        "/api/v1/projects",
        "/api/v1/projects",
        Some(&json!({"goal": "g", "plan": two_task_plan(), "options": {"review": "sometimes"}})),
    );
    assert!(
        bad["error"].as_str().unwrap().contains("sometimes"),
        "{bad}"
    );

    // Until a waits in review (the event stream says so).
    let events = read_sse(&api, &format!("{base}/events"), None, |(_, kind, _)| {
        kind == "review_waiting"
    });
    assert_eq!(events.last().unwrap().2["task_id"], "a");
    let (_, detail) = api.get("/api/v1/projects/{project}", &base);
    let state = |d: &Value, t: &str| {
        d["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == t)
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(state(&detail, "a"), "review", "{detail}");
    assert_eq!(state(&detail, "b"), "pending", "{detail}");
    assert_eq!(detail["options"]["review"], "tasks");
    let (_, status) = api.get("/api/v1/status", "/api/v1/status");
    assert_eq!(status["review_tasks"], 1, "{status}");
    let (_, _, metrics) = api.bytes("/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(metrics.contains("agentswarm_review_tasks 1"), "{metrics}");

    let (code, list) = api.get(
        "/api/v1/projects/{project}/review",
        &format!("{base}/review"),
    );
    assert_eq!(code, 200);
    assert_eq!(list["review"], "tasks");
    assert_eq!(list["tasks"][0]["task"], "a");
    assert_eq!(list["tasks"][0]["files"][0]["path"], "a.txt");
    let t = "/api/v1/projects/{project}/tasks/{task}";
    let (code, diff) = api.get(&format!("{t}/review"), &format!("{base}/tasks/a/review"));
    assert_eq!(code, 200, "{diff}");
    assert_eq!(diff["attempt"], 1);
    assert!(
        diff["files"][0]["diff"]
            .as_str()
            .unwrap()
            .contains("+first"),
        "{diff}"
    );

    // Refusals: unknown task, a task not in review, an empty comment, a bad body.
    let post = |what: &str, task: &str, body: Value| {
        api.call(
            "POST",
            &format!("{t}/{what}"),
            &format!("{base}/tasks/{task}/{what}"),
            Some(&body),
        )
    };
    let (code, e) = post("approve", "nosuch", json!({}));
    assert_eq!(code, 404, "{e}");
    let (code, e) = post("approve", "b", json!({}));
    assert_eq!(code, 409, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("not waiting for review"),
        "{e}"
    );
    let (code, e) = api.get(&format!("{t}/review"), &format!("{base}/tasks/b/review"));
    assert_eq!(code, 409, "{e}");
    let (code, e) = post("reject", "a", json!({"comment": ""}));
    assert_eq!(code, 422, "{e}");
    let (code, e) = post("reject", "a", json!({"why": "x"}));
    assert_eq!(code, 422, "{e}");
    let (code, e) = post("approve", "a", json!({"options": {}}));
    assert_eq!(code, 422, "an approval takes no body: {e}");

    // Rejected with a comment: attempt 2 carries it.
    let (code, o) = post("reject", "a", json!({"comment": "Say second, please"}));
    assert_eq!(code, 200, "{o}");
    assert_eq!(
        (o["decision"].as_str(), o["state"].as_str()),
        (Some("rejected"), Some("ready"))
    );
    let after = events.last().unwrap().0;
    let more = read_sse(
        &api,
        &format!("{base}/events"),
        Some(after),
        |(_, kind, _)| kind == "review_waiting",
    );
    let kinds: Vec<&str> = more.iter().map(|e| e.1.as_str()).collect();
    assert!(kinds.contains(&"review_rejected"), "{kinds:?}");
    let rejected = more.iter().find(|e| e.1 == "review_rejected").unwrap();
    assert_eq!(rejected.2["data"]["comment"], "Say second, please");
    let prompt = h
        .server
        .requests()
        .into_iter()
        .find(|r| r.task.as_deref() == Some("a") && r.attempt == Some(2) && r.turn == Some(0))
        .expect("attempt 2 of a asked the model");
    assert!(prompt.body.to_string().contains("Say second, please"));
    let (_, diff) = api.get(&format!("{t}/review"), &format!("{base}/tasks/a/review"));
    assert_eq!(diff["attempt"], 2);
    assert!(diff["files"][0]["diff"]
        .as_str()
        .unwrap()
        .contains("+second"));

    // Approved: merges; b waits, is approved; the project is done.
    let (code, o) = post("approve", "a", json!({}));
    assert_eq!(code, 200, "{o}");
    assert_eq!(o["state"], "merging");
    let (code, _) = post("approve", "a", json!({}));
    assert_eq!(code, 409);
    let after = more.last().unwrap().0;
    let more = read_sse(
        &api,
        &format!("{base}/events"),
        Some(after),
        |(_, kind, _)| kind == "review_waiting",
    );
    assert!(more.iter().any(|e| e.1 == "review_approved"));
    let (code, _) = api.call(
        "POST",
        &format!("{t}/approve"),
        &format!("{base}/tasks/b/approve"),
        None,
    );
    assert_eq!(code, 200);
    let detail = api.wait_state(&id, 60, &["done"]);
    let a = detail["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "a")
        .unwrap()
        .clone();
    assert_eq!(a["attempts"][0]["outcome"], "rejected", "{a}");
    assert_eq!(a["attempts_counted"], 0, "{a}");
    assert_eq!(
        std::fs::read_to_string(h.repo(&id).join("a.txt")).unwrap(),
        "second\n"
    );
    let (_, list) = api.get(
        "/api/v1/projects/{project}/review",
        &format!("{base}/review"),
    );
    assert!(list["tasks"].as_array().unwrap().is_empty());
}

/// A held delivery rejected through the API: the comment becomes the goal
/// of a follow-up round that the daemon plans and runs; its delivery is
/// held again, and approving it writes a branch with both rounds' work.
#[test]
fn a_held_delivery_rejected_through_the_api_runs_a_follow_up_round() {
    let mut tasks = serde_json::Map::new();
    for id in ["a", "b", "c1-c"] {
        let file = id.trim_start_matches("c1-");
        tasks.insert(
            id.to_owned(),
            json!({"turns": [write_turn(&format!("{file}.txt"), &format!("{file}\n")), finish_turn(&format!("wrote {file}.txt"))]}),
        );
    }
    let more = json!({"name": "more", "summary": "c too", "tasks": [
        {"id": "c", "title": "Write c", "description": "Write c.txt.", "depends_on": [], "files": ["c.txt"]}
    ]});
    let h = Harness::new(json!({"planner": [more], "tasks": tasks}));
    let repo = h.home.path().join("src-repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("README.md"), "# existing\n").unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(
        &repo,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "commit",
            "-qm",
            "start",
        ],
    );
    let daemon = Daemon::start(&h, &[], &[]);
    let api = Api::new(&daemon);
    let (code, created) = api.call(
        "POST",
        "/api/v1/projects",
        "/api/v1/projects",
        Some(&json!({"goal": "two files", "plan": two_task_plan(), "repo": repo, "options": {"review": "delivery"}})),
    );
    assert_eq!(code, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let base = format!("/api/v1/projects/{id}");
    let d = "/api/v1/projects/{project}/delivery";
    let detail = api.wait_state(&id, 120, &["done"]);
    assert_eq!(detail["source"]["held"], true, "{detail}");

    let (code, o) = api.call(
        "POST",
        &format!("{d}/reject"),
        &format!("{base}/delivery/reject"),
        Some(&json!({"comment": "Also write c.txt"})),
    );
    assert_eq!(code, 202, "{o}");
    assert_eq!(o["decision"], "rejected");
    let planner = h
        .server
        .requests()
        .into_iter()
        .find(|r| r.kind == swarm_testkit::RequestKind::Planner)
        .expect("the follow-up round was planned");
    assert!(planner.body["messages"][1]["content"]
        .as_str()
        .unwrap()
        .starts_with("Goal: Also write c.txt"));
    // The daemon runs the round; its delivery waits again.
    let mut last = Value::Null;
    let ok = swarm_testkit::wait_for(Duration::from_secs(120), || {
        last = api.get("/api/v1/projects/{project}", &base).1;
        let c_done = last["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == "c1-c" && t["state"] == "done");
        c_done && last["project"]["state"] == "done"
    });
    assert!(ok, "the follow-up round did not finish: {last}");
    assert_eq!(last["source"]["held"], true, "{last}");
    let branch = format!("agentswarm/{id}");
    assert!(git(&repo, &["branch", "--list", &branch]).trim().is_empty());
    let (code, diff) = api.get(&format!("{d}/review"), &format!("{base}/delivery/review"));
    assert_eq!(code, 200, "{diff}");
    let paths: Vec<&str> = diff["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["a.txt", "b.txt", "c.txt"]);
    let (code, o) = api.call(
        "POST",
        &format!("{d}/approve"),
        &format!("{base}/delivery/approve"),
        None,
    );
    assert_eq!(code, 200, "{o}");
    assert_eq!(git(&repo, &["show", &format!("{branch}:c.txt")]), "c\n");
    // The events say what happened, in order.
    let (_, page) = api.get(
        "/api/v1/projects/{project}/events",
        &format!("{base}/events?limit=5000"),
    );
    let kinds: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .filter(|k| k.starts_with("review_") || *k == "continue")
        .collect();
    assert_eq!(
        kinds,
        [
            "review_waiting",
            "review_rejected",
            "continue",
            "review_waiting",
            "review_approved"
        ]
    );
}
