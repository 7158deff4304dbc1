//! A scripted model server on loopback, for tests, the benchmark and
//! `agentswarm demo`.
//!
//! It speaks OpenAI's `POST /v1/chat/completions` and Anthropic's
//! `POST /v1/messages` (with tool calling; streamed as server-sent events
//! when the request says `stream: true`) and answers
//! both from one [`Scenario`]: the planner's and fixer's replies in order,
//! each task's tool calls turn by turn, a fixed latency, and injected errors
//! (HTTP 429/5xx, 401, 404, context length exceeded, malformed JSON). It
//! checks every request against its wire format — the required fields and
//! headers, a tool result answering every tool call by id, only declared
//! tools called — answers a broken request with HTTP 400 and records it as a
//! violation, and records every request so a test can assert on what was
//! sent, on how many were in flight at once and on how many started within
//! any window of time. The scenario format is in docs/testkit.md.
//!
//! How a request is recognised (the prompt contracts of docs/plan.md and
//! docs/worker-tools.md): the first user message starts with `Goal: ` (the
//! planner), `Verify failed` (the fixer) or `Task <id>: ` (a worker, whose
//! message also holds an `Attempt: <n>` line). A worker's turn is the number
//! of assistant messages already in the conversation (0-based).

mod demo;
/// The wire-format checks the scripted server applies to every request,
/// for tests of a client that talk to their own mock server.
pub mod validate;
mod wire;

pub use demo::{demo_scenario, DEMO_GOAL};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::{Deserialize, Serialize};
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
    /// The text answering a request that is none of the kinds below (an
    /// outside agent's side calls: opencode's title, Claude Code's topic
    /// check). Absent: such a request is an error (HTTP 500).
    #[serde(default)]
    pub other: Option<String>,
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
///
/// The body is in the provider's error shape for the request's wire format:
/// 401 an invalid-key error, 404 a model-not-found error naming the
/// request's model, 429 a rate-limit error, 529 (Anthropic) an overload
/// error, anything else a server error. No request header is ever echoed.
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
    /// Only requests whose body `model` equals this (to test fallback models).
    #[serde(default)]
    pub model: Option<String>,
    /// HTTP status (default 500). With `malformed`, 200 and a body that is not JSON.
    #[serde(default = "default_status")]
    pub status: u16,
    #[serde(default)]
    pub malformed: bool,
    /// Answer HTTP 400 with the provider's context-length error instead
    /// (OpenAI `context_length_exceeded`, Anthropic "prompt is too long").
    #[serde(default)]
    pub context_length: bool,
    /// Answer HTTP 429 with the provider's quota error instead (OpenAI
    /// `insufficient_quota`, Anthropic a usage-limit `rate_limit_error`).
    #[serde(default)]
    pub insufficient_quota: bool,
    /// Sends `retry-after: <secs>`.
    #[serde(default)]
    pub retry_after_secs: Option<u64>,
    /// Sends `retry-after-ms: <ms>`.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
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
        for (i, e) in sc.errors.iter().enumerate() {
            if e.malformed && e.context_length {
                return Err(Error::Scenario(format!(
                    "errors[{i}]: `malformed` and `context_length` exclude each other"
                )));
            }
            if StatusCode::from_u16(e.status).is_err() {
                return Err(Error::Scenario(format!(
                    "errors[{i}]: status {} is not an HTTP status",
                    e.status
                )));
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
    /// `agentswarm doctor --check-model`'s one-line request; answered `OK`.
    Probe,
    /// The built-in agent asks for a summary of its oldest turns (its
    /// context is full): its first user message starts with `The task:`,
    /// then the task's own first message. Answered with a plain summary.
    Summary,
    Unknown,
}

/// The first user message of `agentswarm doctor --check-model`'s request.
pub const PROBE_PROMPT: &str = "Reply with the single word OK.";

/// The API a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Wire {
    /// `POST /v1/chat/completions`.
    #[serde(rename = "openai", alias = "open_ai")]
    OpenAi,
    /// `POST /v1/messages`.
    Anthropic,
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Which endpoint it came in on.
    pub wire: Wire,
    pub kind: RequestKind,
    pub task: Option<String>,
    pub attempt: Option<u32>,
    /// 0-based: assistant messages already in the conversation.
    pub turn: Option<u32>,
    /// The body's `model`, when it is a string.
    pub model: Option<String>,
    pub body: Value,
    /// An `Authorization` or `x-api-key` header was present.
    pub authorized: bool,
    /// The HTTP status answered.
    pub status: u16,
    /// When the request reached the handler (before validation and latency).
    pub arrived: Instant,
    /// When it was answered (after the latency and any injected delay).
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
    /// `http://127.0.0.1:<port>/v1`: what `OPENAI_BASE_URL` should be, and
    /// the base URL of the Anthropic endpoint (`<base_url>/messages`).
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
    /// The most requests that arrived within any `window` of time: for each
    /// arrival `t`, the requests with `arrived` in `[t, t + window)`.
    /// `max_in_window(Duration::from_secs(60))` checks a requests-per-minute
    /// limit. Counts every request, including refused ones.
    pub fn max_in_window(&self, window: Duration) -> usize {
        let arrivals: Vec<Instant> = self.requests().iter().map(|r| r.arrived).collect();
        max_in_window(arrivals, window)
    }
}

