//! The meeting's rules, as pure logic on a caller-given clock: who may do what (by role and mode), the
//! speaking queue, the floor (with time limits), mutes, and from those who is heard. The Hub applies the
//! outcome to the media plane; nothing here touches sockets or time sources.
//!
//! Identities here are *subjects* (the endpoint or person named in the join token), not session ids, so a hall
//! that reconnects keeps its place in the queue and its floor.

use crate::protocol::{MeetingMode, Role};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Something a participant asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    RaiseHand,
    GrantFloor,
    RevokeFloor,
    SetMode,
    Mute,
    MuteAll,
    AskUnmute,
    Remove,
    Lock,
    EndMeeting,
    SetAbsenceReason,
    Chat,
    ShareScreen,
    /// Start or stop recording the meeting.
    Record,
    /// Cap the simulcast layer a participant receives.
    SetLayerCap,
}

/// Whether `role` may do `action` at all (the floor-dependent part of screen sharing is checked in `Floor`).
pub fn allowed(role: Role, action: Action) -> bool {
    use Action::*;
    match role {
        Role::Chair => !matches!(action, RaiseHand),
        Role::Admin => !matches!(action, RaiseHand | Publish | ShareScreen),
        // SetLayerCap: chair and admin (above); nobody else.
        Role::Secretary => matches!(
            action,
            Publish | GrantFloor | RevokeFloor | SetAbsenceReason | Chat
        ),
        Role::Endpoint => matches!(action, Publish | RaiseHand | Chat | ShareScreen),
        Role::Observer => matches!(action, Chat),
    }
}

pub fn can_publish(role: Role) -> bool {
    allowed(role, Action::Publish)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub subject: String,
    pub granted_at: Instant,
    pub until: Option<Instant>,
}

/// The floor and the queue of one meeting.
#[derive(Debug, Clone)]
pub struct Floor {
    pub mode: MeetingMode,
    pub locked: bool,
    pub ended: bool,
    /// Raised hands in order: (subject, raised at).
    queue: Vec<(String, Instant)>,
    /// Holders of the floor, oldest first.
    holders: Vec<Grant>,
    /// Subjects muted by the chair (until they unmute themselves).
    muted: HashSet<String>,
    /// Subjects removed from the meeting.
    removed: HashSet<String>,
    /// Role of each subject seen in the meeting.
    roles: HashMap<String, Role>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FloorError {
    NotInQueue,
    NotHolder,
    CannotHoldFloor,
}

impl Floor {
    pub fn new(mode: MeetingMode) -> Self {
        Floor {
            mode,
            locked: false,
            ended: false,
            queue: Vec::new(),
            holders: Vec::new(),
            muted: HashSet::new(),
            removed: HashSet::new(),
            roles: HashMap::new(),
        }
    }

    pub fn note_role(&mut self, subject: &str, role: Role) {
        self.roles.insert(subject.to_owned(), role);
    }

    pub fn role_of(&self, subject: &str) -> Option<Role> {
        self.roles.get(subject).copied()
    }

    /// Raise a hand; a hand already up keeps its place. Holders of the floor do not queue.
    pub fn raise_hand(&mut self, subject: &str, now: Instant) -> bool {
        if self.holds_floor(subject) || self.queue.iter().any(|(s, _)| s == subject) {
            return false;
        }
        self.queue.push((subject.to_owned(), now));
        true
    }

    pub fn lower_hand(&mut self, subject: &str) -> bool {
        let before = self.queue.len();
        self.queue.retain(|(s, _)| s != subject);
        before != self.queue.len()
    }

    pub fn queue(&self) -> impl Iterator<Item = (&str, Instant)> {
        self.queue.iter().map(|(s, t)| (s.as_str(), *t))
    }

    pub fn holders(&self) -> &[Grant] {
        &self.holders
    }

    pub fn holds_floor(&self, subject: &str) -> bool {
        self.holders.iter().any(|g| g.subject == subject)
    }

    /// Give the floor. In lecture mode the floor has one holder: the previous one loses it. The grantee's hand
    /// comes down. Returns the subjects that lost the floor.
    pub fn grant(
        &mut self,
        subject: &str,
        limit: Option<Duration>,
        now: Instant,
    ) -> Result<Vec<String>, FloorError> {
        if matches!(self.role_of(subject), Some(Role::Observer | Role::Admin)) {
            return Err(FloorError::CannotHoldFloor);
        }
        let mut lost = Vec::new();
        if self.mode == MeetingMode::Lecture {
            lost = self
                .holders
                .iter()
                .filter(|g| g.subject != subject)
                .map(|g| g.subject.clone())
                .collect();
            self.holders.retain(|g| g.subject == subject);
        }
        self.holders.retain(|g| g.subject != subject);
        self.holders.push(Grant {
            subject: subject.to_owned(),
            granted_at: now,
            until: limit.map(|d| now + d),
        });
        self.lower_hand(subject);
        Ok(lost)
    }

