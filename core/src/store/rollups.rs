//! Hourly rollups (migration 0011): computing one (project, hour) from raw rows, writing it,
//! and the Aggregator's work — recomputing exactly the closed hours flushes marked dirty.
//!
//! An hour is computed the same way whether it is stored (a closed hour, by the Aggregator) or
//! answered live (the current hour, by the read routes), so both agree. Recomputing replaces
//! the hour's rows whole, in one transaction with taking its dirty mark: re-running an hour
//! gives the same rows, and a flush committing into the hour meanwhile marks it again for the
//! next tick (see migration 0008).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::{GenericClient, StoreError};
use crate::blocks::{ancestors, Block};
use crate::sketch::{Latency, Uniques};
use crate::store::ingest::hour_of;

/// A dimension of events with a top list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dim {
    Name,
    Page,
    Referrer,
}

impl Dim {
    pub fn as_str(self) -> &'static str {
        match self {
            Dim::Name => "name",
            Dim::Page => "page",
            Dim::Referrer => "referrer",
        }
    }
}

/// One hour of a project's events.
#[derive(Debug, Clone, Default)]
pub struct EventsHour {
    pub events: i64,
    pub pageviews: i64,
    /// People, not devices: the user of each event if known, else its visitor.
    pub visitors: Uniques,
    /// Identified users.
    pub people: Uniques,
    pub values: BTreeMap<(Dim, String), i64>,
}

/// A metric's hour per (name, labels as text): its labels as JSON and its cell.
pub type MetricHours = BTreeMap<(String, String), (Value, SeriesHour)>;
/// A count per (dimension, value).
pub type DimCount = ((Dim, String), i64);
/// A block's rollup of one (method, route).
pub type EndpointBlock = (Block, (String, String), EndpointHour);

/// Computes `hour` of `project_id`'s events from raw rows, identities applied.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "rollups.events_hour", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn events_hour(
    client: &impl GenericClient,
    project_id: Uuid,
    hour: DateTime<Utc>,
) -> Result<EventsHour, StoreError> {
    events_between(client, project_id, hour, hour + Duration::hours(1)).await
}

/// Computes `project_id`'s events of `[hour, end)` from raw rows, identities applied: a whole
/// hour for the Aggregator, part of one for a live read.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "rollups.events_between", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn events_between(
    client: &impl GenericClient,
    project_id: Uuid,
    hour: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<EventsHour, StoreError> {
    let mut out = EventsHour::default();
    // One scan for the three dimensions: names count every event, pages and referrers only
    // page views (a grouping set's rows of a NULL url or referrer, or of no page view, are not
    // values).
    let rows = client
        .query(
            "SELECT grouping(name) AS by_name, grouping(url) AS by_url, name, url, referrer,
                    count(*) AS every, count(*) FILTER (WHERE name IN ('$pageview', 'page_view')) AS views
             FROM events WHERE project_id = $1 AND ts >= $2 AND ts < $3
             GROUP BY GROUPING SETS ((name), (url), (referrer))",
            &[&project_id, &hour, &end],
        )
        .await?;
    for row in rows {
        let (by_name, by_url): (i32, i32) = (row.get("by_name"), row.get("by_url"));
        let (every, views): (i64, i64) = (row.get("every"), row.get("views"));
        let (dim, value, count) = if by_name == 0 {
            let name: String = row.get("name");
            out.events += every;
            if name == "$pageview" || name == "page_view" {
                out.pageviews += every;
            }
            (Dim::Name, name, every)
        } else if by_url == 0 {
            match row.get::<_, Option<String>>("url") {
                Some(url) if views > 0 => (Dim::Page, url, views),
                _ => continue,
            }
        } else {
            match row.get::<_, Option<String>>("referrer") {
                Some(referrer) if views > 0 => (Dim::Referrer, referrer, views),
                _ => continue,
            }
        };
        out.values.insert((dim, value), count);
    }
    let persons = client
        .query(
            "SELECT DISTINCT coalesce(e.user_id, i.user_id), e.visitor_id
             FROM events e LEFT JOIN identities i
               ON i.project_id = e.project_id AND i.visitor_id = e.visitor_id
             WHERE e.project_id = $1 AND e.ts >= $2 AND e.ts < $3",
            &[&project_id, &hour, &end],
        )
        .await?;
    for row in persons {
        let (user, visitor): (Option<&str>, &str) = (row.get(0), row.get(1));
        match user {
            Some(user) => {
                out.visitors.insert(&format!("u:{user}"));
                out.people.insert(user);
            }
            None => out.visitors.insert(&format!("v:{visitor}")),
        }
    }
    Ok(out)
}

