//! Link health as people see it: a verdict per participant (good / fair / poor) from the media plane's
//! measurements, pushed to each client every 2 s as `connection_quality`, and listed for IT staff at
//! `GET /api/health` (admin or observer token).

use crate::hub::Hub;
use crate::protocol::{QualityLevel, Role, ServerMessage};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use giaoban_config::HealthConfig;
use giaoban_sfu::{LinkHealth, ParticipantLinks};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How often clients hear their connection quality.
pub const QUALITY_INTERVAL: Duration = Duration::from_secs(2);

/// The grade of a figure that is worse when higher (loss, RTT, jitter): beyond `fair` fair, beyond `poor` poor.
pub fn grade_above(value: f64, fair: f64, poor: f64) -> QualityLevel {
    if value > poor {
        QualityLevel::Poor
    } else if value > fair {
        QualityLevel::Fair
    } else {
        QualityLevel::Good
    }
}

/// The grade of a figure that is worse when lower (bitrate): below `fair` fair, below `poor` poor.
pub fn grade_below(value: f64, fair: f64, poor: f64) -> QualityLevel {
    if value < poor {
        QualityLevel::Poor
    } else if value < fair {
        QualityLevel::Fair
    } else {
        QualityLevel::Good
    }
}

fn worst_loss(l: &ParticipantLinks) -> Option<f64> {
    [&l.publish, &l.subscribe, &l.screen]
        .into_iter()
        .flatten()
        .flat_map(|h| [h.stats.loss_in, h.stats.loss_out])
        .flatten()
        .reduce(f64::max)
}

fn worst_rtt(l: &ParticipantLinks) -> Option<f64> {
    [&l.publish, &l.subscribe, &l.screen]
        .into_iter()
        .flatten()
        .filter_map(|h| h.stats.rtt_ms)
        .reduce(f64::max)
}

/// The jitter of the audio the server receives (video jitter is inflated by paced frames; see `RtcLinkStats`).
fn audio_jitter(l: &ParticipantLinks) -> Option<f64> {
    l.publish.as_ref().and_then(|h| h.stats.audio_jitter_ms)
}

/// Good / fair / poor: a connection that dropped is poor, one still being set up at best fair; else the worst of
/// loss, RTT and audio jitter against the `[health]` thresholds.
pub fn verdict(l: &ParticipantLinks, h: &HealthConfig) -> QualityLevel {
    let states = || {
        [&l.publish, &l.subscribe, &l.screen]
            .into_iter()
            .flatten()
            .map(|h| h.state.as_str())
    };
    let down = states().any(|s| matches!(s, "disconnected" | "failed" | "closed"));
    let setting_up = states().any(|s| matches!(s, "new" | "connecting"));
    let loss = grade_above(
        worst_loss(l).unwrap_or(0.0) * 100.0,
        h.fair_loss_percent,
        h.poor_loss_percent,
    );
    let rtt = grade_above(worst_rtt(l).unwrap_or(0.0), h.fair_rtt_ms, h.poor_rtt_ms);
    let jitter = grade_above(
        audio_jitter(l).unwrap_or(0.0),
        h.fair_jitter_ms,
        h.poor_jitter_ms,
    );
    let level = loss.max(rtt).max(jitter);
    if down {
        QualityLevel::Poor
    } else if setting_up {
        level.max(QualityLevel::Fair)
    } else {
        level
    }
}

fn totals(l: &ParticipantLinks) -> (u64, u64) {
    let rate = |h: &Option<LinkHealth>, f: fn(&LinkHealth) -> u64| h.as_ref().map_or(0, f);
    (
        rate(&l.publish, |h| h.traffic.bitrate_in)
            + rate(&l.subscribe, |h| h.traffic.bitrate_in)
            + rate(&l.screen, |h| h.traffic.bitrate_in),
        rate(&l.publish, |h| h.traffic.bitrate_out)
            + rate(&l.subscribe, |h| h.traffic.bitrate_out)
            + rate(&l.screen, |h| h.traffic.bitrate_out),
    )
}

