//! A scripted, OpenAI-compatible model server on loopback, for tests, the
//! benchmark and `agentswarm demo`.
//!
//! It speaks `POST /v1/chat/completions` (non-streaming, with tool calling)
//! and answers from a [`Scenario`]: the planner's and fixer's replies in
//! order, each task's tool calls turn by turn, a fixed latency, and injected
//! errors (HTTP 429/500, malformed JSON). It checks every request against the
//! wire format — the required fields, a tool message answering every tool
//! call by id, only declared tools called — answers a broken request with
//! HTTP 400 and records it as a violation, and records every request so a
//! test can assert on what was sent and on how many were in flight at once.
//! The scenario format is in docs/testkit.md.
//!
//! How a request is recognised (the prompt contracts of docs/plan.md and
//! docs/worker-tools.md): the first user message starts with `Goal: ` (the
//! planner), `Verify failed` (the fixer) or `Task <id>: ` (a worker, whose
//! message also holds an `Attempt: <n>` line). A worker's turn is the number
//! of assistant messages already in the conversation (0-based).

mod demo;
mod validate;

pub use demo::{demo_scenario, DEMO_GOAL};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid scenario: {0}")]
    Scenario(String),
    #[error("cannot start the scripted server: {0}")]
    Start(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// What the server answers. Every field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Delay before every answer.
    #[serde(default)]
    pub latency_ms: u64,
    /// Replies to planner requests, in order (the last one repeats). A plan
    /// object is sent as its JSON text; `{"content": "…"}` sends raw text.
    #[serde(default)]
    pub planner: Vec<Value>,
    /// Replies to fix requests (`Verify failed …`), in order.
    #[serde(default)]
    pub fixer: Vec<Value>,
    /// Worker scripts by task id.
    #[serde(default)]
    pub tasks: BTreeMap<String, TaskScript>,
    /// The script of a task not listed in `tasks` (default: finish at once).
    #[serde(default)]
    pub default_task: Option<TaskScript>,
    /// Injected failures, tried in order before a request is answered.
    #[serde(default)]
    pub errors: Vec<InjectedError>,
}

/// One task's turns, or one list of turns per attempt (the last repeats).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskScript {
    #[serde(default)]
    pub turns: Vec<Turn>,
    #[serde(default)]
    pub attempts: Vec<Vec<Turn>>,
}

impl TaskScript {
    fn turns_for(&self, attempt: u32) -> &[Turn] {
        if self.attempts.is_empty() {
            return &self.turns;
        }
        let i = (attempt.max(1) as usize - 1).min(self.attempts.len() - 1);
        &self.attempts[i]
    }
}

/// One assistant message: text, tool calls, or both.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Turn {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub calls: Vec<ScriptedCall>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedCall {
    pub name: String,
    #[serde(default = "empty_object")]
    pub arguments: Value,
}

fn empty_object() -> Value {
    json!({})
}

/// A failure to inject: the first `times` requests that match get it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectedError {
    /// `planner`, `fixer` or `worker`; any if absent.
    #[serde(default)]
    pub kind: Option<RequestKind>,
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default)]
    pub turn: Option<u32>,
    #[serde(default)]
    pub attempt: Option<u32>,
    /// HTTP status (default 500). With `malformed`, 200 and a body that is not JSON.
    #[serde(default = "default_status")]
    pub status: u16,
    #[serde(default)]
    pub malformed: bool,
    #[serde(default)]
    pub retry_after_secs: Option<u64>,
    /// Extra delay before this answer (to provoke client timeouts).
    #[serde(default)]
    pub delay_ms: u64,
    #[serde(default = "one")]
    pub times: u32,
}

fn default_status() -> u16 {
    500
}

fn one() -> u32 {
    1
}

