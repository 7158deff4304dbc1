//! The API's handlers: projects, tasks, transcripts, downloads, status,
//! health and metrics. What reads many rows (views, lists, the status, the
//! metrics) runs on the blocking pool ([`blocking`]); single-row store
//! reads run inline (one short local statement, see `swarm_store::Store`);
//! files are read with `tokio::fs`.

use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::path::PathBuf;
use swarm_engine::operator::CancelOutcome;
use swarm_engine::views::project_url;
use swarm_engine::Engine;
use swarm_protocol::api;
use swarm_protocol::{Plan, ProjectId, TaskId, TaskKind, TaskState};
use swarm_store::TaskRecord;

/// Runs `f` on the blocking pool; its error, or a panic, is the answer.
pub(crate) async fn blocking<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> ApiResult<T>
where
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Into::into),
        Err(e) => Err(ApiError::internal(format!(
            "the request's work failed: {e}"
        ))),
    }
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such path; GET /openapi.json describes the API")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this path does not take that method; GET /openapi.json describes the API",
    )
}

pub async fn health(State(s): State<AppState>) -> Response {
    let body = api::Health {
        status: s.phase.name().to_owned(),
        version: Some(env!("CARGO_PKG_VERSION").to_owned()),
    };
    let code = if s.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::OPENAPI).into_response()
}

