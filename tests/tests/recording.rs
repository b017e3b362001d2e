//! Recording for the minutes: a recorded meeting yields one file per track that `ffprobe` (Debian's ffmpeg)
//! reads, with the packet/frame counts and durations of what was sent; the manifest names each file's
//! participant and the floor events; only the chair and admins may record; a full disk stops the recording with
//! an alert to the chair while the meeting and its media carry on; a camera whose top simulcast layer sends no
//! keyframe is recorded from a lower layer.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    TestServer, assert_still_flowing, create_meeting, expect_error, http_request, send, token,
    wait_all_flowing, wait_state, wait_until, wait_until_async,
};
use giaoban_signaling::protocol::{ClientMessage, ErrorCode, MeetingMode, Role, ServerMessage};
use giaoban_tests::sim::SimEndpoint;

/// `ffprobe` on one file: (codec, packets read, stream duration in seconds, format duration in seconds).
fn ffprobe(path: &Path) -> (String, u64, f64, f64) {
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_packets",
            "-show_entries",
            "stream=codec_name,nb_read_packets,duration:format=duration",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("ffprobe must be installed (apt-get install ffmpeg): {e}"));
    assert!(
        out.status.success(),
        "ffprobe cannot read {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe prints JSON");
    let stream = &v["streams"][0];
    let num = |x: &serde_json::Value| -> f64 {
        x.as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{}: no number in {x} ({v})", path.display()))
    };
    (
        stream["codec_name"].as_str().unwrap_or("").to_string(),
        num(&stream["nb_read_packets"]) as u64,
        num(&stream["duration"]),
        num(&v["format"]["duration"]),
    )
}

/// The one recording folder of `meeting` under `data_dir`.
fn recording_dir(data_dir: &Path, meeting: &str) -> Option<PathBuf> {
    let dirs: Vec<PathBuf> = std::fs::read_dir(data_dir.join("recordings").join(meeting))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    (dirs.len() == 1).then(|| dirs[0].clone())
}

fn manifest(dir: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).ok()?).ok()
}

/// Wait until the manifest in `dir` says `status`.
async fn wait_manifest(dir: &Path, status: &str) -> serde_json::Value {
    wait_until(
        &format!(
            "manifest.json in {} with status {status} (now: {:?})",
            dir.display(),
            manifest(dir).map(|m| m["status"].clone())
        ),
        Duration::from_secs(10),
        || manifest(dir).filter(|m| m["status"] == status),
    )
    .await
}