impl Scenario {
    pub fn from_json_str(s: &str) -> Result<Self> {
        let sc: Scenario = serde_json::from_str(s).map_err(|e| Error::Scenario(e.to_string()))?;
        for (id, t) in &sc.tasks {
            for turn in t.turns.iter().chain(t.attempts.iter().flatten()) {
                for c in &turn.calls {
                    if !c.arguments.is_object() {
                        return Err(Error::Scenario(format!(
                            "task {id}: arguments of {} must be an object",
                            c.name
                        )));
                    }
                }
            }
        }
        Ok(sc)
    }

    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let s = std::fs::read_to_string(path)
            .map_err(|e| Error::Scenario(format!("{}: {e}", path.display())))?;
        Self::from_json_str(&s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    Planner,
    Fixer,
    Worker,
    Unknown,
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub kind: RequestKind,
    pub task: Option<String>,
    pub attempt: Option<u32>,
    /// 0-based: assistant messages already in the conversation.
    pub turn: Option<u32>,
    pub body: Value,
    /// The `Authorization` header was present.
    pub authorized: bool,
    /// The HTTP status answered.
    pub status: u16,
    pub received: Instant,
}

#[derive(Default)]
struct Counters {
    planner: usize,
    fixer: usize,
    errors_used: Vec<u32>,
}

struct Inner {
    scenario: Scenario,
    requests: Mutex<Vec<RecordedRequest>>,
    violations: Mutex<Vec<String>>,
    counters: Mutex<Counters>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    seq: AtomicUsize,
}

/// Read access to what the server saw; shared by both server handles.
#[derive(Clone)]
pub struct Observer {
    inner: Arc<Inner>,
    addr: SocketAddr,
}

impl Observer {
    /// `http://127.0.0.1:<port>/v1`: what `OPENAI_BASE_URL` should be.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }
    /// Requests that broke the wire format (each answered with HTTP 400).
    pub fn violations(&self) -> Vec<String> {
        self.inner
            .violations
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }
    /// The most requests that were being answered at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight.load(Ordering::SeqCst)
    }
}

