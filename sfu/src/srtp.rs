//! The forwarded-RTP fast path's keys: the SFU encrypts what it forwards to a subscriber with its own SRTP
//! context instead of sending each packet through the subscriber's RTCPeerConnection write pipeline (interceptors,
//! per-stage queues, SRTP, ICE/DTLS handlers — ~5 µs per packet even trimmed, `../shared/DESIGN.md`).
//!
//! rtc 0.21 keeps the DTLS-exported SRTP keys private. It does let each connection have its own crypto provider
//! (`SettingEngineBuilder::with_crypto_provider`), and rtc-srtp derives its session keys through that provider's
//! `block_encrypt` (the AES-CM PRF of RFC 3711 §4.3.3, keyed with the master key, the first input block being the
//! master salt for the encryption label 0). `KeyCapture` wraps the default provider, passes every call through
//! unchanged, and notes the first such derivation: rtc builds the local (outbound) SRTP context before the remote
//! one, so it is the master key and salt the subscriber expects our packets under. Two profiles are taken:
//! AEAD AES-128-GCM (the profile rtc prefers, our simulated endpoints' first) and AES-CM-128 with HMAC-SHA1-80
//! (the only one Chromium offers by default); any other leaves the connection on rtc's own path.
//!
//! The keys are read once, when the connection reaches `connected`; nothing here runs per packet.

use rtc::crypto::ActiveKeyExchange;
use rtc::crypto::{
    AeadAlgorithm, AeadCipher, BlockCipherAlgorithm, CbcAlgorithm, CbcCipher, CryptoAlgorithm,
    CryptoError, HashAlgorithm, HmacAlgorithm, KeyExchangeAlgorithm, Mac, PublicKey, RTCCrypto,
    RTCCryptoProvider, RTCRandom, SignatureScheme, SigningKey, StreamCipher, StreamCipherAlgorithm,
};
#[cfg(test)]
use rtc::srtp::context::Context;
#[cfg(test)]
use rtc::srtp::protection_profile::ProtectionProfile;
use std::sync::{Arc, Mutex};

/// AES-128 SRTP master key; the master salt is 12 bytes with AES-128-GCM (RFC 7714), 14 with AES-CM (RFC 3711).
const KEY_LEN: usize = 16;
const SALT_LEN: usize = 12;
const CM_SALT_LEN: usize = 14;
/// AES-CM's session authentication key (HMAC-SHA1), and the part of its tag sent with each packet (the `_80`).
const CM_AUTH_KEY_LEN: usize = 20;
const CM_TAG_LEN: usize = 10;

/// The SRTP profile a connection's outbound context was made for, as told by the first cipher made after the
/// first key derivation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
    Gcm128,
    /// AES-128 in counter mode with an HMAC-SHA1 tag. Only the 80-bit tag is offered (`connection.rs`), so a
    /// counter-mode cipher means `SRTP_AES128_CM_HMAC_SHA1_80`.
    Cm128,
    Other,
}

#[derive(Default)]
struct Seen {
    /// The first AES-128 PRF call: its key and input block (before encryption).
    first_prf: Option<([u8; KEY_LEN], [u8; 16])>,
    /// The first cipher made after that derivation.
    profile: Option<Profile>,
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

    /// rtc-srtp's own outbound context from the captured keys (tests check the capture against it).
    #[cfg(test)]
    fn outbound_context(&self) -> Option<Context> {
        let (profile, key, salt) = self.master_key_and_salt()?;
        let (profile, salt) = match profile {
            Profile::Gcm128 => (ProtectionProfile::AeadAes128Gcm, &salt[..SALT_LEN]),
            Profile::Cm128 => (ProtectionProfile::Aes128CmHmacSha1_80, &salt[..]),
            Profile::Other => return None,
        };
        Context::new(&key, salt, profile, None, None, self.inner.crypto())
            .map_err(|e| tracing::warn!(error = %e, "SRTP fast path: context not made"))
            .ok()
    }

    /// The profile, master key and master salt (14 bytes: the first 12 for AES-128-GCM).
    fn master_key_and_salt(&self) -> Option<(Profile, [u8; KEY_LEN], [u8; CM_SALT_LEN])> {
        let seen = self.crypto.seen.lock().ok()?;
        let profile = seen.profile.filter(|p| *p != Profile::Other)?;
        let (key, block) = seen.first_prf?;
        let mut salt = [0u8; CM_SALT_LEN];
        // Label 0 is XORed into byte 7: zero leaves the salt as it is. A 12-byte salt is followed by zeros.
        salt.copy_from_slice(&block[..CM_SALT_LEN]);
        Some((profile, key, salt))
    }
}

