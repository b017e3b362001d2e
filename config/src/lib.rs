//! Typed settings with embedded defaults, an optional TOML file and `GIAOBAN_*` environment overrides.
//!
//! Every key is documented in `config/giaoban.example.toml`. `Config::validate` names the key and the problem.

use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub media: MediaConfig,
    pub tls: TlsConfig,
    pub log: LogConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub storage: StorageConfig,
    pub health: HealthConfig,
    pub turn: TurnConfig,
}

/// Where a link turns from good to fair (amber) and from fair to poor (red): shared by the live verdict
/// (`connection_quality`, the IT board) and the pre-meeting connection test. A figure beyond `fair_*` is fair,
/// beyond `poor_*` poor; bitrates are the floor (below `fair_bitrate_kbps` fair, below `poor_bitrate_kbps` poor)
/// and apply to the connection test only (a hall that sends no video has a low bitrate in a meeting).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    pub fair_loss_percent: f64,
    pub poor_loss_percent: f64,
    pub fair_rtt_ms: f64,
    pub poor_rtt_ms: f64,
    pub fair_jitter_ms: f64,
    pub poor_jitter_ms: f64,
    pub fair_bitrate_kbps: f64,
    pub poor_bitrate_kbps: f64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            fair_loss_percent: 2.0,
            poor_loss_percent: 5.0,
            fair_rtt_ms: 200.0,
            poor_rtt_ms: 400.0,
            fair_jitter_ms: 30.0,
            poor_jitter_ms: 100.0,
            fair_bitrate_kbps: 1000.0,
            poor_bitrate_kbps: 300.0,
        }
    }
}

