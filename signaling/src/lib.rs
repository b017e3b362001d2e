//! giaoban's control plane: HTTP and WebSocket (axum), rooms and participants, and the glue to the media
//! plane. `start` runs a whole server; the binary (`main.rs`) adds config loading, logging and signals.

pub mod admin;
pub mod auth;
pub mod http;
pub mod hub;
pub mod limits;
pub mod links;
pub mod metrics;
pub mod moderation;
pub mod pretest;
pub mod protocol;
pub mod recording;
pub mod rules;
pub mod session;
pub mod speaker;
pub mod store;
pub mod tls;
pub mod turn;

use giaoban_config::Config;
use giaoban_sfu::SfuConfig;
use hub::Hub;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A running server.
pub struct RunningServer {
    pub http_addr: SocketAddr,
    /// The first media worker's UDP address.
    pub media_addr: SocketAddr,
    /// Whether HTTP is served over TLS, and if so whether with a generated certificate.
    pub tls: Option<bool>,
    /// The plain-HTTP listener that redirects to HTTPS (`http.redirect_listen`), if any.
    pub redirect_addr: Option<SocketAddr>,
    pub hub: Arc<Hub>,
    /// The demo meeting and its links, created on the first start with an empty data directory.
    pub demo: Option<(store::Meeting, Vec<admin::JoinLink>)>,
    handle: axum_server::Handle<SocketAddr>,
    floor_timer: tokio::task::JoinHandle<()>,
    retention: tokio::task::JoinHandle<()>,
    serve: tokio::task::JoinHandle<()>,
    events: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// The URL to open (loopback if the server listens on all addresses).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let addr = if self.http_addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], self.http_addr.port()))
        } else {
            self.http_addr
        };
        format!("{scheme}://{addr}/")
    }

    /// Tell every participant, close their connections, stop the media workers and the HTTP server.
    pub async fn shutdown(self) {
        self.hub.shutdown();
        // Let the goodbyes reach the sockets.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.handle.graceful_shutdown(Some(Duration::from_secs(2)));
        let _ = self.serve.await;
        self.events.abort();
        self.floor_timer.abort();
        self.retention.abort();
    }
}

