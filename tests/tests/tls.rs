//! TLS with a certificate from config (rustls): the API answers over HTTPS with that certificate, and plain HTTP on
//! `http.redirect_listen` is redirected to the same path on HTTPS.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("giaoban-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

async fn read_all(mut s: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_configured_certificate_and_http_redirect() {
    let dir = temp_dir("cert");
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).expect("write cert");
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).expect("write key");

    let mut config = giaoban_config::Config::for_tests();
    config.tls.cert = Some(dir.join("cert.pem"));
    config.tls.key = Some(dir.join("key.pem"));
    config.http.redirect_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let server = giaoban_signaling::start(config)
        .await
        .expect("server starts");
    assert_eq!(server.tls, Some(false), "TLS from the configured files");
    let https = server.http_addr;
    let redirect = server.redirect_addr.expect("redirect listener");

    // Plain HTTP → 308 to the same path on HTTPS.
    let mut s = tokio::net::TcpStream::connect(redirect)
        .await
        .expect("connect");
    s.write_all(b"GET /admin?token=abc HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let reply = read_all(s).await;
    assert!(reply.starts_with("HTTP/1.1 308"), "{reply}");
    let location = format!(
        "location: https://localhost:{}/admin?token=abc",
        https.port()
    );
    assert!(reply.to_ascii_lowercase().contains(&location), "{reply}");

    // HTTPS, trusting exactly the configured certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(https)
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the configured certificate");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let reply = read_all(tls).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"status\":\"ok\""), "{reply}");

    // Plain HTTP on the HTTPS port is not served.
    let mut s = tokio::net::TcpStream::connect(https)
        .await
        .expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let reply = read_all(s).await;
    assert!(
        !reply.starts_with("HTTP/1.1 200"),
        "plain HTTP answered on the TLS port: {reply}"
    );

    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
