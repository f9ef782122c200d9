//! Credentials: password hashing, access tokens, and the random secrets observe hands out
//! (refresh tokens, single-use email tokens, API keys).
//!
//! Passwords are hashed with argon2id on the blocking pool (a hash costs tens of milliseconds
//! of CPU; it must not stall an async worker), at most `auth.max_concurrent_hashes` at once:
//! each hash holds `argon2_memory_kib` of memory and a core, so a login flood queues (and past
//! `auth.hash_wait_ms` is answered 503) instead of taking the machine. Access tokens are HS256
//! JWTs signed with `SECRET_KEY`, naming their session (`sid`) and the time of the real
//! authentication (`auth_time`, as OpenID Connect names it). Every other secret is 32 random
//! bytes, shown once, and stored only as its SHA-256: high-entropy secrets need no slow hash,
//! and lookup by hash stays an index probe. A rotated refresh token is derived from its
//! predecessor with HMAC-SHA256 under `SECRET_KEY`, so a retried refresh derives the same one;
//! every keyed hash goes through [`SecretMac`], each use under a label of its own.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm as JwtAlgorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::AuthSettings;
use crate::store::sessions::SessionInfo;

/// What every API key starts with, so people and secret scanners recognise one.
pub const API_KEY_PREFIX: &str = "obs_";
/// How much of a key lists show: the prefix and the first characters of its random part.
pub const API_KEY_SHOWN_CHARS: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("invalid or expired token")]
    InvalidToken,
    #[error("token signing failed: {0}")]
    Sign(String),
    /// Every hashing slot stayed taken for `auth.hash_wait_ms`.
    #[error("too many password checks at once")]
    Busy,
}

/// Hashes and checks passwords with the configured argon2id cost.
#[derive(Clone)]
pub struct Passwords {
    params: Params,
    /// A hash of a random password, verified against when an email is unknown, so that login
    /// takes the same time whether or not the account exists.
    dummy: Arc<String>,
    /// Hashes running at once at most (each holds its memory and a core).
    slots: Arc<tokio::sync::Semaphore>,
    wait: StdDuration,
    /// Hashes computed or verified so far (each one held a slot).
    computed: Arc<std::sync::atomic::AtomicU64>,
}

impl Passwords {
    pub fn new(settings: &AuthSettings) -> Result<Self, AuthError> {
        let params = Params::new(
            settings.argon2_memory_kib,
            settings.argon2_iterations,
            settings.argon2_parallelism,
            None,
        )
        .map_err(|e| AuthError::Hash(e.to_string()))?;
        let dummy = hash_with(&params, &random_token().secret)?;
        Ok(Self {
            params,
            dummy: Arc::new(dummy),
            slots: Arc::new(tokio::sync::Semaphore::new(
                settings.max_concurrent_hashes.max(1),
            )),
            wait: StdDuration::from_millis(settings.hash_wait_ms),
            computed: Arc::default(),
        })
    }

    /// How many hashes this instance has computed or verified (each held a hashing slot).
    pub fn computed(&self) -> u64 {
        self.computed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A hashing slot, waited for at most `hash_wait_ms`. The permit moves into the blocking
    /// task, so a request that gives up does not free the slot before its hash is done.
    async fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, AuthError> {
        match tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => {
                self.computed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(permit)
            }
            _ => Err(AuthError::Busy),
        }
    }

    /// The PHC string (`$argon2id$v=19$...`) of `password`.
    pub async fn hash(&self, password: String) -> Result<String, AuthError> {
        let slot = self.slot().await?;
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            hash_with(&params, &password)
        })
        .await
        .map_err(|e| AuthError::Hash(e.to_string()))?
    }

    /// Whether `password` matches `hash`; with no hash (unknown account, or one that only
    /// signs in through GitHub) it spends the same time and answers false.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, AuthError> {
        let slot = self.slot().await?;
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy.as_ref().clone());
        let params = self.params.clone();
        let matched = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            PasswordHash::new(&hash)
                .map(|parsed| {
                    argon2(&params)
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        Ok(known && matched)
    }
}

