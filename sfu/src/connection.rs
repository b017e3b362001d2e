//! Building one Connection: an `rtc` RTCPeerConnection configured as an ICE-lite, DTLS-server endpoint whose
//! only candidates are the shared media port on the announced addresses.

use crate::api::Leg;
use crate::srtp::KeyCapture;
use rtc::crypto::SignatureScheme;
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::interceptor::Registry;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_rtcp_reports, register_default_interceptors,
};
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long without any packet from the peer before ICE says disconnected, then failed.
pub const ICE_DISCONNECTED_AFTER: Duration = Duration::from_secs(5);
pub const ICE_FAILED_AFTER: Duration = Duration::from_secs(10);
pub const ICE_KEEPALIVE: Duration = Duration::from_secs(2);

/// Opus as the SFU offers it: in-band FEC on.
pub fn opus() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.into(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
        rtcp_feedback: vec![],
    }
}

/// RED around Opus (`red.rs`), as the SFU offers it.
pub fn red() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: crate::red::MIME_TYPE.into(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: crate::red::RED_FMTP.into(),
        rtcp_feedback: vec![],
    }
}

/// The codecs the SFU forwards. Payload types are the server's own (they matter only on the subscribe leg,
/// where the server offers; on the publish leg the browser's offer decides).
fn media_engine() -> Result<MediaEngine, rtc::shared::error::Error> {
    let mut engine = MediaEngine::default();
    let video_feedback = || {
        vec![
            RTCPFeedback {
                typ: "ccm".into(),
                parameter: "fir".into(),
            },
            RTCPFeedback {
                typ: "goog-remb".into(),
                parameter: String::new(),
            },
        ]
    };
    engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: opus(),
            payload_type: 111,
        },
        RtpCodecKind::Audio,
    )?;
    // RFC 2198 redundant Opus: a publisher that puts it ahead of Opus in its offer (the web client does) sends
    // it; subscribers that accept it get it as sent, the others the primary as plain Opus (`red.rs`).
    engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: red(),
            payload_type: crate::red::RED_PAYLOAD_TYPE,
        },
        RtpCodecKind::Audio,
    )?;
    engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: MIME_TYPE_VP8.into(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: String::new(),
                rtcp_feedback: video_feedback(),
            },
            payload_type: 96,
        },
        RtpCodecKind::Video,
    )?;
    for (pt, profile) in [(102u8, "42e01f"), (108, "42001f")] {
        engine.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: MIME_TYPE_H264.into(),
                    clock_rate: 90_000,
                    channels: 0,
                    sdp_fmtp_line: format!(
                        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile}"
                    ),
                    rtcp_feedback: video_feedback(),
                },
                payload_type: pt,
            },
            RtpCodecKind::Video,
        )?;
    }
    // RFC 6464 audio level on publish legs (browsers offer it): the IT board's level bar per hall.
    engine.register_header_extension(
        rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
            uri: AUDIO_LEVEL_URI.to_owned(),
        },
        RtpCodecKind::Audio,
        None,
    )?;
    Ok(engine)
}

/// The RFC 6464 client-to-mixer audio level header extension.
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

/// Everything a new connection needs to know about where it lives.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Host candidates: each announced IP with the shared media port.
    pub candidates: Vec<SocketAddr>,
    /// ICE-TCP passive host candidates: each announced IP with the worker's TCP port (empty: ICE-TCP off).
    pub tcp_candidates: Vec<SocketAddr>,
    /// The worker's DTLS certificate, shared by its connections (as mediasoup does per worker): generating a key
    /// pair per connection costs every join. `None`: each connection makes its own.
    pub certificate: Option<RTCCertificate>,
}

/// One ECDSA P-256 certificate for a worker's connections.
pub fn worker_certificate() -> Option<RTCCertificate> {
    let provider = rtc::crypto::default_provider().ok()?;
    let params = CertificateParams::new(vec!["giaoban".to_owned()]).ok()?;
    RTCCertificate::generate(provider.crypto(), SignatureScheme::EcdsaP256Sha256, params)
        .map_err(|e| tracing::warn!(error = %e, "shared DTLS certificate not generated; one per connection"))
        .ok()
}

pub fn build(
    now: Instant,
    leg: Leg,
    endpoint: &Endpoint,
    ufrag: &str,
    pwd: &str,
) -> Result<RTCPeerConnection, rtc::shared::error::Error> {
    build_keyed(now, leg, endpoint, ufrag, pwd).map(|(pc, _)| pc)
}

