//! The budgets of the auth endpoints and of API-key lookups, on the one rate limiter observe
//! has ([`crate::gcra::Limiter`]: GCRA in Redis, shared by every instance, and per instance
//! while Redis is away — so an outage never turns the limits off).
//!
//! What they follow is OWASP's advice for authentication (ASVS V2.2.1, the Authentication
//! Cheat Sheet): limit *failed* attempts, per client and per account, so guessing is slow, and
//! do not let strangers lock the owner out:
//! - failures are limited per client IP ([`Budget::FailuresPerIp`], SPEC §5's 5 per 15
//!   minutes) and per account from any IP ([`Budget::FailuresPerAccount`]);
//! - an attempt is paid for *before* the secret is checked and given back when it was right
//!   ([`AuthLimits::spend`], [`AuthLimits::refund`]), so a successful sign-in costs nothing
//!   and a burst of parallel guesses cannot all pass a check made before any of them failed;
//! - the per-account budget binds only clients the account has never signed in from. A browser
//!   that signed in before carries a device cookie ([`AuthLimits::new_device_cookie`]) and is
//!   limited by a budget of its own ([`Budget::FailuresPerDevice`]) instead, so strangers who
//!   spend an account's budget lock out strangers, not its owner (OWASP, "Slow Down Online
//!   Guessing Attacks with Device Cookies"). A signed-in session confirming its password is
//!   such a trusted client too ([`Device::session`]);
//! - registration and outgoing email have budgets of their own, spent by every attempt;
//! - API-key lookups that find nothing are limited per client IP (paid before the lookup, given
//!   back when the key exists).
//!
//! A client is its IPv4 address, or its IPv6 /64 ([`client_of`]): one subscriber usually
//! holds a whole /64, and limiting per address would hand them 2^64 budgets. An account is a
//! keyed hash of its normalised email under `SECRET_KEY` ([`Subjects::account`]): no address,
//! and nothing a dictionary of addresses could reverse, sits in Redis.

use std::net::IpAddr;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;

use crate::auth::SecretMac;
use crate::config::Settings;
pub use crate::gcra::Decision;
use crate::gcra::Limiter;

/// Which budget an attempt counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    FailuresPerIp,
    FailuresPerAccount,
    /// Failures of one trusted client (a device cookie, a signed-in session), in place of the
    /// account's budget.
    FailuresPerDevice,
    RegistrationsPerIp,
    EmailsPerIp,
    KeyLookupsPerIp,
}

impl Budget {
    fn name(self) -> &'static str {
        match self {
            Budget::FailuresPerIp => "fail-ip",
            Budget::FailuresPerAccount => "fail-account",
            Budget::FailuresPerDevice => "fail-device",
            Budget::RegistrationsPerIp => "register-ip",
            Budget::EmailsPerIp => "email-ip",
            Budget::KeyLookupsPerIp => "key-lookup-ip",
        }
    }
}

/// The client an address stands for: an IPv4 address (an IPv4-mapped IPv6 one included) as
/// itself, any other IPv6 address as its /64.
pub fn client_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// A trusted client: a browser holding a device cookie of the account, or a signed-in
/// session. Its name is the subject of its own failure budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device(String);

