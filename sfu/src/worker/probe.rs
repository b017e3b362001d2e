//! Padding probes on a subscriber's downlink: the worker's side. The estimator decides when to probe and at what
//! rate (`layers.rs`); the worker sends padding beside the subscriber's media for `PROBE_DURATION`, paced every
//! `PROBE_STEP`, and transport-wide CC feedback tells what of it arrived, and how fast (`twcc.rs`). A link that
//! carried the probe can take the layers it stood for; one that did not has lost a tenth of a second of overrun,
//! not a keyframe of a layer it cannot carry.
//!
//! Padding rides on one of the subscriber's flowing video streams: RTP packets of padding only (RFC 3550 §5.1),
//! numbered in that stream's sequence (`Forwarder::pad`) with its last timestamp, sealed and sent as any forwarded
//! packet. Receivers drop them after counting their sequence numbers; nothing is decoded from them.

use super::{ConnId, Instant, MediaKind, Worker, write_rtp};
use bytes::Bytes;
use std::time::Duration;

/// How long a padding probe sends.
pub(super) const PROBE_DURATION: Duration = Duration::from_millis(100);
/// How often padding goes out during a probe.
const PROBE_STEP: Duration = Duration::from_millis(5);
/// No probe in a connection's first second: its first pictures (keyframes, a replay) are on their way, and a
/// probe's overrun of a weak link would take their packets with it.
const FIRST_PROBE_AFTER: Duration = Duration::from_secs(1);
/// A probe whose feedback is not all in this long after it ended is judged on what came.
const OUTCOME_WAIT: Duration = Duration::from_millis(1000);
/// A probe's arrival rate counts when at least this many of its packets arrived (a few that arrive close
/// together on a link losing nearly everything would read as a fast link).
const MIN_PACKETS_FOR_RATE: u32 = 10;
/// At most this many padding packets in one step (a late step does not burst).
const MAX_PER_STEP: u32 = 16;
/// A probe is carried when it lost less than this share ...
const CARRIED_LOSS: f64 = 0.05;
/// ... arrived at least this fast against how it was sent ...
const CARRIED_PACE: f64 = 0.8;
/// ... and was sent at least this close to the rate it stood for.
const CARRIED_RATE: f64 = 0.6;

/// A padding packet's payload: padding only, the last octet counting it, itself included.
const PADDING: [u8; 255] = {
    let mut p = [0u8; 255];
    p[254] = 255;
    p
};
/// What one padding packet costs on the wire: header, transport-wide CC extension, padding, SRTP tag.
const PADDING_PACKET: u64 =
    (12 + crate::twcc::EXTENSION_LEN + PADDING.len() + crate::srtp::TAG_LEN) as u64;

/// A probe being sent on a subscribe connection.
#[derive(Debug)]
pub(super) struct PaddingProbe {
    /// The total rate (media and padding) it stands for, bit/s.
    rate: u64,
    until: Instant,
    last: Instant,
    /// Bytes of padding due and not yet sent.
    credit: f64,
}

/// Where a probe of a connection stands.
#[derive(Debug, Default)]
pub(super) enum ProbeState {
    #[default]
    Idle,
    Sending(PaddingProbe),
    /// Sent; its feedback is awaited until then.
    Awaiting(Instant),
}

