//! The HTTP surface: the embedded web client, the WebSocket, health and the rooms API.

use crate::admin;
use crate::hub::Hub;
use crate::session;
use axum::Router;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use std::sync::Arc;

/// The web client, compiled into the binary: (path, content type, body).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../web-client/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web-client/app.js"),
    ),
    (
        "/protocol.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web-client/protocol.js"),
    ),
    (
        "/i18n.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web-client/i18n.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../../web-client/style.css"),
    ),
    (
        "/board",
        "text/html; charset=utf-8",
        include_str!("../../web-client/board.html"),
    ),
    (
        "/board.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web-client/board.js"),
    ),
    (
        "/test",
        "text/html; charset=utf-8",
        include_str!("../../web-client/test.html"),
    ),
    (
        "/test.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web-client/test.js"),
    ),
    (
        "/admin",
        "text/html; charset=utf-8",
        include_str!("../../web-client/admin.html"),
    ),
    (
        "/admin.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web-client/admin.js"),
    ),
];

/// Scripts only from this server's own files (no inline script, no eval), no framing, no other origins.
/// Inline styles stay allowed (the board's page carries its style sheet inline).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; media-src 'self' blob: mediastream:; \
     connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

pub fn router(hub: Arc<Hub>) -> Router {
    let mut app = Router::new();
    for (path, content_type, body) in ASSETS {
        app = app.route(
            path,
            get(move || async move {
                (
                    [
                        (header::CONTENT_TYPE, *content_type),
                        (header::CACHE_CONTROL, "no-cache"),
                        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                        (header::X_FRAME_OPTIONS, "DENY"),
                        // Join links carry their token in the URL: never pass it on as a referrer.
                        (header::REFERRER_POLICY, "no-referrer"),
                        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
                    ],
                    *body,
                )
            }),
        );
    }
    app.route("/ws", get(ws))
        .route("/healthz", get(healthz))
        .route("/api/rooms", get(admin::rooms))
        .route("/api/health", get(crate::links::api_health))
        .route("/metrics", get(metrics))
        .route(
            "/api/admin/endpoints",
            get(admin::list_endpoints).post(admin::create_endpoint),
        )
        .route(
            "/api/admin/meetings",
            get(admin::list_meetings).post(admin::create_meeting),
        )
        .route("/api/admin/meetings/{id}/links", get(admin::links))
        .route("/api/admin/audit", get(admin::audit))
        .route("/api/admin/recordings", get(admin::recordings))
        .route(
            "/api/admin/recordings/{meeting}/{started}/{file}",
            get(admin::recording_file),
        )
        .route(
            "/api/admin/meetings/{id}/recording/{action}",
            axum::routing::post(admin::recording_control),
        )
        .route("/api/meetings/{id}/attendance", get(admin::attendance))
        .route(
            "/api/meetings/{id}/attendance.csv",
            get(admin::attendance_csv),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .with_state(hub)
}

/// Whether a browser's `Origin` names this server (the `Host` it asked for). Programs that send no Origin (the
/// simulated endpoints, tools) are let through; a page of another site is not (cross-site WebSocket hijacking).
fn same_origin(headers: &axum::http::HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'));
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

async fn ws(
    ws: WebSocketUpgrade,
    headers: axum::http::HeaderMap,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    State(hub): State<Arc<Hub>>,
) -> Response {
    if !same_origin(&headers) {
        hub.audit(
            None,
            None,
            "websocket",
            "cross-origin WebSocket refused",
            "refused",
        );
        return (StatusCode::FORBIDDEN, "cross-origin WebSocket refused").into_response();
    }
    let Some(slot) = hub.client_limits.open(peer.ip()) else {
        hub.audit(
            None,
            None,
            "websocket",
            &format!("too many connections from {}", peer.ip()),
            "refused",
        );
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "too many connections from your address (limits.max_connections_per_ip)",
        )
            .into_response();
    };
    let cap = session::frame_cap(hub.config.limits.max_message_bytes);
    // Shown to IT on the board ("which browser"); bounded, printable.
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().filter(|c| !c.is_control()).take(300).collect());
    ws.max_message_size(cap)
        .max_frame_size(cap)
        .on_upgrade(move |socket| session::run(socket, hub, peer.ip(), user_agent, slot))
}

async fn healthz(State(hub): State<Arc<Hub>>) -> Response {
    match hub.sfu.stats().await {
        Ok(stats) => Json(serde_json::json!({
            "status": "ok",
            "participants": hub.participant_count(),
            "connections": stats.connections,
            "media_addrs": hub.sfu.media_addrs,
        }))
        .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "unavailable", "error": e.to_string()})),
        )
            .into_response(),
    }
}

async fn metrics(State(hub): State<Arc<Hub>>) -> Response {
    match crate::metrics::render(&hub).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn headers(origin: Option<&'static str>, host: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static(host));
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_static(o));
        }
        h
    }

    #[test]
    fn websocket_origin_must_be_this_server() {
        assert!(same_origin(&headers(None, "10.0.0.5:8080")));
        assert!(same_origin(&headers(
            Some("https://10.0.0.5:8080"),
            "10.0.0.5:8080"
        )));
        assert!(!same_origin(&headers(
            Some("https://evil.example"),
            "10.0.0.5:8080"
        )));
        assert!(!same_origin(&headers(Some("null"), "10.0.0.5:8080")));
    }
}

/// The `https://` URL a plain-HTTP request should go to: same host name, the HTTPS port, same path and query.
fn https_location(host: Option<&str>, https_port: u16, path_and_query: &str) -> String {
    let host = host.unwrap_or("localhost");
    // Strip a port, keeping IPv6 brackets (`[::1]:80` → `[::1]`).
    let name = match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    };
    format!("https://{name}:{https_port}{path_and_query}")
}

/// Listen for plain HTTP on `addr` and redirect every request to HTTPS on `https_port`.
pub fn serve_redirect(
    addr: std::net::SocketAddr,
    https_port: u16,
    handle: axum_server::Handle<std::net::SocketAddr>,
) -> anyhow::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (http.redirect_listen): {e}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let app = Router::new().fallback(
        move |headers: axum::http::HeaderMap, uri: axum::http::Uri| async move {
            let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            axum::response::Redirect::permanent(&https_location(host, https_port, path))
        },
    );
    let server = axum_server::from_tcp(listener)?.handle(handle);
    tokio::spawn(async move {
        if let Err(e) = server.serve(app.into_make_service()).await {
            tracing::error!(error = %e, "http redirect server failed");
        }
    });
    Ok(local)
}

#[cfg(test)]
mod redirect_tests {
    use super::https_location;

    #[test]
    fn location_keeps_host_path_and_query_and_swaps_the_port() {
        assert_eq!(
            https_location(Some("10.0.0.5"), 8443, "/?token=abc"),
            "https://10.0.0.5:8443/?token=abc"
        );
        assert_eq!(
            https_location(Some("giaoban.local:80"), 443, "/admin"),
            "https://giaoban.local:443/admin"
        );
        assert_eq!(
            https_location(Some("[::1]:80"), 8443, "/"),
            "https://[::1]:8443/"
        );
        assert_eq!(
            https_location(Some("[::1]"), 8443, "/"),
            "https://[::1]:8443/"
        );
    }
}
