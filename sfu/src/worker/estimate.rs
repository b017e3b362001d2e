//! Each subscriber's downlink estimate, stepped by the worker: at every tick, each subscribe connection whose
//! loss window (`LOSS_WINDOW`) is over gives the estimator its loss and what arrived (`layers::Estimator`). This
//! runs for every connection at every tick, apart from the round robin that reads rtc's statistics: that one
//! visits each connection only every few seconds in a province meeting, and the estimator's rules count on
//! windows of half a second.

use super::{
    AFTER_OUTAGE, ConnId, Instant, LOSS_WINDOW, Leg, OUTAGE, RTCPeerConnectionState,
    TWCC_MIN_REPORTED, Worker,
};
use tracing::debug;

impl Worker {
    /// Track each subscriber link's outages, and step the estimates whose window is over.
    pub(super) fn update_estimates(&mut self, now: Instant) {
        let mut due: Vec<ConnId> = Vec::new();
        for (id, conn) in &mut self.conns {
            if conn.leg != Leg::Subscribe || conn.state != RTCPeerConnectionState::Connected {
                continue;
            }
            // A link that went silent is out, not congested: the estimate is left as it was through the outage
            // and the reports right after it (a hall back from a cut gets its layers back at once instead of
            // probing up from a paused video).
            let silent = conn
                .last_feedback
                .is_some_and(|t| now.saturating_duration_since(t) >= OUTAGE);
            match (silent, conn.outage) {
                (true, None | Some(Some(_))) => {
                    debug!(participant = %conn.participant, "subscriber link out: the estimate holds");
                    conn.outage = Some(None);
                }
                (false, Some(None)) => conn.outage = Some(Some(now + AFTER_OUTAGE)),
                (false, Some(Some(until))) if now >= until => conn.outage = None,
                _ => {}
            }
            if conn.outage.is_some() {
                conn.loss_mark = (conn.forwarded, conn.nacked, now);
                conn.rr_loss = None;
            } else if now.saturating_duration_since(conn.loss_mark.2) >= LOSS_WINDOW {
                due.push(*id);
            }
        }
        for id in due {
            self.step_estimate(id, now);
        }
    }

    /// One window of a subscriber's link: its loss — with transport-wide CC, what the link lost of the packets
    /// sent outside probes; else the worse of what its receiver reports say stayed lost and what its NACKs said
    /// was lost (NACK retransmission hides random loss from the reports) — into its estimator.
    fn step_estimate(&mut self, id: ConnId, now: Instant) {
        let can_probe = self.can_probe(id, now);
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(p) = self.participants.get_mut(&conn.participant) else {
            return;
        };
        let (forwarded, nacked, _) = conn.loss_mark;
        conn.loss_mark = (conn.forwarded, conn.nacked, now);
        let sent = conn.forwarded - forwarded;
        let nack_loss = (sent > 0).then(|| ((conn.nacked - nacked) as f64 / sent as f64).min(1.0));
        // A probe's own overrun is not congestion of the media: the tally leaves its packets out.
        let tally = conn.twcc.as_mut().map(|t| t.take_tally());
        let twcc_loss = tally.and_then(|t| t.loss(TWCC_MIN_REPORTED));
        let acked = tally.and_then(|t| t.received_bps(LOSS_WINDOW / 2));
        p.estimator.set_acked(acked);
        let loss = match (twcc_loss, conn.rr_loss, nack_loss) {
            (Some(t), _, _) => Some(t),
            (None, Some(a), Some(b)) => Some(a.max(b)),
            (None, a, b) => a.or(b),
        };
        p.estimator.set_padding_probes(can_probe);
        let before = p.estimator.estimate();
        if p.estimator.update(now, loss, conn.link.traffic.bitrate_out) {
            debug!(
                participant = %conn.participant,
                ?loss,
                ?tally,
                rr = ?conn.rr_loss,
                ?nack_loss,
                ?acked,
                before,
                estimate = p.estimator.estimate(),
                "downlink estimate stepped"
            );
            // A cut or a probe: choose the layers at this tick, not at the next round.
            self.layers_dirty = true;
        }
        conn.nack_loss = nack_loss;
    }
}
