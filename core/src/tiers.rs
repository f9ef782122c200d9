//! The one place that answers tier questions: "may this organisation add a project?",
//! "what is its events rate limit?". Limits come from configuration (SPEC §5 as defaults);
//! every feature asks here instead of reading the table itself.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::Serialize;

use crate::config::{Limit, TierLimits, Tiers};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Hobby,
    Pro,
    Team,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Hobby => "hobby",
            Tier::Pro => "pro",
            Tier::Team => "team",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hobby" => Ok(Tier::Hobby),
            "pro" => Ok(Tier::Pro),
            "team" => Ok(Tier::Team),
            other => Err(format!("unknown tier {other:?}")),
        }
    }
}

/// A countable resource an organisation's tier caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Projects,
    Monitors,
}

impl Resource {
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Projects => "projects",
            Resource::Monitors => "monitors",
        }
    }
}

/// Refusal to add one more of a resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {tier} tier allows at most {limit} {}", resource.as_str())]
pub struct LimitReached {
    pub tier: Tier,
    pub resource: Resource,
    pub limit: u64,
}

/// Per-minute ingestion rate limits of a tier (per API key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    pub events: u32,
    pub errors: u32,
    pub api_requests: u32,
}

#[derive(Clone)]
pub struct TierPolicy(Arc<Tiers>);

impl TierPolicy {
    pub fn new(tiers: Tiers) -> Self {
        Self(Arc::new(tiers))
    }

    pub fn limits(&self, tier: Tier) -> &TierLimits {
        match tier {
            Tier::Hobby => &self.0.hobby,
            Tier::Pro => &self.0.pro,
            Tier::Team => &self.0.team,
        }
    }

    /// Whether an organisation of `tier` that has `current` of `resource` may add one more.
    pub fn may_add(
        &self,
        tier: Tier,
        resource: Resource,
        current: u64,
    ) -> Result<(), LimitReached> {
        let limits = self.limits(tier);
        let limit = match resource {
            Resource::Projects => limits.projects,
            Resource::Monitors => limits.monitors,
        };
        match limit {
            Limit::Max(max) if !limit.allows(current, 1) => Err(LimitReached {
                tier,
                resource,
                limit: max,
            }),
            _ => Ok(()),
        }
    }

    pub fn rate_limits(&self, tier: Tier) -> RateLimits {
        let l = self.limits(tier);
        RateLimits {
            events: l.events_per_minute,
            errors: l.errors_per_minute,
            api_requests: l.api_requests_per_minute,
        }
    }

    pub fn retention_days(&self, tier: Tier) -> u32 {
        self.limits(tier).retention_days
    }

    pub fn email_alerts(&self, tier: Tier) -> bool {
        self.limits(tier).email_alerts
    }

    /// The shortest monitor interval a tier allows, in seconds.
    pub fn min_monitor_interval_secs(&self, tier: Tier) -> u32 {
        self.limits(tier).min_monitor_interval_secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn policy() -> TierPolicy {
        TierPolicy::new(Settings::load_from(|_| None).unwrap().tiers)
    }

    #[test]
    fn hobby_allows_three_projects_and_pro_any_number() {
        let p = policy();
        assert!(p.may_add(Tier::Hobby, Resource::Projects, 2).is_ok());
        let err = p.may_add(Tier::Hobby, Resource::Projects, 3).unwrap_err();
        assert_eq!(err.limit, 3);
        assert_eq!(err.to_string(), "the hobby tier allows at most 3 projects");
        assert!(p.may_add(Tier::Pro, Resource::Projects, 10_000).is_ok());
        assert!(p.may_add(Tier::Pro, Resource::Monitors, 49).is_ok());
        assert!(p.may_add(Tier::Pro, Resource::Monitors, 50).is_err());
        assert!(p.may_add(Tier::Team, Resource::Monitors, 1_000_000).is_ok());
    }

    #[test]
    fn spec_defaults() {
        let p = policy();
        assert_eq!(
            p.rate_limits(Tier::Hobby),
            RateLimits {
                events: 100,
                errors: 50,
                api_requests: 100
            }
        );
        assert_eq!(p.rate_limits(Tier::Team).errors, 2000);
        assert_eq!(p.retention_days(Tier::Pro), 90);
        assert!(!p.email_alerts(Tier::Hobby));
        assert_eq!(p.min_monitor_interval_secs(Tier::Hobby), 300);
        assert_eq!("team".parse::<Tier>().unwrap(), Tier::Team);
        assert!("gold".parse::<Tier>().is_err());
    }
}