/// Start the media plane and the HTTP server as configured.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    config.validate()?;
    let config = Arc::new(config);
    let sfu_config = SfuConfig {
        listen_ip: config.media.listen_ip,
        udp_port: config.media.udp_port,
        announced_ips: config.media.announced_ips.clone(),
        workers: config.media.workers,
        tcp_port: (config.media.tcp_port != 0).then_some(config.media.tcp_port),
        max_publish_bps: u64::from(config.limits.max_publish_kbps) * 1000,
    };
    let announced = giaoban_sfu::announced_ips(&sfu_config);
    let (sfu, mut media_events) = giaoban_sfu::start(&sfu_config).map_err(|e| {
        anyhow::anyhow!(
            "cannot bind media UDP port {}:{} (media.udp_port) or ICE-TCP port {} (media.tcp_port): {e}",
            config.media.listen_ip,
            config.media.udp_port,
            config.media.tcp_port
        )
    })?;
    let media_addr = sfu.media_addrs[0];
    let store = Arc::new(store::Store::open(&config.storage.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot open the database in {} (storage.data_dir): {e}",
            config.storage.data_dir.display()
        )
    })?);
    let auth = Arc::new(
        auth::Auth::load_or_create(&config.auth.secret, &config.storage.data_dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot keep the generated secret in {} (storage.data_dir): {e}",
                config.storage.data_dir.display()
            )
        })?,
    );
    let first_start = store.is_empty()?;

    let listener = std::net::TcpListener::bind(config.http.listen).map_err(|e| {
        anyhow::anyhow!("cannot listen on {} (http.listen): {e}", config.http.listen)
    })?;
    listener.set_nonblocking(true)?;
    let http_addr = listener.local_addr()?;
    let tls_mode = config.tls_mode();
    let public_url = public_url(
        &config,
        &announced,
        http_addr,
        tls_mode != giaoban_config::TlsMode::Plain,
    );
    let hub = Arc::new(Hub::new(config.clone(), sfu, store, auth, public_url));
    let demo = if first_start {
        Some(admin::create_demo(&hub)?)
    } else {
        None
    };
    // Old recordings go at start and then daily (storage.recording_retention_days).
    let retention_dir = config.storage.data_dir.clone();
    let retention_days = config.storage.recording_retention_days;
    let retention = tokio::spawn(async move {
        let mut day = tokio::time::interval(Duration::from_secs(24 * 3600));
        loop {
            day.tick().await;
            let dir = retention_dir.clone();
            let _ = tokio::task::spawn_blocking(move || {
                recording::prune(&dir, retention_days, std::time::SystemTime::now())
            })
            .await;
        }
    });
    let timer_hub = hub.clone();
    let floor_timer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut last_quality = tokio::time::Instant::now();
        let mut last_speakers = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            timer_hub.expire_floors();
            timer_hub.expire_away();
            timer_hub.client_limits.prune(std::time::Instant::now());
            if last_speakers.elapsed() >= speaker::SPEAKER_INTERVAL {
                last_speakers = tokio::time::Instant::now();
                speaker::push_speakers(&timer_hub).await;
            }
            if last_quality.elapsed() >= links::QUALITY_INTERVAL {
                last_quality = tokio::time::Instant::now();
                links::push_quality(&timer_hub).await;
            }
        }
    });

    let events_hub = hub.clone();
    let events = tokio::spawn(async move {
        while let Some(event) = media_events.recv().await {
            events_hub.on_media_event(event);
        }
    });

    let app = http::router(hub.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let handle = axum_server::Handle::new();
    let tls = tls::prepare(&tls_mode, &announced).await?;
    let (serve, tls_flag) = match tls {
        tls::Tls::Off => {
            // TCP_NODELAY: without it the kernel holds a small write (the `subscribe_offer` right after `joined`)
            // until the client acknowledges the one before, which a delayed ACK puts off by 40 ms (Linux) to
            // 200 ms (Windows) — on every join.
            let server = axum_server::from_tcp(listener)?
                .acceptor(axum_server::accept::NoDelayAcceptor::new())
                .handle(handle.clone());
            (
                tokio::spawn(async move {
                    if let Err(e) = server.serve(app).await {
                        tracing::error!(error = %e, "http server failed");
                    }
                }),
                None,
            )
        }
        tls::Tls::On {
            config: rustls,
            self_signed,
        } => {
            let server = axum_server::from_tcp_rustls(listener, rustls)?
                .map(|tls| tls.acceptor(axum_server::accept::NoDelayAcceptor::new()))
                .handle(handle.clone());
            (
                tokio::spawn(async move {
                    if let Err(e) = server.serve(app).await {
                        tracing::error!(error = %e, "https server failed");
                    }
                }),
                Some(self_signed),
            )
        }
    };
    let redirect_addr = match (config.http.redirect_listen, tls_flag) {
        (Some(addr), Some(_)) => Some(http::serve_redirect(
            addr,
            http_addr.port(),
            handle.clone(),
        )?),
        _ => None,
    };
    Ok(RunningServer {
        http_addr,
        media_addr,
        tls: tls_flag,
        redirect_addr,
        hub,
        demo,
        handle,
        floor_timer,
        retention,
        serve,
        events,
    })
}

/// The base URL put in join links: configured, or this server's scheme, first reachable address and port.
fn public_url(
    config: &Config,
    announced: &[std::net::IpAddr],
    http_addr: SocketAddr,
    tls: bool,
) -> String {
    if !config.auth.public_url.is_empty() {
        return config.auth.public_url.trim_end_matches('/').to_owned();
    }
    let scheme = if tls { "https" } else { "http" };
    let ip = if http_addr.ip().is_unspecified() {
        announced
            .iter()
            .copied()
            .find(|ip| !ip.is_loopback())
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]))
    } else {
        http_addr.ip()
    };
    format!("{scheme}://{}", SocketAddr::new(ip, http_addr.port()))
}
