//! Admin pages' APIs need the admin role: every admin read is refused without a token (401), with a garbage or
//! foreign-secret token (401), and with a valid token of a lesser role (403, audited); the admin token is served.
//! No API answers a cross-origin preflight with CORS permission, so another site's page cannot read them.

mod common;

use common::{TestServer, create_meeting, token};
use giaoban_signaling::auth::{Auth, Claims, now_secs};
use giaoban_signaling::protocol::{MeetingMode, Role};
use giaoban_tests::sim::http_get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADMIN_READS: &[&str] = &[
    "/api/rooms",
    "/api/admin/endpoints",
    "/api/admin/meetings",
    "/api/admin/audit",
];

fn with_token(path: &str, token: &str) -> String {
    format!("{path}?token={token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_apis_refuse_everyone_but_the_admin() {
    let server = TestServer::start().await;
    let hub = server.hub();
    let (meeting, eps) = create_meeting(&hub, "Giao ban", MeetingMode::Lecture, &["Xã A"]);
    let chair = token(&hub, &meeting.id, "chair-1", "Chủ trì", Role::Chair);
    let hall = token(&hub, &meeting.id, &eps[0].id, &eps[0].name, Role::Endpoint);
    let observer = token(&hub, &meeting.id, "it-1", "Kỹ thuật", Role::Observer);
    // A well-formed admin token signed with another secret.
    let forged = Auth::new(b"not the server's secret").issue(&Claims {
        mtg: "*".into(),
        sub: "admin".into(),
        name: "x".into(),
        role: Role::Admin,
        exp: now_secs() + 3600,
    });
    let admin = giaoban_signaling::admin::admin_token(&hub);

    for path in ADMIN_READS {
        let (status, body) = http_get(server.http, path).await.expect("GET");
        assert_eq!(status, 401, "{path} without a token: {body}");
        assert!(body.contains("token is required"), "{path}: {body}");

        for (label, bad) in [("garbage", "abc.def.ghi"), ("forged", forged.as_str())] {
            let (status, body) = http_get(server.http, &with_token(path, bad))
                .await
                .expect("GET");
            assert_eq!(status, 401, "{path} with a {label} token: {body}");
        }
        for (label, lesser) in [
            ("chair", &chair),
            ("endpoint", &hall),
            ("observer", &observer),
        ] {
            let (status, body) = http_get(server.http, &with_token(path, lesser))
                .await
                .expect("GET");
            assert_eq!(status, 403, "{path} with the {label}'s token: {body}");
            assert!(body.contains("may not"), "{path} ({label}): {body}");
        }
        let (status, body) = http_get(server.http, &with_token(path, &admin))
            .await
            .expect("GET");
        assert_eq!(status, 200, "{path} with the admin token: {body}");
        serde_json::from_str::<serde_json::Value>(&body)
            .unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {body}"));
    }

    // Refusals with a valid token name who tried and what, in the audit log.
    let refused: Vec<_> = hub
        .store
        .audit_log(None, 1000)
        .expect("audit log")
        .into_iter()
        .filter(|e| e.outcome == "refused" && e.action == "list rooms")
        .collect();
    assert!(
        refused.iter().any(|e| e.actor == "chair-1") && refused.iter().any(|e| e.actor == "it-1"),
        "refused /api/rooms reads audited by actor: {refused:?}"
    );
}

/// A raw HTTP/1.0 request with the given extra header lines; returns the response head.
async fn head_of(server: &TestServer, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(server.http)
        .await
        .expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out).to_string();
    text.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cross_origin_permission_is_granted() {
    let server = TestServer::start().await;
    let admin = giaoban_signaling::admin::admin_token(&server.hub());
    let host = server.http;
    let preflight = head_of(
        &server,
        &format!(
            "OPTIONS /api/admin/endpoints HTTP/1.0\r\nHost: {host}\r\nOrigin: https://evil.example\r\n\
             Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization\r\n\r\n"
        ),
    )
    .await;
    let simple = head_of(
        &server,
        &format!(
            "GET /api/rooms?token={admin} HTTP/1.0\r\nHost: {host}\r\nOrigin: https://evil.example\r\n\r\n"
        ),
    )
    .await;
    for (what, head) in [("preflight", &preflight), ("cross-origin GET", &simple)] {
        assert!(head.starts_with("HTTP/1."), "{what}: {head}");
        assert!(
            !head
                .to_ascii_lowercase()
                .contains("access-control-allow-origin"),
            "{what} must not grant CORS: {head}"
        );
    }
    // Pages carry the security headers that keep tokens in URLs from leaking and the app from being framed.
    let page = head_of(
        &server,
        &format!("GET /admin HTTP/1.0\r\nHost: {host}\r\n\r\n"),
    )
    .await;
    let lower = page.to_ascii_lowercase();
    for h in [
        "referrer-policy: no-referrer",
        "x-frame-options",
        "x-content-type-options: nosniff",
        "content-security-policy",
    ] {
        assert!(lower.contains(h), "/admin lacks {h}: {page}");
    }
}
