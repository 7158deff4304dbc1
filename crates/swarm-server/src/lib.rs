//! The HTTP API, dashboard and metrics of `agentswarm serve` (docs/api.md;
//! the contract is docs/openapi.json, served at `/openapi.json`).
//!
//! Loopback by default. On any other address a bearer token is required
//! ([`check_bind`]); when a token is set every request but `/healthz`,
//! `/openapi.json` and the dashboard's own files must carry it. Without a
//! token only requests addressed to a loopback name are answered (no DNS
//! rebinding), and no cross-site request may change anything (no CSRF);
//! no cookies are used. See `guard.rs`.

mod assets;
mod error;
mod events;
mod guard;
mod handlers;

pub use error::ApiError;

use axum::Router;
use secrecy::SecretString;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use swarm_engine::Engine;
use tokio_util::sync::CancellationToken;

/// The OpenAPI document, as checked in.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// Largest request body (a goal with its plan).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The API's routes: method, path as docs/openapi.json names it (axum and
/// OpenAPI write path parameters alike, `{project}`), handler.
macro_rules! routes {
    ($($method:ident $path:literal => $handler:path),* $(,)?) => {
        /// Every API route as (method, path): the router is built from the
        /// same list, and a test compares it with docs/openapi.json.
        pub fn route_table() -> Vec<(&'static str, &'static str)> {
            vec![$((stringify!($method), $path)),*]
        }

        fn api_routes() -> Router<AppState> {
            Router::new()$(.route($path, axum::routing::$method($handler)))*
        }
    };
}

routes! {
    get "/healthz" => handlers::health,
    get "/metrics" => handlers::metrics,
    get "/openapi.json" => handlers::openapi,
    get "/api/v1/status" => handlers::status,
    get "/api/v1/projects" => handlers::list_projects,
    post "/api/v1/projects" => handlers::submit,
    get "/api/v1/projects/{project}" => handlers::project,
    post "/api/v1/projects/{project}/cancel" => handlers::cancel,
    post "/api/v1/projects/{project}/resume" => handlers::resume,
    get "/api/v1/projects/{project}/delivery" => handlers::delivery,
    get "/api/v1/projects/{project}/review" => handlers::review_list,
    get "/api/v1/projects/{project}/delivery/review" => handlers::delivery_review,
    post "/api/v1/projects/{project}/delivery/approve" => handlers::approve_delivery,
    post "/api/v1/projects/{project}/delivery/reject" => handlers::reject_delivery,
    get "/api/v1/projects/{project}/manifest" => handlers::manifest,
    get "/api/v1/projects/{project}/events" => events::project_events,
    get "/api/v1/events" => events::all_events,
    get "/api/v1/projects/{project}/tasks/{task}" => handlers::task,
    get "/api/v1/projects/{project}/tasks/{task}/archive" => handlers::task_archive,
    get "/api/v1/projects/{project}/tasks/{task}/review" => handlers::task_review,
    post "/api/v1/projects/{project}/tasks/{task}/approve" => handlers::approve_task,
    post "/api/v1/projects/{project}/tasks/{task}/reject" => handlers::reject_task,
    get "/api/v1/projects/{project}/tasks/{task}/attempts/{attempt}/transcript" => handlers::transcript,
    get "/api/v1/projects/{project}/tasks/{task}/attempts/{attempt}/output" => handlers::command_output,
}

/// Refuses to listen beyond loopback without a token.
pub fn check_bind(addr: SocketAddr, token: Option<&SecretString>) -> Result<(), String> {
    if addr.ip().is_loopback() || token.is_some() {
        return Ok(());
    }
    Err(format!(
        "refusing to serve the API on {addr} without a token: anyone who can reach it could \
         submit goals that run commands on this machine. Set AGENTSWARM_API_TOKEN (in the \
         environment or the secrets file) to a long random string (e.g. `openssl rand -hex 32`), \
         or bind to 127.0.0.1 and reach it through an SSH tunnel or a reverse proxy"
    ))
}

/// Where the daemon is in its life, for `/healthz`: recovering, ready,
/// stopping. Cheap to clone; the daemon moves it on.
#[derive(Clone, Default)]
pub struct Phase(Arc<AtomicU8>);

impl Phase {
    const READY: u8 = 1;
    const STOPPING: u8 = 2;

    /// Start-up recovery is done.
    pub fn set_ready(&self) {
        self.0.store(Self::READY, Ordering::Release);
    }
    /// Shutdown began: a load balancer should send nothing more.
    pub fn set_stopping(&self) {
        self.0.store(Self::STOPPING, Ordering::Release);
    }
    /// `recovering`, `ready` or `stopping`.
    pub fn name(&self) -> &'static str {
        match self.0.load(Ordering::Acquire) {
            Self::READY => "ready",
            Self::STOPPING => "stopping",
            _ => "recovering",
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    engine: Arc<Engine>,
    phase: Phase,
    guard: guard::Guard,
    /// Ends the event streams at shutdown, so that the server can stop.
    shutdown: CancellationToken,
    /// The one reader of new events behind every event stream.
    events: Arc<events::EventHub>,
}

impl AppState {
    pub fn new(
        engine: Arc<Engine>,
        phase: Phase,
        token: Option<SecretString>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            engine,
            phase,
            guard: guard::Guard::new(token),
            shutdown,
            events: Arc::default(),
        }
    }

    fn is_ready(&self) -> bool {
        self.phase.name() == "ready"
    }
}

/// The whole application: API, metrics, dashboard, JSON errors for every
/// unknown path or method.
pub fn router(state: AppState) -> Router {
    let guard = state.guard.clone();
    api_routes()
        .route("/", axum::routing::get(assets::index))
        .route("/assets/{file}", axum::routing::get(assets::file))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(guard, guard::check))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(guard::harden))
        .with_state(state)
}

/// Serves `app` on `listener` until `cancel` fires, then stops accepting
/// and gives open requests `grace` to finish (event streams end at once).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    cancel: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let stopping = cancel.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        stopping.cancelled().await;
    });
    let server = std::future::IntoFuture::into_future(server);
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => r,
        _ = async {
            cancel.cancelled().await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!("HTTP requests still open after the grace; closing them");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beyond_loopback_only_with_a_token() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(check_bind(addr("127.0.0.1:7700"), None).is_ok());
        assert!(check_bind(addr("[::1]:7700"), None).is_ok());
        let err = check_bind(addr("0.0.0.0:7700"), None).unwrap_err();
        assert!(err.contains("AGENTSWARM_API_TOKEN"), "{err}");
        assert!(check_bind(addr("192.0.2.7:7700"), None).is_err());
        let token = SecretString::from("test-token-not-real".to_owned());
        assert!(check_bind(addr("0.0.0.0:7700"), Some(&token)).is_ok());
    }

    #[test]
    fn the_route_table_has_no_duplicates() {
        let mut routes = route_table();
        let n = routes.len();
        routes.sort();
        routes.dedup();
        assert_eq!(routes.len(), n);
    }
}
