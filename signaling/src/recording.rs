//! Recording meetings for the minutes: start/stop (chair or admin, from the meeting or the admin API), the
//! manifest of who spoke when, the list of recordings for the admin page, downloads, and retention.
//!
//! Files live in `<data_dir>/recordings/<meeting>/<started-at>/`: one file per Producer written by the media
//! plane (`*.opus` Ogg Opus, `*.ivf` VP8), and `manifest.json` written here: the meeting, start and stop, each
//! file's participant (name, identity, role), and the events (joins, leaves, floor granted and revoked). The
//! manifest is written when the recording starts and again when it ends (through a temporary file, so a full disk
//! leaves the earlier one in place).

use crate::hub::{Hub, Identity, LiveMeeting, Member, send};
use crate::moderation::Refused;
use crate::protocol::{ErrorCode, Role, ServerMessage};
use giaoban_sfu::{Command, MediaKind, MediaSource, RecordedFile};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use tracing::{info, warn};

/// The folder under the data directory that holds every recording.
pub const FOLDER: &str = "recordings";
/// Folder names of recordings: the UTC start time.
const STAMP: &str = "%Y%m%dT%H%M%SZ";

/// How to play the files, written into every manifest.
const HOW_TO_PLAY: &str = "Each participant's audio is an Ogg Opus file (.opus) and its video an IVF file of VP8 \
frames (.ivf). Both open in VLC, mpv and ffplay (`ffplay FILE`); `ffmpeg -i AUDIO.opus -i VIDEO.ivf -c copy \
out.webm` joins a participant's pair into one WebM file. offset_ms is when a file's first packet arrived after \
the recording started.";

#[derive(Debug, Clone, Serialize)]
pub struct ManifestEvent {
    pub at: String,
    pub offset_ms: u64,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub participant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
struct Person {
    name: String,
    identity: String,
    role: Role,
}

/// A recording in progress (or finishing), kept with its live meeting.
#[derive(Debug)]
pub struct Active {
    pub dir: PathBuf,
    started: Instant,
    started_at: String,
    started_by: String,
    stopped_at: Option<String>,
    stopped_by: Option<String>,
    events: Vec<ManifestEvent>,
    people: BTreeMap<String, Person>,
    /// Subjects holding the floor at the last look.
    floor: Vec<String>,
    /// The meeting mode at the last look (it decides who is heard).
    mode: Option<crate::protocol::MeetingMode>,
}

impl Active {
    fn event(&mut self, kind: &'static str, who: Option<(&str, &str, &str)>) {
        self.events.push(ManifestEvent {
            at: crate::store::now_rfc3339(),
            offset_ms: self.started.elapsed().as_millis() as u64,
            kind,
            participant_id: who.map(|w| w.0.to_owned()),
            name: who.map(|w| w.1.to_owned()),
            identity: who.map(|w| w.2.to_owned()),
        });
    }

