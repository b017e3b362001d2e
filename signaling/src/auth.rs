//! Join tokens: JWT (HS256) naming the meeting, the subject (endpoint or person), the display name, the role
//! and an expiry. The secret comes from config, or is generated on first start and kept in the data directory.

use crate::protocol::Role;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The meeting claim of an admin token: valid for every meeting and the admin pages.
pub const ANY_MEETING: &str = "*";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Meeting id (or `*` for admin).
    pub mtg: String,
    /// Subject: the endpoint id, or a person id such as `chair`.
    pub sub: String,
    /// Display name.
    pub name: String,
    pub role: Role,
    /// Expiry, seconds since the UNIX epoch.
    pub exp: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token's signature is not valid (forged or from another server)")]
    BadSignature,
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token is for another meeting")]
    WrongMeeting,
}

pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl Auth {
    pub fn new(secret: &[u8]) -> Self {
        Auth {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// The configured secret, or the one kept in `data_dir/secret.key` (generated on first start).
    pub fn load_or_create(configured: &str, data_dir: &Path) -> std::io::Result<Self> {
        if !configured.is_empty() {
            return Ok(Auth::new(configured.as_bytes()));
        }
        let path = data_dir.join("secret.key");
        let secret = match std::fs::read_to_string(&path) {
            Ok(s) if s.trim().len() >= 32 => s.trim().to_owned(),
            _ => {
                use rand::Rng;
                let bytes: [u8; 32] = rand::rng().random();
                let s: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                write_private(&path, &s)?;
                s
            }
        };
        Ok(Auth::new(secret.as_bytes()))
    }

    pub fn issue(&self, claims: &Claims) -> String {
        // Encoding HS256 with a valid key cannot fail; an empty string would be refused on use anyway.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .unwrap_or_default()
    }

    /// Check signature and expiry (no leeway).
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.required_spec_claims = ["exp", "sub"].iter().map(|s| s.to_string()).collect();
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
                other => TokenError::Malformed(format!("{other:?}")),
            })
    }

    /// Verify and check that the token opens `meeting` (admin tokens open every meeting).
    pub fn verify_for(&self, token: &str, meeting: &str) -> Result<Claims, TokenError> {
        let claims = self.verify(token)?;
        if claims.mtg != meeting && claims.mtg != ANY_MEETING {
            return Err(TokenError::WrongMeeting);
        }
        Ok(claims)
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(contents.as_bytes())
    }
    #[cfg(not(unix))]
    std::fs::write(path, contents)
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(mtg: &str, exp: u64) -> Claims {
        Claims {
            mtg: mtg.into(),
            sub: "xa-a".into(),
            name: "UBND xã A".into(),
            role: Role::Endpoint,
            exp,
        }
    }

    #[test]
    fn issued_tokens_verify_for_their_meeting_only() {
        let auth = Auth::new(b"0123456789abcdef0123456789abcdef");
        let t = auth.issue(&claims("m1", now_secs() + 3600));
        assert_eq!(auth.verify_for(&t, "m1").expect("valid").sub, "xa-a");
        assert_eq!(auth.verify_for(&t, "m2"), Err(TokenError::WrongMeeting));
    }

    #[test]
    fn expired_forged_and_garbage_are_refused() {
        let auth = Auth::new(b"0123456789abcdef0123456789abcdef");
        let expired = auth.issue(&claims("m1", now_secs() - 10));
        assert_eq!(auth.verify(&expired), Err(TokenError::Expired));
        let other = Auth::new(b"another-secret-another-secret-xx");
        let forged = other.issue(&claims("m1", now_secs() + 3600));
        assert_eq!(auth.verify(&forged), Err(TokenError::BadSignature));
        assert!(matches!(
            auth.verify("not.a.token"),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn generated_secret_is_kept() {
        let dir = std::env::temp_dir().join(format!("giaoban-auth-{}", std::process::id()));
        let a = Auth::load_or_create("", &dir).expect("created");
        let t = a.issue(&claims("m1", now_secs() + 60));
        let b = Auth::load_or_create("", &dir).expect("loaded");
        assert!(b.verify(&t).is_ok(), "same secret after restart");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
