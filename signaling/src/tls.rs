//! TLS for HTTP and WebSocket (rustls): certificate files from config, or a generated self-signed one so that
//! browsers on the LAN get the secure context camera access needs.

use axum_server::tls_rustls::RustlsConfig;
use giaoban_config::TlsMode;
use std::net::IpAddr;

pub enum Tls {
    Off,
    On {
        config: RustlsConfig,
        self_signed: bool,
    },
}

/// Load or generate the certificate that `mode` asks for. `names` go into a generated certificate's SANs.
pub async fn prepare(mode: &TlsMode, names: &[IpAddr]) -> anyhow::Result<Tls> {
    // One process-wide provider for rustls (ring, no C toolchain).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match mode {
        TlsMode::Plain => Ok(Tls::Off),
        TlsMode::Files { cert, key } => {
            let config = RustlsConfig::from_pem_file(cert, key).await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot load TLS certificate {} / key {}: {e}",
                    cert.display(),
                    key.display()
                )
            })?;
            Ok(Tls::On {
                config,
                self_signed: false,
            })
        }
        TlsMode::SelfSigned => {
            let mut sans: Vec<String> = vec!["localhost".into()];
            sans.extend(names.iter().map(|ip| ip.to_string()));
            sans.push("127.0.0.1".into());
            sans.dedup();
            let cert = rcgen::generate_simple_self_signed(sans)?;
            let config = RustlsConfig::from_pem(
                cert.cert.pem().into_bytes(),
                cert.signing_key.serialize_pem().into_bytes(),
            )
            .await?;
            Ok(Tls::On {
                config,
                self_signed: true,
            })
        }
    }
}