/// A TURN server (e.g. coturn) for halls whose firewall lets no media through directly. Each participant gets
/// time-limited credentials of the TURN REST API scheme: `username = "<expiry unix time>:<participant>"`,
/// `credential = base64(HMAC-SHA1(secret, username))` (coturn's `use-auth-secret` / `static-auth-secret`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TurnConfig {
    /// TURN (and STUN) URLs given to browsers, e.g. `turn:turn.example.vn:3478?transport=udp`,
    /// `turns:turn.example.vn:443?transport=tcp`. Empty: no TURN.
    pub urls: Vec<String>,
    /// The secret shared with the TURN server (`static-auth-secret` in coturn).
    pub secret: String,
    /// How long handed-out credentials stay valid, in seconds.
    pub credential_lifetime_secs: u64,
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            urls: Vec::new(),
            secret: String::new(),
            credential_lifetime_secs: 12 * 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret that signs join links. Empty: generated on first start and kept in the data directory.
    pub secret: String,
    /// Allow joining a room by name without a token (`/?room=ROOM&name=NAME`). Off by default: a briefing is
    /// joined with a signed link.
    pub open_rooms: bool,
    /// Base URL put in join links (e.g. `https://giaoban.ubnd.local:8080`). Empty: derived from the listen and
    /// announced addresses.
    pub public_url: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Where the SQLite database and the generated secret live (created if missing); recordings go to its
    /// `recordings/` folder.
    pub data_dir: PathBuf,
    /// Recordings older than this many days are deleted (at start and daily); 0 keeps them forever.
    pub recording_retention_days: u32,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("data"),
            recording_retention_days: 90,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Where the web client, the WebSocket and the API listen.
    pub listen: SocketAddr,
    /// With TLS on: also listen here for plain HTTP and redirect every request to the HTTPS address (e.g.
    /// `0.0.0.0:80`). Unset: no plain-HTTP listener.
    pub redirect_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Address the one media UDP socket binds to (every peer shares it).
    pub listen_ip: IpAddr,
    /// The media UDP port (0 = pick a free one, for tests).
    pub udp_port: u16,
    /// Addresses put in ICE host candidates. Empty = the listen address if specific, else the machine's
    /// non-loopback addresses (or 127.0.0.1 when there are none).
    pub announced_ips: Vec<IpAddr>,
    /// How many media workers (threads) to run; rooms are spread over them.
    pub workers: usize,
    /// ICE-TCP: the TCP port (passive candidates, RFC 4571 framing) offered beside UDP for halls whose firewall
    /// blocks UDP; worker `i` uses `tcp_port + i`. 0 = off.
    pub tcp_port: u16,
    /// Ask browsers to publish their camera in three simulcast layers (on by default). A screen share goes on a
    /// connection of its own, so the camera's publish connection is never renegotiated (see ARCHITECTURE.md).
    /// Off: one camera layer.
    pub simulcast: bool,
    /// Up to this many endpoints (halls) in a meeting, every member receives every hall (each hall sees the
    /// others). Beyond it a hall or an observer receives only the chair, whoever is heard (the floor) and screen
    /// shares; the chair and the secretary still receive every hall. 0 = always only the chair and the floor.
    pub every_hall_up_to: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain. With `key`, HTTP is served over TLS (rustls).
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// When listening beyond loopback without `cert`/`key`, generate a self-signed certificate (default true),
    /// so browsers on the LAN get the secure context that camera access needs.
    pub self_signed: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `giaoban_sfu=debug,info`.
    pub level: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest WebSocket message accepted, in bytes. The chair's subscribe answer grows with the halls it receives
    /// (two sections each, ~290 bytes a section from a simulated endpoint, more from a browser): 64 KiB cut a
    /// 115-hall meeting short.
    pub max_message_bytes: usize,
    /// Participants a room may hold.
    pub max_participants_per_room: usize,
    /// How long a meeting member whose connection dropped keeps its place (same id, floor, queue place,
    /// attendance row; the others see its picture freeze, not a leave), in seconds. The server notices a dead
    /// media connection after about 15 s, so 30 lets a hall cut off for half a minute come back as itself.
    pub resume_grace_secs: u64,
    /// Longest room name and display name, in characters.
    pub max_name_chars: usize,
    /// Open WebSockets from one client address (a hall's NAT may carry several browsers).
    pub max_connections_per_ip: usize,
    /// Join attempts from one client address per minute.
    pub joins_per_minute_per_ip: u32,
    /// Control messages per second of one session (bursts of four times this are allowed).
    pub messages_per_second: u32,
    /// Live audio/video tracks one participant may publish (camera, microphone, screen, screen audio).
    pub max_tracks_per_participant: usize,
    /// Video bitrate one publisher may send, in kbit/s, all simulcast layers and tracks together; the publish
    /// answer carries it (`b=TIAS` per video section) so the browser's encoder stays under it; a publisher that sends
    /// more than half again as much for 3 s has its video held back (audio goes on) until it is back under.
    pub max_publish_kbps: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            redirect_listen: None,
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            listen_ip: IpAddr::from([0, 0, 0, 0]),
            udp_port: 40000,
            announced_ips: Vec::new(),
            workers: 1,
            tcp_port: 0,
            simulcast: true,
            every_hall_up_to: 12,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info,rtc_dtls::config=error".into(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: 512 * 1024,
            max_participants_per_room: 200,
            resume_grace_secs: 30,
            max_name_chars: 64,
            max_connections_per_ip: 64,
            joins_per_minute_per_ip: 60,
            messages_per_second: 50,
            max_tracks_per_participant: 4,
            max_publish_kbps: 5000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http: HttpConfig::default(),
            media: MediaConfig::default(),
            tls: TlsConfig {
                self_signed: true,
                ..TlsConfig::default()
            },
            log: LogConfig::default(),
            limits: LimitsConfig::default(),
            auth: AuthConfig::default(),
            storage: StorageConfig::default(),
            health: HealthConfig::default(),
            turn: TurnConfig::default(),
        }
    }
}