/// Replaces the stored rows of `hour` of `project_id`'s events with `h`.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "rollups.write_events_hour", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn write_events_hour(
    client: &impl GenericClient,
    project_id: Uuid,
    hour: DateTime<Utc>,
    h: &EventsHour,
) -> Result<u64, StoreError> {
    client
        .execute(
            "DELETE FROM rollup_event_values WHERE project_id = $1 AND hour = $2",
            &[&project_id, &hour],
        )
        .await?;
    if h.events == 0 {
        client
            .execute(
                "DELETE FROM rollup_events WHERE project_id = $1 AND hour = $2",
                &[&project_id, &hour],
            )
            .await?;
        return Ok(0);
    }
    let (visitors_count, people_count) = (count_of(&h.visitors), count_of(&h.people));
    client
        .execute(
            "INSERT INTO rollup_events (project_id, hour, events, pageviews, visitors, people,
                                        visitors_count, people_count)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (project_id, hour) DO UPDATE SET
                 events = EXCLUDED.events, pageviews = EXCLUDED.pageviews,
                 visitors = EXCLUDED.visitors, people = EXCLUDED.people,
                 visitors_count = EXCLUDED.visitors_count, people_count = EXCLUDED.people_count",
            &[
                &project_id,
                &hour,
                &h.events,
                &h.pageviews,
                &h.visitors.to_bytes(),
                &h.people.to_bytes(),
                &visitors_count,
                &people_count,
            ],
        )
        .await?;
    let (mut dims, mut values, mut counts) = (vec![], vec![], vec![]);
    for ((dim, value), count) in &h.values {
        dims.push(dim.as_str());
        values.push(value.as_str());
        counts.push(*count);
    }
    client
        .execute(
            "INSERT INTO rollup_event_values (project_id, dim, hour, value, count)
             SELECT $1, d, $2, v, c FROM unnest($3::text[], $4::text[], $5::int8[]) AS t(d, v, c)",
            &[&project_id, &hour, &dims, &values, &counts],
        )
        .await?;
    Ok(1 + h.values.len() as u64)
}

/// One (method, route) of an hour of API requests.
#[derive(Debug, Clone, Default)]
pub struct EndpointHour {
    pub count: i64,
    pub errors_4xx: i64,
    pub errors_5xx: i64,
    pub duration_sum: f64,
    pub latency: Latency,
}

/// Computes `hour` of `project_id`'s API requests from raw rows, per (method, route).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "rollups.requests_hour", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn requests_hour(
    client: &impl GenericClient,
    project_id: Uuid,
    hour: DateTime<Utc>,
) -> Result<BTreeMap<(String, String), EndpointHour>, StoreError> {
    requests_between(client, project_id, hour, hour + Duration::hours(1)).await
}

/// Computes `project_id`'s API requests of `[hour, end)` from raw rows, per (method, route).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "rollups.requests_between", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn requests_between(
    client: &impl GenericClient,
    project_id: Uuid,
    hour: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<BTreeMap<(String, String), EndpointHour>, StoreError> {
    let rows = client
        .query(
            "SELECT method, route, status_code, duration_ms FROM requests
             WHERE project_id = $1 AND ts >= $2 AND ts < $3",
            &[&project_id, &hour, &end],
        )
        .await?;
    let mut out: BTreeMap<(String, String), EndpointHour> = BTreeMap::new();
    for row in rows {
        let key = (row.get::<_, String>(0), row.get::<_, String>(1));
        let (status, duration): (i32, f64) = (row.get(2), row.get(3));
        let e = out.entry(key).or_default();
        e.count += 1;
        match status {
            400..=499 => e.errors_4xx += 1,
            500..=599 => e.errors_5xx += 1,
            _ => {}
        }
        e.duration_sum += duration;
        e.latency.add(duration);
    }
    Ok(out)
}