/// Tell every connected participant its quality (run every `QUALITY_INTERVAL`).
pub async fn push_quality(hub: &Hub) {
    let Ok(links) = hub.sfu.links().await else {
        return;
    };
    let now = std::time::Instant::now();
    hub.link_levels
        .retain(|p, _| links.iter().any(|l| &l.participant == p));
    for l in links {
        if l.publish.is_none() && l.subscribe.is_none() {
            continue;
        }
        let level = verdict(&l, &hub.config.health);
        let before = hub.link_levels.insert(l.participant.clone(), level);
        log_level_change(hub, &l, before, level);
        if let Some(mut t) = hub.tests.get_mut(&l.participant) {
            t.note(&l, now);
        }
        let (bitrate_in, bitrate_out) = totals(&l);
        hub.send_to(
            &l.participant,
            ServerMessage::ConnectionQuality {
                level,
                rtt_ms: worst_rtt(&l).map(|r| r.round() as u32),
                loss_percent: worst_loss(&l).map(|f| (f * 100.0) as f32),
                bitrate_in,
                bitrate_out,
            },
        );
    }
}

/// The IT alert in the log: a hall's link turned poor (red), or recovered from poor.
fn log_level_change(
    hub: &Hub,
    l: &ParticipantLinks,
    before: Option<QualityLevel>,
    now: QualityLevel,
) {
    let was_poor = before == Some(QualityLevel::Poor);
    if was_poor == (now == QualityLevel::Poor) {
        return;
    }
    let name = hub
        .identity(&l.room, &l.participant)
        .map(|w| w.name)
        .unwrap_or_default();
    let loss = worst_loss(l).map(|f| format!("{:.1} %", f * 100.0));
    let jitter = audio_jitter(l).map(|j| format!("{j:.0} ms"));
    let state = |h: &Option<LinkHealth>| h.as_ref().map(|h| h.state.clone());
    if now == QualityLevel::Poor {
        tracing::warn!(
            room = %l.room, participant = %l.participant, %name, ?loss, ?jitter,
            publish = ?state(&l.publish), subscribe = ?state(&l.subscribe),
            "link poor (red)"
        );
    } else {
        tracing::info!(room = %l.room, participant = %l.participant, %name, level = ?now, "link recovered");
    }
}

fn health_json(h: &Option<LinkHealth>) -> serde_json::Value {
    match h {
        None => serde_json::Value::Null,
        Some(h) => json!({
            "state": h.state,
            "packets_in": h.traffic.packets_in,
            "bytes_in": h.traffic.bytes_in,
            "packets_out": h.traffic.packets_out,
            "bytes_out": h.traffic.bytes_out,
            "bitrate_in": h.traffic.bitrate_in,
            "bitrate_out": h.traffic.bitrate_out,
            "loss_in": h.stats.loss_in,
            "loss_out": h.stats.loss_out,
            "jitter_ms": h.stats.jitter_ms,
            "rtt_ms": h.stats.rtt_ms,
            "connected_seconds": h.connected_for.map(|d| d.as_secs()),
        }),
    }
}

/// What arrives of a participant's producers, layer by layer (simulcast: one entry per rid), and what it
/// receives: per video the layer the server chose.
fn media_json(l: &ParticipantLinks) -> (serde_json::Value, serde_json::Value) {
    let producers = l
        .producers
        .iter()
        .map(|p| {
            json!({
                "track_id": p.track_id,
                "kind": match p.kind {
                    giaoban_sfu::MediaKind::Audio => "audio",
                    giaoban_sfu::MediaKind::Video => "video",
                },
                "audio_level_dbov": p.audio_level,
                "layers": p.layers.iter().map(|x| json!({
                    "rid": x.rid,
                    "ssrc": x.ssrc,
                    "packets": x.packets,
                    "bytes": x.bytes,
                    "bitrate": x.bitrate,
                    "paused": x.paused,
                })).collect::<Vec<_>>(),
            })
        })
        .collect::<Vec<_>>();
    let consumers = l
        .consumers
        .iter()
        .map(|c| {
            json!({
                "track_id": c.track_id,
                "kind": match c.kind {
                    giaoban_sfu::MediaKind::Audio => "audio",
                    giaoban_sfu::MediaKind::Video => "video",
                },
                "packets": c.packets,
                "layer": c.layer,
                "target": c.target,
                "paused": c.paused,
                "tile": c.tile.map(|(w, h)| json!({"width": w, "height": h})),
                "cap": c.cap,
            })
        })
        .collect::<Vec<_>>();
    (json!(producers), json!(consumers))
}