impl Worker {
    /// Start the padding probe the subscriber's estimator asked for on its subscribe connection.
    pub(super) fn start_probe(&mut self, conn_id: ConnId, rate: u64, now: Instant) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        let Some(cc) = conn.twcc.as_mut() else {
            return;
        };
        cc.start_probe();
        tracing::debug!(participant = %conn.participant, rate, "padding probe started");
        conn.probe = ProbeState::Sending(PaddingProbe {
            rate,
            until: now + PROBE_DURATION,
            last: now,
            credit: 0.0,
        });
        self.stats.probes_started += 1;
        self.probe_due = Some(now);
    }

    /// Send the padding due on every probing connection; end the probes whose time is up; `probe_due` becomes
    /// the next step (`None` when no probe is sending).
    pub(super) fn send_probes(&mut self, now: Instant) {
        if self.probe_due.is_none_or(|d| d > now) {
            return;
        }
        self.probe_due = None;
        let probing: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.probe, ProbeState::Sending(_)))
            .map(|(id, _)| *id)
            .collect();
        for conn_id in probing {
            let Some(conn) = self.conns.get_mut(&conn_id) else {
                continue;
            };
            let ProbeState::Sending(probe) = &mut conn.probe else {
                continue;
            };
            let end = now.min(probe.until);
            let media = conn.link.traffic.bitrate_out;
            let padding_bps = probe.rate.saturating_sub(media);
            probe.credit +=
                padding_bps as f64 / 8.0 * end.saturating_duration_since(probe.last).as_secs_f64();
            probe.last = end;
            let mut packets = 0;
            while probe.credit >= PADDING_PACKET as f64 && packets < MAX_PER_STEP {
                probe.credit -= PADDING_PACKET as f64;
                packets += 1;
            }
            if now >= probe.until {
                conn.probe = ProbeState::Awaiting(now + OUTCOME_WAIT);
            }
            let sent = self.send_padding(conn_id, packets, now);
            self.stats.padding_sent += u64::from(sent);
            let Some(conn) = self.conns.get_mut(&conn_id) else {
                continue;
            };
            match &conn.probe {
                ProbeState::Sending(p) => {
                    let next = (now + PROBE_STEP).min(p.until);
                    self.probe_due = Some(self.probe_due.map_or(next, |d| d.min(next)));
                }
                ProbeState::Awaiting(_) => {
                    if let Some(cc) = conn.twcc.as_mut() {
                        cc.end_probe(now);
                    }
                }
                ProbeState::Idle => {}
            }
        }
    }

    /// `count` padding packets on one of the connection's flowing video streams; how many went out.
    fn send_padding(&mut self, conn_id: ConnId, count: u32, now: Instant) -> u32 {
        if count == 0 {
            return 0;
        }
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return 0;
        };
        let keys: Vec<_> = conn.producer_by_ssrc.values().copied().collect();
        for key in keys {
            let Some(producer) = self.producers.get_mut(&key) else {
                continue;
            };
            if producer.kind != MediaKind::Video {
                continue;
            }
            let Some(consumer) = producer
                .consumers
                .iter_mut()
                .find(|c| c.conn == conn_id && c.carries_padding())
            else {
                continue;
            };
            let Some(pt) = consumer.payload_type else {
                continue;
            };
            let mut sent = 0;
            for _ in 0..count {
                let Some((seq, timestamp)) = consumer.forwarder.pad() else {
                    break;
                };
                let packet = rtc::rtp::Packet {
                    header: rtc::rtp::header::Header {
                        version: 2,
                        padding: true,
                        payload_type: pt,
                        sequence_number: seq,
                        timestamp,
                        ssrc: consumer.ssrc,
                        ..Default::default()
                    },
                    payload: Bytes::from_static(&PADDING),
                };
                if !write_rtp(
                    conn,
                    &mut consumer.srtp_index,
                    packet,
                    now,
                    &mut self.scratch,
                    &mut self.outbox,
                    &mut self.tcp,
                ) {
                    break;
                }
                consumer.packets += 1;
                sent += 1;
            }
            return sent;
        }
        0
    }

    /// Judge the connection's probe once its feedback is all in, or overdue; the estimator learns the outcome.
    pub(super) fn judge_probe(&mut self, conn_id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        let ProbeState::Awaiting(deadline) = conn.probe else {
            return;
        };
        let Some(cc) = conn.twcc.as_mut() else {
            conn.probe = ProbeState::Idle;
            return;
        };
        let outcome = match cc.probe_outcome() {
            Some(o) => Some(o),
            None if now >= deadline => cc.abandon_probe(),
            None => return,
        };
        conn.probe = ProbeState::Idle;
        let Some(p) = self.participants.get_mut(&conn.participant) else {
            return;
        };
        let Some(rate) = p.estimator.padding_probe() else {
            return;
        };
        let carried = outcome.is_some_and(|o| carried(&o, rate));
        conn.last_probe = outcome.map(|o| crate::health::ProbeHealth {
            sent_bps: o.sent_bps,
            received_bps: o.received_bps,
            loss: o.loss,
            packets: o.packets,
            carried,
        });
        if carried {
            self.stats.probes_carried += 1;
        }
        tracing::debug!(participant = %conn.participant, rate, ?outcome, carried, "padding probe judged");
        if p.estimator
            .padding_probe_result(now, carried, arrival_rate(outcome))
        {
            self.layers_dirty = true;
        }
    }

    /// The padding probes due (each tick, after the estimates were updated): asked for by an update, or fallen
    /// due since one once the wait after the last probe is over.
    pub(super) fn start_due_probes(&mut self, now: Instant) {
        // A new link's first probe goes out as soon as a video stream can carry it, not at its next statistics
        // round (the round robin visits each connection only every few seconds in a large meeting).
        let waiting: Vec<ConnId> = self
            .participants
            .values()
            .filter(|p| p.estimator.starting() && !p.estimator.padding_probes_possible())
            .filter_map(|p| p.subscribe)
            .collect();
        for conn_id in waiting {
            if self.can_probe(conn_id, now)
                && let Some(conn) = self.conns.get(&conn_id)
                && let Some(p) = self.participants.get_mut(&conn.participant)
            {
                p.estimator.set_padding_probes(true);
            }
        }
        let due: Vec<(ConnId, u64)> = self
            .participants
            .values_mut()
            .filter_map(|p| Some((p.subscribe?, p.estimator.poll_padding_probe(now)?)))
            .collect();
        for (conn_id, rate) in due {
            self.start_probe(conn_id, rate, now);
        }
    }

    /// Probes overdue for their feedback are judged on what came.
    pub(super) fn judge_overdue_probes(&mut self, now: Instant) {
        let overdue: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.probe, ProbeState::Awaiting(d) if now >= d))
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            self.judge_probe(id, now);
        }
    }
}