impl Config {
    /// Settings for a test server: everything on loopback, ports picked by the OS, no TLS, open rooms, and a
    /// fresh data directory under the system temp dir.
    pub fn for_tests() -> Self {
        let mut c = Config::default();
        c.auth.open_rooms = true;
        c.storage.data_dir = std::env::temp_dir().join(format!(
            "giaoban-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        c.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c.media.listen_ip = IpAddr::from([127, 0, 0, 1]);
        c.media.udp_port = 0;
        c.tls.self_signed = false;
        c.log.level = "warn".into();
        c
    }

    /// Defaults, then the TOML file if given, then `GIAOBAN_*` environment variables; validated.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = match file {
            Some(path) => Self::from_toml_file(path)?,
            None => Config::default(),
        };
        config.apply_env(std::env::vars())?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_toml_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    pub fn from_toml_str(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Apply `GIAOBAN_SECTION_KEY=value` overrides (e.g. `GIAOBAN_MEDIA_UDP_PORT=40001`).
    pub fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (var, value) in vars {
            let Some(key) = var.strip_prefix("GIAOBAN_") else {
                continue;
            };
            let err = |message: String| ConfigError::Env {
                var: var.clone(),
                message,
            };
            let parse = |what: &str| -> Result<_, ConfigError> {
                Err(err(format!("`{value}` is not a valid {what}")))
            };
            match key {
                "HTTP_LISTEN" => match value.parse() {
                    Ok(v) => self.http.listen = v,
                    Err(_) => return parse("socket address (ip:port)"),
                },
                "HTTP_REDIRECT_LISTEN" => match value.parse() {
                    Ok(v) => self.http.redirect_listen = Some(v),
                    Err(_) => return parse("socket address (ip:port)"),
                },
                "MEDIA_LISTEN_IP" => match value.parse() {
                    Ok(v) => self.media.listen_ip = v,
                    Err(_) => return parse("IP address"),
                },
                "MEDIA_UDP_PORT" => match value.parse() {
                    Ok(v) => self.media.udp_port = v,
                    Err(_) => return parse("port"),
                },
                "MEDIA_ANNOUNCED_IPS" => {
                    let mut ips = Vec::new();
                    for part in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        match part.parse() {
                            Ok(ip) => ips.push(ip),
                            Err(_) => return parse("comma-separated list of IP addresses"),
                        }
                    }
                    self.media.announced_ips = ips;
                }
                "MEDIA_TCP_PORT" => match value.parse() {
                    Ok(v) => self.media.tcp_port = v,
                    Err(_) => return parse("port"),
                },
                "MEDIA_SIMULCAST" => match value.parse() {
                    Ok(v) => self.media.simulcast = v,
                    Err(_) => return parse("boolean (true/false)"),
                },
                "MEDIA_EVERY_HALL_UP_TO" => match value.parse() {
                    Ok(v) => self.media.every_hall_up_to = v,
                    Err(_) => return parse("whole number"),
                },
                "TURN_URLS" => {
                    self.turn.urls = value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                "TURN_SECRET" => self.turn.secret = value.clone(),
                "TURN_CREDENTIAL_LIFETIME_SECS" => match value.parse() {
                    Ok(v) => self.turn.credential_lifetime_secs = v,
                    Err(_) => return parse("number of seconds"),
                },
                "MEDIA_WORKERS" => match value.parse() {
                    Ok(v) => self.media.workers = v,
                    Err(_) => return parse("number"),
                },
                "TLS_CERT" => self.tls.cert = Some(PathBuf::from(value.clone())),
                "TLS_KEY" => self.tls.key = Some(PathBuf::from(value.clone())),
                "TLS_SELF_SIGNED" => match value.parse() {
                    Ok(v) => self.tls.self_signed = v,
                    Err(_) => return parse("boolean (true/false)"),
                },
                "LOG_FORMAT" => match value.as_str() {
                    "text" => self.log.format = LogFormat::Text,
                    "json" => self.log.format = LogFormat::Json,
                    _ => return parse("log format (text/json)"),
                },
                "LOG_LEVEL" => self.log.level = value.clone(),
                "LIMITS_MAX_MESSAGE_BYTES" => match value.parse() {
                    Ok(v) => self.limits.max_message_bytes = v,
                    Err(_) => return parse("number"),
                },
                "LIMITS_MAX_PARTICIPANTS_PER_ROOM" => match value.parse() {
                    Ok(v) => self.limits.max_participants_per_room = v,
                    Err(_) => return parse("number"),
                },
                "LIMITS_RESUME_GRACE_SECS" => match value.parse() {
                    Ok(v) => self.limits.resume_grace_secs = v,
                    Err(_) => return parse("number of seconds"),
                },
                "AUTH_SECRET" => self.auth.secret = value.clone(),
                "AUTH_OPEN_ROOMS" => match value.parse() {
                    Ok(v) => self.auth.open_rooms = v,
                    Err(_) => return parse("boolean (true/false)"),
                },
                "AUTH_PUBLIC_URL" => self.auth.public_url = value.clone(),
                "STORAGE_DATA_DIR" => self.storage.data_dir = PathBuf::from(value.clone()),
                "STORAGE_RECORDING_RETENTION_DAYS" => match value.parse() {
                    Ok(v) => self.storage.recording_retention_days = v,
                    Err(_) => return parse("number of days"),
                },
                "LIMITS_MAX_CONNECTIONS_PER_IP" => match value.parse() {
                    Ok(v) => self.limits.max_connections_per_ip = v,
                    Err(_) => return parse("number"),
                },
                "LIMITS_JOINS_PER_MINUTE_PER_IP" => match value.parse() {
                    Ok(v) => self.limits.joins_per_minute_per_ip = v,
                    Err(_) => return parse("number"),
                },
                "LIMITS_MESSAGES_PER_SECOND" => match value.parse() {
                    Ok(v) => self.limits.messages_per_second = v,
                    Err(_) => return parse("number"),
                },
                "LIMITS_MAX_NAME_CHARS" => match value.parse() {
                    Ok(v) => self.limits.max_name_chars = v,
                    Err(_) => return parse("number"),
                },
                "LIMITS_MAX_TRACKS_PER_PARTICIPANT" => match value.parse() {
                    Ok(v) => self.limits.max_tracks_per_participant = v,
                    Err(_) => return parse("number"),
                },
                "LIMITS_MAX_PUBLISH_KBPS" => match value.parse() {
                    Ok(v) => self.limits.max_publish_kbps = v,
                    Err(_) => return parse("number"),
                },
                "HEALTH_FAIR_LOSS_PERCENT"
                | "HEALTH_POOR_LOSS_PERCENT"
                | "HEALTH_FAIR_RTT_MS"
                | "HEALTH_POOR_RTT_MS"
                | "HEALTH_FAIR_JITTER_MS"
                | "HEALTH_POOR_JITTER_MS"
                | "HEALTH_FAIR_BITRATE_KBPS"
                | "HEALTH_POOR_BITRATE_KBPS" => {
                    let Ok(v) = value.parse::<f64>() else {
                        return parse("number");
                    };
                    let h = &mut self.health;
                    *match key {
                        "HEALTH_FAIR_LOSS_PERCENT" => &mut h.fair_loss_percent,
                        "HEALTH_POOR_LOSS_PERCENT" => &mut h.poor_loss_percent,
                        "HEALTH_FAIR_RTT_MS" => &mut h.fair_rtt_ms,
                        "HEALTH_POOR_RTT_MS" => &mut h.poor_rtt_ms,
                        "HEALTH_FAIR_JITTER_MS" => &mut h.fair_jitter_ms,
                        "HEALTH_POOR_JITTER_MS" => &mut h.poor_jitter_ms,
                        "HEALTH_FAIR_BITRATE_KBPS" => &mut h.fair_bitrate_kbps,
                        _ => &mut h.poor_bitrate_kbps,
                    } = v;
                }
                _ => return Err(err("unknown setting".into())),
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.into(),
            })
        };
        if self.media.workers == 0 || self.media.workers > 64 {
            return invalid("media.workers", "must be between 1 and 64");
        }
        if self
            .media
            .announced_ips
            .iter()
            .any(|ip| ip.is_unspecified())
        {
            return invalid(
                "media.announced_ips",
                "0.0.0.0 / :: cannot be announced; give addresses peers can reach",
            );
        }
        if self.media.tcp_port != 0
            && usize::from(self.media.tcp_port) + self.media.workers > usize::from(u16::MAX) + 1
        {
            return invalid(
                "media.tcp_port",
                "too high for the number of workers (worker i uses tcp_port + i)",
            );
        }
        for url in &self.turn.urls {
            let scheme_ok = ["turn:", "turns:", "stun:", "stuns:"]
                .iter()
                .any(|s| url.starts_with(s));
            if !scheme_ok || url.contains(char::is_whitespace) {
                return invalid(
                    "turn.urls",
                    &format!("`{url}` is not a turn:, turns: or stun: URL"),
                );
            }
        }
        if self.turn.urls.iter().any(|u| u.starts_with("turn")) && self.turn.secret.is_empty() {
            return invalid(
                "turn.secret",
                "must be set when turn.urls lists a TURN server (coturn's static-auth-secret)",
            );
        }
        if self.turn.credential_lifetime_secs < 60 {
            return invalid("turn.credential_lifetime_secs", "must be at least 60");
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return invalid("tls.cert", "tls.cert and tls.key must be given together");
        }
        if self.limits.max_message_bytes < 1024 {
            return invalid(
                "limits.max_message_bytes",
                "must be at least 1024 (an SDP offer is several kB)",
            );
        }
        if self.limits.max_participants_per_room == 0 {
            return invalid("limits.max_participants_per_room", "must be at least 1");
        }
        if self.limits.max_connections_per_ip == 0 {
            return invalid("limits.max_connections_per_ip", "must be at least 1");
        }
        if self.limits.joins_per_minute_per_ip == 0 {
            return invalid("limits.joins_per_minute_per_ip", "must be at least 1");
        }
        if self.limits.messages_per_second < 5 {
            return invalid(
                "limits.messages_per_second",
                "must be at least 5 (a join sends a burst of candidates)",
            );
        }
        if self.limits.max_name_chars == 0 {
            return invalid("limits.max_name_chars", "must be at least 1");
        }
        if self.limits.max_tracks_per_participant == 0 {
            return invalid("limits.max_tracks_per_participant", "must be at least 1");
        }
        if self.limits.max_publish_kbps < 100 {
            return invalid(
                "limits.max_publish_kbps",
                "must be at least 100 (audio alone needs tens of kbit/s)",
            );
        }
        if !self.auth.secret.is_empty() && self.auth.secret.len() < 32 {
            return invalid(
                "auth.secret",
                "must be at least 32 characters (or empty to generate one)",
            );
        }
        if self.http.redirect_listen.is_some() && self.tls_mode() == TlsMode::Plain {
            return invalid(
                "http.redirect_listen",
                "redirects to HTTPS, but TLS is off (set tls.cert/tls.key or listen beyond loopback with tls.self_signed)",
            );
        }
        let url = &self.auth.public_url;
        if !url.is_empty() && !url.starts_with("http://") && !url.starts_with("https://") {
            return invalid("auth.public_url", "must start with http:// or https://");
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            return invalid("storage.data_dir", "must not be empty");
        }
        if self.log.level.trim().is_empty() {
            return invalid("log.level", "must not be empty (e.g. `info`)");
        }
        self.validate_health()
    }

