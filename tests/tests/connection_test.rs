//! The pre-meeting connection test (`join_test`, `test_result`) with the real server and simulated endpoints:
//! the tester receives its own media back (echo through the SFU), stays out of the meeting (the hall in the
//! meeting never hears of it, no attendance row, not in `/api/rooms`), bad results are refused with the field
//! named and the session carries on, a good one is graded against `[health]` from config and stored with the
//! server's own view. Roles that send no media, bad tokens and results outside a test are refused.

mod common;

use std::time::Duration;

use common::{TestServer, create_meeting, packets_from, token, wait_until};
use giaoban_signaling::protocol::{
    ClientMessage, ErrorCode, Measure, MeetingMode, QualityLevel, Role, ServerMessage,
};
use giaoban_tests::sim::SimEndpoint;

const T: Duration = Duration::from_secs(5);

/// Send `text` raw; expect `error` with `code` whose message contains `needle`.
async fn expect_error(ep: &SimEndpoint, text: &str, code: ErrorCode, needle: &str) {
    let from = ep.log_len();
    ep.send_raw(text.to_string()).expect("sent");
    let (got, message) = ep
        .wait_error_since(from, T)
        .await
        .unwrap_or_else(|e| panic!("no error reply to {text}: {e:#}"));
    println!("{text} -> {got:?}: {message}");
    assert_eq!(got, code, "{message}");
    assert!(message.contains(needle), "`{message}` names `{needle}`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_test_echoes_media_stays_out_of_the_meeting_and_stores_a_graded_result() {
    let mut config = giaoban_config::Config::for_tests();
    config.auth.open_rooms = false;
    // Strict RTT limits from config: the verdict must follow them (loopback RTT is unmeasured by the sim, so
    // the browser's figure sent below decides).
    config.health.fair_rtt_ms = 50.0;
    config.health.poor_rtt_ms = 100.0;
    let server = TestServer::start_with(config).await;
    let hub = server.hub();
    let (m, eps) = create_meeting(
        &hub,
        "Giao ban thử",
        MeetingMode::Discussion,
        &["UBND xã An Phú", "UBND xã Bình Minh"],
    );
    let tok_a = token(&hub, &m.id, &eps[0].id, &eps[0].name, Role::Endpoint);
    let tok_b = token(&hub, &m.id, &eps[1].id, &eps[1].name, Role::Endpoint);

    // Hall B is in the meeting.
    let b = server.join_token(&tok_b, "B (meeting)", true).await;
    let b_log_start = b.log_len();

    // Hall A tests its connection with its own join link.
    let a = SimEndpoint::open(server.token_opts(&tok_a, "A (test)"))
        .await
        .expect("socket");
    let from = a.log_len();
    a.send(&ClientMessage::JoinTest {
        token: tok_a.clone(),
    })
    .expect("join_test sent");
    let joined = a
        .wait_message_since(from, T, |m| {
            matches!(
                m,
                ServerMessage::Joined { .. } | ServerMessage::Error { .. }
            )
        })
        .await
        .expect("reply to join_test");
    let ServerMessage::Joined {
        participant_id,
        participants,
        meeting,
        ..
    } = joined
    else {
        panic!("join_test refused: {joined:?}");
    };
    assert!(participants.is_empty(), "alone in the test room");
    assert_eq!(
        meeting.map(|x| x.id),
        Some(m.id.clone()),
        "the meeting is named"
    );
    a.publish().await.expect("the tester publishes");

    // Echo: the tester receives its own audio and video through the SFU.
    wait_until(
        "the tester's own media to come back",
        Duration::from_secs(15),
        || (packets_from(&a, &participant_id) > 50).then_some(()),
    )
    .await;
    let kinds: Vec<_> = a
        .stats()
        .received
        .iter()
        .filter(|t| t.participant_id == participant_id && t.packets > 0)
        .map(|t| t.kind)
        .collect();
    assert_eq!(kinds.len(), 2, "audio and video echoed: {kinds:?}");

    // Not in the meeting: B heard nothing of A, the room list and the attendance do not show it.
    let rooms = server.rooms().await.to_string();
    assert!(!rooms.contains(&participant_id), "{rooms}");
    assert!(!rooms.contains("test:"), "{rooms}");
    assert!(
        b.messages()
            .into_iter()
            .skip(b_log_start)
            .all(|msg| !matches!(
                &msg,
                ServerMessage::ParticipantJoined { participant } if participant.id == participant_id
            ) && !matches!(
                &msg,
                ServerMessage::TrackPublished { participant_id: p, .. } if *p == participant_id
            )),
        "the hall in the meeting never heard of the test"
    );
    assert_eq!(
        packets_from(&b, &participant_id),
        0,
        "no test media reached B"
    );

    // Bad results: refused with the field named; the session carries on.
    expect_error(
        &a,
        r#"{"type":"test_result","result":{"loss_up_percent":140,"camera":"ok","microphone":"ok"}}"#,
        ErrorCode::InvalidField,
        "loss_up_percent",
    )
    .await;
    expect_error(
        &a,
        r#"{"type":"test_result","result":{"rtt_ms":-1,"camera":"ok","microphone":"ok"}}"#,
        ErrorCode::InvalidField,
        "rtt_ms",
    )
    .await;
    expect_error(
        &a,
        r#"{"type":"test_result","result":{"speed":9,"camera":"ok","microphone":"ok"}}"#,
        ErrorCode::BadMessage,
        "speed",
    )
    .await;
    expect_error(
        &a,
        r#"{"type":"test_result","result":{"camera":"broken","microphone":"ok"}}"#,
        ErrorCode::BadMessage,
        "broken",
    )
    .await;

    // A good one: graded (RTT 70 ms is fair under this config), stored with the server's own view (its bit rates
    // are computed over whole seconds: a browser sends after ~10 s of media, the sim waits for two windows).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let from = a.log_len();
    a.send_raw(
        r#"{"type":"test_result","result":{"rtt_ms":70,"loss_up_percent":0,"loss_down_percent":0,"jitter_ms":3,"up_kbps":2000,"down_kbps":2000,"camera":"ok","microphone":"ok"}}"#
            .to_string(),
    )
    .expect("sent");
    let verdict = a
        .wait_message_since(from, T, |m| {
            matches!(
                m,
                ServerMessage::TestVerdict { .. } | ServerMessage::Error { .. }
            )
        })
        .await
        .expect("a verdict");
    let ServerMessage::TestVerdict { verdict, findings } = verdict else {
        panic!("no verdict: {verdict:?}");
    };
    println!("verdict {verdict:?}: {findings:?}");
    let rtt = findings
        .iter()
        .find(|f| f.measure == Measure::Rtt)
        .expect("rtt graded");
    assert_eq!(
        rtt.level,
        QualityLevel::Fair,
        "RTT 70 ms against fair_rtt_ms = 50"
    );
    let upload = findings
        .iter()
        .find(|f| f.measure == Measure::Upload)
        .expect("upload graded");
    // Upload is what the server received from the sim (~1 Mbit/s of synthetic video), not the claimed 2000.
    assert!(
        upload.value.is_some_and(|v| v > 50.0 && v < 2000.0),
        "upload from the server's own count: {upload:?}"
    );
    assert!(verdict >= QualityLevel::Fair);

    let stored = hub
        .store
        .latest_connection_tests(Some(&m.id))
        .expect("read tests");
    assert_eq!(stored.len(), 1, "{stored:?}");
    let s = &stored[0];
    assert_eq!(s.subject, eps[0].id);
    assert_eq!(s.rtt_ms, Some(70.0));
    assert!(s.server_up_kbps.is_some_and(|v| v > 50.0), "{s:?}");
    assert!(s.server_down_kbps.is_some_and(|v| v > 50.0), "{s:?}");
    assert_eq!(
        s.verdict,
        serde_json::to_value(verdict).expect("serializable")
    );
    let attendance = hub.store.attendance(&m.id).expect("attendance");
    assert!(
        attendance.iter().all(|r| r.subject != eps[0].id),
        "no attendance row for the tester: {attendance:?}"
    );
    assert!(
        attendance.iter().any(|r| r.subject == eps[1].id),
        "B attended"
    );

    // A meeting session may not send test results.
    let from = b.log_len();
    b.send_raw(r#"{"type":"test_result","result":{"camera":"ok","microphone":"ok"}}"#.to_string())
        .expect("sent");
    let (code, message) = b.wait_error_since(from, T).await.expect("refused");
    assert_eq!(code, ErrorCode::WrongState, "{message}");

    // Observers have nothing to test; bad tokens are refused.
    let obs = token(&hub, &m.id, "it-staff", "Cán bộ IT", Role::Observer);
    let (code, message) = server
        .join_refused(ClientMessage::JoinTest { token: obs }, "observer")
        .await;
    assert_eq!(code, ErrorCode::Forbidden, "{message}");
    let (code, message) = server
        .join_refused(
            ClientMessage::JoinTest {
                token: "not.a.token".into(),
            },
            "garbage",
        )
        .await;
    assert_eq!(code, ErrorCode::Unauthorized, "{message}");

    // The test ends when its socket closes: the media plane forgets it.
    a.shutdown().await;
    wait_until("the test connection to be gone", T, || {
        let n = hub.participant_count();
        (n == 1).then_some(())
    })
    .await;
    b.shutdown().await;
    server.shutdown().await;
}