/// Replaces the stored rows of `hour` of `project_id`'s API requests.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "rollups.write_requests_hour", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn write_requests_hour(
    client: &impl GenericClient,
    project_id: Uuid,
    hour: DateTime<Utc>,
    endpoints: &BTreeMap<(String, String), EndpointHour>,
) -> Result<u64, StoreError> {
    client
        .execute(
            "DELETE FROM rollup_requests WHERE project_id = $1 AND hour = $2",
            &[&project_id, &hour],
        )
        .await?;
    if endpoints.is_empty() {
        return Ok(0);
    }
    let n = endpoints.len();
    let (mut methods, mut routes, mut counts, mut c4, mut c5, mut sums, mut sketches) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for ((method, route), e) in endpoints {
        methods.push(method.as_str());
        routes.push(route.as_str());
        counts.push(e.count);
        c4.push(e.errors_4xx);
        c5.push(e.errors_5xx);
        sums.push(e.duration_sum);
        sketches.push(e.latency.to_bytes());
    }
    client
        .execute(
            "INSERT INTO rollup_requests (project_id, hour, method, route, count, errors_4xx,
                                          errors_5xx, duration_sum, latency)
             SELECT $1, $2, * FROM unnest($3::text[], $4::text[], $5::int8[], $6::int8[],
                                          $7::int8[], $8::float8[], $9::bytea[])",
            &[
                &project_id,
                &hour,
                &methods,
                &routes,
                &counts,
                &c4,
                &c5,
                &sums,
                &sketches,
            ],
        )
        .await?;
    Ok(n as u64)
}

/// One (name, label set) of an hour of custom metrics.
#[derive(Debug, Clone)]
pub struct SeriesHour {
    pub kind: String,
    pub count: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub last: f64,
    pub last_at: DateTime<Utc>,
    /// Histograms only.
    pub sketch: Option<Latency>,
}

/// Computes `hour` of `project_id`'s metrics from raw rows, per (name, labels).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "rollups.metrics_hour", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn metrics_hour(
    client: &impl GenericClient,
    project_id: Uuid,
    hour: DateTime<Utc>,
) -> Result<MetricHours, StoreError> {
    let all = MetricFilter::default();
    metrics_between(client, project_id, hour, hour + Duration::hours(1), &all).await
}

/// Which metrics [`metrics_between`] reads: some names (none: every name) and series whose
/// labels hold every pair of `labels`.
#[derive(Debug, Clone, Default)]
pub struct MetricFilter {
    pub names: Vec<String>,
    pub labels: Option<serde_json::Map<String, Value>>,
}

/// Computes `project_id`'s metrics of `[hour, end)` from raw rows, per (name, labels), those
/// `filter` lets through: a whole hour for the Aggregator, part of one (or one metric) for a
/// live read.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "rollups.metrics_between", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn metrics_between(
    client: &impl GenericClient,
    project_id: Uuid,
    hour: DateTime<Utc>,
    end: DateTime<Utc>,
    filter: &MetricFilter,
) -> Result<MetricHours, StoreError> {
    let names = (!filter.names.is_empty()).then_some(&filter.names);
    let labels = filter.labels.clone().map(Value::Object);
    // By time, then value: of values reported at one instant the largest counts as last, as
    // when hours are merged (`series::Cell`), whatever order the rows were stored in.
    let rows = client
        .query(
            "SELECT name, labels, kind, value, ts FROM metrics
             WHERE project_id = $1 AND ts >= $2 AND ts < $3
               AND ($4::text[] IS NULL OR name = ANY($4))
               AND ($5::jsonb IS NULL OR labels @> $5)
             ORDER BY ts, value",
            &[&project_id, &hour, &end, &names, &labels],
        )
        .await?;
    let mut out: BTreeMap<(String, String), (Value, SeriesHour)> = BTreeMap::new();
    for row in rows {
        let (name, labels, kind, value, at): (String, Value, String, f64, DateTime<Utc>) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let key = (name, labels.to_string());
        let (_, s) = out.entry(key).or_insert_with(|| {
            let sketch = (kind == "histogram").then(Latency::default);
            (
                labels,
                SeriesHour {
                    kind,
                    count: 0,
                    sum: 0.0,
                    min: f64::INFINITY,
                    max: f64::NEG_INFINITY,
                    last: value,
                    last_at: at,
                    sketch,
                },
            )
        });
        s.count += 1;
        s.sum += value;
        s.min = s.min.min(value);
        s.max = s.max.max(value);
        if at >= s.last_at {
            s.last = value;
            s.last_at = at;
        }
        if let Some(sketch) = &mut s.sketch {
            sketch.add(value);
        }
    }
    Ok(out)
}