    fn person(&mut self, i: &Identity) {
        self.people.insert(
            i.participant_id.clone(),
            Person {
                name: i.name.clone(),
                identity: i.subject.clone(),
                role: i.role,
            },
        );
    }
}

/// A member joined a meeting that may be recording.
pub(crate) fn note_join(live: &mut LiveMeeting, i: &Identity) {
    if let Some(r) = live.recording.as_mut() {
        r.person(i);
        r.event("joined", Some((&i.participant_id, &i.name, &i.subject)));
    }
}

/// A member left.
pub(crate) fn note_leave(live: &mut LiveMeeting, i: &Identity) {
    if let Some(r) = live.recording.as_mut() {
        r.event("left", Some((&i.participant_id, &i.name, &i.subject)));
    }
}

/// After any change: floor grants and revocations since the last look.
pub(crate) fn note_floor(live: &mut LiveMeeting, members: &[Member]) {
    let Some(r) = live.recording.as_mut() else {
        return;
    };
    let now: Vec<String> = live
        .floor
        .holders()
        .iter()
        .map(|g| g.subject.clone())
        .collect();
    let who = |subject: &str| {
        members
            .iter()
            .find(|m| m.identity.subject == subject)
            .map_or((String::new(), subject.to_owned()), |m| {
                (m.identity.participant_id.clone(), m.identity.name.clone())
            })
    };
    if r.mode != Some(live.floor.mode) {
        let mode = match live.floor.mode {
            crate::protocol::MeetingMode::Lecture => "mode_lecture",
            crate::protocol::MeetingMode::Discussion => "mode_discussion",
            crate::protocol::MeetingMode::Conference => "mode_conference",
        };
        r.mode = Some(live.floor.mode);
        r.event(mode, None);
    }
    let before = std::mem::take(&mut r.floor);
    for s in before.iter().filter(|s| !now.contains(s)) {
        let (id, name) = who(s);
        r.event("floor_revoked", Some((&id, &name, s)));
    }
    for s in now.iter().filter(|s| !before.contains(s)) {
        let (id, name) = who(s);
        r.event("floor_granted", Some((&id, &name, s)));
    }
    r.floor = now;
}

/// The active speaker changed (see `speaker.rs`), or is the one speaking when the recording starts.
pub(crate) fn note_speaker(live: &mut LiveMeeting, members: &[Member], participant_id: &str) {
    let Some(r) = live.recording.as_mut() else {
        return;
    };
    if let Some(m) = members
        .iter()
        .find(|m| m.identity.participant_id == participant_id)
    {
        r.person(&m.identity);
        r.event(
            "speaker",
            Some((
                &m.identity.participant_id,
                &m.identity.name,
                &m.identity.subject,
            )),
        );
    }
}

fn recordings_root(hub: &Hub) -> PathBuf {
    hub.config.storage.data_dir.join(FOLDER)
}

/// Start recording the meeting in `room`. `by` names who asked (for the manifest and the audit log).
pub fn start(hub: &Hub, room_key: &str, by: &str) -> Result<(), Refused> {
    let mut room = hub.rooms.get_mut(room_key).ok_or((
        ErrorCode::NotFound,
        "nobody has joined this meeting yet".to_string(),
    ))?;
    let room = &mut *room;
    let live = room.meeting.as_mut().ok_or((
        ErrorCode::Forbidden,
        "only meetings are recorded, not open rooms".to_string(),
    ))?;
    if live.recording.is_some() {
        return Err((
            ErrorCode::WrongState,
            "the meeting is already being recorded".into(),
        ));
    }
    let now = chrono::Utc::now();
    let base = recordings_root(hub).join(&live.id);
    let mut dir = base.join(now.format(STAMP).to_string());
    let mut n = 1;
    while dir.exists() {
        n += 1;
        dir = base.join(format!("{}-{n}", now.format(STAMP)));
    }
    std::fs::create_dir_all(&dir).map_err(|e| {
        (
            ErrorCode::Media,
            format!("cannot create the recording folder {}: {e}", dir.display()),
        )
    })?;
    let mut active = Active {
        dir: dir.clone(),
        started: Instant::now(),
        started_at: crate::store::now_rfc3339(),
        started_by: by.to_owned(),
        stopped_at: None,
        stopped_by: None,
        events: Vec::new(),
        people: BTreeMap::new(),
        floor: Vec::new(),
        mode: None,
    };
    active.event("recording_started", None);
    for m in &room.members {
        active.person(&m.identity);
        active.event(
            "present",
            Some((
                &m.identity.participant_id,
                &m.identity.name,
                &m.identity.subject,
            )),
        );
    }
    if let Err(e) = write_manifest(live, &active, "recording", None, &[], 0) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err((
            ErrorCode::Media,
            format!(
                "cannot write the recording manifest in {}: {e}",
                dir.display()
            ),
        ));
    }
    live.recording = Some(active);
    note_floor(live, &room.members);
    let speaking = hub
        .speakers
        .get(room_key)
        .and_then(|s| s.current().map(str::to_owned));
    if let Some(id) = speaking {
        note_speaker(live, &room.members, &id);
    }
    let _ = hub.sfu.send(Command::StartRecording {
        room: room_key.to_owned(),
        dir: dir.clone(),
    });
    info!(room = %room_key, dir = %dir.display(), %by, "recording started");
    Ok(())
}

/// Stop recording; the manifest is completed when the media plane reports the files.
pub fn stop(hub: &Hub, room_key: &str, by: &str) -> Result<(), Refused> {
    let active = {
        let mut room = hub.rooms.get_mut(room_key).ok_or((
            ErrorCode::NotFound,
            "nobody has joined this meeting yet".to_string(),
        ))?;
        let live = room.meeting.as_mut().ok_or((
            ErrorCode::Forbidden,
            "only meetings are recorded, not open rooms".to_string(),
        ))?;
        let mut active = live.recording.take().ok_or((
            ErrorCode::WrongState,
            "the meeting is not being recorded".to_string(),
        ))?;
        active.event("recording_stopped", None);
        active.stopped_at = Some(crate::store::now_rfc3339());
        active.stopped_by = Some(by.to_owned());
        active
    };
    info!(room = %room_key, dir = %active.dir.display(), %by, "recording stopping");
    // Kept before the media plane hears of it: its report may come back at once.
    hub.finishing_recordings
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(active.dir.clone(), active);
    let _ = hub.sfu.send(Command::StopRecording {
        room: room_key.to_owned(),
    });
    Ok(())
}

