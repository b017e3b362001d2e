//! Time-limited TURN credentials (the "TURN REST API" scheme coturn implements with `use-auth-secret`): the
//! username is `<expiry unix time>:<participant>`, the password `base64(HMAC-SHA1(shared secret, username))`. The
//! TURN server recomputes the password from its copy of the secret and refuses an expired username, so nothing
//! needs to be stored or revoked here.

use crate::protocol::IceServer;
use base64::Engine;
use giaoban_config::TurnConfig;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// `base64(HMAC-SHA1(secret, username))`.
pub fn credential(secret: &str, username: &str) -> String {
    // HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The ICE servers for one participant at `now_unix` (seconds): the configured URLs with credentials that
/// expire `credential_lifetime_secs` later. Empty when no TURN/STUN URL is configured.
pub fn ice_servers(config: &TurnConfig, participant: &str, now_unix: u64) -> Vec<IceServer> {
    if config.urls.is_empty() {
        return Vec::new();
    }
    if config.secret.is_empty() {
        // Only stun: URLs (validation requires a secret for turn: ones).
        return vec![IceServer {
            urls: config.urls.clone(),
            username: None,
            credential: None,
        }];
    }
    let expiry = now_unix.saturating_add(config.credential_lifetime_secs);
    // A ':' in the id would confuse the TURN server's split of "<expiry>:<user>" (it splits at the first one,
    // so it still works, but keep the name plain).
    let user: String = participant
        .chars()
        .map(|c| if c == ':' { '_' } else { c })
        .collect();
    let username = format!("{expiry}:{user}");
    let credential = credential(&config.secret, &username);
    vec![IceServer {
        urls: config.urls.clone(),
        username: Some(username),
        credential: Some(credential),
    }]
}

/// Seconds since the Unix epoch now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_matches_the_turn_rest_api_scheme() {
        // HMAC-SHA1 test vector of RFC 2202 (test case 2): key "Jefe", data "what do ya want for nothing?",
        // digest effcdf6ae5eb2fa2d27416d5f184df9c259a7c79, here base64-encoded.
        assert_eq!(
            credential("Jefe", "what do ya want for nothing?"),
            "7/zfauXrL6LSdBbV8YTfnCWafHk="
        );
    }

    #[test]
    fn servers_carry_an_expiring_username_and_its_hmac() {
        let config = TurnConfig {
            urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
            secret: "north-secret".into(),
            credential_lifetime_secs: 3600,
        };
        let servers = ice_servers(&config, "p-7", 1_800_000_000);
        assert_eq!(servers.len(), 1);
        let s = &servers[0];
        assert_eq!(s.urls, config.urls);
        let username = s.username.as_deref().expect("username");
        assert_eq!(username, "1800003600:p-7");
        assert_eq!(
            s.credential.as_deref(),
            Some(credential("north-secret", username).as_str())
        );
        // Another secret gives another password; another participant another username.
        assert_ne!(
            credential("other", username),
            credential("north-secret", username)
        );
        let other = ice_servers(&config, "p-8", 1_800_000_000);
        assert_ne!(other[0].username, s.username);
        assert!(ice_servers(&TurnConfig::default(), "p-7", 0).is_empty());
    }
}
