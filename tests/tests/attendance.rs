//! Attendance and roll call: the store's attendance rows follow who joined and left; the chair's roll call shows
//! present / absent / absent with reason after the secretary records a reason; the CSV report (UTF-8 with BOM,
//! Vietnamese names) opens to the chair's token and not to an endpoint's; the admin API needs an admin token.
//! Chat reaches everyone and a late joiner gets it in `joined`.

mod common;

use std::time::Duration;

use common::{TestServer, create_meeting, http_request, send, token, wait_until};
use giaoban_signaling::protocol::{
    ClientMessage, MeetingMode, Presence, Role, RollCallEntry, ServerMessage,
};
use giaoban_tests::sim::SimEndpoint;

/// Wait for a `roll_call` at index `from` or later matching `pred`.
async fn wait_roll_call(
    ep: &SimEndpoint,
    from: usize,
    what: &str,
    pred: impl Fn(&[RollCallEntry]) -> bool,
) -> Vec<RollCallEntry> {
    match ep
        .wait_message_since(
            from,
            Duration::from_secs(5),
            |m| matches!(m, ServerMessage::RollCall { entries, .. } if pred(entries)),
        )
        .await
    {
        Ok(ServerMessage::RollCall { entries, .. }) => entries,
        Ok(_) => unreachable!(),
        Err(e) => {
            let last = ep.messages().into_iter().rev().find_map(|m| match m {
                ServerMessage::RollCall { entries, .. } => Some(entries),
                _ => None,
            });
            panic!(
                "{}: no roll_call with {what}: {e:#}; last roll call {last:?}",
                ep.name()
            )
        }
    }
}

fn entry<'a>(entries: &'a [RollCallEntry], endpoint_id: &str) -> &'a RollCallEntry {
    entries
        .iter()
        .find(|e| e.endpoint_id == endpoint_id)
        .unwrap_or_else(|| panic!("no roll call entry for {endpoint_id}: {entries:?}"))
}

fn status_of(entries: &[RollCallEntry], endpoint_id: &str) -> Option<Presence> {
    entries
        .iter()
        .find(|e| e.endpoint_id == endpoint_id)
        .map(|e| e.status)
}

/// A meeting with three invited halls; the chair, the secretary, A and B joined, then B left.
struct Fixture {
    server: TestServer,
    hub: std::sync::Arc<giaoban_signaling::hub::Hub>,
    mid: String,
    eps: Vec<giaoban_signaling::store::Endpoint>,
    chair_token: String,
    sec_token: String,
    a_token: String,
    chair: SimEndpoint,
    secretary: SimEndpoint,
    a: SimEndpoint,
    /// The chair's message index just before B left.
    before_b_left: usize,
}

const NAMES: [&str; 3] = [
    "UBND xã Tân Phú",
    "UBND phường Hòa Bình",
    "UBND xã Đông Sơn",
];

async fn fixture() -> Fixture {
    let server = TestServer::start().await;
    let hub = server.hub();
    let (meeting, eps) = create_meeting(&hub, "Giao ban tuần 48", MeetingMode::Lecture, &NAMES);
    let mid = meeting.id.clone();
    let chair_token = token(&hub, &mid, "chair", "Chủ trì", Role::Chair);
    let sec_token = token(&hub, &mid, "secretary", "Thư ký", Role::Secretary);
    let a_token = token(&hub, &mid, &eps[0].id, &eps[0].name, Role::Endpoint);
    let b_token = token(&hub, &mid, &eps[1].id, &eps[1].name, Role::Endpoint);
    let chair = server.join_token(&chair_token, "Chủ trì", false).await;
    let secretary = server.join_token(&sec_token, "Thư ký", false).await;
    let a = server.join_token(&a_token, "Xã Tân Phú", false).await;
    let b = server.join_token(&b_token, "Phường Hòa Bình", false).await;
    let before_b_left = chair.log_len();
    b.close().await;
    let b_id = eps[1].id.clone();
    wait_until(
        "B's attendance row to be closed",
        Duration::from_secs(5),
        || {
            hub.store
                .attendance(&mid)
                .expect("attendance")
                .iter()
                .any(|r| r.subject == b_id && r.left_at.is_some())
                .then_some(())
        },
    )
    .await;
    Fixture {
        server,
        hub,
        mid,
        eps,
        chair_token,
        sec_token,
        a_token,
        chair,
        secretary,
        a,
        before_b_left,
    }
}

