//! Error groups as the dashboard reads them: the list with each group's occurrences and
//! affected users within a time range next to its totals, one group's detail (trend, recent
//! occurrences with stack traces, tag values, people), and resolving.
//!
//! Totals (`occurrences`, `affected_people`, first and last seen, regressions) are kept on the
//! `error_groups` row by every ingest flush; figures for a range are counted from the raw
//! `errors` rows of that range (index `errors_project_fingerprint_ts`). A person is the user
//! id, else the visitor id, as the totals count them.
//!
//! Like Sentry's issue stream, the list shows the groups that occurred within the range.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use super::{GenericClient, StoreError};

/// The id of an error group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorGroupId(pub Uuid);

/// The person an occurrence reached, in SQL over `errors e` (the same rule as ingest's).
const PERSON: &str = "coalesce('u:' || e.user_id, 'v:' || e.visitor_id)";

/// Which groups a list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Unresolved,
    Resolved,
    /// Ignored groups too.
    All,
}

impl std::str::FromStr for StatusFilter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "unresolved" => Ok(Self::Unresolved),
            "resolved" => Ok(Self::Resolved),
            "all" => Ok(Self::All),
            _ => Err("must be `unresolved`, `resolved` or `all`".into()),
        }
    }
}

/// The order of a list, each descending (ties by id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    LastSeen,
    FirstSeen,
    /// Occurrences within the range.
    Count,
}

impl Sort {
    fn as_str(self) -> &'static str {
        match self {
            Sort::LastSeen => "last_seen",
            Sort::FirstSeen => "first_seen",
            Sort::Count => "count",
        }
    }
}

impl std::str::FromStr for Sort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "last_seen" => Ok(Self::LastSeen),
            "first_seen" => Ok(Self::FirstSeen),
            "count" => Ok(Self::Count),
            _ => Err("must be `last_seen`, `count` or `first_seen`".into()),
        }
    }
}

/// A group's stored totals.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorGroup {
    pub id: ErrorGroupId,
    pub fingerprint: String,
    pub error_type: String,
    pub message: String,
    pub level: String,
    pub status: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub occurrences: i64,
    pub affected_people: i64,
    pub last_occurrence: serde_json::Value,
    pub resolved_at: Option<DateTime<Utc>>,
    pub regressed_at: Option<DateTime<Utc>>,
    pub regressions: i32,
}

const GROUP_COLUMNS: &str = "g.id, g.fingerprint, g.type, g.message, g.level, g.status, \
     g.first_seen, g.last_seen, g.occurrences, g.affected_people, g.last_occurrence, \
     g.resolved_at, g.regressed_at, g.regressions";

fn group(row: &Row) -> ErrorGroup {
    ErrorGroup {
        id: ErrorGroupId(row.get(0)),
        fingerprint: row.get(1),
        error_type: row.get(2),
        message: row.get(3),
        level: row.get(4),
        status: row.get(5),
        first_seen: row.get(6),
        last_seen: row.get(7),
        occurrences: row.get(8),
        affected_people: row.get(9),
        last_occurrence: row.get(10),
        resolved_at: row.get(11),
        regressed_at: row.get(12),
        regressions: row.get(13),
    }
}

/// A group of a list, with its figures within the range.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedGroup {
    pub group: ErrorGroup,
    pub range_occurrences: i64,
    pub range_people: i64,
}

impl ListedGroup {
    /// Where this group sits in a list sorted by `sort`.
    pub fn key(&self, sort: Sort) -> i64 {
        match sort {
            Sort::LastSeen => self.group.last_seen.timestamp_micros(),
            Sort::FirstSeen => self.group.first_seen.timestamp_micros(),
            Sort::Count => self.range_occurrences,
        }
    }
}

/// The cursor of a group list: the sort, the last group's sort key and id, and the start of
/// the range the first page resolved (so a relative range does not slide while paging). With
/// `sort=count` a group's count can change between pages (new occurrences): such a group may
/// then show twice or not at all, as in any list ordered by a live figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCursor {
    pub sort: Sort,
    pub key: i64,
    pub id: Uuid,
    pub from: DateTime<Utc>,
}