impl Device {
    /// A signed-in session (it proved the password, or GitHub, when it began).
    pub fn session(id: uuid::Uuid) -> Self {
        Self(format!("s:{id}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Label of the device-cookie tags.
const DEVICE_LABEL: &str = "observe/device-cookie/v1";
/// Label of the account keys.
const ACCOUNT_LABEL: &str = "observe/auth-account/v1";

/// Who attempts count against, named by keyed hashes under `SECRET_KEY`.
#[derive(Clone)]
pub struct Subjects {
    mac: SecretMac,
}

impl Subjects {
    pub fn new(settings: &Settings) -> Self {
        Self {
            mac: SecretMac::new(&settings.auth),
        }
    }

    /// The account of an email: a keyed hash of the normalised address (HMAC-SHA256 under
    /// `SECRET_KEY`, 128 bits shown).
    pub fn account(&self, email: &str) -> String {
        let normalised = email.trim().to_lowercase();
        let tag = self.mac.tag(ACCOUNT_LABEL, &[normalised.as_bytes()]);
        tag[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A new device cookie for a browser that just signed in to `account`: a random nonce and
    /// its tag, `nonce.tag` (OWASP's `LOGIN,NONCE,HMAC(secret, LOGIN,NONCE)`, with the account
    /// key standing for the login so the cookie names no address).
    pub fn new_device_cookie(&self, account: &str) -> String {
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let nonce = URL_SAFE_NO_PAD.encode(nonce);
        let tag = self
            .mac
            .tag(DEVICE_LABEL, &[account.as_bytes(), nonce.as_bytes()]);
        format!("{nonce}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The device a cookie stands for, if it is a genuine device cookie of `account`.
    pub fn device(&self, cookie: &str, account: &str) -> Option<Device> {
        let (nonce, tag) = cookie.split_once('.')?;
        if nonce.len() != 22 || tag.len() != 43 {
            return None;
        }
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.mac
            .verify(DEVICE_LABEL, &[account.as_bytes(), nonce.as_bytes()], &tag)
            .then(|| Device(format!("c:{nonce}")))
    }
}

/// The budgets, with their limits from the settings.
#[derive(Clone)]
pub struct AuthLimits {
    limiter: Limiter,
    subjects: Subjects,
    window: Duration,
    per_ip: u32,
    per_account: u32,
    registrations: u32,
    emails: u32,
    key_lookups: u32,
    key_window: Duration,
}

impl AuthLimits {
    pub fn new(limiter: Limiter, settings: &Settings) -> Self {
        let auth = &settings.auth;
        Self {
            limiter,
            subjects: Subjects::new(settings),
            window: Duration::from_secs(auth.rate_limit_window_secs),
            per_ip: auth.rate_limit_attempts,
            per_account: auth.account_rate_limit_attempts,
            registrations: auth.register_rate_limit_attempts,
            emails: auth.email_rate_limit_attempts,
            key_lookups: settings.api_keys.failed_lookups_per_ip,
            key_window: Duration::from_secs(settings.api_keys.failed_lookup_window_secs),
        }
    }

    /// Names accounts and devices.
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    fn limit(&self, budget: Budget) -> (u32, Duration) {
        match budget {
            Budget::FailuresPerIp => (self.per_ip, self.window),
            Budget::FailuresPerAccount => (self.per_account, self.window),
            // A trusted client is held to what one client IP may fail.
            Budget::FailuresPerDevice => (self.per_ip, self.window),
            Budget::RegistrationsPerIp => (self.registrations, self.window),
            Budget::EmailsPerIp => (self.emails, self.window),
            Budget::KeyLookupsPerIp => (self.key_lookups, self.key_window),
        }
    }

    fn key(budget: Budget, subject: &str) -> String {
        format!("auth:{}:{subject}", budget.name())
    }

    /// Spends one attempt of `subject`, atomically: refused (nothing spent) past the budget.
    pub async fn spend(&self, budget: Budget, subject: &str) -> Decision {
        let (limit, window) = self.limit(budget);
        self.limiter
            .check(&Self::key(budget, subject), limit, window)
            .await
    }

    /// Gives back an attempt [`spend`](Self::spend) took: it succeeded, or never got to check
    /// its secret.
    pub async fn refund(&self, budget: Budget, subject: &str) {
        let (limit, window) = self.limit(budget);
        self.limiter
            .refund(&Self::key(budget, subject), limit, window, 1)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_clients_are_their_64_and_ipv4_clients_their_address() {
        assert_eq!(client_of(ip("203.0.113.9")), "203.0.113.9");
        assert_eq!(client_of(ip("::ffff:203.0.113.9")), "203.0.113.9");
        let a = client_of(ip("2001:db8:1:2::1"));
        assert_eq!(a, "2001:db8:1:2::/64");
        assert_eq!(client_of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")), a);
        assert_ne!(client_of(ip("2001:db8:1:3::1")), a);
    }

    fn subjects(secret: &str) -> Subjects {
        let mut settings = Settings::load_from(|_| None).unwrap();
        settings.auth.secret_key = secrecy::SecretString::from(secret.to_string());
        Subjects::new(&settings)
    }

    #[test]
    fn account_keys_cannot_be_recomputed_without_the_secret() {
        use sha2::{Digest, Sha256};
        let plain = Sha256::digest(b"ada@example.com");
        let plain: String = plain[..16].iter().map(|b| format!("{b:02x}")).collect();
        let keyed = subjects(&"k".repeat(40));
        assert_ne!(
            keyed.account("ada@example.com"),
            plain,
            "an unsalted SHA-256 of the address: a dictionary of addresses reverses it"
        );
        assert_ne!(
            keyed.account("ada@example.com"),
            subjects(&"z".repeat(40)).account("ada@example.com"),
            "the key must depend on SECRET_KEY"
        );
    }

    #[test]
    fn accounts_are_keyed_by_a_hash_of_the_normalised_email() {
        let subjects = subjects(&"k".repeat(40));
        let a = subjects.account(" Ada@Example.com ");
        assert_eq!(a, subjects.account("ada@example.com"));
        assert_eq!(a.len(), 32);
        assert!(!a.contains("ada"));
        assert_ne!(a, subjects.account("bob@example.com"));
    }

    #[test]
    fn a_device_cookie_is_good_for_its_own_account_only() {
        let subjects = subjects(&"k".repeat(40));
        let (ada, bob) = (
            subjects.account("ada@example.com"),
            subjects.account("bob@example.com"),
        );
        let cookie = subjects.new_device_cookie(&ada);
        let device = subjects.device(&cookie, &ada).expect("its own account");
        assert!(device.as_str().starts_with("c:"));
        assert_eq!(subjects.device(&cookie, &bob), None, "another account");
        assert_ne!(
            subjects.device(&subjects.new_device_cookie(&ada), &ada),
            Some(device),
            "each sign-in is a device of its own"
        );
        let other_key = self::subjects(&"z".repeat(40));
        assert_eq!(other_key.device(&cookie, &ada), None, "another SECRET_KEY");
        let (nonce, tag) = cookie.split_once('.').unwrap();
        let other = if nonce.ends_with('A') { 'B' } else { 'A' };
        let forged = format!("{}{other}.{tag}", &nonce[..21]);
        assert_eq!(subjects.device(&forged, &ada), None, "a changed nonce");
        for bad in ["", ".", "nonce.tag", &format!("{nonce}.{}", "A".repeat(43))] {
            assert_eq!(subjects.device(bad, &ada), None, "{bad}");
        }
    }
}
