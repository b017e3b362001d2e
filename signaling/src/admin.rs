//! The admin API (endpoints, meetings, join links, audit log) and the attendance report. Admin calls need an
//! admin token; the attendance report also opens to the chair and secretary of that meeting. The token comes as
//! `Authorization: Bearer …` or `?token=…` (so a link can be opened or downloaded directly).

use crate::auth::{ANY_MEETING, Claims, now_secs};
use crate::hub::Hub;
use crate::protocol::Role;
use crate::store::{self, NewMeeting, StoreError};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// How long a meeting's join links stay valid.
pub const LINK_VALIDITY_SECS: u64 = 30 * 24 * 3600;
/// How long an admin link stays valid.
pub const ADMIN_VALIDITY_SECS: u64 = 365 * 24 * 3600;

pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => ApiError(StatusCode::NOT_FOUND, e.to_string()),
            StoreError::Invalid(_) => ApiError(StatusCode::BAD_REQUEST, e.to_string()),
            _ => ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

type Params = Query<HashMap<String, String>>;

/// The request's token: `Authorization: Bearer …` or `?token=…`.
pub(crate) fn token_of<'a>(
    headers: &'a HeaderMap,
    params: &'a HashMap<String, String>,
) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or(params.get("token").map(String::as_str))
}

/// The caller's claims, if its token is valid and `ok` accepts them; every refusal is audited.
fn authorize(
    hub: &Hub,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    what: &str,
    ok: impl Fn(&Claims) -> bool,
) -> Result<Claims, ApiError> {
    let Some(token) = token_of(headers, params) else {
        hub.audit(None, None, what, "no token", "refused");
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "a token is required (Authorization: Bearer … or ?token=…)".into(),
        ));
    };
    let claims = hub.auth.verify(token).map_err(|e| {
        hub.audit(None, None, what, &e.to_string(), "refused");
        ApiError(StatusCode::UNAUTHORIZED, e.to_string())
    })?;
    if !ok(&claims) {
        let msg = format!("role {:?} may not {what}", claims.role).to_lowercase();
        if let Err(e) = hub
            .store
            .audit(None, &claims.sub, Some(claims.role), what, &msg, "refused")
        {
            tracing::warn!(error = %e, "audit write failed");
        }
        return Err(ApiError(StatusCode::FORBIDDEN, msg));
    }
    Ok(claims)
}

fn is_admin(c: &Claims) -> bool {
    c.role == Role::Admin && c.mtg == ANY_MEETING
}

/// `GET /api/rooms`: every live room with its participants and tracks (admin only: it names who is in which
/// meeting).
pub async fn rooms(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Query(params): Params,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&hub, &headers, &params, "list rooms", is_admin)?;
    Ok(Json(serde_json::json!({ "rooms": hub.rooms() })))
}

pub fn admin_token(hub: &Hub) -> String {
    hub.auth.issue(&Claims {
        mtg: ANY_MEETING.into(),
        sub: "admin".into(),
        name: "Quản trị".into(),
        role: Role::Admin,
        exp: now_secs() + ADMIN_VALIDITY_SECS,
    })
}

pub fn admin_link(hub: &Hub) -> String {
    format!("{}/admin?token={}", hub.public_url, admin_token(hub))
}

#[derive(Debug, Clone, Serialize)]
pub struct JoinLink {
    pub role: Role,
    pub subject: String,
    pub name: String,
    pub unit: String,
    pub url: String,
}

/// One link per invited endpoint, and for the chair, the secretary and an observer (IT staff).
pub fn meeting_links(hub: &Hub, meeting: &store::Meeting) -> Result<Vec<JoinLink>, StoreError> {
    let exp = now_secs() + LINK_VALIDITY_SECS;
    let link = |role: Role, subject: &str, name: &str, unit: &str| {
        let token = hub.auth.issue(&Claims {
            mtg: meeting.id.clone(),
            sub: subject.to_owned(),
            name: name.to_owned(),
            role,
            exp,
        });
        JoinLink {
            role,
            subject: subject.to_owned(),
            name: name.to_owned(),
            unit: unit.to_owned(),
            url: format!("{}/?token={token}", hub.public_url),
        }
    };
    let mut links = Vec::new();
    match &meeting.host_endpoint_id {
        Some(host) => {
            let e = hub.store.endpoint(host)?;
            links.push(link(
                Role::Chair,
                &e.id,
                &format!("{} (Chủ trì)", e.name),
                &e.unit,
            ));
        }
        None => links.push(link(Role::Chair, "chair", "Chủ trì", "")),
    }
    links.push(link(Role::Secretary, "secretary", "Thư ký", ""));
    links.push(link(Role::Observer, "observer", "Kỹ thuật (dự thính)", ""));
    for id in &meeting.invited_endpoint_ids {
        let e = hub.store.endpoint(id)?;
        links.push(link(Role::Endpoint, &e.id, &e.name, &e.unit));
    }
    Ok(links)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn csv_response(filename: &str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        body,
    )
        .into_response()
}

