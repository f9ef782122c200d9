//! Reading custom metrics over a range: one metric's series (`/metrics/query`), every series
//! for an export (`/metrics/export`), and LLM usage by model (`/costs`).
//!
//! The hours of a range are planned as for `/stats` ([`super::stats::plan`]): closed, clean
//! hours wholly inside the range come from `rollup_metrics`, grouped into the range's buckets
//! by PostgreSQL (`width_bucket` over hour-aligned boundaries, see
//! [`crate::series::hour_boundaries`]), so a 90-day range reads one row per label set and
//! bucket, not per hour; every other hour (the current one, partial ones, dirty ones) is
//! computed from raw rows by the Aggregator's own [`metrics_between`], so answers are live and
//! the same before and after the Aggregator ran. Both sides merge as [`Cell`]s.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::rollups::{metrics_between, MetricFilter, SeriesHour};
use super::stats::{plan, Plan};
use super::{GenericClient, StoreError};
use crate::range::{bucket_start, GroupBy, TimeRange};
use crate::series::{hour_boundaries, Cell};
use crate::sketch::Latency;

/// The LLM usage series ingestion writes (see `ingest::llm_usage`), each labelled `model`.
pub const LLM_COST: &str = "llm.cost_usd";
pub const LLM_INPUT: &str = "llm.tokens.input";
pub const LLM_OUTPUT: &str = "llm.tokens.output";

/// One series (a label set of one kind) of a metric, bucketed.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub kind: String,
    pub labels: Value,
    /// Only buckets holding data, by start.
    pub buckets: BTreeMap<DateTime<Utc>, Cell>,
}

/// The range, its buckets and which hours come from where: what every read of one range
/// shares.
#[derive(Debug, Clone)]
pub struct Window {
    pub range: TimeRange,
    pub by: GroupBy,
    /// Bucket starts, zero-filled series have one point each.
    pub starts: Vec<DateTime<Utc>>,
    /// Hour-aligned boundaries for `width_bucket` (one more than `starts`).
    pub bounds: Vec<DateTime<Utc>>,
    pub plan: Plan,
}

impl Window {
    /// Plans `range` of `project_id`'s metrics as of `now`, bucketed by `by`.
    pub async fn plan(
        client: &impl GenericClient,
        project_id: Uuid,
        range: TimeRange,
        by: GroupBy,
        now: DateTime<Utc>,
    ) -> Result<Self, StoreError> {
        let plan = plan(client, "metrics", project_id, range.from, range.to, now).await?;
        let (starts, bounds) = hour_boundaries(&range, by);
        Ok(Self {
            range,
            by,
            starts,
            bounds,
            plan,
        })
    }

    /// The start of the bucket `width_bucket` numbered `index` (1-based), if it is one.
    fn start_of(&self, index: i32) -> Option<DateTime<Utc>> {
        let i = usize::try_from(index).ok()?.checked_sub(1)?;
        self.starts.get(i).copied()
    }

    /// The raw hours of the plan, computed for the metrics `filter` lets through, by hour.
    pub async fn live(
        &self,
        client: &impl GenericClient,
        project_id: Uuid,
        filter: &MetricFilter,
    ) -> Result<Vec<LiveHour>, StoreError> {
        let mut out = Vec::with_capacity(self.plan.live.len());
        for (hour, start, end) in &self.plan.live {
            let series = metrics_between(client, project_id, *start, *end, filter).await?;
            out.push(LiveHour {
                bucket: bucket_start(self.range.tz, self.by, *hour),
                series,
            });
        }
        Ok(out)
    }
}

/// An hour computed from raw rows: its bucket and its series by (name, labels as text).
#[derive(Debug, Clone)]
pub struct LiveHour {
    pub bucket: DateTime<Utc>,
    pub series: BTreeMap<(String, String), (Value, SeriesHour)>,
}

fn cell_of(s: &SeriesHour) -> Cell {
    Cell {
        count: s.count,
        sum: s.sum,
        min: s.min,
        max: s.max,
        last: Some((s.last_at, s.last)),
        sketch: s.sketch.clone(),
    }
}

fn bad_sketch(e: crate::sketch::SketchError) -> StoreError {
    StoreError::Unavailable(format!("stored sketch unreadable: {e}"))
}