/// The manifest's file entry of `participant_id`'s track of `kind`.
fn file_of<'a>(
    m: &'a serde_json::Value,
    participant_id: &str,
    kind: &str,
) -> &'a serde_json::Value {
    m["files"]
        .as_array()
        .and_then(|f| {
            f.iter()
                .find(|f| f["participant_id"] == participant_id && f["kind"] == kind)
        })
        .unwrap_or_else(|| panic!("no {kind} file of {participant_id} in {m:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_meeting_matches_what_was_sent() {
    let config = giaoban_config::Config::for_tests();
    let data_dir = config.storage.data_dir.clone();
    let server = TestServer::start_with(config).await;
    let hub = server.hub();
    let (meeting, eps) = create_meeting(
        &hub,
        "Giao ban có ghi hình",
        MeetingMode::Lecture,
        &["UBND xã An Phú"],
    );
    let chair_token = token(&hub, &meeting.id, "chair", "Chủ trì", Role::Chair);
    let hall_token = token(&hub, &meeting.id, &eps[0].id, &eps[0].name, Role::Endpoint);
    let chair = server.join_token(&chair_token, "Chủ trì", true).await;
    let hall = server.join_token(&hall_token, "Xã An Phú", true).await;
    // The hall is heard once it has the floor (lecture mode); its camera is seen all along.
    send(
        &chair,
        ClientMessage::GrantFloor {
            participant_id: hall.id(),
            seconds: None,
        },
    );
    wait_all_flowing(&[&chair, &hall], &[&chair, &hall], Duration::from_secs(15)).await;

    let from = hall.log_len();
    let plis_before = hall.sent().plis;
    let keyframes_before = [chair.sent().keyframes, hall.sent().keyframes];
    send(&chair, ClientMessage::StartRecording {});
    wait_state(&hall, from, "recording on", |s| s.recording).await;
    let started = Instant::now();
    let (chair0, hall0) = (chair.sent(), hall.sent());
    // Each video file starts at the keyframe the server asks for (its PLI may wait out the 500 ms throttle):
    // note how many frames each camera had sent before it.
    let mut video_base = [None, None];
    while video_base.iter().any(Option::is_none) {
        for (i, ep) in [&chair, &hall].into_iter().enumerate() {
            let s = ep.sent();
            if video_base[i].is_none() && s.keyframes > keyframes_before[i] {
                video_base[i] = Some(s.video_frames - 1);
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "no keyframe within 2 s of the recording's start"
        );
        tokio::time::sleep(Duration::from_millis(3)).await;
    }

    // The floor moves during the recording: the manifest must say so.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let from = chair.log_len();
    send(
        &chair,
        ClientMessage::RevokeFloor {
            participant_id: hall.id(),
        },
    );
    wait_state(&chair, from, "floor revoked", |s| s.floor.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let from = hall.log_len();
    let (chair1, hall1) = (chair.sent(), hall.sent());
    send(&chair, ClientMessage::StopRecording {});
    wait_state(&hall, from, "recording off", |s| !s.recording).await;
    let recorded = started.elapsed().as_secs_f64();

    let dir = recording_dir(&data_dir, &meeting.id).expect("one recording folder");
    let m = wait_manifest(&dir, "complete").await;
    assert!(
        hall.sent().plis > plis_before,
        "starting the recording asks each camera for a keyframe"
    );

    // Audio: the hall's microphone is recorded while it had the floor (what the meeting heard); the chair's all
    // along. Video: both cameras all along.
    let checks = [
        (
            &chair,
            "audio",
            chair1.audio_packets - chair0.audio_packets,
            "opus",
        ),
        (
            &chair,
            "video",
            chair1.video_frames - video_base[0].unwrap_or_default(),
            "vp8",
        ),
        (
            &hall,
            "video",
            hall1.video_frames - video_base[1].unwrap_or_default(),
            "vp8",
        ),
    ];
    for (ep, kind, sent, codec) in checks {
        let entry = file_of(&m, &ep.id(), kind);
        let file = dir.join(entry["file"].as_str().expect("a file name"));
        let (codec_name, packets, duration, format_duration) = ffprobe(&file);
        let who = format!("{} {kind} ({})", ep.name(), file.display());
        assert_eq!(codec_name, codec, "{who}");
        // Packets (audio) or frames (video, from the first keyframe): those sent while recording, give or take
        // what was in flight when the switch flipped (≤ 100 ms at each end).
        let tolerance = if kind == "audio" { 5 } else { 3 };
        assert!(
            packets.abs_diff(sent) <= tolerance,
            "{who}: ffprobe reads {packets} packets, {sent} were sent while recording (± {tolerance})"
        );
        assert_eq!(
            entry["packets_written"].as_u64(),
            Some(packets),
            "{who}: manifest"
        );
        // Durations: 20 ms per Opus packet, 1/30 s per frame; and about the wall time recorded.
        let per = if kind == "audio" { 0.020 } else { 1.0 / 30.0 };
        let expected = packets as f64 * per;
        for d in [duration, format_duration] {
            assert!(
                (d - expected).abs() <= 0.05,
                "{who}: duration {d:.3} s, {packets} packets make {expected:.3} s"
            );
        }
        if kind == "audio" {
            assert!(
                (duration - recorded).abs() <= 0.2,
                "{who}: duration {duration:.3} s, recorded for {recorded:.3} s"
            );
        }
        assert_eq!(
            entry["name"],
            if kind == "audio" || ep.id() == chair.id() {
                "Chủ trì"
            } else {
                "UBND xã An Phú"
            },
            "{who}"
        );
    }
    // The hall's microphone: heard only while it held the floor (about half the recording).
    let hall_audio = file_of(&m, &hall.id(), "audio");
    let file = dir.join(hall_audio["file"].as_str().expect("a file name"));
    let (codec_name, packets, _, _) = ffprobe(&file);
    assert_eq!(codec_name, "opus");
    let sent = hall1.audio_packets - hall0.audio_packets;
    assert!(
        packets > sent / 3 && packets < sent * 2 / 3 + 10,
        "hall audio: {packets} packets recorded of {sent} sent; it held the floor for half the recording"
    );
    assert_eq!(hall_audio["name"], "UBND xã An Phú");
    assert_eq!(hall_audio["identity"], eps[0].id.as_str());

    // Who spoke when.
    let events = m["events"].as_array().expect("events");
    let revoked = events
        .iter()
        .find(|e| e["type"] == "floor_revoked")
        .unwrap_or_else(|| panic!("no floor_revoked event: {events:#?}"));
    assert_eq!(revoked["identity"], eps[0].id.as_str());
    let at = revoked["offset_ms"].as_u64().expect("offset");
    assert!((1300..=2500).contains(&at), "revoked at {at} ms");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "floor_granted" && e["identity"] == eps[0].id.as_str()),
        "the floor held at the start is in the manifest: {events:#?}"
    );
    assert!(events.iter().any(|e| e["type"] == "recording_stopped"));
    assert!(
        events.iter().any(|e| e["type"] == "mode_lecture"),
        "the mode at the start is in the manifest: {events:#?}"
    );
    assert_eq!(m["meeting"]["title"], "Giao ban có ghi hình");
    assert_eq!(m["started_by"], "Chủ trì");

    chair.shutdown().await;
    hall.shutdown().await;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_chair_and_admin_may_record() {
    let server = TestServer::start().await;
    let hub = server.hub();
    let (meeting, eps) = create_meeting(&hub, "Giao ban", MeetingMode::Lecture, &["UBND xã A"]);
    let join = |sub: &str, name: &'static str, role| {
        let t = token(&hub, &meeting.id, sub, name, role);
        let server = &server;
        async move { server.join_token(&t, name, false).await }
    };
    let hall = join(&eps[0].id, "Xã A", Role::Endpoint).await;
    let secretary = join("secretary", "Thư ký", Role::Secretary).await;
    let observer = join("observer", "Kỹ thuật", Role::Observer).await;
    for ep in [&hall, &secretary, &observer] {
        let (code, message) = expect_error(ep, ClientMessage::StartRecording {}).await;
        assert_eq!(code, ErrorCode::Forbidden, "{}: {message}", ep.name());
        assert!(message.contains("start_recording"), "{message}");
    }
    let refused = hub
        .store
        .audit_log(Some(&meeting.id), 100)
        .expect("audit log")
        .into_iter()
        .filter(|e| e.action == "start_recording" && e.outcome == "refused")
        .count();
    assert_eq!(refused, 3, "each refusal is audited");

    // Nothing to stop yet.
    let chair = join("chair", "Chủ trì", Role::Chair).await;
    let (code, _) = expect_error(&chair, ClientMessage::StopRecording {}).await;
    assert_eq!(code, ErrorCode::WrongState);

    // The admin API: a chair's token is refused; the admin starts, lists, downloads and stops.
    let chair_token = token(&hub, &meeting.id, "chair", "Chủ trì", Role::Chair);
    let admin = giaoban_signaling::admin::admin_token(&hub);
    let post = |path: String, tok: String| {
        let addr = server.http;
        async move {
            let auth = format!("Bearer {tok}");
            http_request(addr, "POST", &path, &[("Authorization", &auth)], None).await
        }
    };
    let start = format!("/api/admin/meetings/{}/recording/start", meeting.id);
    let stop = format!("/api/admin/meetings/{}/recording/stop", meeting.id);
    let (status, _, body) = post(start.clone(), chair_token).await;
    assert_eq!(status, 403, "{body}");
    let from = hall.log_len();
    let (status, _, body) = post(start.clone(), admin.clone()).await;
    assert_eq!(status, 200, "{body}");
    wait_state(&hall, from, "recording on", |s| s.recording).await;
    let (code, _) = expect_error(&chair, ClientMessage::StartRecording {}).await;
    assert_eq!(code, ErrorCode::WrongState, "a second start is refused");
    let (status, _, body) = post(start, admin.clone()).await;
    assert_eq!(status, 409, "{body}");
    let from = hall.log_len();
    send(&chair, ClientMessage::StopRecording {});
    wait_state(&hall, from, "recording off", |s| !s.recording).await;
    let (status, _, body) = post(stop, admin.clone()).await;
    assert_eq!(status, 409, "stopping twice: {body}");

    let list = wait_until_async(
        "the recording listed with a complete manifest",
        Duration::from_secs(10),
        || {
            let admin = admin.clone();
            let addr = server.http;
            async move {
                let (status, _, body) = http_request(
                    addr,
                    "GET",
                    &format!("/api/admin/recordings?token={admin}"),
                    &[],
                    None,
                )
                .await;
                assert_eq!(status, 200, "{body}");
                let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
                (v["recordings"][0]["manifest"]["status"] == "complete").then_some(v)
            }
        },
    )
    .await;
    let rec = &list["recordings"][0];
    assert_eq!(rec["meeting_id"], meeting.id.as_str());
    let started = rec["started"].as_str().expect("started");
    let base = format!("/api/admin/recordings/{}/{started}", meeting.id);
    let (status, head, body) = http_request(
        server.http,
        "GET",
        &format!("{base}/manifest.json?token={admin}"),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-disposition: attachment"),
        "{head}"
    );
    let manifest: serde_json::Value = serde_json::from_str(&body).expect("manifest is JSON");
    assert_eq!(manifest["started_by"], "Quản trị (admin)");
    assert_eq!(manifest["stopped_by"], "Chủ trì");
    let (status, _, _) = http_request(
        server.http,
        "GET",
        &format!("{base}/manifest.json"),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 401, "downloads need the admin token");
    let (status, _, body) = http_request(
        server.http,
        "GET",
        &format!("{base}/..%2F..%2Fgiaoban.db?token={admin}"),
        &[],
        None,
    )
    .await;
    assert!(status == 400 || status == 404, "{status} {body}");

    for ep in [hall, secretary, observer, chair] {
        ep.shutdown().await;
    }
    server.shutdown().await;
}

/// A small tmpfs mounted at a path, unmounted when dropped (also when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs (it needs root, as CI has): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(path.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_stops_the_recording_not_the_meeting() {
    let config = giaoban_config::Config::for_tests();
    let data_dir = config.storage.data_dir.clone();
    // 400 kB: a second or two of a 1.5 Mbit/s camera.
    let disk = Tmpfs::mount(&data_dir.join("recordings"), "400k");
    let server = TestServer::start_with(config).await;
    let hub = server.hub();
    let (meeting, eps) = create_meeting(&hub, "Giao ban", MeetingMode::Discussion, &["UBND xã A"]);
    let chair_token = token(&hub, &meeting.id, "chair", "Chủ trì", Role::Chair);
    let hall_token = token(&hub, &meeting.id, &eps[0].id, &eps[0].name, Role::Endpoint);
    let chair = server.join_token(&chair_token, "Chủ trì", true).await;
    let hall: SimEndpoint = server.join_token(&hall_token, "Xã A", true).await;
    wait_all_flowing(&[&chair, &hall], &[&chair, &hall], Duration::from_secs(15)).await;

    let from_chair = chair.log_len();
    let from_hall = hall.log_len();
    send(&chair, ClientMessage::StartRecording {});
    wait_state(&hall, from_hall, "recording on", |s| s.recording).await;
    let alert = chair
        .wait_message_since(from_chair, Duration::from_secs(10), |m| {
            matches!(m, ServerMessage::RecordingAlert { .. })
        })
        .await
        .expect("the chair is alerted when the disk is full");
    let ServerMessage::RecordingAlert { reason } = alert else {
        unreachable!()
    };
    assert!(
        reason.contains("No space left on device"),
        "the alert says why: {reason}"
    );
    // Everyone sees the recording is off; the meeting and its media go on.
    let state = wait_state(&hall, from_hall, "recording off again", |s| !s.recording).await;
    assert!(!state.recording);
    assert_still_flowing(&hall, &chair, 50).await;
    assert_still_flowing(&chair, &hall, 50).await;
    let audited = hub
        .store
        .audit_log(Some(&meeting.id), 100)
        .expect("audit log")
        .into_iter()
        .any(|e| e.action == "recording_failed" && e.detail.contains("No space left on device"));
    assert!(audited, "the failure is in the audit log");
    // The manifest written at the start survives (the full disk refused its rewrite).
    let dir = recording_dir(&data_dir, &meeting.id).expect("the recording folder");
    let m = manifest(&dir).expect("manifest.json kept");
    assert_eq!(m["meeting"]["id"], meeting.id.as_str());

    chair.shutdown().await;
    hall.shutdown().await;
    server.shutdown().await;
    drop(disk);
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_recordings_are_deleted_at_start() {
    let mut config = giaoban_config::Config::for_tests();
    config.storage.recording_retention_days = 30;
    let root = config.storage.data_dir.join("recordings");
    let old = root.join("m-old").join("20200101T080000Z");
    let kept = root.join("m-new").join("20991231T080000Z");
    for d in [&old, &kept] {
        std::fs::create_dir_all(d).expect("mkdir");
        std::fs::write(d.join("manifest.json"), "{}").expect("manifest");
    }
    let data_dir = config.storage.data_dir.clone();
    let server = TestServer::start_with(config).await;
    wait_until(
        "the 2020 recording and its meeting folder deleted at start (retention 30 days)",
        Duration::from_secs(5),
        || (!old.exists() && !root.join("m-old").exists()).then_some(()),
    )
    .await;
    assert!(kept.exists(), "a recent recording is kept");
    assert!(
        !root.join("m-old").exists(),
        "its empty meeting folder goes too"
    );
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// Who spoke when: the manifest records the active speaker (the loudest microphone that is heard, confirmed at two
/// looks in a row) at the start and each change — so a hall that is louder but not heard (muted by the chair) does
/// not count, and a quiet one below the speaking threshold never does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifest_records_speaker_changes() {
    let config = giaoban_config::Config::for_tests();
    let data_dir = config.storage.data_dir.clone();
    let server = TestServer::start_with(config).await;
    let hub = server.hub();
    let (meeting, eps) = create_meeting(
        &hub,
        "Thảo luận có ghi hình",
        MeetingMode::Discussion,
        &["Xã To", "Xã Vừa", "Xã Nhỏ"],
    );
    let chair_token = token(&hub, &meeting.id, "chair", "Chủ trì", Role::Chair);
    let chair = server.join_token(&chair_token, "Chủ trì", false).await;
    let mut halls = Vec::new();
    // RFC 6464 levels: 10 (−10 dBov, loud), 25 (−25 dBov), 80 (−80 dBov, below the speaking threshold).
    for (ep, level) in eps.iter().zip([10u8, 25, 80]) {
        let mut o = server.token_opts(
            &token(&hub, &meeting.id, &ep.id, &ep.name, Role::Endpoint),
            &ep.name,
        );
        o.media.audio_level = Some(level);
        let h = SimEndpoint::connect(o).await.expect("hall joins");
        h.publish().await.expect("hall publishes");
        halls.push(h);
    }
    let (loud, medium) = (&halls[0], &halls[1]);
    wait_all_flowing(&[&chair], &[loud, medium], Duration::from_secs(15)).await;

    let from = chair.log_len();
    send(&chair, ClientMessage::StartRecording {});
    wait_state(&chair, from, "recording on", |s| s.recording).await;
    let dir = recording_dir(&data_dir, &meeting.id).expect("one recording folder");
    // Levels are looked at every 2 s: the loudest is confirmed at the second look.
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The chair mutes the loud hall: it is no longer heard, the medium one becomes the speaker.
    send(
        &chair,
        ClientMessage::Mute {
            participant_id: loud.id(),
        },
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let from = chair.log_len();
    send(&chair, ClientMessage::StopRecording {});
    wait_state(&chair, from, "recording off", |s| !s.recording).await;

    let m = wait_manifest(&dir, "complete").await;
    let speakers: Vec<String> = m["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "speaker")
        .map(|e| e["participant_id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        speakers,
        vec![loud.id(), medium.id()],
        "speaker changes: the loud hall, then (muted) the medium one; never the quiet one: {:#?}",
        m["events"]
    );
    server.shutdown().await;
}

/// Chromium short of CPU was seen sending its upper simulcast layers for seconds without a keyframe on them,
/// however often they were asked for: the recording must not wait for one (an empty video file), but start at a
/// lower layer's keyframe once `RECORD_TOP_WAIT` has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_whose_top_layer_sends_no_keyframe_is_recorded_from_a_lower_one() {
    let config = giaoban_config::Config::for_tests();
    let data_dir = config.storage.data_dir.clone();
    let server = TestServer::start_with(config).await;
    let hub = server.hub();
    let (meeting, eps) = create_meeting(&hub, "Giao ban", MeetingMode::Lecture, &["UBND xã A"]);
    let chair_token = token(&hub, &meeting.id, "chair", "Chủ trì", Role::Chair);
    let hall_token = token(&hub, &meeting.id, &eps[0].id, &eps[0].name, Role::Endpoint);
    let mut opts = server.token_opts(&chair_token, "Chủ trì");
    opts.media.simulcast = true;
    opts.media.upper_layers_ignore_keyframe_requests = true;
    let chair = SimEndpoint::connect(opts).await.expect("the chair joins");
    chair.publish().await.expect("the chair publishes");
    let hall = server.join_token(&hall_token, "Xã A", false).await;
    wait_all_flowing(&[&hall], &[&chair], Duration::from_secs(15)).await;
    // The first keyframes (one per layer) are long gone when the recording starts.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let from = hall.log_len();
    send(&chair, ClientMessage::StartRecording {});
    wait_state(&hall, from, "recording on", |s| s.recording).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    send(&chair, ClientMessage::StopRecording {});
    wait_state(&hall, from, "recording off", |s| !s.recording).await;

    let dir = recording_dir(&data_dir, &meeting.id).expect("one recording folder");
    let m = wait_manifest(&dir, "complete").await;
    let video = file_of(&m, &chair.id(), "video");
    let frames = video["frames"].as_u64().unwrap_or(0);
    // 30 fps for 3 s, less the second waited for the top layer and the lowest layer's keyframe after it.
    assert!(frames >= 30, "the camera is recorded: {video}");
    let path = dir.join(video["file"].as_str().expect("a file"));
    let ivf = std::fs::read(&path).expect("the video file");
    let width = u16::from_le_bytes([ivf[12], ivf[13]]);
    assert!(
        width > 0 && width < 960,
        "recorded from a lower layer than the top (960 wide), got {width}: {video}"
    );
    let (codec, packets, _, _) = ffprobe(&path);
    assert_eq!(codec, "vp8");
    assert_eq!(packets, frames, "ffprobe reads every frame: {video}");
    chair.close().await;
    hall.close().await;
    server.shutdown().await;
}