    pub fn revoke(&mut self, subject: &str) -> Result<(), FloorError> {
        let before = self.holders.len();
        self.holders.retain(|g| g.subject != subject);
        if before == self.holders.len() {
            return Err(FloorError::NotHolder);
        }
        Ok(())
    }

    /// Take back every grant whose time is up. Returns the subjects that lost the floor.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let expired: Vec<String> = self
            .holders
            .iter()
            .filter(|g| g.until.is_some_and(|u| u <= now))
            .map(|g| g.subject.clone())
            .collect();
        self.holders.retain(|g| g.until.is_none_or(|u| u > now));
        expired
    }

    /// The next time a grant runs out.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.holders.iter().filter_map(|g| g.until).min()
    }

    /// Switching to lecture keeps only the newest holder.
    pub fn set_mode(&mut self, mode: MeetingMode) -> Vec<String> {
        self.mode = mode;
        let mut lost = Vec::new();
        if mode == MeetingMode::Lecture && self.holders.len() > 1 {
            let keep = self.holders.pop();
            lost = self.holders.drain(..).map(|g| g.subject).collect();
            self.holders.extend(keep);
        }
        lost
    }

    pub fn mute(&mut self, subject: &str) {
        self.muted.insert(subject.to_owned());
    }

    /// The subject unmuted itself: the chair's mute is lifted.
    pub fn unmute(&mut self, subject: &str) {
        self.muted.remove(subject);
    }

    pub fn is_muted(&self, subject: &str) -> bool {
        self.muted.contains(subject)
    }

    pub fn remove(&mut self, subject: &str) {
        self.removed.insert(subject.to_owned());
        self.lower_hand(subject);
        self.holders.retain(|g| g.subject != subject);
    }

    pub fn is_removed(&self, subject: &str) -> bool {
        self.removed.contains(subject)
    }

    /// Whether this subject's microphone is forwarded to the others.
    pub fn is_heard(&self, subject: &str) -> bool {
        let Some(role) = self.role_of(subject) else {
            return false;
        };
        if !can_publish(role) || self.is_muted(subject) || self.is_removed(subject) {
            return false;
        }
        match self.mode {
            MeetingMode::Discussion => true,
            MeetingMode::Lecture | MeetingMode::Conference => {
                role == Role::Chair || self.holds_floor(subject)
            }
        }
    }

    /// Whether this subject's screen share is forwarded.
    pub fn may_share_screen(&self, subject: &str) -> bool {
        match self.role_of(subject) {
            Some(Role::Chair) => true,
            Some(role) if allowed(role, Action::ShareScreen) => self.holds_floor(subject),
            _ => false,
        }
    }

    /// The main picture: the newest holder of the floor, else `chair`.
    pub fn main_subject(&self) -> Option<&str> {
        self.holders.last().map(|g| g.subject.as_str()).or_else(|| {
            self.roles
                .iter()
                .find(|(_, r)| **r == Role::Chair)
                .map(|(s, _)| s.as_str())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floor(mode: MeetingMode) -> Floor {
        let mut f = Floor::new(mode);
        f.note_role("chair", Role::Chair);
        f.note_role("sec", Role::Secretary);
        f.note_role("xa-a", Role::Endpoint);
        f.note_role("xa-b", Role::Endpoint);
        f.note_role("it", Role::Observer);
        f
    }

    #[test]
    fn role_matrix() {
        assert!(allowed(Role::Chair, Action::GrantFloor));
        assert!(allowed(Role::Chair, Action::EndMeeting));
        assert!(!allowed(Role::Chair, Action::RaiseHand));
        assert!(allowed(Role::Secretary, Action::GrantFloor));
        assert!(allowed(Role::Secretary, Action::SetAbsenceReason));
        assert!(!allowed(Role::Secretary, Action::MuteAll));
        assert!(allowed(Role::Endpoint, Action::RaiseHand));
        assert!(!allowed(Role::Endpoint, Action::GrantFloor));
        assert!(!allowed(Role::Endpoint, Action::Mute));
        assert!(!allowed(Role::Observer, Action::Publish));
        assert!(!allowed(Role::Observer, Action::RaiseHand));
        assert!(allowed(Role::Observer, Action::Chat));
        assert!(!allowed(Role::Admin, Action::Publish));
        assert!(allowed(Role::Admin, Action::Lock));
        assert!(allowed(Role::Chair, Action::SetLayerCap));
        assert!(allowed(Role::Admin, Action::SetLayerCap));
        for role in [Role::Secretary, Role::Endpoint, Role::Observer] {
            assert!(!allowed(role, Action::SetLayerCap));
        }
    }

    #[test]
    fn queue_keeps_order_and_places() {
        let t0 = Instant::now();
        let mut f = floor(MeetingMode::Lecture);
        assert!(f.raise_hand("xa-b", t0));
        assert!(f.raise_hand("xa-a", t0 + Duration::from_secs(1)));
        assert!(
            !f.raise_hand("xa-b", t0 + Duration::from_secs(2)),
            "already up"
        );
        let order: Vec<&str> = f.queue().map(|(s, _)| s).collect();
        assert_eq!(order, ["xa-b", "xa-a"]);
        assert_eq!(f.queue().next().map(|(_, t)| t), Some(t0), "keeps its time");
        assert!(f.lower_hand("xa-b"));
        assert!(!f.lower_hand("xa-b"));
        assert_eq!(f.queue().map(|(s, _)| s).collect::<Vec<_>>(), ["xa-a"]);
    }

    #[test]
    fn lecture_mode_hears_chair_and_one_holder() {
        let t0 = Instant::now();
        let mut f = floor(MeetingMode::Lecture);
        assert!(f.is_heard("chair"));
        assert!(!f.is_heard("xa-a"));
        assert!(!f.is_heard("sec"));
        f.raise_hand("xa-a", t0);
        assert_eq!(f.grant("xa-a", None, t0), Ok(vec![]));
        assert!(f.is_heard("xa-a"));
        assert_eq!(f.queue().count(), 0, "the hand came down");
        assert_eq!(f.main_subject(), Some("xa-a"));
        // Granting another takes it from the first.
        assert_eq!(f.grant("xa-b", None, t0), Ok(vec!["xa-a".to_string()]));
        assert!(!f.is_heard("xa-a"));
        assert!(f.is_heard("xa-b"));
        f.revoke("xa-b").expect("holder");
        assert!(!f.is_heard("xa-b"));
        assert_eq!(f.revoke("xa-b"), Err(FloorError::NotHolder));
        assert_eq!(f.main_subject(), Some("chair"));
    }

    #[test]
    fn conference_mode_allows_several_and_discussion_everyone() {
        let t0 = Instant::now();
        let mut f = floor(MeetingMode::Conference);
        f.grant("xa-a", None, t0).expect("grant");
        f.grant("xa-b", None, t0).expect("grant");
        assert!(f.is_heard("xa-a") && f.is_heard("xa-b"));
        // Back to lecture: only the newest keeps the floor.
        assert_eq!(f.set_mode(MeetingMode::Lecture), vec!["xa-a".to_string()]);
        assert!(!f.is_heard("xa-a") && f.is_heard("xa-b"));
        f.set_mode(MeetingMode::Discussion);
        assert!(f.is_heard("xa-a") && f.is_heard("sec"));
        assert!(!f.is_heard("it"), "observers never");
    }

    #[test]
    fn timed_grant_expires_on_the_virtual_clock() {
        let t0 = Instant::now();
        let mut f = floor(MeetingMode::Lecture);
        f.grant("xa-a", Some(Duration::from_secs(60)), t0)
            .expect("grant");
        assert_eq!(f.next_expiry(), Some(t0 + Duration::from_secs(60)));
        assert!(f.expire(t0 + Duration::from_secs(59)).is_empty());
        assert!(f.is_heard("xa-a"));
        assert_eq!(
            f.expire(t0 + Duration::from_secs(60)),
            vec!["xa-a".to_string()]
        );
        assert!(!f.is_heard("xa-a"));
        assert_eq!(f.next_expiry(), None);
    }

    #[test]
    fn mute_lasts_until_self_unmute_even_in_discussion() {
        let mut f = floor(MeetingMode::Discussion);
        f.mute("xa-a");
        assert!(!f.is_heard("xa-a"));
        f.unmute("xa-a");
        assert!(f.is_heard("xa-a"));
    }

    #[test]
    fn observers_cannot_hold_the_floor_and_removed_lose_it() {
        let t0 = Instant::now();
        let mut f = floor(MeetingMode::Lecture);
        assert_eq!(f.grant("it", None, t0), Err(FloorError::CannotHoldFloor));
        f.grant("xa-a", None, t0).expect("grant");
        f.remove("xa-a");
        assert!(f.is_removed("xa-a"));
        assert!(!f.holds_floor("xa-a"));
    }

    #[test]
    fn screen_share_needs_the_floor_for_endpoints() {
        let t0 = Instant::now();
        let mut f = floor(MeetingMode::Lecture);
        assert!(f.may_share_screen("chair"));
        assert!(!f.may_share_screen("xa-a"));
        f.grant("xa-a", None, t0).expect("grant");
        assert!(f.may_share_screen("xa-a"));
        assert!(!f.may_share_screen("it"));
    }
}