pub async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let engine = s.engine.clone();
    let format = swarm_engine::MetricsFormat::negotiate(
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()),
    );
    match blocking(move || Ok::<_, ApiError>(engine.metrics_text_as(format))).await {
        Ok(m) => ([(header::CONTENT_TYPE, m.content_type)], m.body).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /api/v1/status`: the engine's snapshot with what only the server knows.
#[derive(serde::Serialize)]
pub struct StatusBody {
    version: &'static str,
    /// Start-up recovery is done.
    ready: bool,
    /// The CLI checks that the daemon it found is the one that advertised itself.
    pid: u32,
    #[serde(flatten)]
    status: swarm_engine::SwarmStatus,
    workers: Vec<swarm_engine::LiveWorker>,
}

pub async fn status(State(s): State<AppState>) -> ApiResult<Json<StatusBody>> {
    let engine = s.engine.clone();
    let (status, workers) =
        blocking(move || Ok::<_, ApiError>((engine.swarm_status(), engine.live_workers()))).await?;
    Ok(Json(StatusBody {
        version: env!("CARGO_PKG_VERSION"),
        ready: s.is_ready(),
        pid: std::process::id(),
        status,
        workers,
    }))
}

// ---- projects ----

pub async fn list_projects(State(s): State<AppState>) -> ApiResult<Json<api::ProjectList>> {
    let engine = s.engine.clone();
    Ok(Json(blocking(move || engine.project_list()).await?))
}

/// A JSON body: 415 unless `application/json`, 400 unless JSON, 422 unless
/// of the right shape; an empty body is `{}` when `empty_ok`.
fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    empty_ok: bool,
) -> ApiResult<T> {
    let body = body?;
    if body.iter().all(u8::is_ascii_whitespace) && empty_ok {
        return serde_json::from_str("{}").map_err(|e| ApiError::internal(e.to_string()));
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as JSON with `Content-Type: application/json`",
        ));
    }
    let mut value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    // serde would also read a struct from an array of its fields.
    if !value.is_object() {
        return Err(ApiError::unprocessable(
            "the body must be a JSON object (see the schema in GET /openapi.json)",
        ));
    }
    whole_numbers(&mut value);
    serde_json::from_value(value).map_err(|e| {
        ApiError::unprocessable(format!(
            "the body has the wrong shape: {e} (see the schema in GET /openapi.json)"
        ))
    })
}

/// JSON Schema counts `2.0` as the integer 2; so does the API: numbers
/// with no fraction become integers before the body is read.
fn whole_numbers(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15) {
                // In range: exact as an i64 (|f| < 2^53).
                #[allow(clippy::cast_possible_truncation)]
                let i = f as i64;
                *v = serde_json::Value::from(i);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(whole_numbers),
        serde_json::Value::Object(o) => o.values_mut().for_each(whole_numbers),
        _ => {}
    }
}

pub async fn submit(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<api::ProjectSummary>)> {
    let req: api::SubmitRequest = json_body(&headers, body, false)?;
    let goal = req.goal.trim();
    if goal.is_empty() {
        return Err(ApiError::unprocessable(
            "the goal is empty; describe the software to build",
        ));
    }
    let plan = match req.plan {
        None => None,
        Some(v) => {
            let text = v.to_string();
            let plan: Plan = swarm_engine::plan::plan_document(&text).map_err(|p| {
                ApiError::unprocessable(format!("the plan is invalid:\n  - {}", p.join("\n  - ")))
            })?;
            Some(plan)
        }
    };
    let engine = s.engine.clone();
    let goal = goal.to_owned();
    let source = match req.repo {
        Some(repo) => Some(swarm_engine::source::SourceRequest {
            repo,
            base: req.base,
            push: req.push,
        }),
        None if req.base.is_some() || req.push => {
            return Err(ApiError::unprocessable(
                "`base` and `push` go with `repo`: name the repository to start from",
            ))
        }
        None => None,
    };
    let id = blocking(move || engine.submit_on(&goal, plan, &req.options, source.as_ref())).await?;
    tracing::info!(project = %id, "project submitted through the API");
    Ok((StatusCode::CREATED, Json(s.engine.project_summary(&id)?)))
}

pub async fn cancel(
    State(s): State<AppState>,
    Path(project): Path<String>,
) -> ApiResult<Json<api::ProjectSummary>> {
    let id = ProjectId::new(project);
    match s.engine.cancel_project(&id)? {
        CancelOutcome::Cancelled { was: _ } => {}
        CancelOutcome::AlreadyEnded(state) => {
            return Err(ApiError::conflict(format!(
                "project {id} has already ended ({state}); nothing to cancel"
            )));
        }
    }
    tracing::info!(project = %id, "project cancelled through the API");
    Ok(Json(s.engine.project_summary(&id)?))
}

pub async fn resume(
    State(s): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<api::ProjectSummary>)> {
    let req: api::ResumeRequest = json_body(&headers, body, true)?;
    let id = ProjectId::new(project);
    let engine = s.engine.clone();
    let rid = id.clone();
    blocking(move || engine.resume_project(&rid, &req.options)).await?;
    tracing::info!(project = %id, "project resumed through the API");
    Ok((StatusCode::ACCEPTED, Json(s.engine.project_summary(&id)?)))
}

pub async fn project(
    State(s): State<AppState>,
    Path(project): Path<String>,
) -> ApiResult<Json<api::ProjectDetail>> {
    let id = ProjectId::new(project);
    let engine = s.engine.clone();
    let detail = blocking(move || engine.project_detail(&id)).await?;
    Ok(Json(detail))
}

fn find_task(engine: &Engine, id: &ProjectId, task: &str) -> ApiResult<TaskRecord> {
    engine
        .task_record(id, &TaskId::new(task))?
        .ok_or_else(|| no_task(id, task))
}

fn no_task(id: &ProjectId, task: &str) -> ApiError {
    ApiError::not_found(format!(
        "project {id} has no task {task}; GET {} lists its tasks",
        project_url(id)
    ))
}

pub async fn task(
    State(s): State<AppState>,
    Path((project, task)): Path<(String, String)>,
) -> ApiResult<Json<api::Task>> {
    let id = ProjectId::new(project);
    let engine = s.engine.clone();
    let view = blocking(move || {
        engine
            .task_view(&id, &TaskId::new(task.as_str()))?
            .ok_or_else(|| no_task(&id, &task))
    })
    .await?;
    Ok(Json(view))
}

// ---- review ----

pub async fn review_list(
    State(s): State<AppState>,
    Path(project): Path<String>,
) -> ApiResult<Json<api::ReviewList>> {
    let id = ProjectId::new(project);
    let engine = s.engine.clone();
    let list = blocking(move || engine.reviewer().list(&id)).await?;
    Ok(Json(list))
}

pub async fn task_review(
    State(s): State<AppState>,
    Path((project, task)): Path<(String, String)>,
) -> ApiResult<Json<api::ReviewDiff>> {
    let id = ProjectId::new(project);
    let engine = s.engine.clone();
    let diff = blocking(move || engine.reviewer().task_diff(&id, &TaskId::new(task))).await?;
    Ok(Json(diff))
}

/// `POST …/approve` takes no body (or `{}`); anything else is refused as
/// for every POST.
pub async fn approve_task(
    State(s): State<AppState>,
    Path((project, task)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<api::ReviewOutcome>> {
    let _: api::ApproveRequest = json_body(&headers, body, true)?;
    let id = ProjectId::new(project);
    let engine = s.engine.clone();
    let outcome = blocking(move || engine.reviewer().approve_task(&id, &TaskId::new(task))).await?;
    tracing::info!(project = %outcome.project, task = ?outcome.task, "task approved through the API");
    Ok(Json(outcome))
}

pub async fn reject_task(
    State(s): State<AppState>,
    Path((project, task)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<api::ReviewOutcome>> {
    let req: api::RejectRequest = json_body(&headers, body, false)?;
    let id = ProjectId::new(project);
    let engine = s.engine.clone();
    let outcome = blocking(move || {
        engine
            .reviewer()
            .reject_task(&id, &TaskId::new(task), &req.comment)
    })
    .await?;
    tracing::info!(project = %outcome.project, task = ?outcome.task, "task rejected through the API");
    Ok(Json(outcome))
}

pub async fn delivery_review(
    State(s): State<AppState>,
    Path(project): Path<String>,
) -> ApiResult<Json<api::ReviewDiff>> {
    let id = ProjectId::new(project);
    let engine = s.engine.clone();
    let diff = blocking(move || engine.reviewer().delivery_diff(&id)).await?;
    Ok(Json(diff))
}

pub async fn approve_delivery(
    State(s): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<api::ReviewOutcome>> {
    let _: api::ApproveRequest = json_body(&headers, body, true)?;
    let id = ProjectId::new(project);
    let engine = s.engine.clone();
    let outcome = blocking(move || engine.reviewer().approve_delivery(&id)).await?;
    tracing::info!(project = %outcome.project, "delivery approved through the API");
    Ok(Json(outcome))
}

/// Records the rejection, then plans the follow-up round (a model call:
/// the answer comes once it is planned); the daemon runs it.
pub async fn reject_delivery(
    State(s): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<api::ReviewOutcome>)> {
    let req: api::RejectRequest = json_body(&headers, body, false)?;
    let id = ProjectId::new(project);
    let engine = s.engine.clone();
    let rid = id.clone();
    let lock = blocking(move || engine.lock(&rid)).await?;
    let engine = s.engine.clone();
    let comment = req.comment.clone();
    let rid = id.clone();
    let outcome = blocking(move || engine.reviewer().reject_delivery(&rid, &comment)).await?;
    s.engine.continue_project(&lock, req.comment.trim()).await?;
    drop(lock);
    // A done project is `interrupted` now, which the daemon picks up; a
    // failed one is reopened as `resume` does.
    if s.engine.project_summary(&id)?.state == swarm_protocol::ProjectState::Failed {
        let engine = s.engine.clone();
        let rid = id.clone();
        blocking(move || engine.resume_project(&rid, &api::ProjectOptions::default())).await?;
    }
    tracing::info!(project = %id, "delivery rejected through the API; follow-up round planned");
    Ok((StatusCode::ACCEPTED, Json(outcome)))
}

// ---- files ----

/// Streams a file (archives can be large) as an attachment.
async fn send_file(path: PathBuf, content_type: &'static str, name: String) -> ApiResult<Response> {
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::not_found(format!(
                "{name} is not there (it may have been moved or deleted from OUTPUTS_DIR)"
            )))
        }
        Err(e) => return Err(ApiError::internal(format!("cannot read {name}: {e}"))),
    };
    let length = file.metadata().await.map(|m| m.len()).ok();
    let disposition = format!("attachment; filename=\"{name}\"");
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut response = (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response();
    if let Some(n) = length {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, n.into());
    }
    Ok(response)
}

pub async fn delivery(
    State(s): State<AppState>,
    Path(project): Path<String>,
) -> ApiResult<Response> {
    let id = ProjectId::new(project);
    let p = s.engine.project_summary(&id)?;
    let Some(path) = p.delivery else {
        return Err(ApiError::not_found(format!(
            "project {id} has no delivery yet ({}); it is written when the project is done",
            p.state
        )));
    };
    let path = PathBuf::from(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| format!("{id}-delivery.tar.gz"));
    send_file(path, "application/gzip", name).await
}

pub async fn manifest(
    State(s): State<AppState>,
    Path(project): Path<String>,
) -> ApiResult<Response> {
    let id = ProjectId::new(project);
    let p = s.engine.project_summary(&id)?;
    if p.delivery.is_none() {
        return Err(ApiError::not_found(format!(
            "project {id} has no manifest yet ({}); it is written with the delivery",
            p.state
        )));
    }
    send_file(
        s.engine.manifest_path(&id),
        "application/json",
        "manifest.json".into(),
    )
    .await
}

pub async fn task_archive(
    State(s): State<AppState>,
    Path((project, task)): Path<(String, String)>,
) -> ApiResult<Response> {
    let id = ProjectId::new(project);
    let t = find_task(&s.engine, &id, &task)?;
    if t.state != TaskState::Done || t.kind != TaskKind::Code {
        return Err(ApiError::not_found(format!(
            "task {task} has no archive ({}, {}); a code task's archive is written when it merges",
            t.kind.as_str(),
            t.state
        )));
    }
    send_file(
        s.engine.task_archive_path(&id, &t.id),
        "application/gzip",
        format!("{id}-{task}.tar.gz"),
    )
    .await
}

fn parse_attempt(raw: &str) -> ApiResult<u32> {
    raw.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
        ApiError::bad_request(format!("attempt must be a number from 1, not {raw:?}"))
    })
}

/// The transcript file of an ended attempt.
async fn read_transcript(
    s: &AppState,
    id: &ProjectId,
    task: &str,
    attempt: u32,
) -> ApiResult<(TaskRecord, Option<serde_json::Value>)> {
    let t = find_task(&s.engine, id, task)?;
    if attempt > t.attempt {
        return Err(ApiError::not_found(format!(
            "task {task} has had {} attempt(s), not {attempt}",
            t.attempt
        )));
    }
    if t.kind == TaskKind::Verify {
        return Ok((t, None));
    }
    let path = s.engine.transcript_path(id, &t.id, attempt);
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let v = serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::internal(format!(
                    "the transcript of {task} attempt {attempt} is unreadable: {e}"
                ))
            })?;
            Ok((t, Some(v)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let running = t.attempt == attempt && !t.state.is_terminal();
            Err(ApiError::not_found(if running {
                format!("attempt {attempt} of {task} is still running; its transcript is written when it ends (its tool calls are in the event stream now)")
            } else {
                format!("no transcript of {task} attempt {attempt} (the worker ended before writing one)")
            }))
        }
        Err(e) => Err(ApiError::internal(format!(
            "cannot read the transcript: {e}"
        ))),
    }
}

pub async fn transcript(
    State(s): State<AppState>,
    Path((project, task, attempt)): Path<(String, String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let id = ProjectId::new(project);
    let attempt = parse_attempt(&attempt)?;
    match read_transcript(&s, &id, &task, attempt).await? {
        (_, Some(v)) => Ok(Json(v)),
        (_, None) => Err(ApiError::not_found(format!(
            "{task} is the verify task: it has no conversation; GET …/attempts/{attempt}/output has its commands"
        ))),
    }
}

pub async fn command_output(
    State(s): State<AppState>,
    Path((project, task, attempt)): Path<(String, String, String)>,
) -> ApiResult<Json<api::CommandOutput>> {
    let id = ProjectId::new(project);
    let attempt = parse_attempt(&attempt)?;
    let (t, doc) = read_transcript(&s, &id, &task, attempt).await?;
    let commands = match doc {
        Some(doc) => commands_of(&doc),
        None => verify_commands(&s.engine, &id, &t.id, attempt)?,
    };
    Ok(Json(api::CommandOutput {
        task: t.id.to_string(),
        attempt,
        commands,
    }))
}

/// The `run_command` calls of a transcript, each with the tool's answer.
fn commands_of(doc: &serde_json::Value) -> Vec<api::CommandRun> {
    let empty = Vec::new();
    let messages = doc["messages"].as_array().unwrap_or(&empty);
    let mut out = Vec::new();
    let mut turn = 0u32;
    for (i, m) in messages.iter().enumerate() {
        if m["role"] != "assistant" {
            continue;
        }
        turn += 1;
        for call in m["tool_calls"].as_array().unwrap_or(&empty) {
            if call["function"]["name"] != "run_command" {
                continue;
            }
            let args: serde_json::Value = call["function"]["arguments"]
                .as_str()
                .and_then(|a| serde_json::from_str(a).ok())
                .unwrap_or_default();
            let command = args["command"].as_str().unwrap_or_default().to_owned();
            let output = messages[i + 1..]
                .iter()
                .find(|r| r["role"] == "tool" && r["tool_call_id"] == call["id"])
                .and_then(|r| r["content"].as_str())
                .unwrap_or("(no answer recorded)")
                .to_owned();
            out.push(api::CommandRun {
                command,
                output,
                turn: Some(turn),
                passed: None,
                duration_ms: None,
            });
        }
    }
    out
}

fn verify_commands(
    engine: &Engine,
    id: &ProjectId,
    task: &TaskId,
    attempt: u32,
) -> ApiResult<Vec<api::CommandRun>> {
    engine.verify_commands(id, task, attempt)?.ok_or_else(|| {
        ApiError::not_found(format!(
            "verify attempt {attempt} of {task} has no results (it is running or was interrupted)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_pair_calls_with_their_answers() {
        let doc = serde_json::json!({"messages": [
            {"role": "system", "content": "s"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "write_file", "arguments": "{\"path\":\"a\",\"content\":\"x\"}"}},
                {"id": "c2", "type": "function", "function": {"name": "run_command", "arguments": "{\"command\":\"ls\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "wrote a"},
            {"role": "tool", "tool_call_id": "c2", "content": "exit code 0\na\n"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c3", "type": "function", "function": {"name": "run_command", "arguments": "{\"command\":\"false\"}"}}]},
            {"role": "tool", "tool_call_id": "c3", "content": "exit code 1\n"}
        ]});
        let c = commands_of(&doc);
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c[0].command.as_str(), c[0].output.as_str(), c[0].turn),
            ("ls", "exit code 0\na\n", Some(1))
        );
        assert_eq!((c[1].command.as_str(), c[1].turn), ("false", Some(2)));
    }
}