/// Replaces the stored rows of `hour` of `project_id`'s metrics.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "rollups.write_metrics_hour", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn write_metrics_hour(
    client: &impl GenericClient,
    project_id: Uuid,
    hour: DateTime<Utc>,
    series: &BTreeMap<(String, String), (Value, SeriesHour)>,
) -> Result<u64, StoreError> {
    client
        .execute(
            "DELETE FROM rollup_metrics WHERE project_id = $1 AND hour = $2",
            &[&project_id, &hour],
        )
        .await?;
    for ((name, _), (labels, s)) in series {
        client
            .execute(
                "INSERT INTO rollup_metrics (project_id, name, hour, labels, kind, count, sum,
                                             min, max, last, last_at, sketch)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                &[
                    &project_id,
                    name,
                    &hour,
                    labels,
                    &s.kind,
                    &s.count,
                    &s.sum,
                    &s.min,
                    &s.max,
                    &s.last,
                    &s.last_at,
                    &s.sketch.as_ref().map(Latency::to_bytes),
                ],
            )
            .await?;
    }
    Ok(series.len() as u64)
}

/// The stored event rollups of `blocks` of `project_id` (hours from `rollup_events`, longer
/// blocks from `rollup_event_blocks`; a block with no row had no events), top lists left out.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "rollups.event_blocks", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn event_blocks(
    client: &impl GenericClient,
    project_id: Uuid,
    blocks: &[Block],
) -> Result<Vec<(Block, EventsHour)>, StoreError> {
    let (hours, longer): (Vec<&Block>, Vec<&Block>) = blocks.iter().partition(|b| b.hours == 1);
    let mut out = Vec::with_capacity(blocks.len());
    let read = |row: &tokio_postgres::Row, start: DateTime<Utc>, len: u32| {
        Ok::<_, StoreError>((
            Block { start, hours: len },
            EventsHour {
                events: row.get("events"),
                pageviews: row.get("pageviews"),
                visitors: Uniques::from_bytes(row.get("visitors")).map_err(unreadable)?,
                people: Uniques::from_bytes(row.get("people")).map_err(unreadable)?,
                values: BTreeMap::new(),
            },
        ))
    };
    if !hours.is_empty() {
        let starts: Vec<DateTime<Utc>> = hours.iter().map(|b| b.start).collect();
        for row in client
            .query(
                "SELECT hour, events, pageviews, visitors, people FROM rollup_events
                 WHERE project_id = $1 AND hour = ANY($2)",
                &[&project_id, &starts],
            )
            .await?
        {
            out.push(read(&row, row.get("hour"), 1)?);
        }
    }
    if !longer.is_empty() {
        let starts: Vec<DateTime<Utc>> = longer.iter().map(|b| b.start).collect();
        let lengths: Vec<i16> = longer.iter().map(|b| b.hours as i16).collect();
        for row in client
            .query(
                "SELECT b.block_start, b.hours, b.events, b.pageviews, b.visitors, b.people
                 FROM rollup_event_blocks b
                 JOIN unnest($2::timestamptz[], $3::int2[]) AS w(s, h)
                   ON b.block_start = w.s AND b.hours = w.h
                 WHERE b.project_id = $1",
                &[&project_id, &starts, &lengths],
            )
            .await?
        {
            let len: i16 = row.get("hours");
            out.push(read(&row, row.get("block_start"), len as u32)?);
        }
    }
    Ok(out)
}

/// The totals of a stored hour or block, its unique counts as stored next to its sketches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockCounts {
    pub events: i64,
    pub pageviews: i64,
    pub visitors: u64,
    pub people: u64,
}

