//! `GET /metrics` in Prometheus text format (prometheus-client). Signaling counters live here and are counted as
//! messages arrive; media-plane totals are read from the workers at scrape time.

use crate::hub::Hub;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabel {
    pub worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

/// Counters of the control plane, shared by all sessions.
#[derive(Default)]
pub struct SignalingMetrics {
    pub messages: Family<TypeLabel, Counter>,
    pub errors: Family<CodeLabel, Counter>,
}

impl SignalingMetrics {
    pub fn message(&self, kind: &str) {
        self.messages
            .get_or_create(&TypeLabel {
                r#type: kind.to_owned(),
            })
            .inc();
    }

    pub fn error(&self, code: &str) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.to_owned(),
            })
            .inc();
    }
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

/// Encode everything as Prometheus text.
pub async fn render(hub: &Hub) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("giaoban");
    let rooms = hub.rooms();
    gauge(
        &mut registry,
        "rooms",
        "Rooms with live state",
        rooms.len() as i64,
    );
    gauge(
        &mut registry,
        "participants",
        "Participants joined",
        hub.participant_count() as i64,
    );
    if let Ok(s) = hub.sfu.stats().await {
        gauge(
            &mut registry,
            "media_connections",
            "Peer connections in the media workers",
            s.connections as i64,
        );
        gauge(
            &mut registry,
            "media_producers",
            "Incoming tracks",
            s.producers as i64,
        );
        gauge(
            &mut registry,
            "media_consumers",
            "Outgoing copies of tracks",
            s.consumers as i64,
        );
        counter(
            &mut registry,
            "media_datagrams_received",
            "UDP datagrams received",
            s.datagrams_in,
        );
        counter(
            &mut registry,
            "media_datagrams_sent",
            "UDP datagrams sent",
            s.datagrams_out,
        );
        counter(
            &mut registry,
            "media_received_bytes",
            "UDP bytes received",
            s.bytes_in,
        );
        counter(
            &mut registry,
            "media_sent_bytes",
            "UDP bytes sent",
            s.bytes_out,
        );
        counter(
            &mut registry,
            "media_rtp_forwarded",
            "RTP packets forwarded to subscribers",
            s.rtp_forwarded,
        );
        counter(
            &mut registry,
            "media_send_dropped",
            "Datagrams dropped because the socket was full",
            s.send_dropped,
        );
        counter(
            &mut registry,
            "media_unroutable",
            "Datagrams that matched no connection",
            s.unroutable,
        );
        counter(
            &mut registry,
            "media_keyframe_requests",
            "PLIs sent to publishers",
            s.plis_sent,
        );
        gauge(
            &mut registry,
            "media_tcp_streams",
            "ICE-TCP streams open",
            s.tcp_streams as i64,
        );
        for (name, help, value) in [
            (
                "media_tcp_accepted",
                "ICE-TCP streams accepted",
                s.tcp.accepted,
            ),
            (
                "media_tcp_refused",
                "ICE-TCP streams refused: too many waiting for their first STUN request",
                s.tcp.refused,
            ),
            (
                "media_tcp_closed_garbage",
                "ICE-TCP streams closed: first frame not a binding request for a known connection",
                s.tcp.closed_garbage,
            ),
            (
                "media_tcp_closed_idle",
                "ICE-TCP streams closed: no STUN request within 5 s",
                s.tcp.closed_idle,
            ),
            (
                "media_tcp_closed_stuck",
                "ICE-TCP streams closed: no write progress for 5 s",
                s.tcp.closed_stuck,
            ),
            (
                "media_tcp_send_dropped",
                "Packets dropped because an ICE-TCP stream's buffer was full",
                s.tcp.send_dropped,
            ),
        ] {
            counter(&mut registry, name, help, value);
        }
        counter(
            &mut registry,
            "media_nacks_received",
            "NACKs from subscribers (retransmissions asked of the server)",
            s.nacks_received,
        );
        counter(
            &mut registry,
            "media_nacks_sent",
            "NACKs sent to publishers for packets lost on the way in",
            s.nacks_sent,
        );
        counter(
            &mut registry,
            "media_rtp_retransmitted",
            "RTP packets sent again to subscribers from the producers' caches (answering NACKs)",
            s.rtp_retransmitted,
        );
        counter(
            &mut registry,
            "media_twcc_feedback",
            "Transport-wide congestion control feedback packets read from subscribers",
            s.twcc_feedbacks,
        );
        counter(
            &mut registry,
            "media_probes",
            "Padding probes of subscribers' downlinks started",
            s.probes_started,
        );
        counter(
            &mut registry,
            "media_probes_carried",
            "Padding probes the subscriber's link carried whole and at their pace",
            s.probes_carried,
        );
        counter(
            &mut registry,
            "media_padding_sent",
            "Padding packets sent in probes",
            s.padding_sent,
        );
        counter(
            &mut registry,
            "media_rtp_sealed",
            "RTP packets sealed by the SFU's own SRTP context (the fast path) rather than rtc's write pipeline",
            s.rtp_sealed,
        );
        counter(
            &mut registry,
            "media_nack_unrepaired",
            "NACKed packets too old for the producers' caches (not sent again)",
            s.nack_unrepaired,
        );
        counter(
            &mut registry,
            "media_nack_superseded",
            "NACKed packets of a layer the subscriber was switched away from since (not sent again)",
            s.nack_superseded,
        );
    }
    if let Ok(workers) = hub.sfu.worker_stats().await {
        let busy: Family<WorkerLabel, Counter<f64, std::sync::atomic::AtomicU64>> =
            Family::default();
        for (i, w) in workers.iter().enumerate() {
            busy.get_or_create(&WorkerLabel {
                worker: i.to_string(),
            })
            .inc_by(w.busy.as_secs_f64());
        }
        registry.register(
            "media_worker_busy_seconds",
            "Time each media worker's loop spent working (commands, datagrams, timeouts, ticks), not waiting",
            busy,
        );
        counter(
            &mut registry,
            "media_layer_switches",
            "Simulcast layer changes of consumers (the forwarded layer switched)",
            workers.iter().map(|w| w.layer_switches).sum(),
        );
        counter(
            &mut registry,
            "media_keyframes_replayed",
            "Consumers whose first picture was replayed from the producer's cache instead of a fresh keyframe",
            workers.iter().map(|w| w.keyframes_replayed).sum(),
        );
        counter(
            &mut registry,
            "media_red_received",
            "Well-formed RED (redundant Opus, RFC 2198) audio packets received from publishers",
            workers.iter().map(|w| w.red_received).sum(),
        );
    }
    if let Ok(links) = hub.sfu.links().await {
        let by_state: Family<StateLabel, Gauge> = Family::default();
        for link in links
            .iter()
            .flat_map(|l| [&l.publish, &l.subscribe, &l.screen])
            .flatten()
        {
            by_state
                .get_or_create(&StateLabel {
                    state: link.state.clone(),
                })
                .inc();
        }
        registry.register(
            "media_connections_by_state",
            "Peer connections by state (new, connecting, connected, disconnected, failed)",
            by_state,
        );
    }
    if let Some((cpu, rss)) = crate::links::process_usage() {
        gauge(
            &mut registry,
            "process_cpu_centiseconds",
            "CPU time of the server process (user + system), 1/100 s",
            (cpu * 100.0) as i64,
        );
        gauge(
            &mut registry,
            "process_resident_bytes",
            "Resident memory of the server process",
            rss as i64,
        );
    }
    registry.register(
        "signaling_messages",
        "Control messages received, by type",
        hub.metrics.messages.clone(),
    );
    registry.register(
        "signaling_errors",
        "Control messages refused, by error code",
        hub.metrics.errors.clone(),
    );
    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}
