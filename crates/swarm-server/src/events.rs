//! The event log over HTTP: a JSON page, or a Server-Sent Events stream
//! that stays open and resumes after `Last-Event-ID`.
//!
//! The store is the source (event ids are unique and increasing over the
//! store), so a stream misses nothing whoever wrote the events — this
//! daemon or a foreground `agentswarm run` on the same data directory. One
//! reader ([`EventHub`]) fetches new events for every stream and broadcasts
//! them: woken at once when this daemon writes, otherwise every half
//! second. A stream reads the store itself only to catch up.

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
        hub: s.events.clone(),
        // Subscribed before the first read: nothing falls in between.
        rx: s.events.subscribe(&s.engine, &s.shutdown),
        fetch,
        after,
        catching_up: true,
        buffer: VecDeque::new(),
        only,
        stop: s.shutdown.clone(),
    };
    let stream = futures_util::stream::unfold(state, next_event);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// One reader of the store's new events for every stream of the daemon:
/// a stream reads the store itself only to catch up (when it starts, or
/// when it fell behind the broadcast), a few at a time, so that many open
/// streams cost neither a thread nor a query each.
pub struct EventHub {
    tx: broadcast::Sender<Arc<EventRecord>>,
    started: std::sync::Once,
    /// Catch-up reads at once (each holds a blocking thread).
    reads: tokio::sync::Semaphore,
}

/// Catch-up reads of the store running at once, over every stream.
const CATCH_UP_READS: usize = 4;
/// Events the broadcast holds for a slow stream before it must catch up.
const HUB_CAPACITY: usize = 4096;

impl Default for EventHub {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(HUB_CAPACITY).0,
            started: std::sync::Once::new(),
            reads: tokio::sync::Semaphore::new(CATCH_UP_READS),
        }
    }
}

impl EventHub {
    /// A receiver of every new event; starts the reader on first use.
    fn subscribe(
        self: &Arc<Self>,
        engine: &Arc<Engine>,
        stop: &CancellationToken,
    ) -> broadcast::Receiver<Arc<EventRecord>> {
        let rx = self.tx.subscribe();
        self.started.call_once(|| {
            tokio::spawn(read_new_events(self.clone(), engine.clone(), stop.clone()));
        });
        rx
    }
}

/// The hub's reader: wakes when this daemon writes (the engine's progress)
/// or every [`POLL`] (another process may write), and broadcasts what the
/// store has after the last event it sent.
async fn read_new_events(hub: Arc<EventHub>, engine: Arc<Engine>, stop: CancellationToken) {
    let last_id = |engine: Arc<Engine>| async move {
        tokio::task::spawn_blocking(move || engine.store().last_event_id(None))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0)
    };
    let mut last = last_id(engine.clone()).await;
    let mut wake = engine.subscribe();
    loop {
        let deadline = tokio::time::Instant::now() + POLL;
        tokio::select! {
            _ = stop.cancelled() => return,
            r = wake.recv() => {
                if matches!(r, Err(broadcast::error::RecvError::Closed)) {
                    tokio::time::sleep_until(deadline).await;
                } else {
                    // Let the rest of the burst that woke us land first.
                    tokio::time::sleep(WAKE_GAP).await;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
        if hub.tx.receiver_count() == 0 {
            // Nobody listens: a stream that starts catches up by itself.
            last = last_id(engine.clone()).await;
            continue;
        }
        loop {
            let e = engine.clone();
            let page = match tokio::task::spawn_blocking(move || e.events(None, last, DEFAULT_PAGE))
                .await
            {
                Ok(Ok(page)) => page,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "event streams: cannot read the store; trying again");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event streams: the store read failed");
                    break;
                }
            };
            let full = page.len() == DEFAULT_PAGE;
            for ev in page {
                last = ev.id;
                let _ = hub.tx.send(Arc::new(ev));
            }
            if !full {
                break;
            }
        }
    }
}

struct StreamState {
    engine: Arc<Engine>,
    hub: Arc<EventHub>,
    rx: broadcast::Receiver<Arc<EventRecord>>,
    fetch: Fetch,
    after: i64,
    /// Reading the store until it has nothing after `after`.
    catching_up: bool,
    buffer: VecDeque<EventRecord>,
    /// A project's stream shows only that project's events.
    only: Option<ProjectId>,
    stop: CancellationToken,
}

async fn next_event(mut st: StreamState) -> Option<(Result<SseEvent, Infallible>, StreamState)> {
    loop {
        if let Some(e) = st.buffer.pop_front() {
            if e.id <= st.after {
                continue;
            }
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
        if st.catching_up {
            let permit = tokio::select! {
                _ = st.stop.cancelled() => return None,
                p = st.hub.reads.acquire() => p.ok(),
            };
            let (engine, fetch, after) = (st.engine.clone(), st.fetch.clone(), st.after);
            let read =
                tokio::task::spawn_blocking(move || fetch(&engine, after, DEFAULT_PAGE)).await;
            drop(permit);
            match read {
                Ok(Ok(page)) if !page.is_empty() => {
                    st.buffer.extend(page);
                    continue;
                }
                Ok(Ok(_)) => st.catching_up = false,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "event stream: cannot read the store; trying again");
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event stream: the store read failed");
                    tokio::time::sleep(POLL).await;
                    continue;
                }
            }
        }
        tokio::select! {
            _ = st.stop.cancelled() => return None,
            r = st.rx.recv() => match r {
                Ok(e) => {
                    if e.id > st.after && st.only.as_ref().is_none_or(|id| *id == e.project_id) {
                        st.buffer.push_back((*e).clone());
                    }
                }
                // Fell behind the broadcast: read the store again.
                Err(broadcast::error::RecvError::Lagged(_)) => st.catching_up = true,
                Err(broadcast::error::RecvError::Closed) => return None,
            },
        }
    }
}
