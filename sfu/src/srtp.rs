//! The forwarded-RTP fast path's keys: the SFU encrypts what it forwards to a subscriber with its own SRTP
//! context instead of sending each packet through the subscriber's RTCPeerConnection write pipeline (interceptors,
//! per-stage queues, SRTP, ICE/DTLS handlers — ~5 µs per packet even trimmed, `../shared/DESIGN.md`).
//!
//! rtc 0.21 keeps the DTLS-exported SRTP keys private. It does let each connection have its own crypto provider
//! (`SettingEngineBuilder::with_crypto_provider`), and rtc-srtp derives its session keys through that provider's
//! `block_encrypt` (the AES-CM PRF of RFC 3711 §4.3.3, keyed with the master key, the first input block being the
//! master salt for the encryption label 0). `KeyCapture` wraps the default provider, passes every call through
//! unchanged, and notes the first such derivation: rtc builds the local (outbound) SRTP context before the remote
//! one, so it is the master key and salt the subscriber expects our packets under. Only AEAD AES-128-GCM (the
//! profile rtc prefers and browsers offer) is taken; any other profile leaves the connection on rtc's own path.
//!
//! The keys are read once, when the connection reaches `connected`; nothing here runs per packet.

use rtc::crypto::ActiveKeyExchange;
use rtc::crypto::{
    AeadAlgorithm, AeadCipher, BlockCipherAlgorithm, CbcAlgorithm, CbcCipher, CryptoAlgorithm,
    CryptoError, HashAlgorithm, HmacAlgorithm, KeyExchangeAlgorithm, Mac, PublicKey, RTCCrypto,
    RTCCryptoProvider, RTCRandom, SignatureScheme, SigningKey, StreamCipher, StreamCipherAlgorithm,
};
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;
use std::sync::{Arc, Mutex};

/// AES-128-GCM SRTP: 16-byte master key, 12-byte master salt (RFC 7714).
const KEY_LEN: usize = 16;
const SALT_LEN: usize = 12;

#[derive(Default)]
struct Seen {
    /// The first AES-128 PRF call: its key and input block (before encryption).
    first_prf: Option<([u8; KEY_LEN], [u8; 16])>,
    /// An AES-128-GCM cipher was made right after that derivation: the SRTP profile is AEAD AES-128-GCM.
    gcm128_after_prf: bool,
    /// Something other than AES-128-GCM was made after it (another profile): no fast path.
    other_after_prf: bool,
}

/// A crypto provider for one connection that notes its outbound SRTP master key and salt.
pub struct KeyCapture {
    inner: Arc<dyn RTCCryptoProvider>,
    crypto: CapturingCrypto,
}

struct CapturingCrypto {
    inner: Arc<dyn RTCCryptoProvider>,
    seen: Mutex<Seen>,
}

impl KeyCapture {
    pub fn new(inner: Arc<dyn RTCCryptoProvider>) -> Self {
        KeyCapture {
            crypto: CapturingCrypto {
                inner: inner.clone(),
                seen: Mutex::new(Seen::default()),
            },
            inner,
        }
    }

    /// The outbound SRTP context for the subscriber, once DTLS has keyed the connection with AES-128-GCM.
    pub fn outbound_context(&self) -> Option<Context> {
        let (key, salt) = self.master_key_and_salt()?;
        Context::new(
            &key,
            &salt,
            ProtectionProfile::AeadAes128Gcm,
            None,
            None,
            self.inner.crypto(),
        )
        .map_err(|e| tracing::warn!(error = %e, "SRTP fast path: context not made"))
        .ok()
    }

    fn master_key_and_salt(&self) -> Option<([u8; KEY_LEN], [u8; SALT_LEN])> {
        let seen = self.crypto.seen.lock().ok()?;
        if !seen.gcm128_after_prf || seen.other_after_prf {
            return None;
        }
        let (key, block) = seen.first_prf?;
        let mut salt = [0u8; SALT_LEN];
        // Label 0 is XORed into byte 7: zero leaves the salt as it is.
        salt.copy_from_slice(&block[..SALT_LEN]);
        Some((key, salt))
    }
}

impl RTCCryptoProvider for KeyCapture {
    fn name(&self) -> &'static str {
        "giaoban-key-capture"
    }

    fn crypto(&self) -> &dyn RTCCrypto {
        &self.crypto
    }

    fn random(&self) -> &dyn RTCRandom {
        self.inner.random()
    }
}

impl CapturingCrypto {
    fn note_cipher(&self, gcm128: bool) {
        if let Ok(mut seen) = self.seen.lock()
            && seen.first_prf.is_some()
            && !seen.gcm128_after_prf
            && !seen.other_after_prf
        {
            if gcm128 {
                seen.gcm128_after_prf = true;
            } else {
                seen.other_after_prf = true;
            }
        }
    }
}

impl RTCCrypto for CapturingCrypto {
    fn supports(&self, algorithm: CryptoAlgorithm) -> bool {
        self.inner.crypto().supports(algorithm)
    }