/// SRTP sealing of outbound RTP, in place in the caller's buffer: the session keys and salt derived once from the
/// captured master key and salt (RFC 3711 §4.3.3 AES-CM PRF, as rtc-srtp does); per packet either one AES-GCM
/// seal (RFC 7714), or AES-CTR over the payload and an HMAC-SHA1 over the packet and its rollover counter, cut to
/// 80 bits (RFC 3711). No allocation, no map lookup (each consumer keeps its own rollover counter).
pub enum Sealer {
    Gcm {
        cipher: Box<dyn AeadCipher>,
        session_salt: [u8; SALT_LEN],
    },
    Cm {
        /// The session encryption key, expanded once (a counter-mode keystream per packet starts from a copy).
        aes: Box<aes::Aes128>,
        mac: Box<dyn Mac>,
        session_salt: [u8; CM_SALT_LEN],
    },
}

/// The longest authentication tag appended to a sealed packet (AES-GCM's; AES-CM-80's is 10 bytes).
pub const TAG_LEN: usize = 16;

/// The SRTP packet index of one outbound stream (RFC 3711 §3.3.1): the rollover counter and the highest sequence
/// number sent. Retransmissions (older numbers) get the rollover counter they were first sent under.
#[derive(Debug, Default, Clone, Copy)]
pub struct StreamIndex {
    roc: u32,
    highest: Option<u16>,
}

impl StreamIndex {
    /// The rollover counter for sending `seq` (and remember it when it is the newest).
    pub fn roc_for(&mut self, seq: u16) -> u32 {
        let Some(highest) = self.highest else {
            self.highest = Some(seq);
            return self.roc;
        };
        let ahead = seq.wrapping_sub(highest);
        if ahead != 0 && ahead < 0x8000 {
            // Newer: across a wrap when the number went down.
            if seq < highest {
                self.roc = self.roc.wrapping_add(1);
            }
            self.highest = Some(seq);
            self.roc
        } else if seq > highest {
            // Older, from before the last wrap.
            self.roc.wrapping_sub(1)
        } else {
            self.roc
        }
    }
}

impl Sealer {
    fn new(
        crypto: &dyn RTCCrypto,
        profile: Profile,
        key: &[u8; KEY_LEN],
        salt: &[u8; CM_SALT_LEN],
    ) -> Result<Sealer, CryptoError> {
        let salt_len = if profile == Profile::Gcm128 {
            SALT_LEN
        } else {
            CM_SALT_LEN
        };
        let prf = |label: u8, out: &mut [u8]| -> Result<(), CryptoError> {
            for (i, chunk) in out.chunks_mut(16).enumerate() {
                let mut block = [0u8; 16];
                block[..salt_len].copy_from_slice(&salt[..salt_len]);
                block[7] ^= label;
                block[14] = (i >> 8) as u8;
                block[15] = i as u8;
                crypto.block_encrypt(BlockCipherAlgorithm::Aes128, key, &mut block)?;
                chunk.copy_from_slice(&block[..chunk.len()]);
            }
            Ok(())
        };
        let mut session_key = [0u8; KEY_LEN];
        prf(0x00, &mut session_key)?;
        match profile {
            Profile::Gcm128 => {
                let mut session_salt = [0u8; SALT_LEN];
                prf(0x02, &mut session_salt)?;
                Ok(Sealer::Gcm {
                    cipher: crypto.new_aead(AeadAlgorithm::Aes128Gcm, &session_key)?,
                    session_salt,
                })
            }
            Profile::Cm128 => {
                let mut auth_key = [0u8; CM_AUTH_KEY_LEN];
                prf(0x01, &mut auth_key)?;
                let mut session_salt = [0u8; CM_SALT_LEN];
                prf(0x02, &mut session_salt)?;
                use aes::cipher::KeyInit;
                Ok(Sealer::Cm {
                    aes: Box::new(aes::Aes128::new_from_slice(&session_key).map_err(|_| {
                        CryptoError::InvalidKeyLength {
                            expected: 16,
                            actual: session_key.len(),
                        }
                    })?),
                    mac: crypto.new_hmac(HmacAlgorithm::Sha1, &auth_key)?,
                    session_salt,
                })
            }
            Profile::Other => Err(CryptoError::UnsupportedAlgorithm(
                CryptoAlgorithm::StreamCipher(StreamCipherAlgorithm::Aes256Ctr),
            )),
        }
    }

    /// The authentication tag's length on the wire.
    pub fn tag_len(&self) -> usize {
        match self {
            Sealer::Gcm { .. } => TAG_LEN,
            Sealer::Cm { .. } => CM_TAG_LEN,
        }
    }