impl GroupCursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "g1|{}|{}|{}|{}",
            self.sort.as_str(),
            self.key,
            self.id,
            self.from.timestamp_micros()
        ))
    }

    /// `None` for anything that is not a cursor this server made.
    pub fn decode(s: &str) -> Option<Self> {
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(s).ok()?).ok()?;
        let mut parts = text.split('|');
        if parts.next()? != "g1" {
            return None;
        }
        let cursor = Self {
            sort: parts.next()?.parse().ok()?,
            key: parts.next()?.parse().ok()?,
            id: parts.next()?.parse().ok()?,
            from: DateTime::from_timestamp_micros(parts.next()?.parse().ok()?)?,
        };
        parts.next().is_none().then_some(cursor)
    }
}

/// Up to `limit` groups of the project with occurrences in `[from, to)`, in `status`, in
/// `sort` order, after `after` (a key and id of that sort) if given.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "error_groups.list", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn list(
    client: &impl GenericClient,
    project_id: Uuid,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    status: StatusFilter,
    sort: Sort,
    after: Option<(i64, Uuid)>,
    limit: usize,
) -> Result<Vec<ListedGroup>, StoreError> {
    let status = match status {
        StatusFilter::Unresolved => Some("unresolved"),
        StatusFilter::Resolved => Some("resolved"),
        StatusFilter::All => None,
    };
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let (after_key, after_id) = after.unzip();
    let after_at = after_key.and_then(DateTime::<Utc>::from_timestamp_micros);
    let rows = match sort {
        // Walks the groups in order (index error_groups_project_last_seen for last_seen) and
        // counts each one's occurrences in the range through the raw rows' index, until the
        // page is full: the work grows with the page, not with the project.
        Sort::LastSeen | Sort::FirstSeen => {
            let column = if sort == Sort::LastSeen {
                "g.last_seen"
            } else {
                "g.first_seen"
            };
            let sql = format!(
                "SELECT {GROUP_COLUMNS}, r.n, r.people
                 FROM error_groups g
                 CROSS JOIN LATERAL (
                     SELECT count(*) AS n, count(DISTINCT {PERSON}) AS people
                     FROM errors e
                     WHERE e.project_id = g.project_id AND e.fingerprint = g.fingerprint
                       AND e.ts >= $2 AND e.ts < $3
                 ) r
                 WHERE g.project_id = $1 AND g.last_seen >= $2 AND g.first_seen < $3
                   AND ($4::text IS NULL OR g.status = $4)
                   AND r.n > 0
                   AND ($5::timestamptz IS NULL OR ({column}, g.id) < ($5, $6::uuid))
                 ORDER BY {column} DESC, g.id DESC
                 LIMIT $7"
            );
            client
                .query(
                    &sql,
                    &[
                        &project_id,
                        &from,
                        &to,
                        &status,
                        &after_at,
                        &after_id,
                        &limit,
                    ],
                )
                .await?
        }
        // Counts every group's occurrences in the range in one pass over the raw rows.
        Sort::Count => {
            let sql = format!(
                "WITH r AS (
                     SELECT e.fingerprint, count(*) AS n, count(DISTINCT {PERSON}) AS people
                     FROM errors e
                     WHERE e.project_id = $1 AND e.ts >= $2 AND e.ts < $3
                     GROUP BY e.fingerprint
                 )
                 SELECT {GROUP_COLUMNS}, r.n, r.people
                 FROM r JOIN error_groups g
                   ON g.project_id = $1 AND g.fingerprint = r.fingerprint
                 WHERE ($4::text IS NULL OR g.status = $4)
                   AND ($5::int8 IS NULL OR (r.n, g.id) < ($5, $6::uuid))
                 ORDER BY r.n DESC, g.id DESC
                 LIMIT $7"
            );
            client
                .query(
                    &sql,
                    &[
                        &project_id,
                        &from,
                        &to,
                        &status,
                        &after_key,
                        &after_id,
                        &limit,
                    ],
                )
                .await?
        }
    };
    Ok(rows
        .iter()
        .map(|r| ListedGroup {
            group: group(r),
            range_occurrences: r.get(14),
            range_people: r.get(15),
        })
        .collect())
}

/// One group of the project, `None` when the project has no such group.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "error_groups.get", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn get(
    client: &impl GenericClient,
    project_id: Uuid,
    id: ErrorGroupId,
) -> Result<Option<ErrorGroup>, StoreError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {GROUP_COLUMNS} FROM error_groups g WHERE g.project_id = $1 AND g.id = $2"
            ),
            &[&project_id, &id.0],
        )
        .await?;
    Ok(row.as_ref().map(group))
}