/// The most of `arrivals` within any `[t, t + window)`, `t` an arrival.
fn max_in_window(mut arrivals: Vec<Instant>, window: Duration) -> usize {
    arrivals.sort();
    let mut best = 0;
    let mut end = 0;
    for (start, t) in arrivals.iter().enumerate() {
        end = end.max(start);
        while end < arrivals.len() && arrivals[end].duration_since(*t) < window {
            end += 1;
        }
        best = best.max(end - start);
    }
    best
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
            .route("/v1/chat/completions", post(handle_openai))
            .route("/chat/completions", post(handle_openai))
            .route("/v1/messages", post(handle_anthropic))
            .route("/messages", post(handle_anthropic))
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

impl Classified {
    fn unknown() -> Self {
        Classified {
            kind: RequestKind::Unknown,
            task: None,
            attempt: None,
            turn: 0,
        }
    }
}

/// The text of a message: string content, or its first text block.
fn message_text(m: &Value) -> Option<&str> {
    match m.get("content")? {
        Value::String(s) => Some(s),
        Value::Array(blocks) => blocks
            .iter()
            .find(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .and_then(|b| b.get("text").and_then(Value::as_str)),
        _ => None,
    }
}

/// Recognises a request of either wire format by its first user message.
fn classify(body: &Value) -> Classified {
    let messages: &[Value] = body
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let first_user = messages
        .iter()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(message_text)
        .unwrap_or("");
    // Model turns: the assistant messages, plus the turns a condensed
    // summary of the conversation says it stands for
    // (`[Condensed: N earlier messages (T model turns) …]`).
    let turn = messages
        .iter()
        .map(|m| match m.get("role").and_then(Value::as_str) {
            Some("assistant") => 1,
            Some("user") => message_text(m)
                .and_then(swarm_protocol::chat::summarised_turns)
                .unwrap_or(0),
            _ => 0,
        })
        .sum::<u32>();
    if let Some(task_message) = first_user.strip_prefix("The task:\n") {
        let mut c = classify_task(task_message);
        if c.kind == RequestKind::Worker {
            c.kind = RequestKind::Summary;
            c.turn = turn;
            return c;
        }
    }
    if first_user.starts_with("Goal: ") {
        return Classified {
            kind: RequestKind::Planner,
            task: None,
            attempt: None,
            turn,
        };
    }
    if first_user == PROBE_PROMPT {
        return Classified {
            kind: RequestKind::Probe,
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
    Classified {
        turn,
        ..classify_task(first_user)
    }
}

/// A worker's first message: `Task <id>: …` with an `Attempt: N` line.
/// Outside agents (docs/agents.md) may put their own context before the
/// task's prompt: a line that starts with `Task <id>: ` counts too.
fn classify_task(first_user: &str) -> Classified {
    let task_line = first_user
        .lines()
        .find(|l| l.starts_with("Task ") && l.contains(": "));
    let Some(rest) = task_line.and_then(|l| l.strip_prefix("Task ")) else {
        return Classified::unknown();
    };
    let id = rest.split(':').next().unwrap_or("").trim().to_owned();
    let attempt = first_user
        .lines()
        .find_map(|l| l.trim().strip_prefix("Attempt: "))
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.parse().ok());
    Classified {
        kind: RequestKind::Worker,
        task: Some(id),
        attempt,
        turn: 0,
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

async fn handle_openai(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&inner, Wire::OpenAi, &headers, &body).await
}

async fn handle_anthropic(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&inner, Wire::Anthropic, &headers, &body).await
}

/// What is known of a request before it is answered.
struct Arrival {
    wire: Wire,
    arrived: Instant,
    authorized: bool,
    model: Option<String>,
}

fn json_response(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

/// Both endpoints: parse, classify, validate, wait, inject, reply, record.
async fn handle(inner: &Inner, wire: Wire, headers: &HeaderMap, raw: &[u8]) -> Response {
    let mut at = Arrival {
        wire,
        arrived: Instant::now(),
        authorized: headers.contains_key(axum::http::header::AUTHORIZATION)
            || headers.contains_key("x-api-key"),
        model: None,
    };
    let _guard = InFlight::enter(inner);
    let body: Value = match serde_json::from_slice(raw) {
        Ok(v) => v,
        Err(e) => {
            record(inner, &at, Classified::unknown(), Value::Null, 400);
            return violation(inner, wire, format!("request body is not JSON: {e}"));
        }
    };
    at.model = body.get("model").and_then(Value::as_str).map(str::to_owned);
    let c = classify(&body);
    let checked = match wire {
        Wire::OpenAi => validate::request(&body),
        Wire::Anthropic => validate::anthropic_request(
            headers
                .get("anthropic-version")
                .and_then(|v| v.to_str().ok()),
            &body,
        ),
    };
    if let Err(problems) = checked {
        record(inner, &at, c, body, 400);
        return violation(inner, wire, problems.join("; "));
    }
    if inner.scenario.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(inner.scenario.latency_ms)).await;
    }
    if let Some(e) = injected_error(inner, &c, at.model.as_deref()) {
        if e.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(e.delay_ms)).await;
        }
        let mut resp = if e.malformed {
            record(inner, &at, c, body, 200);
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                wire::malformed_body(wire),
            )
                .into_response()
        } else {
            let (status, err) = wire::injected_error_body(wire, &e, at.model.as_deref());
            record(inner, &at, c, body, status);
            json_response(status, &err)
        };
        if let Some(secs) = e.retry_after_secs {
            resp.headers_mut().insert("retry-after", secs.into());
        }
        if let Some(ms) = e.retry_after_ms {
            resp.headers_mut().insert("retry-after-ms", ms.into());
        }
        return resp;
    }
    let scripted = match reply(inner, &c) {
        Ok(m) => m,
        Err(msg) => {
            record(inner, &at, c, body, 500);
            return json_response(500, &wire::scenario_error_body(wire, &msg));
        }
    };
    let n = inner.seq.fetch_add(1, Ordering::SeqCst) + 1;
    let model = body.get("model").cloned().unwrap_or(Value::Null);
    let answer = wire::reply_body(wire, &scripted, &model, n, raw.len());
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    record(inner, &at, c, body, 200);
    if stream {
        return (
            StatusCode::OK,
            [
                ("content-type", "text/event-stream"),
                ("cache-control", "no-cache"),
            ],
            wire::stream_body(wire, &answer, include_usage),
        )
            .into_response();
    }
    json_response(200, &answer)
}