    /// Seal an RTP packet in place: `packet[..header_len]` is the header (authenticated), the rest the payload
    /// (encrypted); `tag` (`tag_len()` bytes) receives the authentication tag that follows it on the wire.
    pub fn seal(
        &mut self,
        ssrc: u32,
        seq: u16,
        roc: u32,
        packet: &mut [u8],
        header_len: usize,
        tag: &mut [u8],
    ) -> Result<(), CryptoError> {
        match self {
            Sealer::Gcm {
                cipher,
                session_salt,
            } => {
                let mut iv = [0u8; SALT_LEN];
                iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
                iv[6..10].copy_from_slice(&roc.to_be_bytes());
                iv[10..12].copy_from_slice(&seq.to_be_bytes());
                for (v, s) in iv.iter_mut().zip(*session_salt) {
                    *v ^= s;
                }
                let (aad, payload) = packet.split_at_mut(header_len);
                cipher.seal_in_place(&iv, aad, payload, tag)
            }
            Sealer::Cm {
                aes,
                mac,
                session_salt,
            } => {
                use aes::cipher::{InnerIvInit, StreamCipher as _};
                // The counter block: the session salt XOR the SSRC, the rollover counter and the sequence number
                // (RFC 3711 §4.1.1), the last 16 bits counting blocks.
                let mut iv = [0u8; 16];
                iv[4..8].copy_from_slice(&ssrc.to_be_bytes());
                iv[8..12].copy_from_slice(&roc.to_be_bytes());
                iv[12..14].copy_from_slice(&seq.to_be_bytes());
                for (v, s) in iv.iter_mut().zip(*session_salt) {
                    *v ^= s;
                }
                // rtc-crypto's AES-CTR expanded the key on every packet (2.8 % of the server's CPU at N=100
                // under `perf`); a copy of the expanded key is a few dozen bytes.
                ctr::Ctr128BE::<aes::Aes128>::from_core(ctr::CtrCore::inner_iv_init(
                    aes::Aes128::clone(aes),
                    &iv.into(),
                ))
                .apply_keystream(&mut packet[header_len..]);
                let mut full = [0u8; CM_AUTH_KEY_LEN];
                mac.sign(&[packet, &roc.to_be_bytes()], &mut full)?;
                tag.copy_from_slice(&full[..tag.len()]);
                Ok(())
            }
        }
    }
}