    fn hash(&self, algorithm: HashAlgorithm, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.crypto().hash(algorithm, data)
    }

    fn block_encrypt(
        &self,
        algorithm: BlockCipherAlgorithm,
        key: &[u8],
        block: &mut [u8],
    ) -> Result<(), CryptoError> {
        if algorithm == BlockCipherAlgorithm::Aes128
            && key.len() == KEY_LEN
            && block.len() == 16
            && let Ok(mut seen) = self.seen.lock()
            && seen.first_prf.is_none()
        {
            let mut k = [0u8; KEY_LEN];
            k.copy_from_slice(key);
            let mut b = [0u8; 16];
            b.copy_from_slice(block);
            seen.first_prf = Some((k, b));
        }
        self.inner.crypto().block_encrypt(algorithm, key, block)
    }

    fn new_hmac(&self, algorithm: HmacAlgorithm, key: &[u8]) -> Result<Box<dyn Mac>, CryptoError> {
        self.inner.crypto().new_hmac(algorithm, key)
    }

    fn new_stream_cipher(
        &self,
        algorithm: StreamCipherAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn StreamCipher>, CryptoError> {
        self.note_cipher(false);
        self.inner.crypto().new_stream_cipher(algorithm, key)
    }

    fn new_aead(
        &self,
        algorithm: AeadAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn AeadCipher>, CryptoError> {
        self.note_cipher(algorithm == AeadAlgorithm::Aes128Gcm);
        self.inner.crypto().new_aead(algorithm, key)
    }

    fn new_cbc(
        &self,
        algorithm: CbcAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn CbcCipher>, CryptoError> {
        self.inner.crypto().new_cbc(algorithm, key)
    }

    fn start_key_exchange(
        &self,
        algorithm: KeyExchangeAlgorithm,
    ) -> Result<Box<dyn ActiveKeyExchange>, CryptoError> {
        self.inner.crypto().start_key_exchange(algorithm)
    }

    fn generate_signing_key(
        &self,
        scheme: SignatureScheme,
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.inner.crypto().generate_signing_key(scheme)
    }

    fn import_signing_key(
        &self,
        scheme: SignatureScheme,
        pkcs8_der: &[u8],
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.inner.crypto().import_signing_key(scheme, pkcs8_der)
    }

    fn verify_signature(
        &self,
        scheme: SignatureScheme,
        public_key: PublicKey<'_>,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        self.inner
            .crypto()
            .verify_signature(scheme, public_key, message, signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The captured key and salt make a context whose packets rtc-srtp's own remote context (made from the same
    /// master key and salt, as the subscriber's would be) decrypts.
    #[test]
    fn captured_keys_encrypt_what_the_peer_decrypts() {
        let provider = rtc::crypto::default_provider().expect("provider");
        let capture = KeyCapture::new(provider.clone());
        let key = [7u8; KEY_LEN];
        let salt = [9u8; SALT_LEN];
        // What rtc does when DTLS completes: the local context first, through the connection's provider.
        let _local = Context::new(
            &key,
            &salt,
            ProtectionProfile::AeadAes128Gcm,
            None,
            None,
            capture.crypto(),
        )
        .expect("local context");
        let _remote = Context::new(
            &[1u8; KEY_LEN],
            &[2u8; SALT_LEN],
            ProtectionProfile::AeadAes128Gcm,
            None,
            None,
            capture.crypto(),
        )
        .expect("remote context");
        assert_eq!(capture.master_key_and_salt(), Some((key, salt)));

        let mut ours = capture.outbound_context().expect("fast path context");
        let mut peer = Context::new(
            &key,
            &salt,
            ProtectionProfile::AeadAes128Gcm,
            None,
            None,
            provider.crypto(),
        )
        .expect("peer context");
        let header = rtc::rtp::header::Header {
            version: 2,
            payload_type: 96,
            sequence_number: 4242,
            timestamp: 90_000,
            ssrc: 0x1234_5678,
            ..Default::default()
        };
        let packet = rtc::rtp::Packet {
            header: header.clone(),
            payload: bytes::Bytes::from_static(b"commune hall video"),
        };
        use rtc::shared::marshal::Marshal;
        let plain = packet.marshal().expect("marshal");
        let sealed = ours
            .encrypt_rtp_with_header(&plain, &header)
            .expect("encrypt");
        assert_ne!(&sealed[..], &plain[..]);
        let opened = peer.decrypt_rtp(&sealed).expect("the peer decrypts");
        assert_eq!(&opened[..], &plain[..]);
    }

    #[test]
    fn another_profile_leaves_the_fast_path_off() {
        let provider = rtc::crypto::default_provider().expect("provider");
        let capture = KeyCapture::new(provider);
        let _local = Context::new(
            &[7u8; 16],
            &[9u8; 14],
            ProtectionProfile::Aes128CmHmacSha1_80,
            None,
            None,
            capture.crypto(),
        )
        .expect("local context");
        assert!(capture.outbound_context().is_none());
    }
}