/// Every series of metric `name` in the window (labels holding `labels`), stored hours and
/// `live` hours merged per bucket; sketches read only when `sketches`.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "series.series_of", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn series_of(
    client: &impl GenericClient,
    project_id: Uuid,
    name: &str,
    labels: Option<&Map<String, Value>>,
    window: &Window,
    live: &[LiveHour],
    sketches: bool,
) -> Result<Vec<Series>, StoreError> {
    let mut out: BTreeMap<(String, String), Series> = BTreeMap::new();
    if !window.plan.stored.is_empty() {
        let filter = Value::Object(labels.cloned().unwrap_or_default());
        let rows = client
            .query(
                "SELECT width_bucket(hour, $4::timestamptz[]), labels, kind, sum(count)::int8,
                        sum(sum), min(min), max(max),
                        (array_agg(last ORDER BY last_at DESC, last DESC))[1], max(last_at),
                        CASE WHEN $6 THEN array_agg(sketch) FILTER (WHERE sketch IS NOT NULL) END
                 FROM rollup_metrics
                 WHERE project_id = $1 AND name = $2 AND hour = ANY($3) AND labels @> $5
                 GROUP BY 1, 2, 3",
                &[
                    &project_id,
                    &name,
                    &window.plan.stored,
                    &window.bounds,
                    &filter,
                    &sketches,
                ],
            )
            .await?;
        for row in rows {
            let Some(start) = window.start_of(row.get(0)) else {
                continue;
            };
            let (labels, kind): (Value, String) = (row.get(1), row.get(2));
            let mut cell = Cell {
                count: row.get(3),
                sum: row.get(4),
                min: row.get(5),
                max: row.get(6),
                last: Some((row.get(8), row.get(7))),
                sketch: None,
            };
            if let Some(stored) = row.get::<_, Option<Vec<&[u8]>>>(9) {
                let mut merged = Latency::default();
                for bytes in stored {
                    merged.merge(&Latency::from_bytes(bytes).map_err(bad_sketch)?);
                }
                cell.sketch = Some(merged);
            }
            out.entry((kind.clone(), labels.to_string()))
                .or_insert_with(|| Series {
                    name: name.to_string(),
                    kind,
                    labels,
                    buckets: BTreeMap::new(),
                })
                .buckets
                .entry(start)
                .or_default()
                .merge(&cell);
        }
    }
    for hour in live {
        for ((series_name, key), (labels, s)) in &hour.series {
            if series_name != name {
                continue;
            }
            let mut cell = cell_of(s);
            if !sketches {
                cell.sketch = None;
            }
            out.entry((s.kind.clone(), key.clone()))
                .or_insert_with(|| Series {
                    name: name.to_string(),
                    kind: s.kind.clone(),
                    labels: labels.clone(),
                    buckets: BTreeMap::new(),
                })
                .buckets
                .entry(hour.bucket)
                .or_default()
                .merge(&cell);
        }
    }
    // By kind, then labels: a metric's series of one kind stay together (one Prometheus
    // family each).
    Ok(out.into_values().collect())
}

/// The names of the metrics with data in the window, sorted: those of the live hours and
/// those of stored hours, found by skipping through the primary key one name at a time (a
/// loose index scan: one probe per name, however many rows each has).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "series.names_in", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn names_in(
    client: &impl GenericClient,
    project_id: Uuid,
    window: &Window,
    live: &[LiveHour],
) -> Result<Vec<String>, StoreError> {
    let mut names: BTreeSet<String> = live
        .iter()
        .flat_map(|h| h.series.keys().map(|(name, _)| name.clone()))
        .collect();
    if let (Some(first), Some(last)) = (window.plan.stored.first(), window.plan.stored.last()) {
        let rows = client
            .query(
                "WITH RECURSIVE names(name) AS (
                     (SELECT name FROM rollup_metrics
                      WHERE project_id = $1 AND hour >= $2 AND hour <= $3
                      ORDER BY name LIMIT 1)
                     UNION ALL
                     SELECT (SELECT r.name FROM rollup_metrics r
                             WHERE r.project_id = $1 AND r.name > n.name
                               AND r.hour >= $2 AND r.hour <= $3
                             ORDER BY r.name LIMIT 1)
                     FROM names n WHERE n.name IS NOT NULL
                 )
                 SELECT name FROM names WHERE name IS NOT NULL",
                &[&project_id, first, last],
            )
            .await?;
        names.extend(rows.iter().map(|r| r.get::<_, String>(0)));
    }
    Ok(names.into_iter().collect())
}