/// `GET /api/health`: every participant's link, for IT staff (admin or observer token).
pub async fn api_health(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let token = crate::admin::token_of(&headers, &params);
    let claims = match token.map(|t| hub.auth.verify(t)) {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            hub.audit(None, None, "read link health", &e.to_string(), "refused");
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": e.to_string()})),
            )
                .into_response();
        }
        None => {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "a token is required (Authorization: Bearer … or ?token=…)"})),
            )
                .into_response();
        }
    };
    if !matches!(claims.role, Role::Admin | Role::Observer) {
        let msg = format!("role {:?} may not read link health", claims.role).to_lowercase();
        let _ = hub.store.audit(
            None,
            &claims.sub,
            Some(claims.role),
            "read link health",
            &msg,
            "refused",
        );
        return (StatusCode::FORBIDDEN, Json(json!({"error": msg}))).into_response();
    }
    let links = match hub.sfu.links().await {
        Ok(l) => l,
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": e.to_string()})),
            )
                .into_response();
        }
    };
    let participants: Vec<serde_json::Value> = links
        .iter()
        // An observer sees its own meeting; an admin sees every meeting. Connection tests are listed under
        // `tests` once they report.
        .filter(|l| {
            (claims.role == Role::Admin || l.room == claims.mtg)
                && !crate::pretest::is_test_room(&l.room)
        })
        .map(|l| {
            let who = hub.identity(&l.room, &l.participant);
            let client = hub.clients.get(&l.participant).map(|c| c.clone());
            let (producers, receiving) = media_json(l);
            json!({
                "participant_id": l.participant,
                "room": l.room,
                "name": who.as_ref().map(|w| w.name.clone()),
                "role": who.as_ref().map(|w| w.role),
                "verdict": verdict(l, &hub.config.health),
                "browser": client.as_ref().and_then(|c| c.user_agent.clone()),
                "joined_seconds": client.map(|c| c.since.elapsed().as_secs()),
                "publish": health_json(&l.publish),
                "subscribe": health_json(&l.subscribe),
                "screen": health_json(&l.screen),
                "estimate": l.estimate,
                "transport_cc": l.transport_cc.map(|t| json!({
                    "feedbacks": t.feedbacks,
                    "reported": t.reported,
                    "last_probe": t.last_probe.map(|p| json!({
                        "sent_bps": p.sent_bps,
                        "received_bps": p.received_bps,
                        "loss": p.loss,
                        "packets": p.packets,
                        "carried": p.carried,
                    })),
                })),
                // The loudest of its audio producers (RFC 6464, smoothed), dBov: −127 silence … 0 loudest.
                "audio_level_dbov": l.producers.iter().filter_map(|p| p.audio_level).max(),
                "producers": producers,
                "receiving": receiving,
            })
        })
        .collect();
    // The latest pre-meeting connection test of each hall: an observer's meeting, or every meeting not ended.
    let scope = (claims.role != Role::Admin).then_some(claims.mtg.as_str());
    let tests = hub
        .store
        .latest_connection_tests(scope)
        .map_err(|e| tracing::warn!(error = %e, "connection tests not read"))
        .unwrap_or_default();
    let stats = hub.sfu.stats().await.unwrap_or_default();
    let (cpu_seconds, rss_bytes) = process_usage().unwrap_or((0.0, 0));
    let h = &hub.config.health;
    Json(json!({
        "participants": participants,
        "tests": tests,
        "thresholds": {
            "fair_loss_percent": h.fair_loss_percent,
            "poor_loss_percent": h.poor_loss_percent,
            "fair_rtt_ms": h.fair_rtt_ms,
            "poor_rtt_ms": h.poor_rtt_ms,
            "fair_jitter_ms": h.fair_jitter_ms,
            "poor_jitter_ms": h.poor_jitter_ms,
            "fair_bitrate_kbps": h.fair_bitrate_kbps,
            "poor_bitrate_kbps": h.poor_bitrate_kbps,
        },
        "server": {
            "cpu_seconds": cpu_seconds,
            "rss_bytes": rss_bytes,
            "participants": hub.participant_count(),
            "connections": stats.connections,
            "datagrams_in": stats.datagrams_in,
            "datagrams_out": stats.datagrams_out,
            "bytes_in": stats.bytes_in,
            "bytes_out": stats.bytes_out,
            "rtp_forwarded": stats.rtp_forwarded,
        },
    }))
    .into_response()
}