    fn validate_health(&self) -> Result<(), ConfigError> {
        let h = &self.health;
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        let figures = [
            ("health.fair_loss_percent", h.fair_loss_percent, 100.0),
            ("health.poor_loss_percent", h.poor_loss_percent, 100.0),
            ("health.fair_rtt_ms", h.fair_rtt_ms, 60_000.0),
            ("health.poor_rtt_ms", h.poor_rtt_ms, 60_000.0),
            ("health.fair_jitter_ms", h.fair_jitter_ms, 60_000.0),
            ("health.poor_jitter_ms", h.poor_jitter_ms, 60_000.0),
            ("health.fair_bitrate_kbps", h.fair_bitrate_kbps, 1_000_000.0),
            ("health.poor_bitrate_kbps", h.poor_bitrate_kbps, 1_000_000.0),
        ];
        for (key, v, max) in figures {
            if !v.is_finite() || v < 0.0 || v > max {
                return invalid(key, format!("must be a number from 0 to {max}, not {v}"));
            }
        }
        let ordered = [
            (
                "health.poor_loss_percent",
                h.fair_loss_percent <= h.poor_loss_percent,
                "fair_loss_percent",
            ),
            (
                "health.poor_rtt_ms",
                h.fair_rtt_ms <= h.poor_rtt_ms,
                "fair_rtt_ms",
            ),
            (
                "health.poor_jitter_ms",
                h.fair_jitter_ms <= h.poor_jitter_ms,
                "fair_jitter_ms",
            ),
        ];
        for (key, ok, fair) in ordered {
            if !ok {
                return invalid(
                    key,
                    format!("must not be below health.{fair} (poor is the worse limit)"),
                );
            }
        }
        if h.poor_bitrate_kbps > h.fair_bitrate_kbps {
            return invalid(
                "health.poor_bitrate_kbps",
                "must not be above health.fair_bitrate_kbps (poor is the lower floor)".into(),
            );
        }
        Ok(())
    }

