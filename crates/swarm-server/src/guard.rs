//! Who may talk to the API: the bearer token, the loopback-only `Host`
//! check without one (so that a web page the operator visits cannot reach
//! the daemon by rebinding its own name to 127.0.0.1), and no cross-site
//! writes (so that a form on another site cannot cancel a project). The
//! token is compared in constant time and never logged.

use crate::ApiError;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;

#[derive(Clone, Default)]
pub struct Guard {
    token: Option<Arc<SecretString>>,
}

impl Guard {
    pub fn new(token: Option<SecretString>) -> Self {
        Self {
            token: token.map(Arc::new),
        }
    }
}

/// Paths served without a token: they hold no project data.
pub fn is_public(path: &str) -> bool {
    matches!(path, "/" | "/healthz" | "/openapi.json") || path.starts_with("/assets/")
}

/// `Host` names a loopback address (`127.0.0.1`, `[::1]`, `localhost`),
/// with any port.
fn loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) && !name.ends_with(':') => {
            name
        }
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A write from another site: its `Origin` is not this host, or the
/// browser says it is cross-site.
fn cross_site(headers: &HeaderMap) -> bool {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site")) {
        if !matches!(site, "same-origin" | "none") {
            return true;
        }
    }
    // The daemon speaks plain HTTP; behind a proxy that terminates TLS the
    // page's origin is https, which the proxy says in X-Forwarded-Proto.
    let scheme = match text(header::HeaderName::from_static("x-forwarded-proto")) {
        Some(p) if p.trim().eq_ignore_ascii_case("https") => "https://",
        _ => "http://",
    };
    match (text(header::ORIGIN), text(header::HOST)) {
        (Some(origin), Some(host)) => match origin.get(..scheme.len()) {
            Some(s) if s.eq_ignore_ascii_case(scheme) => {
                !origin[scheme.len()..].eq_ignore_ascii_case(host)
            }
            // Another scheme (or `null`) is another site.
            _ => true,
        },
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// The bearer token of `Authorization` (the scheme is case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub async fn check(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if guard.token.is_none() {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        if !host.is_some_and(loopback_host) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "without AGENTSWARM_API_TOKEN this daemon answers only requests addressed to \
                 127.0.0.1, [::1] or localhost; set a token to reach it by another name",
            )
            .into_response();
        }
    }
    let writes = !matches!(*request.method(), Method::GET | Method::HEAD);
    if writes && cross_site(headers) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "cross-site requests may not change anything; use the dashboard served by this daemon, the CLI or an API client",
        )
        .into_response();
    }
    let Some(token) = &guard.token else {
        return next.run(request).await;
    };
    if is_public(request.uri().path()) {
        return next.run(request).await;
    }
    let given = bearer(headers);
    let ok = given.is_some_and(|g| {
        use subtle::ConstantTimeEq;
        g.as_bytes().ct_eq(token.expose_secret().as_bytes()).into()
    });
    if ok {
        return next.run(request).await;
    }
    let message = if given.is_some() {
        "the bearer token is wrong; send `Authorization: Bearer <AGENTSWARM_API_TOKEN>`"
    } else {
        "this daemon needs a token: send `Authorization: Bearer <AGENTSWARM_API_TOKEN>`"
    };
    let mut response = ApiError::unauthorized(message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// On every answer: no MIME sniffing; an error axum itself produced (a path
/// or query that does not parse) becomes the API's JSON error.
pub async fn harden(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    parts.headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let plain = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if (parts.status.is_client_error() || parts.status.is_server_error()) && plain {
        let text = axum::body::to_bytes(body, 64 * 1024)
            .await
            .unwrap_or_default();
        let message = String::from_utf8_lossy(&text).trim().to_owned();
        let mut json = ApiError::new(
            parts.status,
            format!("{message}; GET /openapi.json describes the API"),
        )
        .into_response();
        json.headers_mut().insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        return json;
    }
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::{get, post};
    use axum::Router;
    use tower::ServiceExt;

    fn app(token: Option<&str>) -> Router {
        let guard = Guard::new(token.map(|t| SecretString::from(t.to_owned())));
        Router::new()
            .route("/", get(|| async { "page" }))
            .route("/assets/{f}", get(|| async { "asset" }))
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/api/v1/projects",
                get(|| async { "data" }).post(|| async { "made" }),
            )
            .route(
                "/api/v1/projects/{p}/cancel",
                post(|| async { "cancelled" }),
            )
            .layer(axum::middleware::from_fn_with_state(guard, check))
            .layer(axum::middleware::map_response(harden))
    }

    async fn status(app: &Router, method: &str, uri: &str, headers: &[(&str, &str)]) -> u16 {
        let mut r = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let resp = app
            .clone()
            .oneshot(r.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
        resp.status().as_u16()
    }

    #[tokio::test]
    async fn a_token_guards_everything_but_the_public_files() {
        let app = app(Some("secret-test-token"));
        let host = ("host", "vps.example:7700");
        for uri in [
            "/api/v1/projects",
            "/assets/../api/v1/projects",
            "//api/v1/projects",
            "/API/v1/projects",
            "/api/v1/projects/%2e%2e",
        ] {
            let s = status(&app, "GET", uri, &[host]).await;
            assert!(s == 401 || s == 404, "{uri}: {s}");
        }
        assert_eq!(status(&app, "HEAD", "/api/v1/projects", &[host]).await, 401);
        assert_eq!(
            status(&app, "OPTIONS", "/api/v1/projects", &[host]).await,
            401
        );
        for public in ["/", "/healthz", "/assets/app.js"] {
            assert_eq!(status(&app, "GET", public, &[host]).await, 200, "{public}");
        }
        let ok = [host, ("authorization", "Bearer secret-test-token")];
        assert_eq!(status(&app, "GET", "/api/v1/projects", &ok).await, 200);
        let lower = [host, ("authorization", "bearer secret-test-token")];
        assert_eq!(status(&app, "GET", "/api/v1/projects", &lower).await, 200);
        let wrong = [host, ("authorization", "Bearer secret-test-tokeN")];
        assert_eq!(status(&app, "GET", "/api/v1/projects", &wrong).await, 401);
        let basic = [host, ("authorization", "Basic secret-test-token")];
        assert_eq!(status(&app, "GET", "/api/v1/projects", &basic).await, 401);
    }

    #[tokio::test]
    async fn without_a_token_only_loopback_names_are_answered() {
        let app = app(None);
        for host in [
            "127.0.0.1:7700",
            "localhost:7700",
            "[::1]:7700",
            "LOCALHOST",
            "127.0.0.1",
        ] {
            assert_eq!(
                status(&app, "GET", "/api/v1/projects", &[("host", host)]).await,
                200,
                "{host}"
            );
        }
        // A rebinding attacker's page uses its own name.
        for host in [
            "evil.example:7700",
            "127.0.0.1.evil.example",
            "10.0.0.5:7700",
        ] {
            assert_eq!(
                status(&app, "GET", "/api/v1/projects", &[("host", host)]).await,
                403,
                "{host}"
            );
        }
        assert_eq!(status(&app, "GET", "/api/v1/projects", &[]).await, 403);
    }

    #[tokio::test]
    async fn no_cross_site_writes() {
        let app = app(None);
        let host = ("host", "127.0.0.1:7700");
        let cancel = "/api/v1/projects/p/cancel";
        assert_eq!(
            status(&app, "POST", cancel, &[host]).await,
            200,
            "the CLI sends no Origin"
        );
        assert_eq!(
            status(
                &app,
                "POST",
                cancel,
                &[
                    host,
                    ("origin", "http://127.0.0.1:7700"),
                    ("sec-fetch-site", "same-origin")
                ]
            )
            .await,
            200
        );
        assert_eq!(
            status(
                &app,
                "POST",
                cancel,
                &[host, ("origin", "https://evil.example")]
            )
            .await,
            403
        );
        assert_eq!(
            status(
                &app,
                "POST",
                cancel,
                &[host, ("sec-fetch-site", "cross-site")]
            )
            .await,
            403
        );
        assert_eq!(
            status(&app, "POST", cancel, &[host, ("origin", "null")]).await,
            403
        );
        // The same host under another scheme is another origin; a proxy
        // that terminates TLS says so.
        let origin = ("origin", "https://127.0.0.1:7700");
        assert_eq!(status(&app, "POST", cancel, &[host, origin]).await, 403);
        assert_eq!(
            status(
                &app,
                "POST",
                cancel,
                &[host, origin, ("x-forwarded-proto", "https")]
            )
            .await,
            200
        );
        assert_eq!(
            status(
                &app,
                "POST",
                cancel,
                &[
                    host,
                    ("origin", "http://127.0.0.1:7700"),
                    ("x-forwarded-proto", "https")
                ]
            )
            .await,
            403
        );
        // Reads are not writes (and the token or Host check guards them).
        assert_eq!(
            status(
                &app,
                "GET",
                "/api/v1/projects",
                &[host, ("origin", "https://evil.example")]
            )
            .await,
            200
        );
    }

    #[tokio::test]
    async fn axum_rejections_become_json() {
        let app = Router::new()
            .route(
                "/n/{n}",
                get(
                    |axum::extract::Path(n): axum::extract::Path<u32>| async move { n.to_string() },
                ),
            )
            .layer(axum::middleware::map_response(harden));
        let resp = app
            .oneshot(Request::builder().uri("/n/x").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let body = axum::body::to_bytes(resp.into_body(), 10_000)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], 400);
        assert!(v["error"].as_str().unwrap().contains("Invalid URL"), "{v}");
    }

    #[test]
    fn loopback_hosts() {
        assert!(loopback_host("127.0.0.1:7700"));
        assert!(loopback_host("[::1]:80"));
        assert!(loopback_host("::1"));
        assert!(!loopback_host("localhost.evil:7700"));
        assert!(!loopback_host("0.0.0.0:7700"));
    }
}