/// This process's CPU time (user + system, seconds) and resident memory (bytes), from /proc (Linux).
pub fn process_usage() -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    // Clock ticks are 100 per second and pages 4 KiB on the Linux machines this runs on.
    Some(((utime + stime) / 100.0, rss_pages * 4096))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(state: &str, loss: Option<f64>, rtt: Option<f64>) -> ParticipantLinks {
        link_j(state, loss, rtt, None)
    }

    fn link_j(
        state: &str,
        loss: Option<f64>,
        rtt: Option<f64>,
        jitter: Option<f64>,
    ) -> ParticipantLinks {
        ParticipantLinks {
            participant: "p1".into(),
            room: "r".into(),
            publish: Some(LinkHealth {
                state: state.into(),
                stats: giaoban_sfu::health::RtcLinkStats {
                    loss_in: loss,
                    audio_jitter_ms: jitter,
                    ..Default::default()
                },
                ..Default::default()
            }),
            subscribe: Some(LinkHealth {
                state: "connected".into(),
                stats: giaoban_sfu::health::RtcLinkStats {
                    rtt_ms: rtt,
                    // Video jitter, inflated by pacing, does not count.
                    jitter_ms: Some(500.0),
                    ..Default::default()
                },
                ..Default::default()
            }),
            screen: None,
            estimate: None,
            transport_cc: None,
            producers: Vec::new(),
            consumers: Vec::new(),
        }
    }

    #[test]
    fn verdicts() {
        let h = &HealthConfig::default();
        let verdict = |l: &ParticipantLinks| verdict(l, h);
        assert_eq!(
            verdict(&link("connected", Some(0.0), Some(20.0))),
            QualityLevel::Good
        );
        assert_eq!(
            verdict(&link("connected", Some(0.03), Some(20.0))),
            QualityLevel::Fair
        );
        assert_eq!(
            verdict(&link("connected", Some(0.0), Some(250.0))),
            QualityLevel::Fair
        );
        assert_eq!(
            verdict(&link("connected", Some(0.08), None)),
            QualityLevel::Poor
        );
        assert_eq!(
            verdict(&link("disconnected", None, None)),
            QualityLevel::Poor
        );
        assert_eq!(
            verdict(&link("connecting", Some(0.0), Some(10.0))),
            QualityLevel::Fair
        );
        assert_eq!(
            verdict(&link_j("connected", None, None, Some(45.0))),
            QualityLevel::Fair
        );
        assert_eq!(
            verdict(&link_j("connected", None, None, Some(150.0))),
            QualityLevel::Poor
        );
    }

    #[test]
    fn thresholds_come_from_config() {
        let strict = HealthConfig {
            fair_rtt_ms: 10.0,
            poor_rtt_ms: 20.0,
            fair_loss_percent: 0.5,
            poor_loss_percent: 1.0,
            ..HealthConfig::default()
        };
        let l = link("connected", Some(0.008), Some(15.0));
        assert_eq!(verdict(&l, &HealthConfig::default()), QualityLevel::Good);
        assert_eq!(verdict(&l, &strict), QualityLevel::Fair);
        let l = link("connected", Some(0.0), Some(25.0));
        assert_eq!(verdict(&l, &strict), QualityLevel::Poor);
        assert_eq!(grade_below(250.0, 1000.0, 300.0), QualityLevel::Poor);
        assert_eq!(grade_below(600.0, 1000.0, 300.0), QualityLevel::Fair);
        assert_eq!(grade_below(1500.0, 1000.0, 300.0), QualityLevel::Good);
    }
}
