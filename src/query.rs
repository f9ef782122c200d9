//! Query parameters of the read routes: the time range (`from`, `to`, `tz`, `group_by`,
//! checked by [`observe_core::range`] and capped at the organisation's retention) and the page
//! (`limit`, `cursor`). Every parameter is taken as text and checked here, so a bad one is a 422
//! whose `details` name it (`{"field": "from", "reason": …}`), all of them at once, never the
//! query extractor's generic 400.

use chrono::Utc;
use observe_core::range::{RangeInput, TimeRange};
use observe_core::store::projects::{self, Project};
use observe_core::tiers::Tier;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::error::ApiError;
use crate::routes::projects::{DEFAULT_LIMIT, MAX_LIMIT};
use crate::session::Session;
use crate::state::AppState;
use crate::validate::Problems;

/// The time range of a read route.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    /// Start, inclusive: RFC 3339 (`2026-03-08T14:00:00Z`), a date (`2026-03-08`: its
    /// midnight in `tz`), `now`, or a duration before now (`90m`, `24h`, `7d`, `2w`). Default:
    /// 24 hours before `to`. A start before the organisation's retention is moved up to it.
    #[param(example = "7d")]
    pub from: Option<String>,
    /// End, exclusive, in the same forms. Default: now.
    pub to: Option<String>,
    /// IANA time zone that decides where days begin (`Africa/Lagos`, `America/New_York`).
    /// Default `UTC`.
    #[param(example = "Africa/Lagos")]
    pub tz: Option<String>,
    /// Bucket size of series: `hour` or `day`.
    pub group_by: Option<String>,
}

impl RangeQuery {
    pub fn input(&self) -> RangeInput<'_> {
        RangeInput {
            from: self.from.as_deref(),
            to: self.to.as_deref(),
            tz: self.tz.as_deref(),
            group_by: self.group_by.as_deref(),
        }
    }

    /// The range as of now for an organisation on `tier`; each bad parameter is added to
    /// `problems` (and `None` returned).
    pub fn check(
        &self,
        state: &AppState,
        tier: Tier,
        problems: &mut Problems,
    ) -> Option<TimeRange> {
        let retention_days = state.tiers.retention_days(tier);
        match TimeRange::parse(&self.input(), Utc::now(), retention_days) {
            Ok(range) => Some(range),
            Err(invalid) => {
                for p in invalid.0 {
                    problems.add(p.param, p.reason);
                }
                None
            }
        }
    }
}

/// A project of the caller's organisation, with the organisation's tier; 404 for any other.
pub async fn readable_project(
    client: &impl observe_core::store::GenericClient,
    session: &Session,
    project_id: Uuid,
) -> Result<(Project, Tier), ApiError> {
    projects::get_with_tier(client, session.org_id, project_id)
        .await?
        .ok_or(ApiError::NotFound)
}

/// For routes that take only a range: the project (404 unless the caller's organisation owns
/// it) and the range of `query`, capped at the organisation's retention (422 naming each bad
/// parameter).
pub async fn project_range(
    client: &impl observe_core::store::GenericClient,
    state: &AppState,
    session: &Session,
    project_id: Uuid,
    query: &RangeQuery,
) -> Result<(Project, TimeRange), ApiError> {
    let (project, tier) = readable_project(client, session, project_id).await?;
    let mut problems = Problems::default();
    let range = query.check(state, tier, &mut problems);
    problems.finish()?;
    Ok((project, checked(range)?))
}

/// A value a check produced once `Problems::finish` passed: it is there unless the check is
/// broken (a refusal that named no problem), which is a bug, not the client's fault.
pub fn checked<T>(value: Option<T>) -> Result<T, ApiError> {
    value.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("a check refused without a problem")))
}

/// A page of `rows` (fetched with one more than `limit`, to know whether more follow) and
/// the cursor of the next page, made from the last row shown.
pub fn keyset_page<T>(
    mut rows: Vec<T>,
    limit: usize,
    cursor_of: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows.last().map(cursor_of);
        (rows, next)
    } else {
        (rows, None)
    }
}