/// `build`, and for a subscribe leg the `KeyCapture` that will hold its outbound SRTP keys once DTLS completes
/// (the forwarded-RTP fast path, `srtp.rs`).
pub fn build_keyed(
    now: Instant,
    leg: Leg,
    endpoint: &Endpoint,
    ufrag: &str,
    pwd: &str,
) -> Result<(RTCPeerConnection, Option<Arc<KeyCapture>>), rtc::shared::error::Error> {
    let mut engine = media_engine()?;
    let registry = match leg {
        // Publish: rtc's defaults — NACKs to the publisher for what the SFU lost, receiver reports,
        // transport-wide CC feedback for the browser's uplink estimate, the mid/rid extensions of simulcast.
        Leg::Publish | Leg::Screen => register_default_interceptors(Registry::new(), &mut engine)?,
        // Subscribe: the SFU answers NACKs itself from each producer's cache (`retransmit.rs`), so no responder
        // keeps a copy of every packet per subscriber; NACK is offered for audio too (a commune link's lost
        // speech is repaired, not only its video). Sender reports (lip sync, RTT) stay rtc's. Nothing else
        // runs per forwarded packet.
        Leg::Subscribe => {
            for (kind, parameter) in [
                (RtpCodecKind::Video, ""),
                (RtpCodecKind::Video, "pli"),
                (RtpCodecKind::Audio, ""),
            ] {
                engine.register_feedback(
                    RTCPFeedback {
                        typ: "nack".to_owned(),
                        parameter: parameter.to_owned(),
                    },
                    kind,
                );
            }
            // Transport-wide CC: the SFU numbers what it sends on this leg itself (`twcc.rs`) and reads the
            // subscriber's feedback for its downlink estimate and probes; no rtc interceptor takes part.
            for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
                engine.register_feedback(
                    RTCPFeedback {
                        typ: "transport-cc".to_owned(),
                        parameter: String::new(),
                    },
                    kind,
                );
                engine.register_header_extension(
                    rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
                        uri: crate::twcc::URI.to_owned(),
                    },
                    kind,
                    None,
                )?;
            }
            configure_rtcp_reports(Registry::new())
        }
    }
    // The worker hears keyframe requests, NACKs and receiver reports through this tap.
    .with(
        rtc::interceptor::Slot::from(crate::feedback::SLOT),
        crate::feedback::KeyframeRequestTap::default(),
    );
    let keys = match leg {
        Leg::Subscribe => rtc::crypto::default_provider()
            .ok()
            .map(|p| Arc::new(KeyCapture::new(p))),
        Leg::Publish | Leg::Screen => None,
    };
    let mut settings = SettingEngineBuilder::new();
    if let Some(k) = &keys {
        settings = settings.with_crypto_provider(k.clone());
    }
    let settings = settings
        // The fast path seals AES-128-GCM and AES-CM-128 with an 80-bit HMAC-SHA1 tag (`srtp.rs`). The DTLS
        // server takes the first profile of the client's list that it has, and libwebrtc lists AES-256-GCM first
        // when GCM is enabled: offered here, it would win and leave the fast path. Chromium by default offers
        // AES-CM only.
        .with_srtp_protection_profiles(vec![
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        ])
        .with_lite(true)
        .with_ice_credentials(ufrag.to_owned(), pwd.to_owned())
        .with_answering_dtls_role(RTCDtlsRole::Server)
        .with_ice_timeouts(
            Some(ICE_DISCONNECTED_AFTER),
            Some(ICE_FAILED_AFTER),
            Some(ICE_KEEPALIVE),
        )
        .build();
    let mut config = RTCConfigurationBuilder::new();
    if let Some(cert) = &endpoint.certificate {
        config = config.with_certificates(vec![cert.clone()]);
    }
    let config = config.build();
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(config)
        .with_setting_engine(settings)
        .with_media_engine(engine)
        .with_interceptor_registry(registry)
        .build(now)?;
    for addr in &endpoint.candidates {
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: addr.ip().to_string(),
                port: addr.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()?;
        pc.add_local_candidate(RTCIceCandidate::from(&candidate).to_json()?)?;
    }
    // ICE-TCP beside UDP: passive (the browser connects), with the lower priority RFC 6544 gives TCP, so a
    // browser uses it only when UDP does not get through.
    for addr in &endpoint.tcp_candidates {
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "tcp".to_owned(),
                address: addr.ip().to_string(),
                port: addr.port(),
                component: 1,
                ..Default::default()
            },
            tcp_type: rtc::ice::tcp_type::TcpType::Passive,
        }
        .new_candidate_host()?;
        pc.add_local_candidate(RTCIceCandidate::from(&candidate).to_json()?)?;
    }
    // End of candidates: the server has no others to trickle.
    pc.add_local_candidate(RTCIceCandidateInit::default())?;
    tracing::trace!(?leg, ufrag, "connection built");
    Ok((pc, keys))
}

/// A random ICE credential of `len` characters from the ICE alphabet.
pub fn random_ice_string(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}
