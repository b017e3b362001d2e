//! Janus 1.1.2 VideoRoom as a side-by-side peer (see `/work/shared/peers/janus/`): its plain HTTP API (JSON over
//! HTTP/1.1 on loopback, events by long-polling `GET /janus/<session>`), the Janus process started with the
//! recipe's `start.sh` inside the network namespace `sfu`, and that namespace itself.
//!
//! Everything here talks to loopback addresses only: the HTTP API on 127.0.0.1:8088 inside the namespace, media on
//! 127.0.0.2 (the namespace's veth end).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// The namespace the recipe uses.
pub const NETNS: &str = "sfu";
/// Set in the environment of the load generator re-run inside the namespace.
pub const NETNS_ENV: &str = "LOADTEST_IN_NETNS"; // not GIAOBAN_*: the server rejects unknown GIAOBAN_ variables
/// The VideoRoom room the recipe's config creates.
pub const ROOM: u64 = 1234;

// ---------------------------------------------------------------------------------------------------------------
// HTTP/1.1 on loopback, one request per connection
// ---------------------------------------------------------------------------------------------------------------

/// `method path` with an optional JSON body; returns the parsed JSON reply (any 2xx).
async fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> anyhow::Result<Value> {
    if !addr.ip().is_loopback() {
        bail!("Janus API must be on loopback, not {addr}");
    }
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to Janus at {addr}"))?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        anyhow::Ok(out)
    };
    let out = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| anyhow!("{method} {path}: no reply within {timeout:?}"))??;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("{method} {path}: malformed reply"))?;
    let head = String::from_utf8_lossy(&out[..split]).to_string();
    let raw = &out[split + 4..];
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("{method} {path}: no status in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked { dechunk(raw)? } else { raw.to_vec() };
    if !(200..300).contains(&status) {
        bail!(
            "{method} {path}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    serde_json::from_slice(&body).with_context(|| {
        format!(
            "{method} {path}: reply is not JSON: {}",
            String::from_utf8_lossy(&body)
        )
    })
}

fn dechunk(mut raw: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("bad chunked body"))?;
        let size_text = String::from_utf8_lossy(&raw[..eol]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| anyhow!("bad chunk size {size_text:?}"))?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = raw.get(..size).ok_or_else(|| anyhow!("truncated chunk"))?;
        out.extend_from_slice(chunk);
        raw = raw.get(size + 2..).unwrap_or(&[]);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Session, handles, events
// ---------------------------------------------------------------------------------------------------------------

type Routes = Arc<StdMutex<HashMap<u64, mpsc::UnboundedSender<Value>>>>;

/// One Janus session: a long-poll task routes events to handles by `sender`; a keep-alive task keeps it open.
pub struct JanusSession {
    addr: SocketAddr,
    pub id: u64,
    routes: Routes,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    tx_counter: Arc<AtomicU64>,
}

/// One plugin handle (a publisher or a subscriber) and its events.
pub struct JanusHandle {
    addr: SocketAddr,
    session: u64,
    pub id: u64,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<Value>>,
    tx_counter: Arc<AtomicU64>,
}

fn transaction(counter: &AtomicU64) -> String {
    format!("lt{}", counter.fetch_add(1, Ordering::Relaxed))
}

/// A Janus reply must not be `error`.
fn check(reply: Value, what: &str) -> anyhow::Result<Value> {
    if reply.get("janus").and_then(Value::as_str) == Some("error") {
        bail!("Janus refused {what}: {}", reply["error"]);
    }
    Ok(reply)
}

const STEP: Duration = Duration::from_secs(10);

