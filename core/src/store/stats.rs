//! Reading rollups over a range: analytics (`/stats`) and API monitoring (`/api-stats`).
//!
//! A range is cut into hours. An hour wholly inside the range, closed and not marked dirty is
//! read from its rollup rows; every other hour — the current one (live), one only partly inside
//! the range, one with late data the Aggregator has not folded in yet — is computed from raw
//! rows, by the very functions the Aggregator uses, so the answer is exact and live whatever
//! the Aggregator's progress. Unique counts and percentiles come from merging the hours'
//! sketches. Series buckets (hour or day, days in the caller's time zone) take each hour by
//! its start: in zones whose offset is not whole hours (India, Nepal) a day is counted from the
//! hour its midnight falls in.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::rollups::{events_between, requests_between, Dim, EndpointHour, EventsHour};
use super::{GenericClient, StoreError};
use crate::range::{bucket_start, GroupBy, TimeRange};
use crate::sketch::{Latency, Uniques};
use crate::store::ingest::hour_of;

/// How many entries each top list has.
pub const TOP: usize = 10;

/// The hours of `[from, to)` and which of them must be computed from raw rows, with the part of
/// each that lies inside the range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Hours read from rollups.
    pub stored: Vec<DateTime<Utc>>,
    /// `(hour, start, end)`: computed from raw rows over `[start, end)`.
    pub live: Vec<(DateTime<Utc>, DateTime<Utc>, DateTime<Utc>)>,
}

/// Which hours of `[from, to)` of `kind` (`rollup_dirty.kind`) to read from rollups and which to
/// compute from raw rows; see the module documentation.
pub async fn plan(
    client: &impl GenericClient,
    kind: &str,
    project_id: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Plan, StoreError> {
    let mut plan = Plan {
        stored: Vec::new(),
        live: Vec::new(),
    };
    if from >= to {
        return Ok(plan);
    }
    let current = hour_of(now);
    let dirty: BTreeSet<DateTime<Utc>> = client
        .query(
            "SELECT hour FROM rollup_dirty WHERE kind = $1 AND project_id = $2
             AND hour >= $3 AND hour < $4",
            &[&kind, &project_id, &hour_of(from), &to],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut hour = hour_of(from);
    while hour < to {
        let end = hour + Duration::hours(1);
        let whole = hour >= from && end <= to;
        if whole && hour < current && !dirty.contains(&hour) {
            plan.stored.push(hour);
        } else {
            plan.live.push((hour, hour.max(from), end.min(to)));
        }
        hour = end;
    }
    Ok(plan)
}

/// One bucket of the events series.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EventsPoint {
    pub start: DateTime<Utc>,
    pub events: i64,
    pub pageviews: i64,
    pub visitors: u64,
    pub people: u64,
}

/// A value of a top list.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Top {
    pub value: String,
    pub count: i64,
}

/// Analytics over a range.
#[derive(Debug, Clone, Serialize)]
pub struct EventStats {
    pub totals: EventsPoint,
    pub series: Vec<EventsPoint>,
    pub top_pages: Vec<Top>,
    pub top_referrers: Vec<Top>,
    pub top_events: Vec<Top>,
}

/// The hours of a range, as rollups or live computations, merged per bucket.
#[derive(Default)]
struct Bucket {
    events: i64,
    pageviews: i64,
    visitors: Uniques,
    people: Uniques,
}

impl Bucket {
    fn add(&mut self, h: &EventsHour) {
        self.events += h.events;
        self.pageviews += h.pageviews;
        self.visitors.merge(&h.visitors);
        self.people.merge(&h.people);
    }

    fn point(mut self, start: DateTime<Utc>) -> EventsPoint {
        EventsPoint {
            start,
            events: self.events,
            pageviews: self.pageviews,
            visitors: self.visitors.count(),
            people: self.people.count(),
        }
    }
}

