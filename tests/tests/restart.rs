//! A restart on the same data directory keeps endpoints, meetings, attendance, chat and absence reasons, and
//! join tokens issued before the restart still join: with the secret generated on first start and kept in the
//! data directory, and with a configured `auth.secret`.

mod common;

use std::time::Duration;

use common::{TestServer, create_meeting, send, token, wait_until};
use giaoban_signaling::protocol::{ClientMessage, MeetingMode, Role, ServerMessage};

async fn survives_restart(secret: &str) {
    let mut config = giaoban_config::Config::for_tests();
    config.auth.secret = secret.to_string();
    let dir = config.storage.data_dir.clone();

    // First start: empty directory, so the demo meeting is made.
    let server = TestServer::start_with(config.clone()).await;
    assert!(
        server.demo_meeting_id().is_some(),
        "first start makes the demo"
    );
    let hub = server.hub();
    let (meeting, eps) = create_meeting(
        &hub,
        "Giao ban trước khi khởi động lại",
        MeetingMode::Conference,
        &["UBND xã Vĩnh Phúc", "UBND xã Ea Kar"],
    );
    let mid = meeting.id.clone();
    let a_token = token(&hub, &mid, &eps[0].id, &eps[0].name, Role::Endpoint);
    let chair_token = token(&hub, &mid, "chair", "Chủ trì", Role::Chair);
    let chair = server.join_token(&chair_token, "Chủ trì", false).await;
    let a = server.join_token(&a_token, "Xã Vĩnh Phúc", false).await;
    let from = a.log_len();
    send(
        &a,
        ClientMessage::Chat {
            text: "Vĩnh Phúc có mặt".into(),
        },
    );
    a.wait_message_since(from, Duration::from_secs(5), |m| {
        matches!(m, ServerMessage::Chat { .. })
    })
    .await
    .expect("chat echoed");
    send(
        &chair,
        ClientMessage::SetAbsenceReason {
            endpoint_id: eps[1].id.clone(),
            reason: "Đi công tác".into(),
        },
    );
    a.close().await;
    wait_until("A's attendance row closed", Duration::from_secs(5), || {
        hub.store
            .attendance(&mid)
            .expect("attendance")
            .iter()
            .any(|r| r.subject == eps[0].id && r.left_at.is_some())
            .then_some(())
    })
    .await;
    wait_until("the absence reason stored", Duration::from_secs(5), || {
        hub.store
            .invitations(&mid)
            .expect("invitations")
            .iter()
            .any(|i| i.absence_reason.as_deref() == Some("Đi công tác"))
            .then_some(())
    })
    .await;
    let endpoints_before = hub.store.endpoints().expect("endpoints");
    let meetings_before = hub.store.meetings().expect("meetings");
    let attendance_before = hub.store.attendance(&mid).expect("attendance");
    // The chair is still connected when the server stops.
    drop(hub);
    server.shutdown().await;
    chair.shutdown().await;
    if secret.is_empty() {
        assert!(
            dir.join("secret.key").exists(),
            "the generated secret is kept in {}",
            dir.display()
        );
    }

    // Second start on the same directory.
    let server = TestServer::start_with(config.clone()).await;
    let hub = server.hub();
    assert!(
        server.demo_meeting_id().is_none(),
        "no second demo on a non-empty store"
    );
    assert_eq!(hub.store.endpoints().expect("endpoints"), endpoints_before);
    let meetings_after = hub.store.meetings().expect("meetings");
    assert_eq!(
        meetings_after.iter().map(|m| &m.id).collect::<Vec<_>>(),
        meetings_before.iter().map(|m| &m.id).collect::<Vec<_>>()
    );
    let m = hub.store.meeting(&mid).expect("the meeting survives");
    assert_eq!(m.title, "Giao ban trước khi khởi động lại");
    assert_eq!(m.mode, MeetingMode::Conference);
    assert_eq!(
        m.invited_endpoint_ids.len(),
        2,
        "invitations survive: {m:?}"
    );
    let rows = hub.store.attendance(&mid).expect("attendance");
    assert_eq!(rows.len(), attendance_before.len(), "{rows:?}");
    for (after, before) in rows.iter().zip(&attendance_before) {
        assert_eq!(
            (&after.subject, &after.name, &after.role, &after.joined_at),
            (
                &before.subject,
                &before.name,
                &before.role,
                &before.joined_at
            )
        );
        assert!(
            after.left_at.is_some(),
            "every session was closed by the stop: {after:?}"
        );
    }
    assert!(
        rows.iter().any(|r| r.subject == "chair") && rows.iter().any(|r| r.subject == eps[0].id),
        "{rows:?}"
    );
    assert!(
        hub.store
            .invitations(&mid)
            .expect("invitations")
            .iter()
            .any(|i| i.endpoint.id == eps[1].id
                && i.absence_reason.as_deref() == Some("Đi công tác")),
        "the absence reason survives"
    );

    // The old token still joins, as the same hall, and the chat history is there.
    let a = server
        .join_token(&a_token, "Xã Vĩnh Phúc (sau)", false)
        .await;
    match a
        .messages()
        .into_iter()
        .find(|m| matches!(m, ServerMessage::Joined { .. }))
    {
        Some(ServerMessage::Joined {
            role,
            meeting,
            chat,
            state,
            ..
        }) => {
            assert_eq!(role, Role::Endpoint);
            assert_eq!(meeting.map(|m| m.id), Some(mid.clone()));
            assert_eq!(state.mode, MeetingMode::Conference);
            assert!(
                chat.iter().any(|c| c.text == "Vĩnh Phúc có mặt"),
                "chat history after restart: {chat:?}"
            );
        }
        _ => unreachable!("joined"),
    }
    let rows = hub.store.attendance(&mid).expect("attendance");
    assert_eq!(rows.len(), attendance_before.len() + 1, "a new session row");
    assert!(rows.last().is_some_and(|r| r.left_at.is_none()));

    a.close().await;
    drop(hub);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_data_and_generated_secret() {
    survives_restart("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_data_with_configured_secret() {
    survives_restart("một-bí-mật-đủ-dài-cho-kiểm-thử-0123456789").await;
}