/// Marks a group resolved (`true`) or unresolved again (`false`); `None` when the project has
/// no such group. Resolving a resolved group keeps its `resolved_at`. A new occurrence of a
/// resolved group reopens it and counts a regression (ingest does that); reopening it by hand
/// is no regression.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "error_groups.set_resolved", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn set_resolved(
    client: &impl GenericClient,
    project_id: Uuid,
    id: ErrorGroupId,
    resolved: bool,
) -> Result<Option<ErrorGroup>, StoreError> {
    let row = client
        .query_opt(
            &format!(
                "UPDATE error_groups g SET
                     status = CASE WHEN $3 THEN 'resolved' ELSE 'unresolved' END,
                     resolved_at = CASE WHEN NOT $3 THEN NULL
                                        WHEN g.status = 'resolved' THEN g.resolved_at
                                        ELSE now() END
                 WHERE g.project_id = $1 AND g.id = $2
                 RETURNING {GROUP_COLUMNS}"
            ),
            &[&project_id, &id.0, &resolved],
        )
        .await?;
    Ok(row.as_ref().map(group))
}

/// A group's figures within a range.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RangeFigures {
    pub occurrences: i64,
    pub people: i64,
}

/// How many occurrences of the group fall in each bucket `[boundaries[i], boundaries[i+1])`:
/// one count per bucket, zeros included. `boundaries` must be ascending and cover `[from, to)`.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "error_groups.trend", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn trend(
    client: &impl GenericClient,
    project_id: Uuid,
    fingerprint: &str,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    boundaries: &[DateTime<Utc>],
) -> Result<Vec<i64>, StoreError> {
    let buckets = boundaries.len().saturating_sub(1);
    let mut counts = vec![0; buckets];
    if buckets == 0 {
        return Ok(counts);
    }
    // width_bucket sorts each row between the zone-aware boundaries the range module made, so
    // DST days and half-hour zones bucket exactly as the series' labels say.
    let rows = client
        .query(
            "SELECT width_bucket(e.ts, $4::timestamptz[]), count(*)
             FROM errors e
             WHERE e.project_id = $1 AND e.fingerprint = $2 AND e.ts >= $3 AND e.ts < $5
             GROUP BY 1",
            &[&project_id, &fingerprint, &from, &boundaries, &to],
        )
        .await?;
    for row in rows {
        let bucket: i32 = row.get(0);
        if let Some(slot) = usize::try_from(bucket - 1)
            .ok()
            .and_then(|i| counts.get_mut(i))
        {
            *slot += row.get::<_, i64>(1);
        }
    }
    Ok(counts)
}

/// The group's occurrences and distinct people within `[from, to)`.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "error_groups.figures", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn figures(
    client: &impl GenericClient,
    project_id: Uuid,
    fingerprint: &str,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
) -> Result<RangeFigures, StoreError> {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), count(DISTINCT {PERSON}) FROM errors e
                 WHERE e.project_id = $1 AND e.fingerprint = $2 AND e.ts >= $3 AND e.ts < $4"
            ),
            &[&project_id, &fingerprint, &from, &to],
        )
        .await?;
    Ok(RangeFigures {
        occurrences: row.get(0),
        people: row.get(1),
    })
}

/// One stored occurrence of an error.
#[derive(Debug, Clone, PartialEq)]
pub struct Occurrence {
    pub ts: DateTime<Utc>,
    pub error_type: String,
    pub message: String,
    pub stack_trace: Option<serde_json::Value>,
    pub level: String,
    pub environment: Option<String>,
    pub release: Option<String>,
    pub url: Option<String>,
    pub user_id: Option<String>,
    pub visitor_id: Option<String>,
    pub tags: serde_json::Value,
    /// Breadcrumbs, contexts, request, the rest of an exception chain (Sentry SDKs); None when
    /// nothing was sent.
    pub context: Option<serde_json::Value>,
}

