//! The giaoban server binary: `giaoban [--config PATH]`.

use clap::Parser;
use giaoban_config::{Config, LogFormat};
use std::path::PathBuf;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "giaoban",
    version,
    about = "giaoban: video briefings (giao ban trực tuyến) server"
)]
struct Cli {
    /// TOML configuration file (see config/giaoban.example.toml). Without it, embedded defaults apply.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    let filter = EnvFilter::try_new(&config.log.level)
        .map_err(|e| anyhow::anyhow!("config key `log.level`: {e}"))?;
    match config.log.format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }

    let listen = config.http.listen;
    let server = giaoban_signaling::start(config).await?;
    println!("giaoban listening on {}", server.url());
    if listen.ip().is_unspecified() {
        let scheme = if server.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let media = giaoban_sfu::SfuConfig {
            listen_ip: server.hub.config.media.listen_ip,
            udp_port: server.media_addr.port(),
            announced_ips: server.hub.config.media.announced_ips.clone(),
            workers: 1,
            tcp_port: None,
            max_publish_bps: 0,
        };
        for ip in giaoban_sfu::announced_ips(&media) {
            // HTTP on 0.0.0.0 is not reachable at the IPv6 addresses a dual-stack media port announces.
            if !ip.is_loopback() && (ip.is_ipv4() || listen.is_ipv6()) {
                println!(
                    "  from the LAN: {scheme}://{}/",
                    std::net::SocketAddr::new(ip, server.http_addr.port())
                );
            }
        }
    }
    if let Some(addr) = server.redirect_addr {
        println!("  plain HTTP on {addr} redirects to HTTPS");
    }
    println!(
        "  media: UDP port {} (open it in the firewall for halls on other machines)",
        server.media_addr.port()
    );
    if let Some(tcp) = server.hub.sfu.tcp_addrs.first() {
        println!(
            "  media over TCP (ICE-TCP, for halls whose firewall blocks UDP): TCP port {}",
            tcp.port()
        );
    }
    if server.tls == Some(true) {
        println!(
            "  HTTPS uses a generated self-signed certificate: browsers will ask once to accept it \
             (set tls.cert and tls.key to use your own)"
        );
    }

    println!(
        "  admin page: {}",
        giaoban_signaling::admin::admin_link(&server.hub)
    );
    if let Some((meeting, links)) = &server.demo {
        println!(
            "  demo meeting \"{}\" (created on this first start):",
            meeting.title
        );
        for link in links
            .iter()
            .filter(|l| l.role != giaoban_signaling::protocol::Role::Secretary)
        {
            println!("    {:<40} {}", link.name, link.url);
        }
    }

    shutdown_signal().await;
    println!("giaoban shutting down");
    server.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