/// `/stats` for `project_id` over `range`, bucketed by `by`, as of `now`.
pub async fn event_stats(
    client: &impl GenericClient,
    project_id: Uuid,
    range: &TimeRange,
    by: GroupBy,
    now: DateTime<Utc>,
) -> Result<EventStats, StoreError> {
    let plan = plan(client, "events", project_id, range.from, range.to, now).await?;
    let mut hours: Vec<(DateTime<Utc>, EventsHour)> = Vec::new();
    if !plan.stored.is_empty() {
        let rows = client
            .query(
                "SELECT hour, events, pageviews, visitors, people FROM rollup_events
                 WHERE project_id = $1 AND hour = ANY($2)",
                &[&project_id, &plan.stored],
            )
            .await?;
        for row in rows {
            let visitors = Uniques::from_bytes(row.get(3))
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            let people = Uniques::from_bytes(row.get(4))
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            hours.push((
                row.get(0),
                EventsHour {
                    events: row.get(1),
                    pageviews: row.get(2),
                    visitors,
                    people,
                    values: BTreeMap::new(),
                },
            ));
        }
    }
    let mut values: HashMap<(Dim, String), i64> = HashMap::new();
    if !plan.stored.is_empty() {
        let rows = client
            .query(
                "SELECT dim, value, sum(count)::bigint FROM rollup_event_values
                 WHERE project_id = $1 AND hour = ANY($2) GROUP BY dim, value",
                &[&project_id, &plan.stored],
            )
            .await?;
        for row in rows {
            let dim = match row.get::<_, &str>(0) {
                "name" => Dim::Name,
                "page" => Dim::Page,
                _ => Dim::Referrer,
            };
            *values.entry((dim, row.get(1))).or_default() += row.get::<_, i64>(2);
        }
    }
    for (hour, start, end) in &plan.live {
        let h = events_between(client, project_id, *start, *end).await?;
        for ((dim, value), count) in &h.values {
            *values.entry((*dim, value.clone())).or_default() += count;
        }
        hours.push((*hour, h));
    }

    let mut buckets: BTreeMap<DateTime<Utc>, Bucket> = range
        .buckets(by)
        .into_iter()
        .map(|start| (start, Bucket::default()))
        .collect();
    for (hour, h) in &hours {
        let start = bucket_start(range.tz, by, *hour);
        buckets.entry(start).or_default().add(h);
    }
    // The total merges the buckets, not every hour again: one merge per bucket (30 for a month
    // by day) instead of one per hour (720).
    let mut total = Bucket::default();
    for b in buckets.values() {
        total.events += b.events;
        total.pageviews += b.pageviews;
        total.visitors.merge(&b.visitors);
        total.people.merge(&b.people);
    }
    let top = |dim: Dim| {
        let mut list: Vec<Top> = values
            .iter()
            .filter(|((d, _), _)| *d == dim)
            .map(|((_, value), count)| Top {
                value: value.clone(),
                count: *count,
            })
            .collect();
        list.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
        list.truncate(TOP);
        list
    };
    Ok(EventStats {
        totals: total.point(range.from),
        series: buckets
            .into_iter()
            .map(|(start, b)| b.point(start))
            .collect(),
        top_pages: top(Dim::Page),
        top_referrers: top(Dim::Referrer),
        top_events: top(Dim::Name),
    })
}

/// One (method, route) over a range.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointStats {
    pub method: String,
    pub route: String,
    pub count: i64,
    pub errors_4xx: i64,
    pub errors_5xx: i64,
    /// (4xx + 5xx) ÷ count.
    pub error_rate: f64,
    pub avg_ms: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// `/api-stats` for `project_id` over `range`, as of `now`: every (method, route) seen, busiest
/// first.
pub async fn endpoint_stats(
    client: &impl GenericClient,
    project_id: Uuid,
    range: &TimeRange,
    now: DateTime<Utc>,
) -> Result<Vec<EndpointStats>, StoreError> {
    let plan = plan(client, "requests", project_id, range.from, range.to, now).await?;
    let mut merged: BTreeMap<(String, String), EndpointHour> = BTreeMap::new();
    let mut add = |key: (String, String), e: &EndpointHour| {
        let m = merged.entry(key).or_default();
        m.count += e.count;
        m.errors_4xx += e.errors_4xx;
        m.errors_5xx += e.errors_5xx;
        m.duration_sum += e.duration_sum;
        m.latency.merge(&e.latency);
    };
    if !plan.stored.is_empty() {
        let rows = client
            .query(
                "SELECT method, route, count, errors_4xx, errors_5xx, duration_sum, latency
                 FROM rollup_requests WHERE project_id = $1 AND hour = ANY($2)",
                &[&project_id, &plan.stored],
            )
            .await?;
        for row in rows {
            let latency = Latency::from_bytes(row.get(6))
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            let e = EndpointHour {
                count: row.get(2),
                errors_4xx: row.get(3),
                errors_5xx: row.get(4),
                duration_sum: row.get(5),
                latency,
            };
            add((row.get(0), row.get(1)), &e);
        }
    }
    for (_, start, end) in &plan.live {
        for (key, e) in requests_between(client, project_id, *start, *end).await? {
            add(key, &e);
        }
    }
    let mut out: Vec<EndpointStats> = merged
        .into_iter()
        .map(|((method, route), e)| {
            let count = e.count.max(1) as f64;
            EndpointStats {
                method,
                route,
                count: e.count,
                errors_4xx: e.errors_4xx,
                errors_5xx: e.errors_5xx,
                error_rate: (e.errors_4xx + e.errors_5xx) as f64 / count,
                avg_ms: e.duration_sum / count,
                p50_ms: e.latency.quantile(0.5),
                p95_ms: e.latency.quantile(0.95),
                p99_ms: e.latency.quantile(0.99),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| (&a.route, &a.method).cmp(&(&b.route, &b.method)))
    });
    Ok(out)
}