fn record(inner: &Inner, at: &Arrival, c: Classified, body: Value, status: u16) {
    let r = RecordedRequest {
        wire: at.wire,
        kind: c.kind,
        task: c.task,
        attempt: c.attempt,
        turn: Some(c.turn),
        model: at.model.clone(),
        body,
        authorized: at.authorized,
        status,
        arrived: at.arrived,
        received: Instant::now(),
    };
    if let Ok(mut v) = inner.requests.lock() {
        v.push(r);
    }
}

fn violation(inner: &Inner, wire: Wire, msg: String) -> Response {
    let body = wire::violation_body(wire, &msg);
    if let Ok(mut v) = inner.violations.lock() {
        v.push(msg);
    }
    json_response(400, &body)
}

fn injected_error(inner: &Inner, c: &Classified, model: Option<&str>) -> Option<InjectedError> {
    let mut counters = inner.counters.lock().ok()?;
    for (i, e) in inner.scenario.errors.iter().enumerate() {
        let matches = e.kind.is_none_or(|k| k == c.kind)
            && e.model.as_deref().is_none_or(|m| Some(m) == model)
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

fn reply(inner: &Inner, c: &Classified) -> std::result::Result<wire::ScriptedReply, String> {
    let sc = &inner.scenario;
    match c.kind {
        RequestKind::Planner | RequestKind::Fixer => {
            let mut counters = inner.counters.lock().map_err(|_| "lock poisoned".to_owned())?;
            let counters = &mut *counters;
            let (list, counter, what) = if c.kind == RequestKind::Planner {
                (&sc.planner, &mut counters.planner, "planner")
            } else {
                (&sc.fixer, &mut counters.fixer, "fixer")
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
            Ok(wire::ScriptedReply { content: Some(content), calls: Vec::new() })
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
            let calls = turn
                .calls
                .into_iter()
                .enumerate()
                .map(|(i, call)| wire::ReplyCall {
                    id_stem: format!("{}_{}_{}_{}", task, c.attempt.unwrap_or(0), c.turn, i),
                    name: call.name,
                    arguments: call.arguments,
                })
                .collect();
            Ok(wire::ScriptedReply { content: turn.content, calls })
        }
        RequestKind::Probe => Ok(wire::ScriptedReply { content: Some("OK".into()), calls: Vec::new() }),
        RequestKind::Summary => Ok(wire::ScriptedReply {
            content: Some(format!(
                "Scripted summary of task {} up to turn {}: what was done, the files changed, what is left.",
                c.task.as_deref().unwrap_or("?"),
                c.turn
            )),
            calls: Vec::new(),
        }),
        RequestKind::Unknown => match &sc.other {
            Some(text) => Ok(wire::ScriptedReply { content: Some(text.clone()), calls: Vec::new() }),
            None => Err("the scripted server cannot tell what this request is: the first user message starts with neither `Goal: `, `Verify failed` nor `Task <id>: `".into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn post(url: &str, body: Value) -> (u16, Value) {
        let r = reqwest_like::Client
            .post(url, &[("Authorization", "Bearer test-key-not-real")], body)
            .await;
        (r.status, r.body)
    }

    const ANTHROPIC_HEADERS: &[(&str, &str)] = &[
        ("x-api-key", "test-key-not-real"),
        ("anthropic-version", "2023-06-01"),
    ];

    /// POST with exactly these extra headers.
    async fn post_with(url: &str, headers: &[(&str, &str)], body: Value) -> reqwest_like::Resp {
        reqwest_like::Client.post(url, headers, body).await
    }

    /// A tiny HTTP/1.1 client over a TcpStream: enough for these tests
    /// without pulling an HTTP client into the testkit.
    mod reqwest_like {
        use serde_json::Value;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        pub struct Client;

        pub struct Resp {
            pub status: u16,
            /// Lower-cased names.
            pub headers: Vec<(String, String)>,
            /// The JSON body, or the raw text as a string if it is not JSON.
            pub body: Value,
            pub raw: String,
        }

        impl Resp {
            pub fn header(&self, name: &str) -> Option<&str> {
                self.headers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str())
            }
        }

        impl Client {
            pub async fn post(&self, url: &str, headers: &[(&str, &str)], body: Value) -> Resp {
                let rest = url.strip_prefix("http://").unwrap();
                let (host, path) = rest.split_once('/').unwrap();
                let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
                let body = body.to_string();
                let extra: String = headers
                    .iter()
                    .map(|(n, v)| format!("{n}: {v}\r\n"))
                    .collect();
                let req = format!(
                    "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(req.as_bytes()).await.unwrap();
                let mut out = Vec::new();
                s.read_to_end(&mut out).await.unwrap();
                let raw = String::from_utf8_lossy(&out).into_owned();
                let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
                let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                let headers = head
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                let body = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
                Resp {
                    status,
                    headers,
                    body,
                    raw,
                }
            }
        }
    }

    fn tools() -> Value {
        json!([{"type": "function", "function": {"name": "write_file", "description": "w", "parameters": {"type": "object"}}},
               {"type": "function", "function": {"name": "finish", "description": "f", "parameters": {"type": "object"}}}])
    }

    #[tokio::test]
    async fn a_streamed_request_gets_the_providers_events() {
        let sc = Scenario::from_json_str(
            &json!({"tasks": {"t1": {"turns": [{"content": "hi", "calls": [{"name": "write_file", "arguments": {"path": "a", "content": "b"}}]}]}}}).to_string(),
        )
        .unwrap();
        let server = ScriptedServer::start(sc).await.unwrap();
        let data = |raw: &str| -> Vec<Value> {
            raw.lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter(|d| *d != "[DONE]")
                .map(|d| serde_json::from_str(d).unwrap())
                .collect()
        };
        // Chat Completions: chunks, the usage chunk asked for, then [DONE].
        let body = json!({"model": "m", "stream": true, "stream_options": {"include_usage": true}, "tools": tools(),
            "messages": [{"role": "user", "content": "Task t1: do it\nAttempt: 1\n"}]});
        let r = post_with(
            &format!("{}/chat/completions", server.base_url()),
            &[],
            body,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.raw);
        assert_eq!(r.header("content-type"), Some("text/event-stream"));
        assert!(r.raw.trim_end().ends_with("data: [DONE]"), "{}", r.raw);
        let chunks = data(&r.raw);
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "hi");
        assert_eq!(
            chunks[2]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
            "write_file"
        );
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "tool_calls");
        assert!(chunks[4]["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
        // stream_options without stream is refused, as OpenAI does.
        let bad = json!({"model": "m", "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "Task t1: do it\nAttempt: 1\n"}]});
        let (status, _) = post(&format!("{}/chat/completions", server.base_url()), bad).await;
        assert_eq!(status, 400);
        // Anthropic: the Messages events, in order.
        let body = json!({"model": "m", "max_tokens": 10, "stream": true,
            "tools": [{"name": "write_file", "input_schema": {"type": "object"}}],
            "messages": [{"role": "user", "content": "Task t1: do it\nAttempt: 1\n"}]});
        let r = post_with(
            &format!("{}/messages", server.base_url()),
            &[("anthropic-version", "2023-06-01")],
            body,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.raw);
        let types: Vec<String> = data(&r.raw)
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(types.first().map(String::as_str), Some("message_start"));
        assert_eq!(types.last().map(String::as_str), Some("message_stop"));
        assert_eq!(
            types.iter().filter(|t| *t == "content_block_start").count(),
            2
        );
        let events = data(&r.raw);
        let json_delta = events
            .iter()
            .find(|e| e["delta"]["type"] == "input_json_delta")
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(json_delta["delta"]["partial_json"].as_str().unwrap())
                .unwrap(),
            json!({"path": "a", "content": "b"})
        );
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

    fn anthropic_tools() -> Value {
        json!([{"name": "write_file", "description": "w", "input_schema": {"type": "object"}},
               {"name": "finish", "description": "f", "input_schema": {"type": "object"}}])
    }

    #[tokio::test]
    async fn anthropic_worker_tool_round_trip_and_validation() {
        let sc = Scenario::from_json_str(
            &json!({"tasks": {"t1": {"turns": [{"content": "Writing a.", "calls": [{"name": "write_file", "arguments": {"path": "a", "content": "b"}}]}]}}}).to_string(),
        )
        .unwrap();
        let server = ScriptedServer::start(sc).await.unwrap();
        let url = format!("{}/messages", server.base_url());
        let first = json!({"model": "claude-test", "max_tokens": 1024, "system": "s", "tools": anthropic_tools(), "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Task t1: do it\nAttempt: 1\n"}]}]});
        let r = post_with(&url, ANTHROPIC_HEADERS, first.clone()).await;
        assert_eq!(r.status, 200, "{}", r.raw);
        assert_eq!(r.body["type"], "message");
        assert_eq!(r.body["role"], "assistant");
        assert_eq!(r.body["model"], "claude-test");
        assert_eq!(r.body["stop_reason"], "tool_use");
        assert!(r.body["stop_sequence"].is_null());
        assert!(r.body["usage"]["input_tokens"].as_u64().unwrap() > 0);
        assert!(r.body["id"].as_str().unwrap().starts_with("msg_scripted_"));
        let content = r.body["content"].clone();
        assert_eq!(content[0], json!({"type": "text", "text": "Writing a."}));
        assert_eq!(content[1]["type"], "tool_use");
        assert_eq!(content[1]["name"], "write_file");
        assert_eq!(content[1]["input"], json!({"path": "a", "content": "b"}));
        let id = content[1]["id"].as_str().unwrap().to_owned();
        assert!(id.starts_with("toolu_"), "{id}");

        // The next user message does not answer the tool_use: a violation
        // naming the id, in Anthropic's error shape.
        let mut missing = first.clone();
        let msgs = missing["messages"].as_array_mut().unwrap();
        msgs.push(json!({"role": "assistant", "content": content.clone()}));
        msgs.push(json!({"role": "user", "content": "hi"}));
        let r = post_with(&url, ANTHROPIC_HEADERS, missing).await;
        assert_eq!(r.status, 400);
        assert_eq!(r.body["type"], "error");
        assert_eq!(r.body["error"]["type"], "invalid_request_error");
        assert!(
            r.body["error"]["message"].as_str().unwrap().contains(&id),
            "{}",
            r.raw
        );
        assert!(
            server.violations()[0].contains(&id),
            "{:?}",
            server.violations()
        );

        // Answered: past the script the server calls finish.
        let mut ok = first.clone();
        let msgs = ok["messages"].as_array_mut().unwrap();
        msgs.push(json!({"role": "assistant", "content": content}));
        msgs.push(json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": "wrote"}]}));
        let r = post_with(&url, ANTHROPIC_HEADERS, ok.clone()).await;
        assert_eq!(r.status, 200, "{}", r.raw);
        assert_eq!(r.body["content"][0]["type"], "tool_use");
        assert_eq!(r.body["content"][0]["name"], "finish");

        // No anthropic-version header: refused.
        let r = post_with(&url, &[("x-api-key", "k")], ok).await;
        assert_eq!(r.status, 400);
        assert!(r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("anthropic-version"));

        // The same request on /v1/messages without the /v1 prefix, as a planner.
        let planner = json!({"model": "claude-test", "max_tokens": 10, "messages": [{"role": "user", "content": "Goal: x"}]});
        let root = server.base_url().trim_end_matches("/v1").to_owned();
        let r = post_with(&format!("{root}/messages"), ANTHROPIC_HEADERS, planner).await;
        assert_eq!(
            r.status, 500,
            "no planner reply in this scenario: {}",
            r.raw
        );
        assert_eq!(r.body["error"]["type"], "api_error");

        let reqs = server.requests();
        assert_eq!(reqs.len(), 5);
        assert!(reqs.iter().all(|r| r.wire == Wire::Anthropic));
        assert_eq!(
            (
                reqs[2].kind,
                reqs[2].task.as_deref(),
                reqs[2].attempt,
                reqs[2].turn,
                reqs[2].status
            ),
            (RequestKind::Worker, Some("t1"), Some(1), Some(1), 200)
        );
        assert_eq!(reqs[0].model.as_deref(), Some("claude-test"));
        assert!(reqs[0].authorized);
        assert_eq!(reqs[4].kind, RequestKind::Planner);
        assert_eq!(server.violations().len(), 2);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn injected_errors_have_each_providers_shape() {
        let sc = Scenario::from_json_str(
            &json!({
                "planner": [{"content": "plan"}],
                "errors": [
                    {"kind": "planner", "status": 429, "retry_after_ms": 1500, "retry_after_secs": 2, "times": 2},
                    {"kind": "planner", "context_length": true, "times": 2},
                    {"kind": "planner", "status": 401, "times": 2},
                    {"kind": "planner", "status": 404, "times": 2},
                    {"kind": "planner", "status": 529, "times": 1}
                ]
            })
            .to_string(),
        )
        .unwrap();
        let server = ScriptedServer::start(sc).await.unwrap();
        let openai = format!("{}/chat/completions", server.base_url());
        let anthropic = format!("{}/messages", server.base_url());
        let oa_headers = [("Authorization", "Bearer sk-secret-value")];
        let an_headers = [
            ("x-api-key", "sk-secret-value"),
            ("anthropic-version", "2023-06-01"),
        ];
        let oa = json!({"model": "gpt-x", "messages": [{"role": "user", "content": "Goal: x"}]});
        let an = json!({"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "Goal: x"}]});

        // 429 with retry-after-ms (and retry-after).
        let r = post_with(&openai, &oa_headers, oa.clone()).await;
        assert_eq!(r.status, 429);
        assert_eq!(r.header("retry-after-ms"), Some("1500"));
        assert_eq!(r.header("retry-after"), Some("2"));
        assert_eq!(r.body["error"]["code"], "rate_limit_exceeded");
        let r = post_with(&anthropic, &an_headers, an.clone()).await;
        assert_eq!(r.status, 429);
        assert_eq!(r.header("retry-after-ms"), Some("1500"));
        assert_eq!(r.body["type"], "error");
        assert_eq!(r.body["error"]["type"], "rate_limit_error");

        // Context length exceeded: 400 in each provider's shape.
        let r = post_with(&openai, &oa_headers, oa.clone()).await;
        assert_eq!(r.status, 400);
        assert_eq!(r.body["error"]["code"], "context_length_exceeded");
        assert_eq!(r.body["error"]["type"], "invalid_request_error");
        assert!(r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length is 8192 tokens"));
        let r = post_with(&anthropic, &an_headers, an.clone()).await;
        assert_eq!(r.status, 400);
        assert_eq!(
            r.body,
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 210000 tokens > 200000 maximum"}})
        );

        // 401 never echoes the key.
        let r = post_with(&openai, &oa_headers, oa.clone()).await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (401, Some("invalid_api_key"))
        );
        assert!(!r.raw.contains("sk-secret-value"), "{}", r.raw);
        let r = post_with(&anthropic, &an_headers, an.clone()).await;
        assert_eq!(r.status, 401);
        assert_eq!(
            r.body["error"],
            json!({"type": "authentication_error", "message": "invalid x-api-key"})
        );
        assert!(!r.raw.contains("sk-secret-value"), "{}", r.raw);

        // 404: model not found, naming the request's model.
        let r = post_with(&openai, &oa_headers, oa.clone()).await;
        assert_eq!(r.status, 404);
        assert_eq!(r.body["error"]["code"], "model_not_found");
        assert_eq!(
            r.body["error"]["message"],
            "The model `gpt-x` does not exist or you do not have access to it."
        );
        let r = post_with(&anthropic, &an_headers, an.clone()).await;
        assert_eq!(
            r.body["error"],
            json!({"type": "not_found_error", "message": "model: claude-x"})
        );

        // 529: overloaded.
        let r = post_with(&anthropic, &an_headers, an.clone()).await;
        assert_eq!(
            (r.status, r.body["error"]["type"].as_str()),
            (529, Some("overloaded_error"))
        );

        // Then the scripted replies, in each format.
        let r = post_with(&openai, &oa_headers, oa).await;
        assert_eq!(r.body["choices"][0]["message"]["content"], "plan");
        let r = post_with(&anthropic, &an_headers, an).await;
        assert_eq!(r.status, 200, "{}", r.raw);
        assert_eq!(r.body["content"], json!([{"type": "text", "text": "plan"}]));
        assert_eq!(r.body["stop_reason"], "end_turn");

        assert!(server.violations().is_empty(), "{:?}", server.violations());
        let statuses: Vec<(Wire, u16)> = server
            .requests()
            .iter()
            .map(|r| (r.wire, r.status))
            .collect();
        assert_eq!(
            statuses[..4],
            [
                (Wire::OpenAi, 429),
                (Wire::Anthropic, 429),
                (Wire::OpenAi, 400),
                (Wire::Anthropic, 400)
            ]
        );
        server.shutdown().await;
    }

    #[tokio::test]
    async fn errors_can_be_limited_to_one_model() {
        let sc = Scenario::from_json_str(
            &json!({
                "planner": [{"content": "plan"}],
                "errors": [{"model": "bad-model", "status": 503, "times": 1000}]
            })
            .to_string(),
        )
        .unwrap();
        let server = ScriptedServer::start(sc).await.unwrap();
        let url = format!("{}/chat/completions", server.base_url());
        let ask = |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "Goal: x"}]});
        for _ in 0..3 {
            assert_eq!(post(&url, ask("bad-model")).await.0, 503);
        }
        let (status, body) = post(&url, ask("good-model")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(post(&url, ask("bad-model")).await.0, 503);
        let by_model: Vec<(Option<String>, u16)> = server
            .requests()
            .into_iter()
            .map(|r| (r.model, r.status))
            .collect();
        assert_eq!(by_model[3], (Some("good-model".to_owned()), 200));
        assert_eq!(by_model.iter().filter(|(_, s)| *s == 503).count(), 4);
        server.shutdown().await;
    }

    #[test]
    fn max_in_window_slides_over_arrivals() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let minute = Duration::from_secs(60);
        assert_eq!(max_in_window(Vec::new(), minute), 0);
        assert_eq!(max_in_window(vec![at(0)], minute), 1);
        // 0, 10 s, 59.999 s fall in one minute; 60 s starts the next one.
        let arrivals = vec![
            at(60_000),
            at(0),
            at(10_000),
            at(59_999),
            at(61_000),
            at(119_000),
        ];
        assert_eq!(max_in_window(arrivals.clone(), minute), 4); // 10 s .. 69.999 s
        assert_eq!(max_in_window(arrivals.clone(), Duration::from_secs(1)), 2);
        assert_eq!(
            max_in_window(arrivals.clone(), Duration::from_secs(3600)),
            6
        );
        assert_eq!(max_in_window(arrivals, Duration::ZERO), 0);
        // Simultaneous arrivals all count.
        assert_eq!(
            max_in_window(vec![at(5), at(5), at(5)], Duration::from_millis(1)),
            3
        );
    }

    #[tokio::test]
    async fn arrivals_are_recorded_before_the_latency() {
        let sc = Scenario::from_json_str(r#"{"latency_ms": 200, "planner": [{"content": "x"}]}"#)
            .unwrap();
        let server = ScriptedServer::start(sc).await.unwrap();
        let url = format!("{}/chat/completions", server.base_url());
        let ask = json!({"model": "m", "messages": [{"role": "user", "content": "Goal: x"}]});
        let (a, b) = tokio::join!(post(&url, ask.clone()), post(&url, ask));
        assert_eq!((a.0, b.0), (200, 200));
        let reqs = server.requests();
        assert!(reqs
            .iter()
            .all(|r| r.received.duration_since(r.arrived) >= Duration::from_millis(200)));
        assert!(reqs.iter().all(|r| r.wire == Wire::OpenAi));
        assert_eq!(server.max_in_window(Duration::from_secs(60)), 2);
        server.shutdown().await;
    }

    #[test]
    fn contradictory_errors_are_refused() {
        assert!(Scenario::from_json_str(
            r#"{"errors": [{"malformed": true, "context_length": true}]}"#
        )
        .is_err());
        assert!(Scenario::from_json_str(r#"{"errors": [{"status": 5000}]}"#).is_err());
        assert!(
            Scenario::from_json_str(r#"{"errors": [{"model": "m", "retry_after_ms": 5}]}"#).is_ok()
        );
    }
}
