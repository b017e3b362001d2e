//! The active speaker of each room, from the audio levels the media plane measures (RFC 6464 extension, smoothed
//! per producer): the loudest participant whose microphone is heard under the meeting rules, above
//! `SPEAKING_DBOV`. A new speaker must be the loudest at `CONFIRM_LOOKS` looks in a row (one cough does not move
//! the picture), and silence keeps the last speaker. Changes go to the room as `active_speaker`
//! and, while the meeting is recorded, into the manifest as `speaker` events.

use std::collections::HashMap;
use std::time::Duration;

use crate::hub::Hub;
use crate::protocol::ServerMessage;

/// How often the levels are looked at.
pub const SPEAKER_INTERVAL: Duration = Duration::from_millis(500);
/// Below this (dBov) a microphone is not speaking: room noise and a quiet hall stay out.
pub const SPEAKING_DBOV: i8 = -45;
/// Looks in a row a new loudest participant needs before it becomes the speaker.
const CONFIRM_LOOKS: u8 = 2;

/// One room's speaker and the candidate waiting to be confirmed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Speaker {
    current: Option<String>,
    pending: Option<(String, u8)>,
}

impl Speaker {
    /// The speaker now, if anyone has spoken yet.
    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// One look: `loudest` is the loudest heard participant above the threshold, if any. Returns the new speaker
    /// when it changes.
    pub fn observe(&mut self, loudest: Option<&str>) -> Option<String> {
        let Some(id) = loudest else {
            self.pending = None;
            return None;
        };
        if self.current.as_deref() == Some(id) {
            self.pending = None;
            return None;
        }
        let looks = match &self.pending {
            Some((p, n)) if p == id => n + 1,
            _ => 1,
        };
        if looks >= CONFIRM_LOOKS {
            self.pending = None;
            self.current = Some(id.to_owned());
            return self.current.clone();
        }
        self.pending = Some((id.to_owned(), looks));
        None
    }
}

/// Look at every room's levels and announce speaker changes (run every `SPEAKER_INTERVAL`).
pub async fn push_speakers(hub: &Hub) {
    let Ok(links) = hub.sfu.links().await else {
        return;
    };
    let mut levels: HashMap<&str, i8> = HashMap::new();
    for l in &links {
        if let Some(level) = l.producers.iter().filter_map(|p| p.audio_level).max() {
            levels.insert(l.participant.as_str(), level);
        }
    }
    for mut room in hub.rooms.iter_mut() {
        let key = room.key().clone();
        let loudest = room
            .members
            .iter()
            .filter(|m| m.policy.audio)
            .filter_map(|m| {
                let level = *levels.get(m.identity.participant_id.as_str())?;
                (level > SPEAKING_DBOV).then_some((m.identity.participant_id.as_str(), level))
            })
            .max_by_key(|(_, level)| *level)
            .map(|(id, _)| id.to_owned());
        let mut state = hub.speakers.entry(key).or_default();
        if let Some(speaker) = state.observe(loudest.as_deref()) {
            let room = room.value_mut();
            // The recording's manifest notes who spoke when.
            if let Some(live) = room.meeting.as_mut() {
                crate::recording::note_speaker(live, &room.members, &speaker);
            }
            let message = ServerMessage::ActiveSpeaker {
                participant_id: speaker,
            };
            crate::hub::send_to_subjects(room, |_| true, &message);
        }
    }
    hub.speakers.retain(|room, _| hub.rooms.contains_key(room));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_speaker_needs_two_looks_and_silence_keeps_the_last() {
        let mut s = Speaker::default();
        assert_eq!(s.observe(Some("a")), None, "one look is not enough");
        assert_eq!(s.observe(Some("a")), Some("a".into()));
        assert_eq!(s.observe(Some("a")), None, "no change, no announcement");
        // A cough from b between a's words does not move the picture.
        assert_eq!(s.observe(Some("b")), None);
        assert_eq!(s.observe(Some("a")), None);
        assert_eq!(s.observe(Some("b")), None, "b starts over");
        // Silence keeps a and forgets b's candidacy.
        assert_eq!(s.observe(None), None);
        assert_eq!(s.observe(Some("b")), None);
        assert_eq!(s.observe(Some("b")), Some("b".into()));
    }
}
