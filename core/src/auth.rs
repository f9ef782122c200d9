//! Credentials: password hashing, access tokens, and the random secrets observe hands out
//! (refresh tokens, single-use email tokens, API keys).
//!
//! Passwords are hashed with argon2id on the blocking pool (a hash costs tens of milliseconds
//! of CPU; it must not stall an async worker). Access tokens are HS256 JWTs signed with
//! `SECRET_KEY`. Every other secret is 32 random bytes, shown once, and stored only as its
//! SHA-256: high-entropy secrets need no slow hash, and lookup by hash stays an index probe.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{Algorithm as JwtAlgorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::AuthSettings;

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
}

/// Hashes and checks passwords with the configured argon2id cost.
#[derive(Clone)]
pub struct Passwords {
    params: Params,
    /// A hash of a random password, verified against when an email is unknown, so that login
    /// takes the same time whether or not the account exists.
    dummy: Arc<String>,
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
        })
    }

    /// The PHC string (`$argon2id$v=19$...`) of `password`.
    pub async fn hash(&self, password: String) -> Result<String, AuthError> {
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || hash_with(&params, &password))
            .await
            .map_err(|e| AuthError::Hash(e.to_string()))?
    }

    /// Whether `password` matches `hash`; with no hash (unknown account, or one that only
    /// signs in through GitHub) it spends the same time and answers false.
    pub async fn verify(&self, password: String, hash: Option<String>) -> bool {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy.as_ref().clone());
        let params = self.params.clone();
        let matched = tokio::task::spawn_blocking(move || {
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
        known && matched
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
    pub iat: i64,
    pub exp: i64,
}

/// Signs and checks access tokens.
#[derive(Clone)]
pub struct AccessTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
}

impl AccessTokens {
    pub fn new(settings: &AuthSettings) -> Self {
        let secret = settings.secret_key.expose_secret().as_bytes();
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            ttl: Duration::minutes(settings.access_token_expire_minutes),
        }
    }

    /// Lifetime of a token, in seconds (the `expires_in` clients are told).
    pub fn ttl_secs(&self) -> i64 {
        self.ttl.num_seconds()
    }

    pub fn issue(&self, user: Uuid, org: Uuid) -> Result<String, AuthError> {
        self.issue_at(user, org, Utc::now())
    }

    /// A token as if issued at `now` (tests of token age use it).
    pub fn issue_at(&self, user: Uuid, org: Uuid, now: DateTime<Utc>) -> Result<String, AuthError> {
        let claims = Claims {
            sub: user,
            org,
            iat: now.timestamp(),
            exp: (now + self.ttl).timestamp(),
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
        assert!(
            p.verify("correct horse battery".into(), Some(hash.clone()))
                .await
        );
        assert!(!p.verify("wrong horse battery".into(), Some(hash)).await);
        assert!(!p.verify("anything".into(), None).await);
        assert!(!p.verify("x".into(), Some("not a phc string".into())).await);
    }

    #[test]
    fn access_tokens_round_trip_and_reject_tampering() {
        let tokens = AccessTokens::new(&settings());
        let (user, org) = (Uuid::new_v4(), Uuid::new_v4());
        let jwt = tokens.issue(user, org).unwrap();
        let claims = tokens.verify(&jwt).unwrap();
        assert_eq!((claims.sub, claims.org), (user, org));

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
        let jwt = tokens.issue(Uuid::new_v4(), Uuid::new_v4()).unwrap();
        assert!(tokens.verify(&jwt).is_err());
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
}