/// The page of a read route: `limit` (1 to 200, default 50, as every list) and `cursor`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1 to 200; default 50.
    pub limit: Option<String>,
    /// `next_cursor` of the previous page, with the same filters. It keeps the start of the
    /// range the first page resolved, so a relative `from` (`24h`) does not slide while paging.
    pub cursor: Option<String>,
}

impl PageQuery {
    /// The page size and the decoded cursor; bad values are added to `problems`.
    pub fn check<C>(
        &self,
        decode: impl Fn(&str) -> Option<C>,
        problems: &mut Problems,
    ) -> (usize, Option<C>) {
        let limit = match self.limit.as_deref().map(str::trim) {
            None | Some("") => DEFAULT_LIMIT,
            Some(text) => match text.parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    problems.add(
                        "limit",
                        format!("must be a whole number from 1 to {MAX_LIMIT}"),
                    );
                    DEFAULT_LIMIT
                }
            },
        };
        let cursor = match self.cursor.as_deref().filter(|c| !c.is_empty()) {
            None => None,
            Some(text) => {
                let cursor = decode(text);
                if cursor.is_none() {
                    problems.add(
                        "cursor",
                        "is not a next_cursor this list gave; start again without one",
                    );
                }
                cursor
            }
        };
        (limit as usize, cursor)
    }
}

/// A text filter: trimmed, `None` when absent or empty; longer than `max` characters or with
/// control characters is added to `problems`.
pub fn text_filter(
    problems: &mut Problems,
    field: &str,
    value: &Option<String>,
    max: usize,
) -> Option<String> {
    let value = value.as_deref().map(str::trim).filter(|v| !v.is_empty())?;
    if value.chars().count() > max {
        problems.add(field, format!("must be at most {max} characters"));
        return None;
    }
    if value.chars().any(char::is_control) {
        problems.add(field, "must not contain control characters");
        return None;
    }
    Some(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;

    fn fields(problems: Problems) -> Vec<String> {
        match problems.finish() {
            Ok(()) => vec![],
            Err(ApiError::Validation(f)) => f.into_iter().map(|f| f.field).collect(),
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn pages_name_their_bad_parameters() {
        let mut problems = Problems::default();
        let (limit, cursor) = PageQuery::default().check(|_| Some(1), &mut problems);
        assert_eq!((limit, cursor), (DEFAULT_LIMIT as usize, None));
        assert!(fields(problems).is_empty());

        for (limit, cursor, expected) in [
            ("0", "", vec!["limit"]),
            ("201", "", vec!["limit"]),
            ("ten", "", vec!["limit"]),
            ("-1", "bad", vec!["limit", "cursor"]),
            ("200", "bad", vec!["cursor"]),
        ] {
            let mut problems = Problems::default();
            let page = PageQuery {
                limit: Some(limit.into()),
                cursor: Some(cursor.into()),
            };
            page.check(|c| (c != "bad").then_some(()), &mut problems);
            assert_eq!(fields(problems), expected, "{limit} {cursor}");
        }
    }

    #[test]
    fn text_filters() {
        let mut problems = Problems::default();
        assert_eq!(text_filter(&mut problems, "name", &None, 5), None);
        assert_eq!(
            text_filter(&mut problems, "name", &Some("  ".into()), 5),
            None
        );
        assert_eq!(
            text_filter(&mut problems, "name", &Some(" ab ".into()), 5),
            Some("ab".into())
        );
        assert!(fields(problems).is_empty());
        let mut problems = Problems::default();
        text_filter(&mut problems, "name", &Some("abcdef".into()), 5);
        text_filter(&mut problems, "url", &Some("a\u{7}".into()), 5);
        assert_eq!(fields(problems), vec!["name", "url"]);
    }
}