/// The stored totals of `blocks` of `project_id`, without their sketches (but for rows written
/// before migration 0013, counted from the sketch); a block with no row had no events.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "rollups.event_block_counts", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn event_block_counts(
    client: &impl GenericClient,
    project_id: Uuid,
    blocks: &[Block],
) -> Result<Vec<(Block, BlockCounts)>, StoreError> {
    let (starts, lengths) = starts_and_lengths(blocks);
    let rows = client
        .query(
            "SELECT hour AS block_start, 1::int2 AS hours, events, pageviews,
                    visitors_count, people_count,
                    CASE WHEN visitors_count IS NULL THEN visitors END AS visitors,
                    CASE WHEN people_count IS NULL THEN people END AS people
             FROM rollup_events r
             JOIN unnest($2::timestamptz[], $3::int2[]) AS w(s, h) ON r.hour = w.s AND w.h = 1
             WHERE r.project_id = $1
             UNION ALL
             SELECT block_start, hours, events, pageviews, visitors_count, people_count,
                    CASE WHEN visitors_count IS NULL THEN visitors END,
                    CASE WHEN people_count IS NULL THEN people END
             FROM rollup_event_blocks b
             JOIN unnest($2::timestamptz[], $3::int2[]) AS w(s, h)
               ON b.block_start = w.s AND b.hours = w.h
             WHERE b.project_id = $1",
            &[&project_id, &starts, &lengths],
        )
        .await?;
    let counted = |count: Option<i64>, sketch: Option<&[u8]>| match (count, sketch) {
        (Some(n), _) => Ok(u64::try_from(n).unwrap_or(0)),
        (None, Some(bytes)) => Ok(Uniques::from_bytes(bytes).map_err(unreadable)?.count()),
        (None, None) => Ok::<_, StoreError>(0),
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let hours: i16 = row.get("hours");
        out.push((
            Block {
                start: row.get("block_start"),
                hours: u32::try_from(hours).unwrap_or(1),
            },
            BlockCounts {
                events: row.get("events"),
                pageviews: row.get("pageviews"),
                visitors: counted(row.get("visitors_count"), row.get("visitors"))?,
                people: counted(row.get("people_count"), row.get("people"))?,
            },
        ));
    }
    Ok(out)
}

/// Counts by (dimension, value) summed over the stored `blocks` of `project_id`.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "rollups.event_block_values", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn event_block_values(
    client: &impl GenericClient,
    project_id: Uuid,
    blocks: &[Block],
) -> Result<Vec<DimCount>, StoreError> {
    if blocks.is_empty() {
        return Ok(Vec::new());
    }
    let (starts, lengths) = starts_and_lengths(blocks);
    let hours: Vec<DateTime<Utc>> = blocks
        .iter()
        .filter(|b| b.hours == 1)
        .map(|b| b.start)
        .collect();
    let rows = client
        .query(
            "SELECT dim, value, sum(count)::bigint FROM (
                 SELECT dim, value, count FROM rollup_event_values
                 WHERE project_id = $1 AND hour = ANY($4)
                 UNION ALL
                 SELECT v.dim, v.value, v.count FROM rollup_event_value_blocks v
                 JOIN unnest($2::timestamptz[], $3::int2[]) AS w(s, h)
                   ON v.block_start = w.s AND v.hours = w.h AND w.h > 1
                 WHERE v.project_id = $1
             ) t GROUP BY dim, value",
            &[&project_id, &starts, &lengths, &hours],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let dim = match row.get::<_, &str>(0) {
                "name" => Dim::Name,
                "page" => Dim::Page,
                _ => Dim::Referrer,
            };
            ((dim, row.get(1)), row.get(2))
        })
        .collect())
}

fn starts_and_lengths(blocks: &[Block]) -> (Vec<DateTime<Utc>>, Vec<i16>) {
    blocks
        .iter()
        .map(|b| (b.start, i16::try_from(b.hours).unwrap_or(i16::MAX)))
        .unzip()
}