impl KeyCapture {
    /// The in-place sealer for the subscriber's outbound RTP, once DTLS has keyed the connection with AES-128-GCM.
    pub fn sealer(&self) -> Option<Sealer> {
        let (profile, key, salt) = self.master_key_and_salt()?;
        Sealer::new(self.inner.crypto(), profile, &key, &salt)
            .map_err(|e| tracing::warn!(error = %e, "SRTP fast path: sealer not made"))
            .ok()
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
    fn note_cipher(&self, profile: Profile) {
        if let Ok(mut seen) = self.seen.lock()
            && seen.first_prf.is_some()
            && seen.profile.is_none()
        {
            seen.profile = Some(profile);
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
        self.note_cipher(if algorithm == StreamCipherAlgorithm::Aes128Ctr {
            Profile::Cm128
        } else {
            Profile::Other
        });
        self.inner.crypto().new_stream_cipher(algorithm, key)
    }

    fn new_aead(
        &self,
        algorithm: AeadAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn AeadCipher>, CryptoError> {
        self.note_cipher(if algorithm == AeadAlgorithm::Aes128Gcm {
            Profile::Gcm128
        } else {
            Profile::Other
        });
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

    /// An rtc-srtp AES-128-GCM context, as rtc makes one for each direction.
    fn gcm(key: &[u8], salt: &[u8], crypto: &dyn RTCCrypto) -> rtc::shared::error::Result<Context> {
        Context::new(
            key,
            salt,
            ProtectionProfile::AeadAes128Gcm,
            None,
            None,
            crypto,
        )
    }

    /// The captured key and salt make a context whose packets rtc-srtp's own remote context (made from the same
    /// master key and salt, as the subscriber's would be) decrypts.
    #[test]
    fn captured_keys_encrypt_what_the_peer_decrypts() {
        let provider = rtc::crypto::default_provider().expect("provider");
        let capture = KeyCapture::new(provider.clone());
        let key = [7u8; KEY_LEN];
        let salt = [9u8; SALT_LEN];
        // What rtc does when DTLS completes: the local context first, through the connection's provider.
        let _local = gcm(&key, &salt, capture.crypto()).expect("local context");
        let _remote =
            gcm(&[1u8; KEY_LEN], &[2u8; SALT_LEN], capture.crypto()).expect("remote context");
        let mut padded = [0u8; CM_SALT_LEN];
        padded[..SALT_LEN].copy_from_slice(&salt);
        assert_eq!(
            capture.master_key_and_salt(),
            Some((Profile::Gcm128, key, padded))
        );

        let mut ours = capture.outbound_context().expect("fast path context");
        let mut peer = gcm(&key, &salt, provider.crypto()).expect("peer context");
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

    /// The in-place sealer produces exactly rtc-srtp's SRTP packets (the subscriber decrypts them), across a
    /// sequence number wrap and for a retransmission from before it: AEAD AES-128-GCM.
    #[test]
    fn sealer_matches_rtc_srtp_across_a_wrap() {
        sealer_matches(ProtectionProfile::AeadAes128Gcm, &[5u8; SALT_LEN], TAG_LEN);
    }

    /// The same with AES-CM-128 and an 80-bit HMAC-SHA1 tag (what Chromium offers).
    #[test]
    fn aes_cm_sealer_matches_rtc_srtp_across_a_wrap() {
        sealer_matches(
            ProtectionProfile::Aes128CmHmacSha1_80,
            &[5u8; CM_SALT_LEN],
            CM_TAG_LEN,
        );
    }

    fn sealer_matches(profile: ProtectionProfile, salt: &[u8], tag_len: usize) {
        let provider = rtc::crypto::default_provider().expect("provider");
        let capture = KeyCapture::new(provider.clone());
        let key = [3u8; KEY_LEN];
        let context = |crypto: &dyn RTCCrypto| {
            Context::new(&key, salt, profile, None, None, crypto).expect("context")
        };
        let _local = context(capture.crypto());
        let mut sealer = capture.sealer().expect("sealer");
        assert_eq!(sealer.tag_len(), tag_len);
        let mut reference = context(provider.crypto());
        let mut peer = context(provider.crypto());
        let mut index = StreamIndex::default();
        let mut first_65535 = Vec::new();
        use rtc::shared::marshal::{Marshal, MarshalSize};
        // The sixth is a retransmission of 65535 after the wrap.
        for (i, seq) in [65_533u16, 65_534, 65_535, 0, 1, 65_535, 2]
            .into_iter()
            .enumerate()
        {
            let header = rtc::rtp::header::Header {
                version: 2,
                marker: seq == 1,
                payload_type: 111,
                sequence_number: seq,
                timestamp: 960 * u32::from(seq),
                ssrc: 0xdead_beef,
                ..Default::default()
            };
            let packet = rtc::rtp::Packet {
                header: header.clone(),
                payload: bytes::Bytes::from(vec![seq as u8; 40]),
            };
            let plain = packet.marshal().expect("marshal");
            let mut ours = plain.to_vec();
            let mut tag = vec![0u8; tag_len];
            let roc = index.roc_for(seq);
            sealer
                .seal(
                    0xdead_beef,
                    seq,
                    roc,
                    &mut ours,
                    header.marshal_size(),
                    &mut tag,
                )
                .expect("seal");
            ours.extend_from_slice(&tag);
            if i == 5 {
                // Sealed under the index it was first sent with (the peer's replay window would drop a
                // duplicate that arrived, so check it against the first sealing instead).
                assert_eq!(
                    roc, 0,
                    "a resend from before the wrap keeps its rollover counter"
                );
                assert_eq!(ours, first_65535, "the same index gives the same bytes");
                continue;
            }
            let theirs = reference
                .encrypt_rtp_with_header(&plain, &header)
                .expect("reference encrypt");
            assert_eq!(ours, theirs.to_vec(), "seq {seq}");
            if seq == 65_535 {
                first_65535 = ours.clone();
            }
            let opened = peer.decrypt_rtp(&ours).expect("the peer decrypts");
            assert_eq!(&opened[..], &plain[..]);
        }
    }

    #[test]
    fn stream_index_rolls_over_and_places_old_numbers_before_the_wrap() {
        let mut i = StreamIndex::default();
        assert_eq!(i.roc_for(65_000), 0);
        assert_eq!(i.roc_for(65_535), 0);
        assert_eq!(i.roc_for(3), 1);
        // A retransmission from before the wrap.
        assert_eq!(i.roc_for(65_534), 0);
        // One from after it, older than the newest.
        assert_eq!(i.roc_for(2), 1);
        assert_eq!(i.roc_for(4), 1);
    }

    #[test]
    fn another_profile_leaves_the_fast_path_off() {
        let provider = rtc::crypto::default_provider().expect("provider");
        let capture = KeyCapture::new(provider);
        let _local = Context::new(
            &[7u8; 32],
            &[9u8; 12],
            ProtectionProfile::AeadAes256Gcm,
            None,
            None,
            capture.crypto(),
        )
        .expect("local context");
        assert!(capture.outbound_context().is_none());
        assert!(capture.sealer().is_none());
    }
}