/// The media plane finished a recording (stopped, or stopped by a write error): complete the manifest, and on an
/// error tell the chair and admins, audit it, and show everyone that recording is off.
pub fn on_ended(
    hub: &Hub,
    room_key: &str,
    dir: &Path,
    files: Vec<RecordedFile>,
    dropped: u64,
    error: Option<String>,
) {
    let finishing = hub
        .finishing_recordings
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(dir);
    let mut was_live = false;
    let mut meeting_id = None;
    let active = match finishing {
        Some(a) => Some(a),
        None => hub.rooms.get_mut(room_key).and_then(|mut room| {
            let live = room.meeting.as_mut()?;
            if live.recording.as_ref().is_some_and(|a| a.dir == dir) {
                was_live = true;
                let mut a = live.recording.take()?;
                a.event("recording_stopped", None);
                a.stopped_at = Some(crate::store::now_rfc3339());
                a.stopped_by = Some("server".into());
                Some(a)
            } else {
                None
            }
        }),
    };
    if was_live {
        // The writer is gone; the worker forgets the room's recording too.
        let _ = hub.sfu.send(Command::StopRecording {
            room: room_key.to_owned(),
        });
    }
    if let Some(room) = hub.rooms.get(room_key)
        && let Some(live) = &room.meeting
    {
        meeting_id = Some(live.id.clone());
        if let Some(a) = &active {
            let status = if error.is_some() {
                "failed"
            } else {
                "complete"
            };
            if let Err(e) = write_manifest(live, a, status, error.as_deref(), &files, dropped) {
                warn!(dir = %dir.display(), error = %e, "recording manifest not completed");
            }
        }
    }
    match &error {
        None => {
            info!(room = %room_key, dir = %dir.display(), files = files.len(), dropped, "recording complete");
            hub.audit(
                None,
                meeting_id.as_deref(),
                "recording_complete",
                &dir.display().to_string(),
                "ok",
            );
        }
        Some(e) => {
            tracing::error!(room = %room_key, dir = %dir.display(), error = %e, "recording stopped by an error; the meeting goes on");
            hub.audit(
                None,
                meeting_id.as_deref(),
                "recording_failed",
                &format!("{}: {e}", dir.display()),
                "error",
            );
            if let Some(room) = hub.rooms.get(room_key) {
                for m in room
                    .members
                    .iter()
                    .filter(|m| matches!(m.identity.role, Role::Chair | Role::Admin))
                {
                    send(
                        &m.outbox,
                        ServerMessage::RecordingAlert {
                            reason: format!("recording stopped: {e}"),
                        },
                    );
                }
            }
        }
    }
    if was_live {
        hub.after_change(room_key);
    }
}

#[derive(Serialize)]
struct FileEntry<'a> {
    file: Option<&'a str>,
    participant_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    kind: &'static str,
    source: &'static str,
    codec: &'a str,
    packets_received: u64,
    /// Audio packets or video frames in the file.
    packets_written: u64,
    frames: u64,
    duration_ms: u64,
    offset_ms: Option<u64>,
    bytes: u64,
    late_packets: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'a str>,
}

fn write_manifest(
    live: &LiveMeeting,
    a: &Active,
    status: &str,
    error: Option<&str>,
    files: &[RecordedFile],
    dropped: u64,
) -> std::io::Result<()> {
    let files: Vec<FileEntry> = files
        .iter()
        .map(|f| {
            let p = a.people.get(&f.participant);
            FileEntry {
                file: f.file.as_deref(),
                participant_id: &f.participant,
                name: p.map(|p| p.name.as_str()),
                identity: p.map(|p| p.identity.as_str()),
                role: p.map(|p| p.role),
                kind: match f.kind {
                    MediaKind::Audio => "audio",
                    MediaKind::Video => "video",
                },
                source: match f.source {
                    MediaSource::Microphone => "microphone",
                    MediaSource::Camera => "camera",
                    MediaSource::Screen => "screen",
                },
                codec: &f.mime_type,
                packets_received: f.packets_received,
                packets_written: f.packets_written,
                frames: f.frames,
                duration_ms: f.duration_ms,
                offset_ms: f.offset_ms,
                bytes: f.bytes,
                late_packets: f.late_packets,
                note: f.note.as_deref(),
            }
        })
        .collect();
    let manifest = serde_json::json!({
        "meeting": { "id": live.id, "title": live.title },
        "status": status,
        "error": error,
        "started_at": a.started_at,
        "started_by": a.started_by,
        "stopped_at": a.stopped_at,
        "stopped_by": a.stopped_by,
        "files": files,
        "events": a.events,
        "participants": a.people,
        "dropped_packets": dropped,
        "how_to_play": HOW_TO_PLAY,
    });
    let text = serde_json::to_vec_pretty(&manifest).map_err(std::io::Error::other)?;
    let tmp = a.dir.join(".manifest.json.tmp");
    let result = std::fs::write(&tmp, &text)
        .and_then(|_| std::fs::rename(&tmp, a.dir.join("manifest.json")));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

// ---------------------------------------------------------------------------------------------------------------
// Listing, downloads, retention
// ---------------------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredFile {
    pub name: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredRecording {
    pub meeting_id: String,
    /// The folder name: the UTC start time.
    pub started: String,
    pub files: Vec<StoredFile>,
    /// The manifest, if readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<serde_json::Value>,
}

/// A path segment we accept in a download URL: a name we would have written (no separators, no `..`).
pub fn safe_segment(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn sorted_dirs(path: &Path) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .filter(|(n, _)| safe_segment(n))
        .collect();
    out.sort();
    out
}

/// Every stored recording, newest first.
pub fn list(data_dir: &Path) -> Vec<StoredRecording> {
    let mut out = Vec::new();
    for (meeting_id, mdir) in sorted_dirs(&data_dir.join(FOLDER)) {
        for (started, rdir) in sorted_dirs(&mdir) {
            let mut files: Vec<StoredFile> = std::fs::read_dir(&rdir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    safe_segment(&name).then_some(StoredFile {
                        bytes: e.metadata().map_or(0, |m| m.len()),
                        name,
                    })
                })
                .collect();
            files.sort_by(|a, b| a.name.cmp(&b.name));
            let manifest = std::fs::read(rdir.join("manifest.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            out.push(StoredRecording {
                meeting_id: meeting_id.clone(),
                started,
                files,
                manifest,
            });
        }
    }
    out.sort_by(|a, b| b.started.cmp(&a.started));
    out
}

