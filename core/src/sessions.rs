//! Checking an access token's session on every request without a query per request.
//!
//! An access token names its session (`sid`). Whether that session still stands (not revoked,
//! not past its absolute lifetime) and whether its user still belongs to the organisation the
//! token names are answered from a per-instance cache ([`crate::cache::LookupCache`]): one
//! query per session per `auth.session_cache_ttl_secs` at most, shared by concurrent requests.
//! Changes reach the cache like API-key changes do: the instance that makes one forgets it at
//! once, and every instance hears it on the same PostgreSQL channel ([`crate::keys::CHANNEL`],
//! scopes `session:`, `user:` and `org:`) through the `KeyWatcher`.

use std::time::{Duration, Instant};

use chrono::Utc;
use uuid::Uuid;

use crate::auth::Claims;
use crate::cache::LookupCache;
use crate::config::AuthSettings;
use crate::keys::{Invalidate, Scope};
use crate::store::sessions::{self, SessionState};
use crate::store::StoreError;

/// Why an access token's session no longer carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Signed out, revoked (password change or reset, takeover, a reused refresh token), or
    /// gone with its user or organisation.
    Revoked,
    /// Past its absolute lifetime.
    Expired,
    /// The user no longer belongs to the organisation the token names.
    NotAMember,
    /// The token's user or organisation is not the session's (a forged pairing).
    Mismatch,
}

#[derive(Clone)]
pub struct SessionCache {
    entries: LookupCache<Uuid, Option<SessionState>>,
    ttl: Duration,
}

impl SessionCache {
    pub fn new(settings: &AuthSettings) -> Self {
        Self {
            entries: LookupCache::new(settings.session_cache_max_entries),
            ttl: Duration::from_secs(settings.session_cache_ttl_secs),
        }
    }

    /// Whether the session of a verified access token still carries it.
    pub async fn check(
        &self,
        pool: &crate::db::PgPool,
        claims: &Claims,
    ) -> Result<Result<(), Ended>, StoreError> {
        let ttl = self.ttl;
        let (state, _) = self
            .entries
            .get_or_load(claims.sid, || async move {
                let client = pool.get().await?;
                Ok((sessions::state(&client, claims.sid).await?, ttl))
            })
            .await?;
        Ok(verdict(state.as_ref(), claims, Utc::now()))
    }

    /// Forgets what a change concerns: one session directly by its id, a user's or an
    /// organisation's sessions by a scan; a change of keys or projects concerns no session and
    /// costs nothing here.
    pub fn forget(&self, scope: Scope) {
        match scope {
            Scope::Session(id) => self.entries.forget(&id),
            Scope::User(user) => self
                .entries
                .forget_where(move |_, state| state.is_some_and(|s| s.user_id == user)),
            Scope::Organisation(org) => self
                .entries
                .forget_where(move |_, state| state.is_some_and(|s| s.organisation_id == org)),
            Scope::Key(_) | Scope::Project(_) => {}
        }
    }

    /// Caches a state as if just read (tests of the cache itself).
    #[doc(hidden)]
    pub fn remember(&self, id: Uuid, state: Option<SessionState>) {
        self.entries.put(id, state, Instant::now() + self.ttl);
    }

    pub fn is_cached(&self, id: Uuid) -> bool {
        self.entries.get(&id, Instant::now()).is_some()
    }
}

impl Invalidate for SessionCache {
    fn forget(&self, scope: Scope) {
        SessionCache::forget(self, scope);
    }

    fn forget_all(&self) {
        self.entries.forget_all();
    }
}

/// The decision for a token's claims given its session's state (`None`: no such session).
pub fn verdict(
    state: Option<&SessionState>,
    claims: &Claims,
    now: chrono::DateTime<Utc>,
) -> Result<(), Ended> {
    let state = state.ok_or(Ended::Revoked)?;
    if state.user_id != claims.sub || state.organisation_id != claims.org {
        return Err(Ended::Mismatch);
    }
    if state.revoked {
        return Err(Ended::Revoked);
    }
    if state.expires_at <= now {
        return Err(Ended::Expired);
    }
    if !state.member {
        return Err(Ended::NotAMember);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            sub: Uuid::new_v4(),
            org: Uuid::new_v4(),
            sid: Uuid::new_v4(),
            auth_time: 0,
            iat: 0,
            exp: 0,
        }
    }

    fn live(c: &Claims) -> SessionState {
        SessionState {
            user_id: c.sub,
            organisation_id: c.org,
            expires_at: Utc::now() + chrono::Duration::days(1),
            revoked: false,
            member: true,
        }
    }

    #[test]
    fn a_token_stands_only_with_a_live_session_of_its_user_and_organisation() {
        let c = claims();
        let now = Utc::now();
        assert_eq!(verdict(Some(&live(&c)), &c, now), Ok(()));
        assert_eq!(verdict(None, &c, now), Err(Ended::Revoked));
        let revoked = SessionState {
            revoked: true,
            ..live(&c)
        };
        assert_eq!(verdict(Some(&revoked), &c, now), Err(Ended::Revoked));
        let old = SessionState {
            expires_at: now,
            ..live(&c)
        };
        assert_eq!(verdict(Some(&old), &c, now), Err(Ended::Expired));
        let left = SessionState {
            member: false,
            ..live(&c)
        };
        assert_eq!(verdict(Some(&left), &c, now), Err(Ended::NotAMember));
        let other = SessionState {
            organisation_id: Uuid::new_v4(),
            ..live(&c)
        };
        assert_eq!(verdict(Some(&other), &c, now), Err(Ended::Mismatch));
    }

    #[test]
    fn changes_forget_the_sessions_they_concern() {
        let settings = crate::config::Settings::load_from(|_| None).unwrap().auth;
        let cache = SessionCache::new(&settings);
        let (a, b) = (claims(), claims());
        cache.remember(a.sid, Some(live(&a)));
        cache.remember(b.sid, Some(live(&b)));
        cache.forget(Scope::User(a.sub));
        assert!(!cache.is_cached(a.sid));
        assert!(cache.is_cached(b.sid));
        cache.forget(Scope::Key(Uuid::new_v4()));
        assert!(cache.is_cached(b.sid), "a key change concerns no session");
        cache.forget(Scope::Organisation(b.org));
        assert!(!cache.is_cached(b.sid));
        cache.remember(a.sid, None);
        cache.forget(Scope::Session(a.sid));
        assert!(!cache.is_cached(a.sid));
    }
}
