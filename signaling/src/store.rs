//! The embedded store: SQLite in the data directory (created with its schema on first start, migrated by
//! `PRAGMA user_version`). Endpoints, meetings, invitations, attendance, chat and the audit log live here.
//!
//! Calls are short and local (control plane only); one connection behind a mutex serialises them.

use crate::protocol::{MeetingMode, Role};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Mutex;

/// Schema migrations, applied in order; the index + 1 is the `user_version` after each.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE endpoints (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    unit TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL
);
CREATE TABLE meetings (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    starts_at TEXT NOT NULL,
    mode TEXT NOT NULL,
    host_endpoint_id TEXT REFERENCES endpoints(id),
    status TEXT NOT NULL DEFAULT 'scheduled',
    created_at TEXT NOT NULL,
    ended_at TEXT
);
CREATE TABLE invitations (
    meeting_id TEXT NOT NULL REFERENCES meetings(id),
    endpoint_id TEXT NOT NULL REFERENCES endpoints(id),
    absence_reason TEXT,
    PRIMARY KEY (meeting_id, endpoint_id)
);
CREATE TABLE attendance (
    id INTEGER PRIMARY KEY,
    meeting_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    joined_at TEXT NOT NULL,
    left_at TEXT
);
CREATE INDEX attendance_by_meeting ON attendance(meeting_id, subject);
CREATE TABLE chat (
    id INTEGER PRIMARY KEY,
    meeting_id TEXT NOT NULL,
    from_subject TEXT NOT NULL,
    from_name TEXT NOT NULL,
    text TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX chat_by_meeting ON chat(meeting_id, id);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    meeting_id TEXT,
    actor TEXT NOT NULL,
    role TEXT,
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    outcome TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE connection_tests (
    id INTEGER PRIMARY KEY,
    meeting_id TEXT NOT NULL REFERENCES meetings(id),
    subject TEXT NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    at TEXT NOT NULL,
    verdict TEXT NOT NULL,
    rtt_ms REAL,
    loss_up_percent REAL,
    loss_down_percent REAL,
    jitter_ms REAL,
    up_kbps REAL,
    down_kbps REAL,
    server_up_kbps REAL,
    server_down_kbps REAL,
    server_loss_up_percent REAL,
    camera TEXT NOT NULL,
    microphone TEXT NOT NULL,
    browser TEXT,
    findings TEXT NOT NULL
);
CREATE INDEX connection_tests_by_meeting ON connection_tests(meeting_id, subject, id);
"#,
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("cannot create the data directory {0}: {1}")]
    DataDir(String, std::io::Error),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    pub name: String,
    pub unit: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meeting {
    pub id: String,
    pub title: String,
    pub starts_at: String,
    pub mode: MeetingMode,
    pub host_endpoint_id: Option<String>,
    pub invited_endpoint_ids: Vec<String>,
    /// `scheduled`, `live` or `ended`.
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMeeting {
    pub title: String,
    pub starts_at: String,
    pub mode: MeetingMode,
    #[serde(default)]
    pub host_endpoint_id: Option<String>,
    #[serde(default)]
    pub invited_endpoint_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttendanceRow {
    pub subject: String,
    pub name: String,
    pub role: String,
    pub joined_at: String,
    pub left_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invitation {
    pub endpoint: Endpoint,
    pub absence_reason: Option<String>,
    pub first_joined_at: Option<String>,
    pub last_left_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub at: String,
    pub meeting_id: Option<String>,
    pub actor: String,
    pub role: Option<String>,
    pub action: String,
    pub detail: String,
    pub outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatRow {
    pub from_subject: String,
    pub from_name: String,
    pub text: String,
    pub at: String,
}

/// One pre-meeting connection test as stored: the browser's figures, the server's own view of the same
/// connection, the grade and what was graded (`findings`, JSON as sent in `test_verdict`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectionTest {
    pub meeting_id: String,
    /// The meeting's title (filled in when read).
    pub meeting_title: String,
    pub subject: String,
    pub name: String,
    pub role: String,
    /// RFC 3339 (UTC).
    pub at: String,
    /// `good`, `fair` or `poor`.
    pub verdict: String,
    pub rtt_ms: Option<f64>,
    pub loss_up_percent: Option<f64>,
    pub loss_down_percent: Option<f64>,
    pub jitter_ms: Option<f64>,
    /// As the browser measured (sent / received).
    pub up_kbps: Option<f64>,
    pub down_kbps: Option<f64>,
    /// As the server measured the same connection (received from / sent to the browser).
    pub server_up_kbps: Option<f64>,
    pub server_down_kbps: Option<f64>,
    pub server_loss_up_percent: Option<f64>,
    pub camera: String,
    pub microphone: String,
    /// The browser's User-Agent.
    pub browser: Option<String>,
    pub findings: serde_json::Value,
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn new_id(prefix: &str) -> String {
    use rand::Rng;
    let n: u64 = rand::rng().random();
    format!("{prefix}{:010x}", n & 0xff_ffff_ffff)
}

pub fn mode_str(mode: MeetingMode) -> &'static str {
    match mode {
        MeetingMode::Lecture => "lecture",
        MeetingMode::Discussion => "discussion",
        MeetingMode::Conference => "conference",
    }
}

fn parse_mode(s: &str) -> MeetingMode {
    match s {
        "discussion" => MeetingMode::Discussion,
        "conference" => MeetingMode::Conference,
        _ => MeetingMode::Lecture,
    }
}

pub fn role_str(role: Role) -> &'static str {
    match role {
        Role::Chair => "chair",
        Role::Secretary => "secretary",
        Role::Endpoint => "endpoint",
        Role::Observer => "observer",
        Role::Admin => "admin",
    }
}

pub struct Store {
    db: Mutex<Connection>,
}

impl Store {
    /// Open (creating and migrating) `data_dir/giaoban.db`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::DataDir(data_dir.display().to_string(), e))?;
        let conn = Connection::open(data_dir.join("giaoban.db"))?;
        Self::from_connection(conn)
    }

    pub fn in_memory() -> Result<Self, StoreError> {
        Self::from_connection(Connection::open_in_memory()?)
    }

    fn from_connection(mut conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction()?;
            tx.execute_batch(migration)?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
        }
        // Sessions open when the server stopped were closed by the stop.
        conn.execute(
            "UPDATE attendance SET left_at = ?1 WHERE left_at IS NULL",
            params![now_rfc3339()],
        )?;
        conn.execute(
            "UPDATE meetings SET status = 'scheduled' WHERE status = 'live'",
            [],
        )?;
        Ok(Store {
            db: Mutex::new(conn),
        })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (each call is one statement or transaction).
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_empty(&self) -> Result<bool, StoreError> {
        let n: i64 = self.db().query_row(
            "SELECT (SELECT count(*) FROM endpoints) + (SELECT count(*) FROM meetings)",
            [],
            |r| r.get(0),
        )?;
        Ok(n == 0)
    }

    pub fn create_endpoint(&self, name: &str, unit: &str) -> Result<Endpoint, StoreError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(StoreError::Invalid(
                "endpoint name must be 1-100 characters".into(),
            ));
        }
        let e = Endpoint {
            id: new_id("ep-"),
            name: name.to_owned(),
            unit: unit.trim().to_owned(),
        };
        self.db().execute(
            "INSERT INTO endpoints (id, name, unit, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![e.id, e.name, e.unit, now_rfc3339()],
        )?;
        Ok(e)
    }

    pub fn endpoints(&self) -> Result<Vec<Endpoint>, StoreError> {
        let db = self.db();
        let mut st = db.prepare("SELECT id, name, unit FROM endpoints ORDER BY name")?;
        let rows = st.query_map([], |r| {
            Ok(Endpoint {
                id: r.get(0)?,
                name: r.get(1)?,
                unit: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn endpoint(&self, id: &str) -> Result<Endpoint, StoreError> {
        self.db()
            .query_row(
                "SELECT id, name, unit FROM endpoints WHERE id = ?1",
                params![id],
                |r| {
                    Ok(Endpoint {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        unit: r.get(2)?,
                    })
                },
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("endpoint {id}")))
    }

    pub fn create_meeting(&self, m: &NewMeeting) -> Result<Meeting, StoreError> {
        let title = m.title.trim();
        if title.is_empty() || title.chars().count() > 200 {
            return Err(StoreError::Invalid(
                "meeting title must be 1-200 characters".into(),
            ));
        }
        let mut db = self.db();
        let tx = db.transaction()?;
        let id = new_id("m-");
        for ep in m
            .host_endpoint_id
            .iter()
            .chain(m.invited_endpoint_ids.iter())
        {
            let exists: bool = tx
                .query_row("SELECT 1 FROM endpoints WHERE id = ?1", params![ep], |_| {
                    Ok(true)
                })
                .optional()?
                .unwrap_or(false);
            if !exists {
                return Err(StoreError::NotFound(format!("endpoint {ep}")));
            }
        }
        tx.execute(
            "INSERT INTO meetings (id, title, starts_at, mode, host_endpoint_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, title, m.starts_at, mode_str(m.mode), m.host_endpoint_id, now_rfc3339()],
        )?;
        let mut invited: Vec<String> = Vec::new();
        for ep in &m.invited_endpoint_ids {
            if !invited.contains(ep) {
                tx.execute(
                    "INSERT INTO invitations (meeting_id, endpoint_id) VALUES (?1, ?2)",
                    params![id, ep],
                )?;
                invited.push(ep.clone());
            }
        }
        tx.commit()?;
        Ok(Meeting {
            id,
            title: title.to_owned(),
            starts_at: m.starts_at.clone(),
            mode: m.mode,
            host_endpoint_id: m.host_endpoint_id.clone(),
            invited_endpoint_ids: invited,
            status: "scheduled".into(),
        })
    }

    pub fn meeting(&self, id: &str) -> Result<Meeting, StoreError> {
        let db = self.db();
        let row = db
            .query_row(
                "SELECT id, title, starts_at, mode, host_endpoint_id, status FROM meetings WHERE id = ?1",
                params![id],
                |r| {
                    Ok(Meeting {
                        id: r.get(0)?,
                        title: r.get(1)?,
                        starts_at: r.get(2)?,
                        mode: parse_mode(&r.get::<_, String>(3)?),
                        host_endpoint_id: r.get(4)?,
                        invited_endpoint_ids: Vec::new(),
                        status: r.get(5)?,
                    })
                },
            )
            .optional()?;
        let mut m = row.ok_or_else(|| StoreError::NotFound(format!("meeting {id}")))?;
        let mut st = db.prepare(
            "SELECT i.endpoint_id FROM invitations i JOIN endpoints e ON e.id = i.endpoint_id \
             WHERE i.meeting_id = ?1 ORDER BY e.name",
        )?;
        m.invited_endpoint_ids = st
            .query_map(params![id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(m)
    }

    pub fn meetings(&self) -> Result<Vec<Meeting>, StoreError> {
        let ids: Vec<String> = {
            let db = self.db();
            let mut st =
                db.prepare("SELECT id FROM meetings ORDER BY starts_at DESC, created_at DESC")?;
            st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?
        };
        ids.iter().map(|id| self.meeting(id)).collect()
    }

    pub fn set_meeting_status(&self, id: &str, status: &str) -> Result<(), StoreError> {
        let ended_at = (status == "ended").then(now_rfc3339);
        self.db().execute(
            "UPDATE meetings SET status = ?2, ended_at = COALESCE(?3, ended_at) WHERE id = ?1",
            params![id, status, ended_at],
        )?;
        Ok(())
    }

    pub fn set_absence_reason(
        &self,
        meeting: &str,
        endpoint: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let n = self.db().execute(
            "UPDATE invitations SET absence_reason = ?3 WHERE meeting_id = ?1 AND endpoint_id = ?2",
            params![meeting, endpoint, reason.trim()],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("invitation of {endpoint}")));
        }
        Ok(())
    }

    /// The invited endpoints with their absence reason and first join / last leave.
    pub fn invitations(&self, meeting: &str) -> Result<Vec<Invitation>, StoreError> {
        let db = self.db();
        let mut st = db.prepare(
            "SELECT e.id, e.name, e.unit, i.absence_reason, \
                    (SELECT min(joined_at) FROM attendance a WHERE a.meeting_id = i.meeting_id AND a.subject = e.id), \
                    (SELECT max(left_at) FROM attendance a WHERE a.meeting_id = i.meeting_id AND a.subject = e.id) \
             FROM invitations i JOIN endpoints e ON e.id = i.endpoint_id \
             WHERE i.meeting_id = ?1 ORDER BY e.name",
        )?;
        let rows = st.query_map(params![meeting], |r| {
            Ok(Invitation {
                endpoint: Endpoint {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    unit: r.get(2)?,
                },
                absence_reason: r.get(3)?,
                first_joined_at: r.get(4)?,
                last_left_at: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A session starts; returns its attendance row id.
    pub fn attendance_join(
        &self,
        meeting: &str,
        subject: &str,
        name: &str,
        role: Role,
    ) -> Result<i64, StoreError> {
        let db = self.db();
        db.execute(
            "INSERT INTO attendance (meeting_id, subject, name, role, joined_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![meeting, subject, name, role_str(role), now_rfc3339()],
        )?;
        Ok(db.last_insert_rowid())
    }

    pub fn attendance_leave(&self, row: i64) -> Result<(), StoreError> {
        self.db().execute(
            "UPDATE attendance SET left_at = ?2 WHERE id = ?1 AND left_at IS NULL",
            params![row, now_rfc3339()],
        )?;
        Ok(())
    }

    pub fn attendance(&self, meeting: &str) -> Result<Vec<AttendanceRow>, StoreError> {
        let db = self.db();
        let mut st = db.prepare(
            "SELECT subject, name, role, joined_at, left_at FROM attendance WHERE meeting_id = ?1 ORDER BY id",
        )?;
        let rows = st.query_map(params![meeting], |r| {
            Ok(AttendanceRow {
                subject: r.get(0)?,
                name: r.get(1)?,
                role: r.get(2)?,
                joined_at: r.get(3)?,
                left_at: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Keep a connection test's result.
    pub fn add_connection_test(&self, t: &ConnectionTest) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO connection_tests (meeting_id, subject, name, role, at, verdict, rtt_ms, loss_up_percent, \
             loss_down_percent, jitter_ms, up_kbps, down_kbps, server_up_kbps, server_down_kbps, \
             server_loss_up_percent, camera, microphone, browser, findings) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
            params![
                t.meeting_id,
                t.subject,
                t.name,
                t.role,
                t.at,
                t.verdict,
                t.rtt_ms,
                t.loss_up_percent,
                t.loss_down_percent,
                t.jitter_ms,
                t.up_kbps,
                t.down_kbps,
                t.server_up_kbps,
                t.server_down_kbps,
                t.server_loss_up_percent,
                t.camera,
                t.microphone,
                t.browser,
                t.findings.to_string(),
            ],
        )?;
        Ok(())
    }

    /// The latest connection test of each endpoint (subject) per meeting: of one meeting, or of every meeting
    /// that has not ended.
    pub fn latest_connection_tests(
        &self,
        meeting: Option<&str>,
    ) -> Result<Vec<ConnectionTest>, StoreError> {
        let db = self.db();
        let mut st = db.prepare(
            "SELECT t.meeting_id, m.title, t.subject, t.name, t.role, t.at, t.verdict, t.rtt_ms, \
             t.loss_up_percent, t.loss_down_percent, t.jitter_ms, t.up_kbps, t.down_kbps, t.server_up_kbps, \
             t.server_down_kbps, t.server_loss_up_percent, t.camera, t.microphone, t.browser, t.findings \
             FROM connection_tests t JOIN meetings m ON m.id = t.meeting_id \
             WHERE t.id = (SELECT max(id) FROM connection_tests u \
                           WHERE u.meeting_id = t.meeting_id AND u.subject = t.subject) \
               AND (?1 IS NULL AND m.status != 'ended' OR t.meeting_id = ?1) \
             ORDER BY t.meeting_id, t.name",
        )?;
        let rows = st.query_map(params![meeting], |r| {
            let findings: String = r.get(19)?;
            Ok(ConnectionTest {
                meeting_id: r.get(0)?,
                meeting_title: r.get(1)?,
                subject: r.get(2)?,
                name: r.get(3)?,
                role: r.get(4)?,
                at: r.get(5)?,
                verdict: r.get(6)?,
                rtt_ms: r.get(7)?,
                loss_up_percent: r.get(8)?,
                loss_down_percent: r.get(9)?,
                jitter_ms: r.get(10)?,
                up_kbps: r.get(11)?,
                down_kbps: r.get(12)?,
                server_up_kbps: r.get(13)?,
                server_down_kbps: r.get(14)?,
                server_loss_up_percent: r.get(15)?,
                camera: r.get(16)?,
                microphone: r.get(17)?,
                browser: r.get(18)?,
                findings: serde_json::from_str(&findings).unwrap_or(serde_json::Value::Null),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn add_chat(
        &self,
        meeting: &str,
        subject: &str,
        name: &str,
        text: &str,
        at: &str,
    ) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO chat (meeting_id, from_subject, from_name, text, at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![meeting, subject, name, text, at],
        )?;
        Ok(())
    }

    /// The last `limit` chat lines, oldest first.
    pub fn chat(&self, meeting: &str, limit: usize) -> Result<Vec<ChatRow>, StoreError> {
        let db = self.db();
        let mut st = db.prepare(
            "SELECT from_subject, from_name, text, at FROM \
             (SELECT * FROM chat WHERE meeting_id = ?1 ORDER BY id DESC LIMIT ?2) ORDER BY id",
        )?;
        let rows = st.query_map(params![meeting, limit as i64], |r| {
            Ok(ChatRow {
                from_subject: r.get(0)?,
                from_name: r.get(1)?,
                text: r.get(2)?,
                at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn audit(
        &self,
        meeting: Option<&str>,
        actor: &str,
        role: Option<Role>,
        action: &str,
        detail: &str,
        outcome: &str,
    ) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO audit (at, meeting_id, actor, role, action, detail, outcome) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![now_rfc3339(), meeting, actor, role.map(role_str), action, detail, outcome],
        )?;
        Ok(())
    }

    pub fn audit_log(
        &self,
        meeting: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let db = self.db();
        let mut st = db.prepare(
            "SELECT at, meeting_id, actor, role, action, detail, outcome FROM audit \
             WHERE (?1 IS NULL OR meeting_id = ?1) ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![meeting, limit as i64], |r| {
            Ok(AuditEntry {
                at: r.get(0)?,
                meeting_id: r.get(1)?,
                actor: r.get(2)?,
                role: r.get(3)?,
                action: r.get(4)?,
                detail: r.get(5)?,
                outcome: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// The attendance report as CSV: UTF-8 with a byte-order mark so spreadsheets read Vietnamese names right.
pub fn attendance_csv(
    meeting: &Meeting,
    invitations: &[Invitation],
    rows: &[AttendanceRow],
) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_owned()
        }
    }
    let mut out = String::from("\u{feff}");
    out.push_str(&format!("Cuộc họp / Meeting,{}\r\n", field(&meeting.title)));
    out.push_str("Điểm cầu / Endpoint,Đơn vị / Unit,Trạng thái / Status,Lý do / Reason,Vào lúc / Joined,Rời lúc / Left\r\n");
    for inv in invitations {
        let status = if inv.first_joined_at.is_some() {
            "Có mặt / Present"
        } else if inv.absence_reason.as_deref().is_some_and(|r| !r.is_empty()) {
            "Vắng có lý do / Absent with reason"
        } else {
            "Vắng / Absent"
        };
        out.push_str(&format!(
            "{},{},{},{},{},{}\r\n",
            field(&inv.endpoint.name),
            field(&inv.endpoint.unit),
            status,
            field(inv.absence_reason.as_deref().unwrap_or("")),
            inv.first_joined_at.as_deref().unwrap_or(""),
            inv.last_left_at.as_deref().unwrap_or(""),
        ));
    }
    out.push_str("\r\nPhiên kết nối / Sessions\r\nTên / Name,Vai trò / Role,Vào lúc / Joined,Rời lúc / Left\r\n");
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{}\r\n",
            field(&r.name),
            r.role,
            r.joined_at,
            r.left_at.as_deref().unwrap_or("")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_tests_latest_per_endpoint() {
        let s = Store::in_memory().expect("db");
        let a = s.create_endpoint("UBND xã An Phú", "Xã").expect("ep");
        let m = s
            .create_meeting(&NewMeeting {
                title: "Giao ban tuần".into(),
                starts_at: "2026-11-27T08:00:00Z".into(),
                mode: MeetingMode::Lecture,
                host_endpoint_id: None,
                invited_endpoint_ids: vec![a.id.clone()],
            })
            .expect("meeting");
        let mut t = ConnectionTest {
            meeting_id: m.id.clone(),
            meeting_title: String::new(),
            subject: a.id.clone(),
            name: a.name.clone(),
            role: "endpoint".into(),
            at: now_rfc3339(),
            verdict: "poor".into(),
            rtt_ms: Some(420.0),
            loss_up_percent: Some(0.0),
            loss_down_percent: None,
            jitter_ms: Some(3.0),
            up_kbps: Some(200.0),
            down_kbps: Some(190.0),
            server_up_kbps: Some(180.0),
            server_down_kbps: Some(185.0),
            server_loss_up_percent: Some(0.0),
            camera: "ok".into(),
            microphone: "ok".into(),
            browser: Some("Chrome".into()),
            findings: serde_json::json!([{"measure": "rtt", "value": 420.0, "level": "poor"}]),
        };
        s.add_connection_test(&t).expect("first");
        t.verdict = "good".into();
        t.rtt_ms = Some(12.0);
        s.add_connection_test(&t).expect("second");
        let latest = s.latest_connection_tests(Some(&m.id)).expect("read");
        assert_eq!(latest.len(), 1, "{latest:?}");
        assert_eq!(latest[0].verdict, "good");
        assert_eq!(latest[0].rtt_ms, Some(12.0));
        assert_eq!(latest[0].loss_down_percent, None);
        assert_eq!(latest[0].meeting_title, "Giao ban tuần");
        assert_eq!(latest[0].findings[0]["measure"], "rtt");
        assert_eq!(s.latest_connection_tests(None).expect("all").len(), 1);
        s.set_meeting_status(&m.id, "ended").expect("end");
        assert!(s.latest_connection_tests(None).expect("all").is_empty());
        assert_eq!(
            s.latest_connection_tests(Some(&m.id)).expect("one").len(),
            1
        );
    }

    #[test]
    fn meetings_invitations_attendance_and_reasons() {
        let s = Store::in_memory().expect("db");
        assert!(s.is_empty().expect("query"));
        let host = s.create_endpoint("UBND tỉnh", "Tỉnh").expect("ep");
        let a = s.create_endpoint("UBND xã An Phú", "Xã").expect("ep");
        let b = s.create_endpoint("UBND xã Bình Minh", "Xã").expect("ep");
        let m = s
            .create_meeting(&NewMeeting {
                title: "Giao ban tuần".into(),
                starts_at: "2026-11-27T08:00:00Z".into(),
                mode: MeetingMode::Lecture,
                host_endpoint_id: Some(host.id.clone()),
                invited_endpoint_ids: vec![a.id.clone(), b.id.clone(), a.id.clone()],
            })
            .expect("meeting");
        assert_eq!(
            s.meeting(&m.id).expect("get").invited_endpoint_ids,
            vec![a.id.clone(), b.id.clone()]
        );
        let row = s
            .attendance_join(&m.id, &a.id, &a.name, Role::Endpoint)
            .expect("join");
        s.attendance_leave(row).expect("leave");
        s.set_absence_reason(&m.id, &b.id, "Mất điện")
            .expect("reason");
        let inv = s.invitations(&m.id).expect("inv");
        assert!(inv[0].first_joined_at.is_some() && inv[0].last_left_at.is_some());
        assert_eq!(inv[1].absence_reason.as_deref(), Some("Mất điện"));
        let csv = attendance_csv(&m, &inv, &s.attendance(&m.id).expect("rows"));
        assert!(csv.starts_with('\u{feff}'));
        assert!(csv.contains("UBND xã An Phú,Xã,Có mặt / Present"));
        assert!(csv.contains("UBND xã Bình Minh,Xã,Vắng có lý do / Absent with reason,Mất điện"));
        assert!(s.set_absence_reason(&m.id, "ep-nobody", "x").is_err());
        assert!(matches!(
            s.create_meeting(&NewMeeting {
                title: "x".into(),
                starts_at: "".into(),
                mode: MeetingMode::Lecture,
                host_endpoint_id: None,
                invited_endpoint_ids: vec!["ep-missing".into()],
            }),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn data_survives_reopen_and_open_sessions_are_closed() {
        let dir = std::env::temp_dir().join(format!("giaoban-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mid, eid) = {
            let s = Store::open(&dir).expect("open");
            let e = s.create_endpoint("UBND xã C", "Xã").expect("ep");
            let m = s
                .create_meeting(&NewMeeting {
                    title: "Họp".into(),
                    starts_at: "2026-11-27T08:00:00Z".into(),
                    mode: MeetingMode::Discussion,
                    host_endpoint_id: None,
                    invited_endpoint_ids: vec![e.id.clone()],
                })
                .expect("m");
            s.attendance_join(&m.id, &e.id, &e.name, Role::Endpoint)
                .expect("join");
            s.add_chat(&m.id, &e.id, &e.name, "mất tiếng", &now_rfc3339())
                .expect("chat");
            s.audit(
                Some(&m.id),
                "chair",
                Some(Role::Chair),
                "grant_floor",
                "xa-c",
                "ok",
            )
            .expect("audit");
            (m.id, e.id)
        };
        let s = Store::open(&dir).expect("reopen");
        assert_eq!(s.meeting(&mid).expect("m").mode, MeetingMode::Discussion);
        assert_eq!(s.endpoint(&eid).expect("e").name, "UBND xã C");
        let rows = s.attendance(&mid).expect("rows");
        assert_eq!(rows.len(), 1);
        assert!(rows[0].left_at.is_some(), "closed by the restart");
        assert_eq!(s.chat(&mid, 10).expect("chat")[0].text, "mất tiếng");
        assert_eq!(
            s.audit_log(Some(&mid), 10).expect("audit")[0].action,
            "grant_floor"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