/// The stored request rollups of `blocks` of `project_id`, per (method, route).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "rollups.request_blocks", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn request_blocks(
    client: &impl GenericClient,
    project_id: Uuid,
    blocks: &[Block],
) -> Result<Vec<EndpointBlock>, StoreError> {
    let (hours, longer): (Vec<&Block>, Vec<&Block>) = blocks.iter().partition(|b| b.hours == 1);
    let mut out = Vec::new();
    let read = |row: &tokio_postgres::Row, start: DateTime<Utc>, len: u32| {
        Ok::<_, StoreError>((
            Block { start, hours: len },
            (
                row.get::<_, String>("method"),
                row.get::<_, String>("route"),
            ),
            EndpointHour {
                count: row.get("count"),
                errors_4xx: row.get("errors_4xx"),
                errors_5xx: row.get("errors_5xx"),
                duration_sum: row.get("duration_sum"),
                latency: Latency::from_bytes(row.get("latency")).map_err(unreadable)?,
            },
        ))
    };
    if !hours.is_empty() {
        let starts: Vec<DateTime<Utc>> = hours.iter().map(|b| b.start).collect();
        for row in client
            .query(
                "SELECT hour, method, route, count, errors_4xx, errors_5xx, duration_sum, latency
                 FROM rollup_requests WHERE project_id = $1 AND hour = ANY($2)",
                &[&project_id, &starts],
            )
            .await?
        {
            out.push(read(&row, row.get("hour"), 1)?);
        }
    }
    if !longer.is_empty() {
        let starts: Vec<DateTime<Utc>> = longer.iter().map(|b| b.start).collect();
        let lengths: Vec<i16> = longer.iter().map(|b| b.hours as i16).collect();
        for row in client
            .query(
                "SELECT b.block_start, b.hours, b.method, b.route, b.count, b.errors_4xx,
                        b.errors_5xx, b.duration_sum, b.latency
                 FROM rollup_request_blocks b
                 JOIN unnest($2::timestamptz[], $3::int2[]) AS w(s, h)
                   ON b.block_start = w.s AND b.hours = w.h
                 WHERE b.project_id = $1",
                &[&project_id, &starts, &lengths],
            )
            .await?
        {
            let len: i16 = row.get("hours");
            out.push(read(&row, row.get("block_start"), len as u32)?);
        }
    }
    Ok(out)
}

/// A sketch's count as stored next to it.
fn count_of(sketch: &Uniques) -> i64 {
    // Counting settles the HyperLogLog's insertion buffer, hence the copy.
    i64::try_from(sketch.clone().count()).unwrap_or(i64::MAX)
}