pub async fn list_endpoints(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Query(p): Params,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, &p, "list endpoints", is_admin)?;
    Ok(Json(serde_json::json!({ "endpoints": hub.store.endpoints()? })).into_response())
}

#[derive(Debug, Deserialize)]
pub struct NewEndpoint {
    pub name: String,
    #[serde(default)]
    pub unit: String,
}

pub async fn create_endpoint(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Query(p): Params,
    Json(body): Json<NewEndpoint>,
) -> Result<Response, ApiError> {
    let who = authorize(&hub, &headers, &p, "create endpoint", is_admin)?;
    let e = hub.store.create_endpoint(&body.name, &body.unit)?;
    let _ = hub.store.audit(
        None,
        &who.sub,
        Some(who.role),
        "create_endpoint",
        &format!("{} {}", e.id, e.name),
        "ok",
    );
    Ok((StatusCode::CREATED, Json(e)).into_response())
}

pub async fn list_meetings(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Query(p): Params,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, &p, "list meetings", is_admin)?;
    Ok(Json(serde_json::json!({ "meetings": hub.store.meetings()? })).into_response())
}

pub async fn create_meeting(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Query(p): Params,
    Json(body): Json<NewMeeting>,
) -> Result<Response, ApiError> {
    let who = authorize(&hub, &headers, &p, "create meeting", is_admin)?;
    let m = hub.store.create_meeting(&body)?;
    let _ = hub.store.audit(
        Some(&m.id),
        &who.sub,
        Some(who.role),
        "create_meeting",
        &m.title,
        "ok",
    );
    Ok((StatusCode::CREATED, Json(m)).into_response())
}

pub async fn links(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, &p, "get join links", is_admin)?;
    let meeting = hub.store.meeting(&id)?;
    let links = meeting_links(&hub, &meeting)?;
    if p.get("format").map(String::as_str) == Some("csv") {
        let mut out = String::from(
            "\u{feff}Vai trò / Role,Điểm cầu / Name,Đơn vị / Unit,Đường dẫn / Link\r\n",
        );
        for l in &links {
            out.push_str(&format!(
                "{},{},{},{}\r\n",
                store::role_str(l.role),
                csv_field(&l.name),
                csv_field(&l.unit),
                l.url
            ));
        }
        return Ok(csv_response(&format!("links-{id}.csv"), out));
    }
    Ok(Json(serde_json::json!({ "meeting": meeting, "links": links })).into_response())
}

pub async fn attendance(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    attendance_report(&hub, &headers, &id, &p, false)
}

pub async fn attendance_csv(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    attendance_report(&hub, &headers, &id, &p, true)
}

fn attendance_report(
    hub: &Hub,
    headers: &HeaderMap,
    id: &str,
    p: &HashMap<String, String>,
    csv: bool,
) -> Result<Response, ApiError> {
    authorize(hub, headers, p, "read attendance", |c| {
        is_admin(c) || (c.mtg == id && matches!(c.role, Role::Chair | Role::Secretary))
    })?;
    let meeting = hub.store.meeting(id)?;
    let invitations = hub.store.invitations(id)?;
    let rows = hub.store.attendance(id)?;
    if csv {
        return Ok(csv_response(
            &format!("diem-danh-{id}.csv"),
            store::attendance_csv(&meeting, &invitations, &rows),
        ));
    }
    let roll_call = hub
        .rooms
        .get(id)
        .map(|r| hub.roll_call(&r))
        .unwrap_or_default();
    Ok(Json(serde_json::json!({
        "meeting": meeting,
        "invitations": invitations,
        "roll_call": roll_call,
        "sessions": rows,
    }))
    .into_response())
}

pub async fn audit(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Query(p): Params,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, &p, "read the audit log", is_admin)?;
    let limit = p
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(200usize)
        .min(5000);
    let entries = hub
        .store
        .audit_log(p.get("meeting").map(String::as_str), limit)?;
    Ok(Json(serde_json::json!({ "entries": entries })).into_response())
}