/// The group's `limit` newest occurrences within `[from, to)`, newest first.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "error_groups.recent", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn recent(
    client: &impl GenericClient,
    project_id: Uuid,
    fingerprint: &str,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    limit: i64,
) -> Result<Vec<Occurrence>, StoreError> {
    let rows = client
        .query(
            "SELECT e.ts, e.type, e.message, e.stack_trace, e.level, e.environment, e.release,
                    e.url, e.user_id, e.visitor_id, e.tags, e.context
             FROM errors e
             WHERE e.project_id = $1 AND e.fingerprint = $2 AND e.ts >= $3 AND e.ts < $4
             ORDER BY e.ts DESC
             LIMIT $5",
            &[&project_id, &fingerprint, &from, &to, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Occurrence {
            ts: r.get(0),
            error_type: r.get(1),
            message: r.get(2),
            stack_trace: r.get(3),
            level: r.get(4),
            environment: r.get(5),
            release: r.get(6),
            url: r.get(7),
            user_id: r.get(8),
            visitor_id: r.get(9),
            tags: r.get(10),
            context: r.get(11),
        })
        .collect())
}

/// One value of a tag and how many occurrences carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagValue {
    pub value: String,
    pub count: i64,
}

/// A tag key: how many occurrences carried it, and its most frequent values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub total: i64,
    pub top: Vec<TagValue>,
}

/// The group's tags within `[from, to)`: each key with its `per_key` most frequent values
/// (ties by value), at most `max_keys` keys (the most frequent). Like Sentry's tag summary,
/// `environment`, `release` and `level` count as tags too.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "error_groups.tags", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn tags(
    client: &impl GenericClient,
    project_id: Uuid,
    fingerprint: &str,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    per_key: i64,
    max_keys: i64,
) -> Result<BTreeMap<String, Tag>, StoreError> {
    let rows = client
        .query(
            "WITH v AS (
                 SELECT t.key, t.value, count(*) AS n
                 FROM errors e
                 CROSS JOIN LATERAL jsonb_each_text(
                     e.tags || jsonb_strip_nulls(jsonb_build_object(
                         'environment', e.environment, 'release', e.release, 'level', e.level))
                 ) t(key, value)
                 WHERE e.project_id = $1 AND e.fingerprint = $2 AND e.ts >= $3 AND e.ts < $4
                 GROUP BY t.key, t.value
             ), ranked AS (
                 SELECT key, value, n,
                        sum(n) OVER (PARTITION BY key) AS total,
                        row_number() OVER (PARTITION BY key ORDER BY n DESC, value) AS rank
                 FROM v
             ), keys AS (
                 SELECT key FROM ranked WHERE rank = 1 ORDER BY total DESC, key LIMIT $6
             )
             SELECT r.key, r.value, r.n, r.total::int8
             FROM ranked r JOIN keys k USING (key)
             WHERE r.rank <= $5
             ORDER BY r.key, r.rank",
            &[&project_id, &fingerprint, &from, &to, &per_key, &max_keys],
        )
        .await?;
    let mut tags: BTreeMap<String, Tag> = BTreeMap::new();
    for row in rows {
        let tag = tags.entry(row.get(0)).or_insert_with(|| Tag {
            total: row.get(3),
            top: Vec::new(),
        });
        tag.top.push(TagValue {
            value: row.get(1),
            count: row.get(2),
        });
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let from = DateTime::from_timestamp_micros(1_780_000_000_000_001).unwrap();
        for sort in [Sort::LastSeen, Sort::FirstSeen, Sort::Count] {
            let c = GroupCursor {
                sort,
                key: -42,
                id: Uuid::now_v7(),
                from,
            };
            assert_eq!(GroupCursor::decode(&c.encode()), Some(c));
        }
        for garbage in [
            "x".to_string(),
            URL_SAFE_NO_PAD.encode("g1|views|1|00000000-0000-0000-0000-000000000000|1"),
            URL_SAFE_NO_PAD.encode("g1|count|1|nope|1"),
            URL_SAFE_NO_PAD.encode("g1|count|1|00000000-0000-0000-0000-000000000000|1|2"),
        ] {
            assert_eq!(GroupCursor::decode(&garbage), None, "{garbage}");
        }
    }

    #[test]
    fn parameters_parse() {
        assert_eq!("all".parse(), Ok(StatusFilter::All));
        assert!("ignored".parse::<StatusFilter>().is_err());
        assert_eq!("first_seen".parse(), Ok(Sort::FirstSeen));
        assert!("date".parse::<Sort>().is_err());
    }
}