fn argon2(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

fn hash_with(params: &Params, password: &str) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Hash(e.to_string()))?;
    argon2(params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user.
    pub sub: Uuid,
    /// The organisation the session acts for.
    pub org: Uuid,
    /// The session (refresh family): checked on every request, so ending it ends the token.
    pub sid: Uuid,
    /// When the user really authenticated (seconds since the epoch); refreshes keep it.
    pub auth_time: i64,
    pub iat: i64,
    pub exp: i64,
}

/// Keyed hashes (HMAC-SHA256) under `SECRET_KEY`. Each use has a label of its own, and the
/// parts are separated, so a tag made for one purpose never stands for another.
#[derive(Clone)]
pub struct SecretMac {
    key: Arc<Vec<u8>>,
}

impl SecretMac {
    pub fn new(settings: &AuthSettings) -> Self {
        Self {
            key: Arc::new(settings.secret_key.expose_secret().as_bytes().to_vec()),
        }
    }

    fn mac(&self, label: &str, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(label.as_bytes());
        for part in parts {
            mac.update(b"\0");
            mac.update(part);
        }
        mac
    }

    /// The tag of `parts` under `label`.
    pub fn tag(&self, label: &str, parts: &[&[u8]]) -> [u8; 32] {
        self.mac(label, parts).finalize().into_bytes().into()
    }

    /// Whether `tag` is the tag of `parts` under `label` (compared in constant time).
    pub fn verify(&self, label: &str, parts: &[&[u8]], tag: &[u8]) -> bool {
        self.mac(label, parts).verify_slice(tag).is_ok()
    }
}

/// Signs and checks access tokens, and derives rotated refresh tokens.
#[derive(Clone)]
pub struct AccessTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    rotation: SecretMac,
    ttl: Duration,
}

impl AccessTokens {
    pub fn new(settings: &AuthSettings) -> Self {
        let secret = settings.secret_key.expose_secret().as_bytes();
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            rotation: SecretMac::new(settings),
            ttl: Duration::minutes(settings.access_token_expire_minutes),
        }
    }

    /// Lifetime of a token, in seconds (the `expires_in` clients are told).
    pub fn ttl_secs(&self) -> i64 {
        self.ttl.num_seconds()
    }

    /// A token of `session`, issued at `issued_at`. The same session and time give the same
    /// token (HS256 is deterministic), which is how a retried refresh gets the same pair.
    pub fn issue(
        &self,
        session: &SessionInfo,
        issued_at: DateTime<Utc>,
    ) -> Result<String, AuthError> {
        let claims = Claims {
            sub: session.user_id,
            org: session.organisation_id,
            sid: session.id,
            auth_time: session.authenticated_at.timestamp(),
            iat: issued_at.timestamp(),
            exp: (issued_at + self.ttl).timestamp(),
        };
        jsonwebtoken::encode(&Header::new(JwtAlgorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Sign(e.to_string()))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let mut validation = Validation::new(JwtAlgorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|_| AuthError::InvalidToken)
    }

    /// The refresh token that replaces `secret` at its rotation: HMAC-SHA256 under
    /// `SECRET_KEY`, so only the server can derive it, and always the same one.
    pub fn successor(&self, secret: &str) -> Token {
        // Label, NUL, secret: the bytes the first version hashed, so tokens rotated before
        // keep deriving the same successors.
        let tag = self
            .rotation
            .tag("observe/refresh-rotation/v1", &[secret.as_bytes()]);
        let secret = URL_SAFE_NO_PAD.encode(tag);
        let hash = hash_secret(&secret);
        Token { secret, hash }
    }
}

/// A secret shown once to its owner, and the hash that is stored instead of it.
pub struct Token {
    pub secret: String,
    pub hash: Vec<u8>,
}

/// 32 random bytes, URL-safe base64.
pub fn random_token() -> Token {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_secret(&secret);
    Token { secret, hash }
}