/// On first start with an empty store: endpoints and a demo meeting, so a whole briefing can be tried at once.
pub fn create_demo(hub: &Hub) -> Result<(store::Meeting, Vec<JoinLink>), StoreError> {
    let host = hub
        .store
        .create_endpoint("UBND tỉnh (điểm cầu chính)", "Tỉnh")?;
    let mut invited = Vec::new();
    for name in [
        "UBND xã An Phú",
        "UBND xã Bình Minh",
        "UBND phường Tân Tiến",
    ] {
        invited.push(hub.store.create_endpoint(name, "Xã/Phường")?.id);
    }
    let meeting = hub.store.create_meeting(&NewMeeting {
        title: "Giao ban thử nghiệm".into(),
        starts_at: store::now_rfc3339(),
        mode: crate::protocol::MeetingMode::Lecture,
        host_endpoint_id: Some(host.id),
        invited_endpoint_ids: invited,
    })?;
    let links = meeting_links(hub, &meeting)?;
    Ok((meeting, links))
}

/// `GET /api/admin/recordings`: every stored recording (newest first) with its files and manifest, and the
/// meetings recording now.
pub async fn recordings(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Query(p): Params,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, &p, "list recordings", is_admin)?;
    let dir = hub.config.storage.data_dir.clone();
    let list = tokio::task::spawn_blocking(move || crate::recording::list(&dir))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let active: Vec<String> = hub
        .rooms
        .iter()
        .filter_map(|r| {
            r.meeting
                .as_ref()
                .filter(|m| m.recording.is_some())
                .map(|m| m.id.clone())
        })
        .collect();
    Ok(Json(serde_json::json!({ "recordings": list, "recording_now": active })).into_response())
}

/// `GET /api/admin/recordings/{meeting}/{started}/{file}`: download one file of a recording.
pub async fn recording_file(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Path((meeting, started, file)): Path<(String, String, String)>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, &p, "download a recording", is_admin)?;
    for (what, s) in [
        ("meeting", &meeting),
        ("recording", &started),
        ("file", &file),
    ] {
        if !crate::recording::safe_segment(s) {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("invalid {what} name `{s}`"),
            ));
        }
    }
    let path = hub
        .config
        .storage
        .data_dir
        .join(crate::recording::FOLDER)
        .join(&meeting)
        .join(&started)
        .join(&file);
    let f = tokio::fs::File::open(&path).await.map_err(|_| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("no file {file} in recording {meeting}/{started}"),
        )
    })?;
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let content_type = match file.rsplit('.').next() {
        Some("opus") => "audio/ogg",
        Some("ivf") => "video/x-ivf",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    };
    let stream = futures_util::stream::unfold(f, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    let hub2 = hub.clone();
    hub2.audit(
        None,
        Some(&meeting),
        "download_recording",
        &format!("{started}/{file}"),
        "ok",
    );
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{meeting}-{started}-{file}\""),
            ),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

/// `POST /api/admin/meetings/{id}/recording/{start|stop}`: start or stop recording a meeting in progress.
pub async fn recording_control(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let who = authorize(&hub, &headers, &p, "control recording", is_admin)?;
    let by = format!("{} (admin)", who.name);
    let result = match action.as_str() {
        "start" => crate::recording::start(&hub, &id, &by),
        "stop" => crate::recording::stop(&hub, &id, &by),
        other => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("unknown recording action `{other}` (start or stop)"),
            ));
        }
    };
    let what = format!("{action}_recording");
    match result {
        Ok(()) => {
            let _ = hub.store.audit(
                Some(&id),
                &who.sub,
                Some(who.role),
                &what,
                "admin API",
                "ok",
            );
            hub.after_change(&id);
            Ok(
                Json(serde_json::json!({ "meeting_id": id, "recording": action == "start" }))
                    .into_response(),
            )
        }
        Err((code, message)) => {
            let _ = hub.store.audit(
                Some(&id),
                &who.sub,
                Some(who.role),
                &what,
                &message,
                &format!("{code:?}"),
            );
            let status = match code {
                crate::protocol::ErrorCode::NotFound => StatusCode::NOT_FOUND,
                crate::protocol::ErrorCode::WrongState => StatusCode::CONFLICT,
                crate::protocol::ErrorCode::Forbidden => StatusCode::FORBIDDEN,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            Err(ApiError(status, message))
        }
    }
}