fn unreadable(e: crate::sketch::SketchError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Builds the blocks holding `hour` of `project_id`'s events again, bottom-up, each from its
/// two halves (see [`crate::blocks`]). Returns the block rows written.
async fn rebuild_event_blocks(
    client: &impl GenericClient,
    project_id: Uuid,
    hour: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let mut written = 0;
    for block in ancestors(hour) {
        let Some(halves) = block.children() else {
            continue;
        };
        let mut merged = EventsHour::default();
        for (_, part) in event_blocks(client, project_id, &halves).await? {
            merged.events += part.events;
            merged.pageviews += part.pageviews;
            merged.visitors.merge(&part.visitors);
            merged.people.merge(&part.people);
        }
        let start_len = (block.start, block.hours as i16);
        client
            .execute(
                "DELETE FROM rollup_event_value_blocks
                 WHERE project_id = $1 AND block_start = $2 AND hours = $3",
                &[&project_id, &start_len.0, &start_len.1],
            )
            .await?;
        if merged.events == 0 {
            client
                .execute(
                    "DELETE FROM rollup_event_blocks
                     WHERE project_id = $1 AND block_start = $2 AND hours = $3",
                    &[&project_id, &start_len.0, &start_len.1],
                )
                .await?;
            continue;
        }
        let (visitors_count, people_count) =
            (merged.visitors.count() as i64, merged.people.count() as i64);
        client
            .execute(
                "INSERT INTO rollup_event_blocks (project_id, hours, block_start, events,
                     pageviews, visitors, people, visitors_count, people_count)
                 VALUES ($1, $3, $2, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (project_id, hours, block_start) DO UPDATE SET
                     events = EXCLUDED.events, pageviews = EXCLUDED.pageviews,
                     visitors = EXCLUDED.visitors, people = EXCLUDED.people,
                     visitors_count = EXCLUDED.visitors_count,
                     people_count = EXCLUDED.people_count",
                &[
                    &project_id,
                    &start_len.0,
                    &start_len.1,
                    &merged.events,
                    &merged.pageviews,
                    &merged.visitors.to_bytes(),
                    &merged.people.to_bytes(),
                    &visitors_count,
                    &people_count,
                ],
            )
            .await?;
        // Counts by value: the sum of the two halves' (hours or blocks, never one of each).
        let [a, b] = halves;
        let from_halves = if a.hours == 1 {
            "SELECT dim, value, count FROM rollup_event_values
             WHERE project_id = $1 AND hour IN ($4, $6) AND $5::int2 = 1 AND $7::int2 = 1"
        } else {
            "SELECT dim, value, count FROM rollup_event_value_blocks
             WHERE project_id = $1 AND ((block_start = $4 AND hours = $5)
                                     OR (block_start = $6 AND hours = $7))"
        };
        let (a_len, b_len) = (a.hours as i16, b.hours as i16);
        written += client
            .execute(
                &format!(
                    "INSERT INTO rollup_event_value_blocks
                         (project_id, block_start, hours, dim, value, count)
                     SELECT $1, $2, $3, dim, value, sum(count)::bigint
                     FROM ({from_halves}) halves GROUP BY dim, value"
                ),
                &[
                    &project_id,
                    &start_len.0,
                    &start_len.1,
                    &a.start,
                    &a_len,
                    &b.start,
                    &b_len,
                ],
            )
            .await?;
        written += 1;
    }
    Ok(written)
}

/// Builds the blocks holding `hour` of `project_id`'s API requests again, bottom-up.
async fn rebuild_request_blocks(
    client: &impl GenericClient,
    project_id: Uuid,
    hour: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let mut written = 0;
    for block in ancestors(hour) {
        let Some(halves) = block.children() else {
            continue;
        };
        let mut merged: BTreeMap<(String, String), EndpointHour> = BTreeMap::new();
        for (_, key, part) in request_blocks(client, project_id, &halves).await? {
            let m = merged.entry(key).or_default();
            m.count += part.count;
            m.errors_4xx += part.errors_4xx;
            m.errors_5xx += part.errors_5xx;
            m.duration_sum += part.duration_sum;
            m.latency.merge(&part.latency);
        }
        let (start, len) = (block.start, block.hours as i16);
        client
            .execute(
                "DELETE FROM rollup_request_blocks
                 WHERE project_id = $1 AND block_start = $2 AND hours = $3",
                &[&project_id, &start, &len],
            )
            .await?;
        if merged.is_empty() {
            continue;
        }
        let n = merged.len();
        let (mut methods, mut routes, mut counts, mut c4, mut c5, mut sums, mut sketches) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for ((method, route), e) in &merged {
            methods.push(method.as_str());
            routes.push(route.as_str());
            counts.push(e.count);
            c4.push(e.errors_4xx);
            c5.push(e.errors_5xx);
            sums.push(e.duration_sum);
            sketches.push(e.latency.to_bytes());
        }
        client
            .execute(
                "INSERT INTO rollup_request_blocks (project_id, hours, block_start, method, route,
                     count, errors_4xx, errors_5xx, duration_sum, latency)
                 SELECT $1, $3, $2, * FROM unnest($4::text[], $5::text[], $6::int8[],
                     $7::int8[], $8::int8[], $9::float8[], $10::bytea[])",
                &[
                    &project_id,
                    &start,
                    &len,
                    &methods,
                    &routes,
                    &counts,
                    &c4,
                    &c5,
                    &sums,
                    &sketches,
                ],
            )
            .await?;
        written += n as u64;
    }
    Ok(written)
}

/// What a rollup covers, as `rollup_dirty.kind` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Events,
    Requests,
    Metrics,
    /// Error groups keep their own counts; their marks are only cleared.
    Errors,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Events => "events",
            Kind::Requests => "requests",
            Kind::Metrics => "metrics",
            Kind::Errors => "errors",
        }
    }
}