impl JanusSession {
    pub async fn create(addr: SocketAddr) -> anyhow::Result<JanusSession> {
        let tx_counter = Arc::new(AtomicU64::new(1));
        let reply = http_json(
            addr,
            "POST",
            "/janus",
            Some(&json!({"janus": "create", "transaction": transaction(&tx_counter)})),
            STEP,
        )
        .await?;
        let reply = check(reply, "create")?;
        let id = reply["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("create: no session id in {reply}"))?;
        let routes: Routes = Arc::new(StdMutex::new(HashMap::new()));
        let mut tasks = Vec::new();
        // Long poll: up to 30 s per request on Janus's side; several events per reply.
        let r = Arc::clone(&routes);
        tasks.push(tokio::spawn(async move {
            let path = format!("/janus/{id}?maxev=50");
            loop {
                match http_json(addr, "GET", &path, None, Duration::from_secs(40)).await {
                    Ok(v) => {
                        let events = match v {
                            Value::Array(a) => a,
                            other => vec![other],
                        };
                        for ev in events {
                            let Some(sender) = ev.get("sender").and_then(Value::as_u64) else {
                                continue; // keepalive and session-wide notices
                            };
                            let tx = r
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get(&sender)
                                .cloned();
                            if let Some(tx) = tx {
                                let _ = tx.send(ev);
                            }
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }));
        let c = Arc::clone(&tx_counter);
        tasks.push(tokio::spawn(async move {
            let path = format!("/janus/{id}");
            loop {
                tokio::time::sleep(Duration::from_secs(20)).await;
                let _ = http_json(
                    addr,
                    "POST",
                    &path,
                    Some(&json!({"janus": "keepalive", "transaction": transaction(&c)})),
                    STEP,
                )
                .await;
            }
        }));
        Ok(JanusSession {
            addr,
            id,
            routes,
            tasks,
            tx_counter,
        })
    }

    /// Attach a VideoRoom handle.
    pub async fn attach(&self) -> anyhow::Result<JanusHandle> {
        let reply = http_json(
            self.addr,
            "POST",
            &format!("/janus/{}", self.id),
            Some(&json!({
                "janus": "attach",
                "plugin": "janus.plugin.videoroom",
                "transaction": transaction(&self.tx_counter),
            })),
            STEP,
        )
        .await?;
        let reply = check(reply, "attach")?;
        let id = reply["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("attach: no handle id in {reply}"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        Ok(JanusHandle {
            addr: self.addr,
            session: self.id,
            id,
            events: tokio::sync::Mutex::new(rx),
            tx_counter: Arc::clone(&self.tx_counter),
        })
    }

    /// Destroy the session (Janus hangs up its handles) and stop the poll and keep-alive tasks.
    pub async fn destroy(&self) {
        let _ = http_json(
            self.addr,
            "POST",
            &format!("/janus/{}", self.id),
            Some(&json!({"janus": "destroy", "transaction": transaction(&self.tx_counter)})),
            Duration::from_secs(5),
        )
        .await;
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for JanusSession {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl JanusHandle {
    /// Send a plugin message (with an optional JSEP); Janus acks at once, the result comes as an event.
    pub async fn message(&self, body: Value, jsep: Option<Value>) -> anyhow::Result<()> {
        let mut msg = json!({
            "janus": "message",
            "transaction": transaction(&self.tx_counter),
            "body": body,
        });
        if let Some(j) = jsep {
            msg["jsep"] = j;
        }
        let reply = http_json(
            self.addr,
            "POST",
            &format!("/janus/{}/{}", self.session, self.id),
            Some(&msg),
            STEP,
        )
        .await?;
        check(reply, "message")?;
        Ok(())
    }

    /// The next event for this handle that matches `pred`, skipping others; fails on a VideoRoom error event,
    /// a hangup, or after `timeout`.
    pub async fn wait_event(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let mut rx = self.events.lock().await;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ev = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .map_err(|_| anyhow!("no `{what}` from Janus within {timeout:?}"))?
                .ok_or_else(|| anyhow!("Janus event stream ended before `{what}`"))?;
            if let Some(err) = ev["plugindata"]["data"].get("error") {
                bail!(
                    "Janus VideoRoom error while waiting for `{what}`: {} ({err})",
                    ev["plugindata"]["data"]["error_code"]
                );
            }
            if ev["janus"] == "hangup" || ev["janus"] == "detached" {
                bail!("Janus hung up while waiting for `{what}`: {ev}");
            }
            if pred(&ev) {
                return Ok(ev);
            }
        }
    }
}

/// A JSEP object's SDP, or an error naming the event.
pub fn jsep_sdp(ev: &Value, typ: &str) -> anyhow::Result<String> {
    let jsep = &ev["jsep"];
    if jsep["type"] != typ {
        bail!("expected a JSEP {typ} in {ev}");
    }
    jsep["sdp"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("JSEP without sdp in {ev}"))
}

// ---------------------------------------------------------------------------------------------------------------
// The Janus process (recipe's start.sh) and the namespace
// ---------------------------------------------------------------------------------------------------------------

/// A Janus started by the recipe's `start.sh`; killed on [`stop`](Self::stop) or drop.
pub struct JanusProcess {
    pub pid: u32,
    pub api: SocketAddr,
    pub log: PathBuf,
    stopped: bool,
}

impl JanusProcess {
    /// Run `start.sh WORKDIR` from `recipe` (we are already inside the namespace, so it only starts Janus), then
    /// wait until the HTTP API answers `info`.
    pub async fn start(recipe: &Path, workdir: &Path) -> anyhow::Result<JanusProcess> {
        let script = recipe.join("start.sh");
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::process::Command::new("sh")
                .arg(&script)
                .arg(workdir)
                .output(),
        )
        .await
        .map_err(|_| anyhow!("{} did not finish within 20 s", script.display()))?
        .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "{} failed: {}{}",
                script.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let pid_text = std::fs::read_to_string(workdir.join("janus.pid"))
            .with_context(|| format!("reading {}/janus.pid", workdir.display()))?;
        let pid: u32 = pid_text
            .trim()
            .parse()
            .map_err(|_| anyhow!("bad janus.pid {pid_text:?}"))?;
        let mut p = JanusProcess {
            pid,
            api: SocketAddr::from(([127, 0, 0, 1], 8088)),
            log: workdir.join("log/janus.log"),
            stopped: false,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                p.stopped = true;
                bail!("Janus exited at start; see {}", p.log.display());
            }
            match http_json(p.api, "GET", "/janus/info", None, Duration::from_secs(2)).await {
                Ok(v) if v["janus"] == "server_info" => break,
                _ if tokio::time::Instant::now() >= deadline => {
                    p.stop().await;
                    bail!(
                        "Janus API at {} not answering within 15 s; see {}",
                        p.api,
                        p.log.display()
                    );
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        Ok(p)
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub async fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let pid = self.pid.to_string();
        let _ = tokio::process::Command::new("kill")
            .arg(&pid)
            .status()
            .await;
        for _ in 0..50 {
            if !alive(self.pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = tokio::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .await;
    }
}

/// Whether a process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .map(|(_, r)| r.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

impl Drop for JanusProcess {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
        }
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let st = std::process::Command::new("ip")
        .args(args)
        .status()
        .with_context(|| format!("ip {}", args.join(" ")))?;
    if !st.success() {
        bail!("`ip {}` failed ({st})", args.join(" "));
    }
    Ok(())
}

/// Whether the namespace exists.
pub fn netns_exists() -> bool {
    Path::new("/var/run/netns").join(NETNS).exists()
}

/// Create the namespace as the recipe's start.sh does (lo up; veth0 with 127.0.0.2/32; IPv6 off).
pub fn netns_create() -> anyhow::Result<()> {
    ip(&["netns", "add", NETNS])?;
    let setup = (|| {
        ip(&["-n", NETNS, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", NETNS, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
        ])?;
        ip(&["-n", NETNS, "addr", "add", "127.0.0.2/32", "dev", "veth0"])?;
        ip(&["-n", NETNS, "link", "set", "veth0", "up"])?;
        ip(&["-n", NETNS, "link", "set", "veth1", "up"])?;
        ip(&[
            "netns",
            "exec",
            NETNS,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
        ])
    })();
    if let Err(e) = setup {
        let _ = ip(&["netns", "del", NETNS]);
        return Err(e);
    }
    Ok(())
}

pub fn netns_delete() {
    if let Err(e) = ip(&["netns", "del", NETNS]) {
        eprintln!("removing namespace {NETNS}: {e:#}");
    }
}

/// Whether this process runs as root (namespaces and Janus's start.sh need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|v| v == "0"))
        })
        .unwrap_or(false)
}
