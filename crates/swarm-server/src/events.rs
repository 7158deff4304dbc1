//! The event log over HTTP: a JSON page, or a Server-Sent Events stream
//! that stays open and resumes after `Last-Event-ID`.
//!
//! The store is the source (event ids are unique and increasing over the
//! store), so a stream misses nothing whoever wrote the events — this
//! daemon or a foreground `agentswarm run` on the same data directory. The
//! engine's progress broadcast wakes a stream at once when this daemon
//! writes; otherwise it looks every half second.

use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use swarm_engine::Engine;
use swarm_protocol::api;
use swarm_protocol::ProjectId;
use swarm_store::EventRecord;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

const DEFAULT_PAGE: usize = 500;
const MAX_PAGE: usize = 5000;
const POLL: Duration = Duration::from_millis(500);
/// After a wake-up, how long a stream waits for the rest of the burst.
const WAKE_GAP: Duration = Duration::from_millis(50);

#[derive(Debug, serde::Deserialize)]
pub struct EventQuery {
    after: Option<String>,
    limit: Option<String>,
}

fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

/// Where to start: `Last-Event-ID` over `after`, else 0.
fn start_after(headers: &HeaderMap, q: &EventQuery) -> ApiResult<i64> {
    if let Some(v) = headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        return v
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                ApiError::bad_request(format!("Last-Event-ID must be an event id, not {v:?}"))
            });
    }
    match &q.after {
        None => Ok(0),
        Some(a) => {
            a.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::bad_request(format!("after must be an event id, not {a:?}"))
            })
        }
    }
}

fn page_limit(q: &EventQuery) -> ApiResult<usize> {
    match &q.limit {
        None => Ok(DEFAULT_PAGE),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "limit must be a number from 1 to {MAX_PAGE}, not {l:?}"
                ))
            }),
    }
}

pub fn to_api(e: EventRecord) -> api::Event {
    api::Event {
        id: e.id,
        project_id: e.project_id.to_string(),
        task_id: e.task_id.map(|t| t.to_string()),
        ts_ms: e.ts_ms,
        kind: e.kind,
        data: e.data,
    }
}

type Fetch =
    Arc<dyn Fn(&Engine, i64, usize) -> swarm_engine::Result<Vec<EventRecord>> + Send + Sync>;

pub async fn project_events(
    State(s): State<AppState>,
    Path(project): Path<String>,
    Query(q): Query<EventQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = ProjectId::new(project);
    s.engine.project_summary(&id)?;
    let only = Some(id.clone());
    let fetch: Fetch =
        Arc::new(move |engine: &Engine, after, limit| engine.events(Some(&id), after, limit));
    respond(s, fetch, only, &q, &headers).await
}

pub async fn all_events(
    State(s): State<AppState>,
    Query(q): Query<EventQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let fetch: Fetch = Arc::new(|engine: &Engine, after, limit| engine.events(None, after, limit));
    respond(s, fetch, None, &q, &headers).await
}

async fn respond(
    s: AppState,
    fetch: Fetch,
    only: Option<ProjectId>,
    q: &EventQuery,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let after = start_after(headers, q)?;
    if !wants_stream(headers) {
        let limit = page_limit(q)?;
        let engine = s.engine.clone();
        let events = crate::handlers::blocking(move || fetch(&engine, after, limit))
            .await?
            .into_iter()
            .map(to_api)
            .collect();
        return Ok(Json(api::EventPage { events }).into_response());
    }
    let state = StreamState {
        engine: s.engine.clone(),
        fetch,
        after,
        buffer: VecDeque::new(),
        wake: s.engine.subscribe(),
        only,
        stop: s.shutdown.clone(),
    };
    let stream = futures_util::stream::unfold(state, next_event);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

struct StreamState {
    engine: Arc<Engine>,
    fetch: Fetch,
    after: i64,
    buffer: VecDeque<EventRecord>,
    wake: broadcast::Receiver<swarm_engine::Progress>,
    /// A project's stream wakes only for that project's progress.
    only: Option<ProjectId>,
    stop: CancellationToken,
}

async fn next_event(mut st: StreamState) -> Option<(Result<SseEvent, Infallible>, StreamState)> {
    loop {
        if let Some(e) = st.buffer.pop_front() {
            st.after = e.id;
            let id = e.id.to_string();
            let kind = e.kind.clone();
            let data = serde_json::to_string(&to_api(e)).unwrap_or_else(|_| "{}".to_owned());
            let event = SseEvent::default().id(id).event(kind).data(data);
            return Some((Ok(event), st));
        }
        if st.stop.is_cancelled() {
            return None;
        }
        let (engine, fetch, after) = (st.engine.clone(), st.fetch.clone(), st.after);
        match tokio::task::spawn_blocking(move || fetch(&engine, after, DEFAULT_PAGE)).await {
            Ok(Ok(page)) if !page.is_empty() => {
                st.buffer.extend(page);
                continue;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "event stream: cannot read the store; trying again")
            }
            Err(e) => tracing::warn!(error = %e, "event stream: the store read failed"),
        }
        let deadline = tokio::time::Instant::now() + POLL;
        loop {
            tokio::select! {
                _ = st.stop.cancelled() => return None,
                r = st.wake.recv() => match r {
                    Ok(p) if st.only.as_ref().is_none_or(|id| *id == p.project) => {
                        // Let the rest of the burst that woke us land first.
                        tokio::time::sleep(WAKE_GAP).await;
                        break;
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => {
                        tokio::time::sleep_until(deadline).await;
                        break;
                    }
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
}
