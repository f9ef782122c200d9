//! The budgets of the auth endpoints and of API-key lookups, on the one rate limiter observe
//! has ([`crate::gcra::Limiter`]: GCRA in Redis, shared by every instance, and per instance
//! while Redis is away — so an outage never turns the limits off).
//!
//! What they follow is OWASP's advice for authentication (ASVS V2.2.1, the Authentication
//! Cheat Sheet): limit *failed* attempts, per account and per client, so guessing is slow and
//! the owner is not locked out by someone else's successes or their own:
//! - failures are limited per client IP ([`Budget::FailuresPerIp`], SPEC §5's 5 per 15
//!   minutes) and per account from any IP ([`Budget::FailuresPerAccount`]). Both are looked at
//!   before a password is checked ([`AuthLimits::peek`]) and spent only when it is wrong
//!   ([`AuthLimits::spend`]); a successful sign-in spends nothing;
//! - registration and outgoing email have budgets of their own, spent by every attempt;
//! - API-key lookups that find nothing are limited per client IP.
//!
//! A client is its IPv4 address, or its IPv6 /64 ([`client_of`]): one subscriber usually
//! holds a whole /64, and limiting per address would hand them 2^64 budgets.

use std::net::IpAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::Settings;
pub use crate::gcra::Decision;
use crate::gcra::Limiter;

/// Which budget an attempt counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    FailuresPerIp,
    FailuresPerAccount,
    RegistrationsPerIp,
    EmailsPerIp,
    KeyLookupsPerIp,
}

impl Budget {
    fn name(self) -> &'static str {
        match self {
            Budget::FailuresPerIp => "fail-ip",
            Budget::FailuresPerAccount => "fail-account",
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

/// The account part of a key: a hash of the normalised email, so no address sits in Redis.
pub fn account_of(email: &str) -> String {
    let digest = Sha256::digest(email.trim().to_lowercase().as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The budgets, with their limits from the settings.
#[derive(Clone)]
pub struct AuthLimits {
    limiter: Limiter,
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
            window: Duration::from_secs(auth.rate_limit_window_secs),
            per_ip: auth.rate_limit_attempts,
            per_account: auth.account_rate_limit_attempts,
            registrations: auth.register_rate_limit_attempts,
            emails: auth.email_rate_limit_attempts,
            key_lookups: settings.api_keys.failed_lookups_per_ip,
            key_window: Duration::from_secs(settings.api_keys.failed_lookup_window_secs),
        }
    }

    fn limit(&self, budget: Budget) -> (u32, Duration) {
        match budget {
            Budget::FailuresPerIp => (self.per_ip, self.window),
            Budget::FailuresPerAccount => (self.per_account, self.window),
            Budget::RegistrationsPerIp => (self.registrations, self.window),
            Budget::EmailsPerIp => (self.emails, self.window),
            Budget::KeyLookupsPerIp => (self.key_lookups, self.key_window),
        }
    }

    fn key(budget: Budget, subject: &str) -> String {
        format!("auth:{}:{subject}", budget.name())
    }

    /// Whether `subject` has room for one more attempt, without spending it.
    pub async fn peek(&self, budget: Budget, subject: &str) -> Decision {
        let (limit, window) = self.limit(budget);
        self.limiter
            .peek(&Self::key(budget, subject), limit, window)
            .await
    }

    /// Spends one attempt of `subject`.
    pub async fn spend(&self, budget: Budget, subject: &str) -> Decision {
        let (limit, window) = self.limit(budget);
        self.limiter
            .check(&Self::key(budget, subject), limit, window)
            .await
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

    #[test]
    fn account_keys_cannot_be_recomputed_without_the_secret() {
        let plain = Sha256::digest(b"ada@example.com");
        let plain: String = plain[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_ne!(
            account_of("ada@example.com"),
            plain,
            "an unsalted SHA-256 of the address: a dictionary of addresses reverses it"
        );
    }

    #[test]
    fn accounts_are_keyed_by_a_hash_of_the_normalised_email() {
        let a = account_of(" Ada@Example.com ");
        assert_eq!(a, account_of("ada@example.com"));
        assert_eq!(a.len(), 32);
        assert!(!a.contains("ada"));
        assert_ne!(a, account_of("bob@example.com"));
    }
}