/// Whether `secret` has the shape of the secrets [`random_token`] makes (and of rotated refresh
/// tokens): 43 URL-safe base64 characters. Anything else is refused before any lookup.
pub fn token_shaped(secret: &str) -> bool {
    secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The stored form of a secret.
pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// A new API key: `obs_` and 43 random characters. Returns the token and the part lists show.
pub fn new_api_key() -> (Token, String) {
    let random = random_token().secret;
    let secret = format!("{API_KEY_PREFIX}{random}");
    let shown = secret.chars().take(API_KEY_SHOWN_CHARS).collect();
    let hash = hash_secret(&secret);
    (Token { secret, hash }, shown)
}

/// A new key's public DSN key: 32 lowercase hex digits (128 random bits). It fits every Sentry
/// SDK's DSN parser (the JavaScript one takes only letters, digits and `_` before the `@`).
pub fn new_dsn_key() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Whether `key` has the shape of a DSN key [`new_dsn_key`] makes (the migration's keys of
/// older API keys have it too). Anything else is refused before any lookup.
pub fn dsn_key_shaped(key: &str) -> bool {
    key.len() == 32 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// When a token made now with a lifetime of `ttl` expires.
pub fn expires_in(ttl: Duration) -> DateTime<Utc> {
    Utc::now() + ttl
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn settings() -> AuthSettings {
        let mut s = Settings::load_from(|_| None).unwrap();
        s.auth.argon2_memory_kib = 1024;
        s.auth.argon2_iterations = 1;
        s.auth.secret_key = secrecy::SecretString::from("k".repeat(40));
        s.auth
    }

    #[tokio::test]
    async fn passwords_verify_only_against_their_hash() {
        let p = Passwords::new(&settings()).unwrap();
        let hash = p.hash("correct horse battery".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let verify = |password: &str, hash: Option<String>| {
            let (p, password) = (p.clone(), password.to_string());
            async move { p.verify(password, hash).await.unwrap() }
        };
        assert!(verify("correct horse battery", Some(hash.clone())).await);
        assert!(!verify("wrong horse battery", Some(hash)).await);
        assert!(!verify("anything", None).await);
        assert!(!verify("x", Some("not a phc string".into())).await);
    }

    #[tokio::test(start_paused = true)]
    async fn hashes_run_at_most_max_concurrent_at_once_and_waiters_give_up() {
        let mut s = settings();
        s.max_concurrent_hashes = 2;
        s.hash_wait_ms = 500;
        let p = Passwords::new(&s).unwrap();
        let first = p.slot().await.unwrap();
        let second = p.slot().await.unwrap();
        // Both slots taken: a third request waits hash_wait_ms (paused clock), then is refused.
        let started = tokio::time::Instant::now();
        assert!(matches!(p.slot().await, Err(AuthError::Busy)));
        assert_eq!(started.elapsed(), StdDuration::from_millis(500));
        assert!(matches!(
            p.verify("x".into(), None).await,
            Err(AuthError::Busy)
        ));
        // A slot freed while waiting is taken at once.
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.slot().await.map(|_| ()) }
        });
        tokio::time::sleep(StdDuration::from_millis(100)).await;
        drop(first);
        assert!(waiter.await.unwrap().is_ok());
        drop(second);
    }

    fn session() -> SessionInfo {
        SessionInfo {
            id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            organisation_id: Uuid::new_v4(),
            authenticated_at: Utc::now() - Duration::hours(3),
        }
    }

    #[test]
    fn access_tokens_round_trip_and_reject_tampering() {
        let tokens = AccessTokens::new(&settings());
        let session = session();
        let now = Utc::now();
        let jwt = tokens.issue(&session, now).unwrap();
        let claims = tokens.verify(&jwt).unwrap();
        assert_eq!(
            (claims.sub, claims.org, claims.sid),
            (session.user_id, session.organisation_id, session.id)
        );
        assert_eq!(claims.auth_time, session.authenticated_at.timestamp());
        assert_eq!(claims.iat, now.timestamp());
        assert_eq!(tokens.issue(&session, now).unwrap(), jwt, "deterministic");

        let mut other = settings();
        other.secret_key = secrecy::SecretString::from("z".repeat(40));
        assert!(
            AccessTokens::new(&other).verify(&jwt).is_err(),
            "another key"
        );
        assert!(tokens.verify(&format!("{jwt}x")).is_err(), "tampered");
        assert!(tokens.verify("not.a.jwt").is_err());
    }

    #[test]
    fn expired_access_tokens_are_rejected() {
        let mut s = settings();
        s.access_token_expire_minutes = -10;
        let tokens = AccessTokens::new(&s);
        let jwt = tokens.issue(&session(), Utc::now()).unwrap();
        assert!(tokens.verify(&jwt).is_err());
    }

    #[test]
    fn a_token_without_a_session_is_refused() {
        #[derive(Serialize)]
        struct Old {
            sub: Uuid,
            org: Uuid,
            iat: i64,
            exp: i64,
        }
        let s = settings();
        let key = EncodingKey::from_secret(s.secret_key.expose_secret().as_bytes());
        let now = Utc::now().timestamp();
        let old = Old {
            sub: Uuid::new_v4(),
            org: Uuid::new_v4(),
            iat: now,
            exp: now + 600,
        };
        let jwt = jsonwebtoken::encode(&Header::new(JwtAlgorithm::HS256), &old, &key).unwrap();
        assert!(AccessTokens::new(&s).verify(&jwt).is_err());
    }

    #[test]
    fn successors_are_derived_the_same_way_only_with_the_key() {
        let tokens = AccessTokens::new(&settings());
        let old = random_token().secret;
        let next = tokens.successor(&old);
        assert_eq!(next.secret, tokens.successor(&old).secret);
        assert_eq!(next.hash, hash_secret(&next.secret));
        assert_eq!(next.secret.len(), 43);
        assert_ne!(next.secret, tokens.successor(&next.secret).secret);
        let mut other = settings();
        other.secret_key = secrecy::SecretString::from("z".repeat(40));
        assert_ne!(
            AccessTokens::new(&other).successor(&old).secret,
            next.secret
        );
        // The bytes the first version hashed, so sessions rotated before stay rotatable.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice("k".repeat(40).as_bytes()).unwrap();
        mac.update(b"observe/refresh-rotation/v1\0");
        mac.update(old.as_bytes());
        assert_eq!(
            next.secret,
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        assert!(token_shaped(&next.secret) && token_shaped(&old));
        for bad in [
            "",
            "short",
            &"A".repeat(44),
            &format!("{}!", "A".repeat(42)),
        ] {
            assert!(!token_shaped(bad), "{bad}");
        }
    }

    #[test]
    fn keyed_tags_depend_on_the_label_the_parts_and_the_key() {
        let mac = SecretMac::new(&settings());
        let tag = mac.tag("a", &[b"x", b"y"]);
        assert!(mac.verify("a", &[b"x", b"y"], &tag));
        assert!(!mac.verify("b", &[b"x", b"y"], &tag));
        assert!(!mac.verify("a", &[b"xy"], &tag), "parts are separated");
        assert!(!mac.verify("a", &[b"x", b"y"], &tag[..16]));
        let mut other = settings();
        other.secret_key = secrecy::SecretString::from("z".repeat(40));
        assert!(!SecretMac::new(&other).verify("a", &[b"x", b"y"], &tag));
    }

    #[test]
    fn api_keys_are_recognisable_and_stored_as_hashes() {
        let (key, shown) = new_api_key();
        assert!(key.secret.starts_with("obs_"));
        assert_eq!(key.secret.len(), 4 + 43);
        assert_eq!(shown.len(), API_KEY_SHOWN_CHARS);
        assert!(key.secret.starts_with(&shown));
        assert_eq!(key.hash, hash_secret(&key.secret));
        assert_ne!(new_api_key().0.secret, key.secret);
    }

    #[test]
    fn dsn_keys_are_32_hex_digits_and_fit_the_javascript_sdks_dsn_pattern() {
        let key = new_dsn_key();
        assert!(dsn_key_shaped(&key), "{key}");
        assert_ne!(new_dsn_key(), key);
        // The JavaScript SDK's DSN pattern takes `\w+` (letters, digits, `_`) as the key.
        assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        assert!(!dsn_key_shaped("obs_0123456789abcdef0123456789"));
        assert!(!dsn_key_shaped(&key.to_uppercase()));
        assert!(!dsn_key_shaped(&key[1..]));
    }
}