/// LLM usage of one model in one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// `None` while no usage of the model had a price.
    pub cost_usd: Option<f64>,
    pub input_tokens: f64,
    pub output_tokens: f64,
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        if let Some(cost) = other.cost_usd {
            *self.cost_usd.get_or_insert(0.0) += cost;
        }
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
    }

    fn add_metric(&mut self, name: &str, value: f64) {
        match name {
            LLM_COST => *self.cost_usd.get_or_insert(0.0) += value,
            LLM_INPUT => self.input_tokens += value,
            LLM_OUTPUT => self.output_tokens += value,
            _ => {}
        }
    }
}

/// LLM usage in the window by model, then bucket start (only buckets with usage).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "series.costs", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn costs(
    client: &impl GenericClient,
    project_id: Uuid,
    window: &Window,
) -> Result<BTreeMap<String, BTreeMap<DateTime<Utc>, Usage>>, StoreError> {
    let names = vec![
        LLM_COST.to_string(),
        LLM_INPUT.to_string(),
        LLM_OUTPUT.to_string(),
    ];
    let mut out: BTreeMap<String, BTreeMap<DateTime<Utc>, Usage>> = BTreeMap::new();
    if !window.plan.stored.is_empty() {
        let rows = client
            .query(
                "SELECT width_bucket(hour, $4::timestamptz[]), name, labels->>'model', sum(sum)
                 FROM rollup_metrics
                 WHERE project_id = $1 AND name = ANY($2) AND hour = ANY($3) AND labels ? 'model'
                 GROUP BY 1, 2, 3",
                &[&project_id, &names, &window.plan.stored, &window.bounds],
            )
            .await?;
        for row in rows {
            let Some(start) = window.start_of(row.get(0)) else {
                continue;
            };
            let (name, model, value): (&str, String, f64) = (row.get(1), row.get(2), row.get(3));
            out.entry(model)
                .or_default()
                .entry(start)
                .or_default()
                .add_metric(name, value);
        }
    }
    let filter = MetricFilter {
        names,
        labels: None,
    };
    for hour in window.live(client, project_id, &filter).await? {
        for ((name, _), (labels, s)) in &hour.series {
            let Some(model) = labels.get("model").and_then(Value::as_str) else {
                continue;
            };
            out.entry(model.to_string())
                .or_default()
                .entry(hour.bucket)
                .or_default()
                .add_metric(name, s.sum);
        }
    }
    Ok(out)
}

/// A metric's series merged for `/metrics/query`.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The kinds of the series found (one, unless the metric changed kind).
    pub kinds: BTreeSet<String>,
    /// Every bucket of the window, zero-filled.
    pub buckets: Vec<(DateTime<Utc>, Cell)>,
    pub total: Cell,
    /// Label sets with their value counts, busiest first, at most
    /// [`crate::series::MAX_LABEL_SETS`].
    pub label_sets: Vec<(Value, i64)>,
    /// Whether more label sets were seen than listed.
    pub more_label_sets: bool,
}

/// Merges `series` over label sets into the buckets `starts`.
pub fn summarize(series: &[Series], starts: &[DateTime<Utc>]) -> Summary {
    let mut buckets: BTreeMap<DateTime<Utc>, Cell> =
        starts.iter().map(|s| (*s, Cell::default())).collect();
    let mut sets: BTreeMap<String, (Value, i64)> = BTreeMap::new();
    let mut summary = Summary::default();
    for s in series {
        summary.kinds.insert(s.kind.clone());
        let set = sets
            .entry(s.labels.to_string())
            .or_insert_with(|| (s.labels.clone(), 0));
        for (start, cell) in &s.buckets {
            set.1 += cell.count;
            summary.total.merge(cell);
            buckets.entry(*start).or_default().merge(cell);
        }
    }
    let mut sets: Vec<(String, (Value, i64))> = sets.into_iter().collect();
    sets.sort_by(|(a_key, (_, a)), (b_key, (_, b))| b.cmp(a).then_with(|| a_key.cmp(b_key)));
    summary.more_label_sets = sets.len() > crate::series::MAX_LABEL_SETS;
    summary.label_sets = sets
        .into_iter()
        .take(crate::series::MAX_LABEL_SETS)
        .map(|(_, set)| set)
        .collect();
    summary.buckets = buckets.into_iter().collect();
    summary
}