/// The server on a tokio runtime the caller owns.
pub struct ScriptedServer {
    observer: Observer,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl std::ops::Deref for ScriptedServer {
    type Target = Observer;
    fn deref(&self) -> &Observer {
        &self.observer
    }
}

impl ScriptedServer {
    /// Binds `127.0.0.1:0` and serves until [`ScriptedServer::shutdown`].
    pub async fn start(scenario: Scenario) -> Result<Self> {
        Self::start_on(scenario, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Binds `addr` (loopback only is the point; any address is accepted).
    pub async fn start_on(scenario: Scenario, addr: SocketAddr) -> Result<Self> {
        let errors_used = vec![0; scenario.errors.len()];
        let inner = Arc::new(Inner {
            scenario,
            requests: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
            counters: Mutex::new(Counters {
                errors_used,
                ..Default::default()
            }),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            seq: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(handle))
            .route("/chat/completions", post(handle))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            observer: Observer { inner, addr },
            stop,
            task,
        })
    }

    /// The server on its own thread and runtime, for synchronous tests.
    pub fn start_blocking(scenario: Scenario) -> Result<BlockingServer> {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(Error::Start(e)));
                    return;
                }
            };
            rt.block_on(async move {
                match ScriptedServer::start(scenario).await {
                    Ok(server) => {
                        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
                        let _ = tx.send(Ok((server.observer.clone(), stop_tx)));
                        let _ = stop_rx.await;
                        server.shutdown().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        });
        let (observer, stop) = rx
            .recv()
            .map_err(|_| Error::Start(std::io::Error::other("server thread died")))??;
        Ok(BlockingServer {
            observer,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// A server running on its own thread; stops when dropped.
pub struct BlockingServer {
    observer: Observer,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::ops::Deref for BlockingServer {
    type Target = Observer;
    fn deref(&self) -> &Observer {
        &self.observer
    }
}

impl Drop for BlockingServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Polls `pred` every 20 ms until it holds (true) or `timeout` passes (false).
pub fn wait_for(timeout: Duration, mut pred: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pred() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Classified {
    kind: RequestKind,
    task: Option<String>,
    attempt: Option<u32>,
    turn: u32,
}

fn classify(body: &Value) -> Classified {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let first_user = messages
        .iter()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content").and_then(Value::as_str))
        .unwrap_or("");
    let turn = messages
        .iter()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
        .count() as u32;
    if first_user.starts_with("Goal: ") {
        return Classified {
            kind: RequestKind::Planner,
            task: None,
            attempt: None,
            turn,
        };
    }
    if first_user.starts_with("Verify failed") {
        return Classified {
            kind: RequestKind::Fixer,
            task: None,
            attempt: None,
            turn,
        };
    }
    if let Some(rest) = first_user.strip_prefix("Task ") {
        let id = rest.split(':').next().unwrap_or("").trim().to_owned();
        let attempt = first_user
            .lines()
            .find_map(|l| l.trim().strip_prefix("Attempt: "))
            .and_then(|a| a.split_whitespace().next())
            .and_then(|a| a.parse().ok());
        return Classified {
            kind: RequestKind::Worker,
            task: Some(id),
            attempt,
            turn,
        };
    }
    Classified {
        kind: RequestKind::Unknown,
        task: None,
        attempt: None,
        turn,
    }
}

struct InFlight<'a>(&'a Inner);

impl<'a> InFlight<'a> {
    fn enter(inner: &'a Inner) -> Self {
        let now = inner.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        inner.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(inner)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let _guard = InFlight::enter(&inner);
    let authorized = headers.contains_key(axum::http::header::AUTHORIZATION);
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let msg = format!("request body is not JSON: {e}");
            record(
                &inner,
                Classified {
                    kind: RequestKind::Unknown,
                    task: None,
                    attempt: None,
                    turn: 0,
                },
                Value::Null,
                authorized,
                400,
            );
            return violation(&inner, msg);
        }
    };
    let c = classify(&body);
    if let Err(problems) = validate::request(&body) {
        record(&inner, c, body, authorized, 400);
        return violation(&inner, problems.join("; "));
    }
    if inner.scenario.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(inner.scenario.latency_ms)).await;
    }
    if let Some(e) = injected_error(&inner, &c) {
        if e.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(e.delay_ms)).await;
        }
        record(
            &inner,
            c,
            body,
            authorized,
            if e.malformed { 200 } else { e.status },
        );
        if e.malformed {
            return (
                StatusCode::OK,
                [("content-type", "application/json")],
                "{\"choices\": [ this is not json",
            )
                .into_response();
        }
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(json!({"error": {"message": format!("scripted error {}", e.status), "type": "scripted", "code": e.status}}))).into_response();
        if let Some(secs) = e.retry_after_secs {
            if let Ok(v) = secs.to_string().parse() {
                resp.headers_mut().insert("retry-after", v);
            }
        }
        return resp;
    }
    let message = match reply(&inner, &c) {
        Ok(m) => m,
        Err(msg) => {
            record(&inner, c, body, authorized, 500);
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({"error": {"message": msg, "type": "scenario"}})),
            )
                .into_response();
        }
    };
    let n = inner.seq.fetch_add(1, Ordering::SeqCst) + 1;
    let prompt_tokens = body.to_string().len() / 4;
    let completion_tokens = message.to_string().len() / 4;
    let finish_reason = if message.get("tool_calls").is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    let model = body.get("model").cloned().unwrap_or(Value::Null);
    record(&inner, c, body, authorized, 200);
    axum::Json(json!({
        "id": format!("chatcmpl-scripted-{n}"),
        "object": "chat.completion",
        "created": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    }))
    .into_response()
}

fn record(inner: &Inner, c: Classified, body: Value, authorized: bool, status: u16) {
    let r = RecordedRequest {
        kind: c.kind,
        task: c.task,
        attempt: c.attempt,
        turn: Some(c.turn),
        body,
        authorized,
        status,
        received: Instant::now(),
    };
    if let Ok(mut v) = inner.requests.lock() {
        v.push(r);
    }
}

fn violation(inner: &Inner, msg: String) -> Response {
    if let Ok(mut v) = inner.violations.lock() {
        v.push(msg.clone());
    }
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": {"message": msg, "type": "invalid_request_error"}})),
    )
        .into_response()
}

fn injected_error(inner: &Inner, c: &Classified) -> Option<InjectedError> {
    let mut counters = inner.counters.lock().ok()?;
    for (i, e) in inner.scenario.errors.iter().enumerate() {
        let matches = e.kind.is_none_or(|k| k == c.kind)
            && e.task.as_ref().is_none_or(|t| Some(t) == c.task.as_ref())
            && e.turn.is_none_or(|t| t == c.turn)
            && e.attempt.is_none_or(|a| Some(a) == c.attempt);
        if matches && counters.errors_used[i] < e.times {
            counters.errors_used[i] += 1;
            return Some(e.clone());
        }
    }
    None
}