    /// Whether HTTP should be served over TLS, and whether the certificate must be generated.
    pub fn tls_mode(&self) -> TlsMode {
        match (&self.tls.cert, &self.tls.key) {
            (Some(cert), Some(key)) => TlsMode::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ if self.tls.self_signed && !self.http.listen.ip().is_loopback() => {
                TlsMode::SelfSigned
            }
            _ => TlsMode::Plain,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    Plain,
    SelfSigned,
    Files { cert: PathBuf, key: PathBuf },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().expect("defaults validate");
        Config::for_tests()
            .validate()
            .expect("test config validates");
    }

    #[test]
    fn example_file_parses_and_matches_defaults() {
        let text = include_str!("../giaoban.example.toml");
        let parsed = Config::from_toml_str(text).expect("example parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml_str("[media]\nudp_prot = 1\n").expect_err("typo refused");
        assert!(err.contains("udp_prot"), "{err}");
    }

    #[test]
    fn env_overrides_apply_and_bad_values_name_the_variable() {
        let mut c = Config::default();
        c.apply_env([("GIAOBAN_MEDIA_UDP_PORT".to_string(), "41000".to_string())])
            .expect("valid");
        assert_eq!(c.media.udp_port, 41000);
        let err = c
            .apply_env([("GIAOBAN_MEDIA_UDP_PORT".to_string(), "x".to_string())])
            .expect_err("bad port");
        assert!(err.to_string().contains("GIAOBAN_MEDIA_UDP_PORT"), "{err}");
    }

    #[test]
    fn validate_names_the_key() {
        let mut c = Config::default();
        c.media.workers = 0;
        let err = c.validate().expect_err("zero workers");
        assert!(err.to_string().contains("media.workers"), "{err}");
        let mut c = Config::default();
        c.tls.cert = Some("a.pem".into());
        assert!(
            c.validate()
                .expect_err("half tls")
                .to_string()
                .contains("tls.cert")
        );
    }

    #[test]
    fn health_thresholds_from_toml_and_env_and_checked() {
        let c = Config::from_toml_str("[health]\nfair_rtt_ms = 150\npoor_rtt_ms = 300\n")
            .expect("parses");
        assert_eq!(c.health.fair_rtt_ms, 150.0);
        assert_eq!(c.health.poor_rtt_ms, 300.0);
        assert_eq!(
            c.health.poor_loss_percent, 5.0,
            "others keep their defaults"
        );
        c.validate().expect("valid");

        let mut c = Config::default();
        c.apply_env([(
            "GIAOBAN_HEALTH_POOR_BITRATE_KBPS".to_string(),
            "250".to_string(),
        )])
        .expect("valid env");
        assert_eq!(c.health.poor_bitrate_kbps, 250.0);
        let err = c
            .apply_env([(
                "GIAOBAN_HEALTH_FAIR_LOSS_PERCENT".to_string(),
                "lots".to_string(),
            )])
            .expect_err("not a number");
        assert!(
            err.to_string().contains("GIAOBAN_HEALTH_FAIR_LOSS_PERCENT"),
            "{err}"
        );

        let mut c = Config::default();
        c.health.fair_loss_percent = 8.0; // above poor (5)
        let err = c.validate().expect_err("fair beyond poor");
        assert!(
            err.to_string().contains("health.poor_loss_percent"),
            "{err}"
        );
        let mut c = Config::default();
        c.health.poor_bitrate_kbps = 2000.0; // above fair (1000)
        let err = c.validate().expect_err("poor floor above fair floor");
        assert!(
            err.to_string().contains("health.poor_bitrate_kbps"),
            "{err}"
        );
        let mut c = Config::default();
        c.health.fair_jitter_ms = -1.0;
        let err = c.validate().expect_err("negative");
        assert!(err.to_string().contains("health.fair_jitter_ms"), "{err}");
        let err = Config::from_toml_str("[health]\nfair_rtt = 1\n").expect_err("typo refused");
        assert!(err.contains("fair_rtt"), "{err}");
    }

    #[test]
    fn turn_and_tcp_settings_are_checked() {
        let mut c = Config::default();
        c.apply_env([
            (
                "GIAOBAN_TURN_URLS".to_string(),
                "turn:127.0.0.1:3478?transport=udp, turns:turn.example.vn:443?transport=tcp"
                    .to_string(),
            ),
            ("GIAOBAN_MEDIA_TCP_PORT".to_string(), "443".to_string()),
        ])
        .expect("valid");
        assert_eq!(c.turn.urls.len(), 2);
        assert_eq!(c.media.tcp_port, 443);
        let err = c.validate().expect_err("TURN without a secret");
        assert!(err.to_string().contains("turn.secret"), "{err}");
        c.turn.secret = "s3cret".into();
        c.validate().expect("valid with a secret");
        c.turn.urls = vec!["http://x".into()];
        assert!(
            c.validate()
                .expect_err("bad url")
                .to_string()
                .contains("turn.urls")
        );
        c.turn.urls.clear();
        c.turn.credential_lifetime_secs = 1;
        assert!(
            c.validate()
                .expect_err("short lifetime")
                .to_string()
                .contains("turn.credential_lifetime_secs")
        );
    }

    #[test]
    fn tls_mode_self_signed_only_beyond_loopback() {
        assert_eq!(Config::default().tls_mode(), TlsMode::SelfSigned);
        assert_eq!(Config::for_tests().tls_mode(), TlsMode::Plain);
    }
}