/// The start time in a recording folder's name (`20260101T080000Z`, maybe with a `-N` suffix).
fn started_of(name: &str) -> Option<SystemTime> {
    let stamp = name.split('-').next()?;
    let t = chrono::NaiveDateTime::parse_from_str(stamp, STAMP).ok()?;
    let secs = u64::try_from(t.and_utc().timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Delete recordings that started more than `days` days before `now` (0 keeps everything). Returns what was
/// deleted.
pub fn prune(data_dir: &Path, days: u32, now: SystemTime) -> Vec<PathBuf> {
    let mut deleted = Vec::new();
    if days == 0 {
        return deleted;
    }
    let keep = Duration::from_secs(u64::from(days) * 24 * 3600);
    for (_, mdir) in sorted_dirs(&data_dir.join(FOLDER)) {
        for (name, rdir) in sorted_dirs(&mdir) {
            let Some(started) = started_of(&name) else {
                continue;
            };
            if now.duration_since(started).is_ok_and(|age| age > keep) {
                match std::fs::remove_dir_all(&rdir) {
                    Ok(()) => {
                        info!(dir = %rdir.display(), "recording deleted (storage.recording_retention_days)");
                        deleted.push(rdir);
                    }
                    Err(e) => warn!(dir = %rdir.display(), error = %e, "old recording not deleted"),
                }
            }
        }
        // A meeting folder left empty goes too.
        let _ = std::fs::remove_dir(&mdir);
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_that_could_escape_are_refused() {
        for bad in [
            "", "..", ".", "../x", "a/b", "a\\b", ".hidden", "a b", "x%2f",
        ] {
            assert!(!safe_segment(bad), "{bad}");
        }
        for good in [
            "m_1a2b",
            "20260101T080000Z",
            "p1a2b3c-0.opus",
            "manifest.json",
        ] {
            assert!(safe_segment(good), "{good}");
        }
    }

    #[test]
    fn retention_deletes_only_recordings_older_than_the_limit() {
        let data = std::env::temp_dir().join(format!("giaoban-retention-{}", std::process::id()));
        let old = data.join(FOLDER).join("m1").join("20260101T080000Z");
        let recent = data.join(FOLDER).join("m1").join("20260301T080000Z-2");
        let other = data.join(FOLDER).join("m2").join("20251201T000000Z");
        for d in [&old, &recent, &other] {
            std::fs::create_dir_all(d).expect("mkdir");
            std::fs::write(d.join("manifest.json"), "{}").expect("write");
        }
        let now = started_of("20260305T080000Z").expect("stamp");
        assert!(prune(&data, 0, now).is_empty(), "0 keeps everything");
        let mut deleted = prune(&data, 30, now);
        deleted.sort();
        assert_eq!(deleted, vec![old.clone(), other.clone()]);
        assert!(recent.exists() && !old.exists() && !other.exists());
        assert!(
            !data.join(FOLDER).join("m2").exists(),
            "empty meeting folder removed"
        );
        let listed = list(&data);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].started, "20260301T080000Z-2");
        assert_eq!(listed[0].files[0].name, "manifest.json");
        let _ = std::fs::remove_dir_all(&data);
    }
}