impl Fixture {
    async fn finish(self, others: &[&SimEndpoint]) {
        for ep in [&self.chair, &self.secretary, &self.a]
            .into_iter()
            .chain(others.iter().copied())
        {
            ep.close().await;
        }
        self.server.shutdown().await;
    }

    /// The secretary records why C is absent; returns the chair's message index before.
    fn set_reason_for_c(&self) -> usize {
        let from = self.chair.log_len();
        send(
            &self.secretary,
            ClientMessage::SetAbsenceReason {
                endpoint_id: self.eps[2].id.clone(),
                reason: "Mất điện cả xã".into(),
            },
        );
        from
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attendance_rows_and_roll_call() {
    let f = fixture().await;
    let Fixture {
        server,
        hub,
        mid,
        sec_token,
        a_token,
        chair,
        secretary,
        a,
        before_b_left,
        eps,
        ..
    } = &f;
    let (a_ep, b_ep, c_ep) = (&eps[0], &eps[1], &eps[2]);
    let from = *before_b_left;
    let rows = hub.store.attendance(mid).expect("attendance");
    // Attendance rows: everyone who joined, in order, with name and role; B's row closed by its leave.
    let seen: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| (r.subject.as_str(), r.name.as_str(), r.role.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("chair", "Chủ trì", "chair"),
            ("secretary", "Thư ký", "secretary"),
            (a_ep.id.as_str(), a_ep.name.as_str(), "endpoint"),
            (b_ep.id.as_str(), b_ep.name.as_str(), "endpoint"),
        ],
        "{rows:?}"
    );
    for r in &rows {
        assert!(!r.joined_at.is_empty(), "joined_at unset: {r:?}");
        assert_eq!(
            r.left_at.is_some(),
            r.subject == b_ep.id,
            "only B has left: {r:?}"
        );
    }

    // Roll call to the chair: A present, B absent (it was here), C absent.
    // (A roll call sent before B joined also shows B absent, and may still be on its way: wait for the one
    // that knows B came and went.)
    let entries = wait_roll_call(chair, from, "B absent after leaving", |e| {
        status_of(e, &b_ep.id) == Some(Presence::Absent)
            && e.iter()
                .any(|x| x.endpoint_id == b_ep.id && x.left_at.is_some())
    })
    .await;
    assert_eq!(entries.len(), 3, "{entries:?}");
    let (ea, eb, ec) = (
        entry(&entries, &a_ep.id),
        entry(&entries, &b_ep.id),
        entry(&entries, &c_ep.id),
    );
    assert_eq!(ea.status, Presence::Present, "{ea:?}");
    assert!(ea.joined_at.is_some() && ea.left_at.is_none(), "{ea:?}");
    assert_eq!(ea.name, a_ep.name);
    assert!(eb.joined_at.is_some() && eb.left_at.is_some(), "{eb:?}");
    assert_eq!(ec.status, Presence::Absent, "{ec:?}");
    assert!(ec.joined_at.is_none() && ec.reason.is_none(), "{ec:?}");

    // The secretary records why C is absent.
    let from = f.set_reason_for_c();
    let from_sec = secretary.log_len();
    for (ep, from) in [(&chair, from), (&secretary, from_sec)] {
        let entries = wait_roll_call(ep, from, "C absent with reason", |e| {
            status_of(e, &c_ep.id) == Some(Presence::AbsentWithReason)
        })
        .await;
        assert_eq!(
            entry(&entries, &c_ep.id).reason.as_deref(),
            Some("Mất điện cả xã")
        );
        assert_eq!(status_of(&entries, &a_ep.id), Some(Presence::Present));
        assert_eq!(status_of(&entries, &b_ep.id), Some(Presence::Absent));
    }
    // Endpoints do not get the board.
    assert!(
        !a.messages()
            .iter()
            .any(|m| matches!(m, ServerMessage::RollCall { .. })),
        "an endpoint got the roll call"
    );

    // The JSON report opens to the secretary, with the roll call.
    let (status, _, body) = http_request(
        server.http,
        "GET",
        &format!("/api/meetings/{mid}/attendance"),
        &[("Authorization", &format!("Bearer {sec_token}"))],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        json["roll_call"].as_array().map(Vec::len),
        Some(3),
        "{json}"
    );

    let (status, _, body) = http_request(
        server.http,
        "GET",
        &format!("/api/meetings/{mid}/attendance?token={a_token}"),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 403, "an endpoint's token read the report: {body}");
    f.finish(&[]).await;
}

/// The attendance report as CSV at its documented URL: chair yes, endpoint no, no token no.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attendance_csv_report() {
    let f = fixture().await;
    let Fixture {
        server,
        mid,
        chair_token,
        a_token,
        chair,
        eps,
        ..
    } = &f;
    let (a_ep, b_ep, c_ep) = (&eps[0], &eps[1], &eps[2]);
    let from = f.set_reason_for_c();
    wait_roll_call(chair, from, "C absent with reason", |e| {
        status_of(e, &c_ep.id) == Some(Presence::AbsentWithReason)
    })
    .await;
    // The CSV report: chair's token yes, endpoint's token no, no token no.
    let path = format!("/api/meetings/{mid}/attendance.csv?token={chair_token}");
    let (status, head, body) = http_request(server.http, "GET", &path, &[], None).await;
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase().contains("text/csv"),
        "content type: {head}"
    );
    assert!(body.starts_with('\u{feff}'), "no UTF-8 BOM: {body:?}");
    for needle in [
        "Giao ban tuần 48",
        a_ep.name.as_str(),
        b_ep.name.as_str(),
        c_ep.name.as_str(),
        "Mất điện cả xã",
        "Chủ trì",
        "Thư ký",
    ] {
        assert!(body.contains(needle), "CSV lacks {needle:?}:\n{body}");
    }
    let c_line = body
        .lines()
        .find(|l| l.starts_with(&c_ep.name))
        .expect("a line for C");
    assert!(c_line.contains("Absent with reason"), "{c_line}");
    let (status, _, body) = http_request(
        server.http,
        "GET",
        &format!("/api/meetings/{mid}/attendance.csv?token={a_token}"),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 403, "an endpoint's token read the report: {body}");
    let (status, _, _) = http_request(
        server.http,
        "GET",
        &format!("/api/meetings/{mid}/attendance.csv"),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 401);
    f.finish(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_an_admin_token() {
    let f = fixture().await;
    let Fixture {
        server,
        hub,
        mid,
        chair_token,
        eps,
        ..
    } = &f;
    let c_ep = &eps[2];
    let names = NAMES;
    // The admin API.
    let admin = giaoban_signaling::admin::admin_token(hub);
    let bearer = format!("Bearer {admin}");
    let auth = [("Authorization", bearer.as_str())];
    let get = |path: String, with: bool| async move {
        let headers: &[(&str, &str)] = if with { &auth } else { &[] };
        http_request(server.http, "GET", &path, headers, None).await
    };
    let (status, _, body) = get("/api/admin/endpoints".into(), true).await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let listed: Vec<&str> = json["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for n in names {
        assert!(listed.contains(&n), "{n} not listed: {listed:?}");
    }
    let (status, _, body) = get("/api/admin/meetings".into(), true).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        common::json_strings(&serde_json::from_str(&body).expect("JSON")).contains(mid),
        "{body}"
    );
    let (status, _, body) = get(format!("/api/admin/meetings/{mid}/links"), true).await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let links = json["links"].as_array().expect("links");
    let roles: Vec<&str> = links.iter().filter_map(|l| l["role"].as_str()).collect();
    assert_eq!(
        roles,
        [
            "chair",
            "secretary",
            "observer",
            "endpoint",
            "endpoint",
            "endpoint"
        ],
        "{json}"
    );
    // An endpoint's link joins as that endpoint.
    let c_link = links
        .iter()
        .find(|l| l["subject"] == c_ep.id.as_str())
        .expect("C's link");
    let link_token = c_link["url"]
        .as_str()
        .and_then(|u| u.split_once("token="))
        .map(|(_, t)| t.to_string())
        .expect("token in the link");
    // Token-less and non-admin callers are refused.
    for path in [
        "/api/admin/endpoints".to_string(),
        "/api/admin/meetings".to_string(),
        format!("/api/admin/meetings/{mid}/links"),
    ] {
        let (status, _, body) = get(path.clone(), false).await;
        assert_eq!(status, 401, "{path} without a token: {body}");
        let (status, _, body) = http_request(
            server.http,
            "GET",
            &format!("{path}?token={chair_token}"),
            &[],
            None,
        )
        .await;
        assert_eq!(status, 403, "{path} with the chair's token: {body}");
    }
    let (status, _, body) = http_request(
        server.http,
        "POST",
        "/api/admin/endpoints",
        &auth,
        Some(r#"{"name":"UBND xã Phước Long","unit":"Xã"}"#),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(
        hub.store
            .endpoints()
            .expect("endpoints")
            .iter()
            .any(|e| e.name == "UBND xã Phước Long")
    );
    let (status, _, _) = http_request(
        server.http,
        "POST",
        "/api/admin/endpoints",
        &[],
        Some(r#"{"name":"UBND xã Không Quyền"}"#),
    )
    .await;
    assert_eq!(status, 401);

    let c = server
        .join_token(&link_token, "Xã Đông Sơn (link)", false)
        .await;
    match c
        .messages()
        .into_iter()
        .find(|m| matches!(m, ServerMessage::Joined { .. }))
    {
        Some(ServerMessage::Joined { role, .. }) => assert_eq!(role, Role::Endpoint),
        _ => unreachable!("joined"),
    }
    assert!(
        hub.store
            .attendance(mid)
            .expect("rows")
            .iter()
            .any(|r| r.subject == c_ep.id),
        "the link's join is in the attendance"
    );
    f.finish(&[&c]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_reaches_everyone_and_late_joiners() {
    let f = fixture().await;
    let Fixture {
        server,
        hub,
        mid,
        chair,
        secretary,
        a,
        eps,
        ..
    } = &f;
    let (a_ep, c_ep) = (&eps[0], &eps[2]);
    let c_token = token(hub, mid, &c_ep.id, &c_ep.name, Role::Endpoint);
    // Chat: a line reaches everyone (the sender too); a late joiner gets it in `joined`.
    let marks = [chair.log_len(), secretary.log_len(), a.log_len()];
    send(
        a,
        ClientMessage::Chat {
            text: "Xã Tân Phú đã sẵn sàng, nghe rõ.".into(),
        },
    );
    for (ep, from) in [&chair, &secretary, &a].into_iter().zip(marks) {
        let m = ep
            .wait_message_since(from, Duration::from_secs(5), |m| {
                matches!(m, ServerMessage::Chat { .. })
            })
            .await
            .unwrap_or_else(|e| panic!("{} gets the chat line: {e:#}", ep.name()));
        if let ServerMessage::Chat { message, .. } = m {
            assert_eq!(message.text, "Xã Tân Phú đã sẵn sàng, nghe rõ.");
            assert_eq!(message.from_name, a_ep.name);
            assert!(!message.at.is_empty());
        }
    }
    let from = chair.log_len();
    let c = server
        .join_token(&c_token, "Xã Đông Sơn (muộn)", false)
        .await;
    match c
        .messages()
        .into_iter()
        .find(|m| matches!(m, ServerMessage::Joined { .. }))
    {
        Some(ServerMessage::Joined { chat, role, .. }) => {
            assert_eq!(role, Role::Endpoint);
            assert!(
                chat.iter()
                    .any(|l| l.text == "Xã Tân Phú đã sẵn sàng, nghe rõ."
                        && l.from_name == a_ep.name),
                "the late joiner's history lacks the line: {chat:?}"
            );
        }
        _ => unreachable!("joined"),
    }
    // C is now present, whatever the recorded reason.
    wait_roll_call(chair, from, "C present", |e| {
        status_of(e, &c_ep.id) == Some(Presence::Present)
    })
    .await;

    f.finish(&[&c]).await;
}