fn reply(inner: &Inner, c: &Classified) -> std::result::Result<Value, String> {
    let sc = &inner.scenario;
    match c.kind {
        RequestKind::Planner | RequestKind::Fixer => {
            let mut counters = inner.counters.lock().map_err(|_| "lock poisoned".to_owned())?;
            let (list, counter, what) = match c.kind {
                RequestKind::Planner => (&sc.planner, &mut counters.planner, "planner"),
                _ => (&sc.fixer, &mut counters.fixer, "fixer"),
            };
            let Some(entry) = list.get((*counter).min(list.len().saturating_sub(1))) else {
                return Err(format!("the scenario has no {what} reply"));
            };
            *counter += 1;
            let content = match entry {
                Value::Object(o) if o.contains_key("content") && !o.contains_key("tasks") => {
                    o.get("content").and_then(Value::as_str).unwrap_or("").to_owned()
                }
                Value::String(s) => s.clone(),
                other => serde_json::to_string_pretty(other).unwrap_or_default(),
            };
            Ok(json!({"role": "assistant", "content": content}))
        }
        RequestKind::Worker => {
            let task = c.task.clone().unwrap_or_default();
            let script = sc.tasks.get(&task).or(sc.default_task.as_ref());
            let turns = script.map(|s| s.turns_for(c.attempt.unwrap_or(1))).unwrap_or(&[]);
            let turn = match turns.get(c.turn as usize) {
                Some(t) => t.clone(),
                // Past the script: finish, so a short script still ends the task.
                None => Turn {
                    content: None,
                    calls: vec![ScriptedCall { name: "finish".into(), arguments: json!({"summary": "scripted: end of script"}) }],
                },
            };
            let calls: Vec<Value> = turn
                .calls
                .iter()
                .enumerate()
                .map(|(i, call)| {
                    json!({
                        "id": format!("call_{}_{}_{}_{}", task, c.attempt.unwrap_or(0), c.turn, i),
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments.to_string()},
                    })
                })
                .collect();
            let mut m = json!({"role": "assistant", "content": turn.content});
            if !calls.is_empty() {
                m["tool_calls"] = Value::Array(calls);
            }
            Ok(m)
        }
        RequestKind::Unknown => Err("the scripted server cannot tell what this request is: the first user message starts with neither `Goal: `, `Verify failed` nor `Task <id>: `".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn post(url: &str, body: Value) -> (u16, Value) {
        let client = reqwest_like::Client;
        client.post(url, body).await
    }

    /// A tiny HTTP/1.1 client over a TcpStream: enough for these tests
    /// without pulling an HTTP client into the testkit.
    mod reqwest_like {
        use serde_json::Value;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        pub struct Client;

        impl Client {
            pub async fn post(&self, url: &str, body: Value) -> (u16, Value) {
                let rest = url.strip_prefix("http://").unwrap();
                let (host, path) = rest.split_once('/').unwrap();
                let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
                let body = body.to_string();
                let req = format!(
                    "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAuthorization: Bearer test-key-not-real\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(req.as_bytes()).await.unwrap();
                let mut out = Vec::new();
                s.read_to_end(&mut out).await.unwrap();
                let text = String::from_utf8_lossy(&out).into_owned();
                let status: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
                let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
                (
                    status,
                    serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
                )
            }
        }
    }

    fn tools() -> Value {
        json!([{"type": "function", "function": {"name": "write_file", "description": "w", "parameters": {"type": "object"}}},
               {"type": "function", "function": {"name": "finish", "description": "f", "parameters": {"type": "object"}}}])
    }

    #[tokio::test]
    async fn scripted_worker_turns_and_validation() {
        let sc = Scenario::from_json_str(
            &json!({"tasks": {"t1": {"turns": [{"calls": [{"name": "write_file", "arguments": {"path": "a", "content": "b"}}]}]}}}).to_string(),
        )
        .unwrap();
        let server = ScriptedServer::start(sc).await.unwrap();
        let url = format!("{}/chat/completions", server.base_url());
        let first = json!({"model": "m", "tools": tools(), "messages": [
            {"role": "system", "content": "s"}, {"role": "user", "content": "Task t1: do it\nAttempt: 1\n"}]});
        let (status, resp) = post(&url, first.clone()).await;
        assert_eq!(status, 200, "{resp}");
        let msg = &resp["choices"][0]["message"];
        assert_eq!(msg["tool_calls"][0]["function"]["name"], "write_file");
        let id = msg["tool_calls"][0]["id"].as_str().unwrap().to_owned();

        // Turn 1 without answering the tool call: a violation.
        let mut missing = first.clone();
        missing["messages"]
            .as_array_mut()
            .unwrap()
            .push(msg.clone());
        missing["messages"]
            .as_array_mut()
            .unwrap()
            .push(json!({"role": "user", "content": "hi"}));
        let (status, _) = post(&url, missing).await;
        assert_eq!(status, 400);
        assert!(
            server.violations()[0].contains(&id),
            "{:?}",
            server.violations()
        );

        // Answered: past the script the server finishes.
        let mut ok = first.clone();
        ok["messages"].as_array_mut().unwrap().push(msg.clone());
        ok["messages"]
            .as_array_mut()
            .unwrap()
            .push(json!({"role": "tool", "tool_call_id": id, "content": "wrote"}));
        let (status, resp) = post(&url, ok).await;
        assert_eq!(status, 200, "{resp}");
        assert_eq!(
            resp["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
            "finish"
        );
        let reqs = server.requests();
        assert_eq!(reqs.len(), 3);
        assert_eq!(
            (
                reqs[2].kind,
                reqs[2].task.as_deref(),
                reqs[2].attempt,
                reqs[2].turn
            ),
            (RequestKind::Worker, Some("t1"), Some(1), Some(1))
        );
        assert!(reqs[0].authorized);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn planner_replies_in_order_and_errors_are_injected() {
        let sc = Scenario::from_json_str(
            &json!({
                "planner": [{"content": "not a plan"}, {"name": "p", "tasks": []}],
                "errors": [{"kind": "planner", "status": 429, "retry_after_secs": 1, "times": 1}, {"kind": "planner", "malformed": true, "times": 1}]
            })
            .to_string(),
        )
        .unwrap();
        let server = ScriptedServer::start(sc).await.unwrap();
        let url = format!("{}/chat/completions", server.base_url());
        let ask = json!({"model": "m", "messages": [{"role": "user", "content": "Goal: x"}]});
        assert_eq!(post(&url, ask.clone()).await.0, 429);
        let (status, body) = post(&url, ask.clone()).await;
        assert_eq!(status, 200);
        assert!(body.is_string(), "malformed body expected: {body}");
        assert_eq!(
            post(&url, ask.clone()).await.1["choices"][0]["message"]["content"],
            "not a plan"
        );
        let plan = post(&url, ask.clone()).await.1["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(serde_json::from_str::<Value>(&plan).unwrap()["name"], "p");
        // The last reply repeats.
        assert!(post(&url, ask).await.1["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("\"p\""));
        assert!(server.violations().is_empty());
        assert_eq!(server.max_in_flight(), 1);
        server.shutdown().await;
    }

    #[test]
    fn blocking_server_counts_parallel_requests() {
        let server = ScriptedServer::start_blocking(
            Scenario::from_json_str(r#"{"latency_ms": 300, "planner": [{"content": "x"}]}"#)
                .unwrap(),
        )
        .unwrap();
        let url = format!("{}/chat/completions", server.base_url());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let ask = json!({"model": "m", "messages": [{"role": "user", "content": "Goal: x"}]});
            let (a, b, c) = tokio::join!(
                post(&url, ask.clone()),
                post(&url, ask.clone()),
                post(&url, ask)
            );
            assert_eq!((a.0, b.0, c.0), (200, 200, 200));
        });
        assert_eq!(server.max_in_flight(), 3);
        assert!(wait_for(Duration::from_secs(1), || server.requests().len() == 3));
    }

    #[test]
    fn bad_scenarios_are_refused() {
        assert!(Scenario::from_json_str(r#"{"latency": 5}"#).is_err());
        assert!(Scenario::from_json_str(
            r#"{"tasks": {"a": {"turns": [{"calls": [{"name": "x", "arguments": "str"}]}]}}}"#
        )
        .is_err());
    }
}