/// Whether the link carried a probe that stood for `rate` bit/s.
fn carried(o: &crate::twcc::ProbeOutcome, rate: u64) -> bool {
    o.packets > 0
        && o.loss < CARRIED_LOSS
        && o.received_bps as f64 >= CARRIED_PACE * o.sent_bps as f64
        && o.sent_bps as f64 >= CARRIED_RATE * rate as f64
}

impl Worker {
    /// Whether a padding probe can be sent on this connection: connected for `FIRST_PROBE_AFTER`, transport-wide
    /// CC feedback, the SFU's own SRTP
    /// (padding is sealed like forwarded packets), and a video stream of the subscriber's to carry it (a paused
    /// one will do: its numbers go on from where they stopped).
    pub(super) fn can_probe(&self, conn_id: ConnId, now: Instant) -> bool {
        let Some(conn) = self.conns.get(&conn_id) else {
            return false;
        };
        conn.twcc.is_some()
            && conn
                .connected_since
                .is_some_and(|t| now.saturating_duration_since(t) >= FIRST_PROBE_AFTER)
            && conn.srtp_out.is_some()
            && conn.producer_by_ssrc.values().any(|key| {
                self.producers.get(key).is_some_and(|p| {
                    p.kind == MediaKind::Video
                        && p.consumers
                            .iter()
                            .any(|c| c.conn == conn_id && c.carries_padding())
                })
            })
    }
}

/// The rate a probe arrived at, if enough of it arrived to tell one.
fn arrival_rate(outcome: Option<crate::twcc::ProbeOutcome>) -> Option<u64> {
    outcome
        .filter(|o| o.received >= MIN_PACKETS_FOR_RATE)
        .map(|o| o.received_bps)
}

impl super::Consumer {
    /// Whether padding can go on its stream: its payload type is known and it has sent before.
    fn carries_padding(&self) -> bool {
        self.payload_type.is_some() && self.forwarder.has_sent()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(sent_bps: u64, received_bps: u64, loss: f64) -> crate::twcc::ProbeOutcome {
        crate::twcc::ProbeOutcome {
            sent_bps,
            received_bps,
            loss,
            packets: 40,
            received: 40,
        }
    }

    #[test]
    fn a_probe_that_mostly_vanished_tells_no_rate() {
        // 60 sent on a link losing 95 %: 3 arrived, 5 ms apart. Their "rate" would raise the estimate of a link
        // that carries nearly nothing (and resume a paused video on it).
        let vanished = crate::twcc::ProbeOutcome {
            packets: 60,
            received: 3,
            ..outcome(1_500_000, 900_000, 0.95)
        };
        assert_eq!(arrival_rate(Some(vanished)), None);
        let narrow = crate::twcc::ProbeOutcome {
            packets: 60,
            received: 20,
            ..outcome(1_500_000, 300_000, 0.66)
        };
        assert_eq!(arrival_rate(Some(narrow)), Some(300_000));
        assert_eq!(arrival_rate(None), None);
    }

    #[test]
    fn a_probe_is_carried_only_whole_at_its_pace_and_near_its_rate() {
        assert!(carried(&outcome(1_500_000, 1_450_000, 0.0), 1_600_000));
        assert!(
            !carried(&outcome(1_500_000, 1_450_000, 0.2), 1_600_000),
            "lost"
        );
        assert!(
            !carried(&outcome(1_500_000, 400_000, 0.0), 1_600_000),
            "arrived slower: a queue"
        );
        assert!(
            !carried(&outcome(500_000, 500_000, 0.0), 1_600_000),
            "sent too little to tell"
        );
        let nothing = crate::twcc::ProbeOutcome {
            packets: 0,
            ..outcome(0, 0, 0.0)
        };
        assert!(!carried(&nothing, 0), "nothing sent, nothing learnt");
    }

    #[test]
    fn a_padding_packet_is_padding_only() {
        assert_eq!(PADDING[PADDING.len() - 1] as usize, PADDING.len());
        assert_eq!(PADDING_PACKET, 291);
    }
}
