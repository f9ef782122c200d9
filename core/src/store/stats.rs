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

use super::rollups::{
    event_block_counts, event_block_values, event_blocks, events_between, request_blocks,
    requests_between, Dim, EndpointHour,
};
use super::{GenericClient, StoreError};
use crate::blocks::{tile, Block};
use crate::range::{bucket_start, GroupBy, TimeRange};
use crate::sketch::Uniques;
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
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "stats.plan", otel.kind = "client", db.system.name = "postgresql"))]
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

/// The fewest blocks (see [`crate::blocks`]) that tile the `stored` hours (ascending), never
/// across a bucket boundary (`bucket_of` names an hour's bucket) nor over a gap.
pub fn tile_stored(
    stored: &[DateTime<Utc>],
    bucket_of: impl Fn(DateTime<Utc>) -> DateTime<Utc>,
) -> Vec<Block> {
    let mut out = Vec::new();
    let mut run: Option<(DateTime<Utc>, DateTime<Utc>, DateTime<Utc>)> = None;
    for &hour in stored {
        let bucket = bucket_of(hour);
        match run {
            Some((start, end, b)) if end == hour && b == bucket => {
                run = Some((start, hour + Duration::hours(1), b));
            }
            _ => {
                if let Some((start, end, _)) = run {
                    out.extend(tile(start, end));
                }
                run = Some((hour, hour + Duration::hours(1), bucket));
            }
        }
    }
    if let Some((start, end, _)) = run {
        out.extend(tile(start, end));
    }
    out
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

/// One bucket (or the total) as it is put together: counts added, sketches merged, unless the
/// bucket is one stored block whose unique counts are stored with it.
#[derive(Default)]
struct Bucket {
    events: i64,
    pageviews: i64,
    visitors: Uniques,
    people: Uniques,
    /// The stored unique counts, when the bucket is exactly one stored hour or block.
    stored: Option<(u64, u64)>,
}

impl Bucket {
    fn point(mut self, start: DateTime<Utc>) -> EventsPoint {
        let (visitors, people) = self
            .stored
            .unwrap_or_else(|| (self.visitors.count(), self.people.count()));
        EventsPoint {
            start,
            events: self.events,
            pageviews: self.pageviews,
            visitors,
            people,
        }
    }
}

/// `/stats` for `project_id` over `range`, bucketed by `by`, as of `now`.
///
/// Stored hours are read as blocks twice over: tiled per bucket for the series, where a bucket
/// that is one block (an hour of a 24-hour series, a UTC day of a month) takes the unique
/// counts stored with it and only the others merge sketches; and tiled over the whole range for
/// the total and its top lists, which crosses bucket edges and so reads the fewest blocks.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "stats.event_stats", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn event_stats(
    client: &impl GenericClient,
    project_id: Uuid,
    range: &TimeRange,
    by: GroupBy,
    now: DateTime<Utc>,
) -> Result<EventStats, StoreError> {
    let plan = plan(client, "events", project_id, range.from, range.to, now).await?;
    let bucket_of = |h: DateTime<Utc>| bucket_start(range.tz, by, h);
    let per_bucket = tile_stored(&plan.stored, bucket_of);
    let whole = tile_stored(&plan.stored, |_| range.from);

    let mut live = Vec::with_capacity(plan.live.len());
    for (hour, start, end) in &plan.live {
        live.push((
            *hour,
            events_between(client, project_id, *start, *end).await?,
        ));
    }

    let mut buckets: BTreeMap<DateTime<Utc>, Bucket> = range
        .buckets(by)
        .into_iter()
        .map(|start| (start, Bucket::default()))
        .collect();
    // Which buckets are one stored block and nothing else.
    let mut parts: HashMap<DateTime<Utc>, usize> = HashMap::new();
    for b in &per_bucket {
        *parts.entry(bucket_of(b.start)).or_default() += 1;
    }
    for (hour, _) in &live {
        *parts.entry(bucket_of(*hour)).or_default() += 2;
    }
    let single = |bucket: &DateTime<Utc>| parts.get(bucket) == Some(&1);

    for (block, c) in event_block_counts(client, project_id, &per_bucket).await? {
        let start = bucket_of(block.start);
        let bucket = buckets.entry(start).or_default();
        bucket.events += c.events;
        bucket.pageviews += c.pageviews;
        if single(&start) {
            bucket.stored = Some((c.visitors, c.people));
        }
    }
    let merged: Vec<Block> = per_bucket
        .iter()
        .filter(|b| !single(&bucket_of(b.start)))
        .copied()
        .collect();
    for (block, h) in event_blocks(client, project_id, &merged).await? {
        let bucket = buckets.entry(bucket_of(block.start)).or_default();
        bucket.visitors.merge(&h.visitors);
        bucket.people.merge(&h.people);
    }

    let mut total = Bucket::default();
    for (_, h) in event_blocks(client, project_id, &whole).await? {
        total.visitors.merge(&h.visitors);
        total.people.merge(&h.people);
    }
    let mut values: HashMap<(Dim, String), i64> = event_block_values(client, project_id, &whole)
        .await?
        .into_iter()
        .collect();
    for (hour, h) in &live {
        let bucket = buckets.entry(bucket_of(*hour)).or_default();
        bucket.events += h.events;
        bucket.pageviews += h.pageviews;
        bucket.visitors.merge(&h.visitors);
        bucket.people.merge(&h.people);
        total.visitors.merge(&h.visitors);
        total.people.merge(&h.people);
        for ((dim, value), count) in &h.values {
            *values.entry((*dim, value.clone())).or_default() += count;
        }
    }
    for b in buckets.values() {
        total.events += b.events;
        total.pageviews += b.pageviews;
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
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "stats.endpoint_stats", otel.kind = "client", db.system.name = "postgresql"))]
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
    let blocks = tile_stored(&plan.stored, |_| range.from);
    for (_, key, e) in request_blocks(client, project_id, &blocks).await? {
        add(key, &e);
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Timelike};

    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, day, hour, 0, 0)
            .single()
            .unwrap()
    }

    #[test]
    fn stored_hours_are_tiled_per_bucket_and_around_gaps() {
        // Two days of hours but for 10:00 of the first (dirty), in two UTC-day buckets.
        let stored: Vec<DateTime<Utc>> = (0..48)
            .map(|h| at(2, 0) + Duration::hours(h))
            .filter(|h| *h != at(2, 10))
            .collect();
        let day = |h: DateTime<Utc>| h - Duration::hours(i64::from(h.hour()));
        let blocks = tile_stored(&stored, day);
        let covered: Vec<DateTime<Utc>> = blocks
            .iter()
            .flat_map(|b| (0..b.hours).map(move |i| b.start + Duration::hours(i64::from(i))))
            .collect();
        assert_eq!(covered, stored, "every stored hour once, nothing else");
        assert!(blocks
            .iter()
            .all(|b| day(b.start) == day(b.end() - Duration::hours(1))));
        assert_eq!(
            blocks.last().map(|b| b.hours),
            Some(24),
            "the clean day is one block"
        );
        // One bucket for the whole range: still split at the gap.
        let whole = tile_stored(&stored, |_| at(1, 0));
        assert!(whole
            .iter()
            .all(|b| !(b.start <= at(2, 10) && at(2, 10) < b.end())));
    }
}
