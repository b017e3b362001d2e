//! Link health as people see it: a verdict per participant (good / fair / poor) from the media plane's
//! measurements, pushed to each client every 2 s as `connection_quality`, and listed for IT staff at
//! `GET /api/health` (admin or observer token).

use crate::hub::Hub;
use crate::protocol::{QualityLevel, Role, ServerMessage};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use giaoban_sfu::{LinkHealth, ParticipantLinks};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How often clients hear their connection quality.
pub const QUALITY_INTERVAL: Duration = Duration::from_secs(2);

/// Loss (fraction) and RTT (ms) beyond which a link is fair, then poor.
const FAIR_LOSS: f64 = 0.02;
const POOR_LOSS: f64 = 0.05;
const FAIR_RTT_MS: f64 = 200.0;
const POOR_RTT_MS: f64 = 400.0;

fn worst_loss(l: &ParticipantLinks) -> Option<f64> {
    [&l.publish, &l.subscribe]
        .into_iter()
        .flatten()
        .flat_map(|h| [h.stats.loss_in, h.stats.loss_out])
        .flatten()
        .reduce(f64::max)
}

fn worst_rtt(l: &ParticipantLinks) -> Option<f64> {
    [&l.publish, &l.subscribe]
        .into_iter()
        .flatten()
        .filter_map(|h| h.stats.rtt_ms)
        .reduce(f64::max)
}

/// Good / fair / poor: a connection that dropped is poor, one still being set up fair; else by the worse of loss
/// and RTT.
pub fn verdict(l: &ParticipantLinks) -> QualityLevel {
    let states = || {
        [&l.publish, &l.subscribe]
            .into_iter()
            .flatten()
            .map(|h| h.state.as_str())
    };
    let down = states().any(|s| matches!(s, "disconnected" | "failed" | "closed"));
    let setting_up = states().any(|s| matches!(s, "new" | "connecting"));
    let loss = worst_loss(l).unwrap_or(0.0);
    let rtt = worst_rtt(l).unwrap_or(0.0);
    if down || loss > POOR_LOSS || rtt > POOR_RTT_MS {
        QualityLevel::Poor
    } else if setting_up || loss > FAIR_LOSS || rtt > FAIR_RTT_MS {
        QualityLevel::Fair
    } else {
        QualityLevel::Good
    }
}

fn totals(l: &ParticipantLinks) -> (u64, u64) {
    let rate = |h: &Option<LinkHealth>, f: fn(&LinkHealth) -> u64| h.as_ref().map_or(0, f);
    (
        rate(&l.publish, |h| h.traffic.bitrate_in) + rate(&l.subscribe, |h| h.traffic.bitrate_in),
        rate(&l.publish, |h| h.traffic.bitrate_out) + rate(&l.subscribe, |h| h.traffic.bitrate_out),
    )
}

/// Tell every connected participant its quality (run every `QUALITY_INTERVAL`).
pub async fn push_quality(hub: &Hub) {
    let Ok(links) = hub.sfu.links().await else {
        return;
    };
    for l in links {
        if l.publish.is_none() && l.subscribe.is_none() {
            continue;
        }
        let (bitrate_in, bitrate_out) = totals(&l);
        hub.send_to(
            &l.participant,
            ServerMessage::ConnectionQuality {
                level: verdict(&l),
                rtt_ms: worst_rtt(&l).map(|r| r.round() as u32),
                loss_percent: worst_loss(&l).map(|f| (f * 100.0) as f32),
                bitrate_in,
                bitrate_out,
            },
        );
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
        // An observer sees its own meeting; an admin sees every meeting.
        .filter(|l| claims.role == Role::Admin || l.room == claims.mtg)
        .map(|l| {
            let who = hub.identity(&l.room, &l.participant);
            let (producers, receiving) = media_json(l);
            json!({
                "participant_id": l.participant,
                "room": l.room,
                "name": who.as_ref().map(|w| w.name.clone()),
                "role": who.as_ref().map(|w| w.role),
                "verdict": verdict(l),
                "publish": health_json(&l.publish),
                "subscribe": health_json(&l.subscribe),
                "estimate": l.estimate,
                "producers": producers,
                "receiving": receiving,
            })
        })
        .collect();
    let stats = hub.sfu.stats().await.unwrap_or_default();
    let (cpu_seconds, rss_bytes) = process_usage().unwrap_or((0.0, 0));
    Json(json!({
        "participants": participants,
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
        ParticipantLinks {
            participant: "p1".into(),
            room: "r".into(),
            publish: Some(LinkHealth {
                state: state.into(),
                stats: giaoban_sfu::health::RtcLinkStats {
                    loss_in: loss,
                    ..Default::default()
                },
                ..Default::default()
            }),
            subscribe: Some(LinkHealth {
                state: "connected".into(),
                stats: giaoban_sfu::health::RtcLinkStats {
                    rtt_ms: rtt,
                    ..Default::default()
                },
                ..Default::default()
            }),
            estimate: None,
            producers: Vec::new(),
            consumers: Vec::new(),
        }
    }

    #[test]
    fn verdicts() {
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
    }
}
