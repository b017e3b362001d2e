//! (a) Three endpoints each publishing audio + video: every subscriber receives ≥ 99 % of every other
//! publisher's packets (counted from its first received packet), intact, in order, on one continuous SSRC.
//! (b) RED audio: forwarded as sent to subscribers that accept RED, as the Opus inside to the others.

mod common;

use std::time::Duration;

use common::{TestServer, assert_intact, wait_all_flowing, wait_receiving};
use giaoban_signaling::protocol::TrackKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_publishers_receive_each_other_intact() {
    let server = TestServer::start().await;
    let room = "giao-ban-ba-diem";
    let a = server.endpoint(room, "Xã A", true).await;
    let b = server.endpoint(room, "Xã B", true).await;
    let c = server.endpoint(room, "Xã C", true).await;
    let all = [&a, &b, &c];

    wait_all_flowing(&all, &all, Duration::from_secs(15)).await;
    // Let media run for a while so the ratio means something (~150 audio / ~500 video packets).
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Subscribers first, then publishers: every packet received was sent before the publisher's snapshot.
    let received: Vec<_> = all.iter().map(|ep| ep.stats()).collect();
    let sent: Vec<_> = all.iter().map(|ep| ep.sent()).collect();
    for (si, sub) in all.iter().enumerate() {
        for (pi, publisher) in all.iter().enumerate() {
            if si == pi {
                continue;
            }
            for kind in [TrackKind::Audio, TrackKind::Video] {
                let stats = received[si]
                    .track_from(&publisher.id(), kind)
                    .unwrap_or_else(|| {
                        panic!("{} has no {kind:?} from {}", sub.name(), publisher.name())
                    });
                // Allow the last ~300 ms of sending to be in flight.
                let (total, slack) = match kind {
                    TrackKind::Audio => (sent[pi].audio_packets, 15),
                    TrackKind::Video => (sent[pi].video_packets, 9 * 8 + 8),
                };
                println!(
                    "{} <- {} {kind:?}: {} packets, {} distinct, {} missing, first counter {:?}, sent {total}, latency p50 {} µs p99 {} µs",
                    sub.name(),
                    publisher.name(),
                    stats.packets,
                    stats.distinct,
                    stats.missing(),
                    stats.first_counter,
                    stats.latency.quantile_us(0.5),
                    stats.latency.quantile_us(0.99),
                );
                assert_intact(sub, publisher, stats, total, slack);
            }
        }
        // Exactly the other two participants' tracks, nothing of its own.
        assert!(
            received[si]
                .received
                .iter()
                .all(|t| t.participant_id != sub.id()),
            "{} receives its own media",
            sub.name()
        );
    }
    for ep in all {
        assert_eq!(
            ep.stats().subscribe_errors,
            0,
            "{} failed to answer an offer",
            ep.name()
        );
        ep.close().await;
    }
    server.shutdown().await;
}

/// A publisher that sends RED (RFC 2198) audio, as the web client does: a subscriber that accepted RED gets every
/// packet as RED, one that did not gets the Opus inside it, and both get all of it, intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_audio_reaches_red_subscribers_as_sent_and_others_as_opus() {
    let server = TestServer::start().await;
    let room = "giao-ban-red";
    let publisher = server
        .endpoint_with(room, "Huyện (RED)", true, |o| {
            o.media.red = true;
            o.media.video = false;
        })
        .await;
    let red_sub = server
        .endpoint_with(room, "Xã nhận RED", false, |o| o.media.red = true)
        .await;
    let opus_sub = server.endpoint(room, "Xã chỉ Opus", false).await;
    for sub in [&red_sub, &opus_sub] {
        wait_receiving(
            sub,
            &publisher,
            TrackKind::Audio,
            10,
            Duration::from_secs(15),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received: Vec<_> = [&red_sub, &opus_sub].iter().map(|s| s.stats()).collect();
    let sent = publisher.sent().audio_packets;
    for (sub, stats, as_red) in [
        (&red_sub, &received[0], true),
        (&opus_sub, &received[1], false),
    ] {
        let t = stats
            .track_from(&publisher.id(), TrackKind::Audio)
            .expect("audio from the publisher");
        println!(
            "{}: {} packets, {} as RED, {} distinct, sent {sent}",
            sub.name(),
            t.packets,
            t.red_packets,
            t.distinct
        );
        let expect_red = if as_red { t.packets } else { 0 };
        assert_eq!(t.red_packets, expect_red, "{}: {t:?}", sub.name());
        // The primary (or the plain Opus) carries the publisher's counters, whole.
        assert_intact(sub, &publisher, t, sent, 15);
    }
    for ep in [&publisher, &red_sub, &opus_sub] {
        ep.close().await;
    }
    server.shutdown().await;
}