/// Turns visitors identified since the last run into dirty hours: every hour since
/// `lookback_from` holding events of theirs. At most `limit` visitors a call.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "rollups.expand_identified", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn expand_identified(
    client: &mut deadpool_postgres::Client,
    lookback_from: DateTime<Utc>,
    limit: i64,
) -> Result<u64, StoreError> {
    let tx = client.transaction().await?;
    let taken = tx
        .query(
            "DELETE FROM rollup_dirty_visitors WHERE (project_id, visitor_id) IN (
                 SELECT project_id, visitor_id FROM rollup_dirty_visitors
                 ORDER BY marked_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING project_id, visitor_id",
            &[&limit],
        )
        .await?;
    let mut by_project: HashMap<Uuid, Vec<String>> = HashMap::new();
    for row in &taken {
        by_project.entry(row.get(0)).or_default().push(row.get(1));
    }
    for (project_id, visitors) in &by_project {
        tx.execute(
            "INSERT INTO rollup_dirty (kind, project_id, hour)
             SELECT DISTINCT 'events', $1::uuid, date_trunc('hour', ts, 'UTC') FROM events
             WHERE project_id = $1 AND ts >= $3 AND visitor_id = ANY($2)
             ON CONFLICT DO NOTHING",
            &[project_id, visitors, &lookback_from],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(taken.len() as u64)
}

/// Recomputes up to `limit` dirty closed hours (before the hour of `now`) of `kind`, each with
/// taking its mark in one transaction. Returns the rollup rows written and the hours done.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "rollups.recompute_dirty", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn recompute_dirty(
    client: &mut deadpool_postgres::Client,
    kind: Kind,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<(u64, u64), StoreError> {
    let current = hour_of(now);
    let (mut rows, mut hours) = (0u64, 0i64);
    loop {
        let tx = client.transaction().await?;
        let taken = tx
            .query_opt(
                "DELETE FROM rollup_dirty WHERE (kind, project_id, hour) IN (
                     SELECT kind, project_id, hour FROM rollup_dirty
                     WHERE kind = $1 AND hour < $2
                     ORDER BY hour LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING project_id, hour",
                &[&kind.as_str(), &current],
            )
            .await?;
        let Some(row) = taken else {
            tx.commit().await?;
            break;
        };
        let (project_id, hour): (Uuid, DateTime<Utc>) = (row.get(0), row.get(1));
        rows += match kind {
            Kind::Events => {
                let h = events_hour(&tx, project_id, hour).await?;
                write_events_hour(&tx, project_id, hour, &h).await?
                    + rebuild_event_blocks(&tx, project_id, hour).await?
            }
            Kind::Requests => {
                let h = requests_hour(&tx, project_id, hour).await?;
                write_requests_hour(&tx, project_id, hour, &h).await?
                    + rebuild_request_blocks(&tx, project_id, hour).await?
            }
            Kind::Metrics => {
                let h = metrics_hour(&tx, project_id, hour).await?;
                write_metrics_hour(&tx, project_id, hour, &h).await?
            }
            Kind::Errors => 0,
        };
        tx.commit().await?;
        hours += 1;
        if hours >= limit {
            break;
        }
    }
    Ok((rows, hours as u64))
}

/// Hours recomputed per transaction batch before the Aggregator looks at the next kind.
const BATCH_HOURS: i64 = 500;

/// The Aggregator's work for one tick: visitors identified since the last run make the hours
/// of their events dirty (for [`Kind::Events`]), then every dirty closed hour of each of
/// `kinds` is recomputed. Returns the rollup rows written.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "rollups.aggregate", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn aggregate(
    pool: &crate::db::PgPool,
    kinds: &[Kind],
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    aggregate_with(pool, kinds, now, DEFAULT_IDENTIFY_LOOKBACK).await
}

/// How far back a visitor's events are rolled up again when who they are changes, unless
/// configured (`jobs.identify_lookback_days`).
pub const DEFAULT_IDENTIFY_LOOKBACK: Duration = Duration::days(7);

/// [`aggregate`], looking `identify_lookback` back for the events of visitors identified since
/// the last run.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "rollups.aggregate_with", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn aggregate_with(
    pool: &crate::db::PgPool,
    kinds: &[Kind],
    now: DateTime<Utc>,
    identify_lookback: Duration,
) -> Result<u64, StoreError> {
    let mut client = pool.get().await?;
    if kinds.contains(&Kind::Events) {
        let from = now - identify_lookback;
        while expand_identified(&mut client, from, 1000).await? == 1000 {}
    }
    let mut rows = 0;
    for kind in kinds {
        loop {
            let (written, hours) = recompute_dirty(&mut client, *kind, now, BATCH_HOURS).await?;
            rows += written;
            if hours < BATCH_HOURS as u64 {
                break;
            }
        }
    }
    Ok(rows)
}
