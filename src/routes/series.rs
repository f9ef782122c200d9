//! Custom metrics and LLM costs over any range (SPEC §7): `GET /projects/{id}/metrics/query`
//! (one metric's series with an aggregation), `GET /projects/{id}/metrics/export` (every series,
//! as CSV, Prometheus text or JSON, streamed) and `GET /projects/{id}/costs` (LLM cost and tokens
//! by model and day). Closed hours come from the Aggregator's rollups, the current hour and any
//! hour not rolled up yet from raw rows, so a value sent a second ago is in. Scoped like every
//! project route: another organisation's project is a 404. Bad parameters are a 422 naming each.

use actix_web::web::Bytes;
use actix_web::{get, web, HttpResponse};
use chrono::{DateTime, Duration, Utc};
use futures_util::stream;
use observe_core::db::PgPool;
use observe_core::export::{metric_name, Encoder, Format};
use observe_core::range::{GroupBy, TimeRange};
use observe_core::series::{check_name, parse_labels, Agg, HISTOGRAM};
use observe_core::store::rollups::MetricFilter;
use observe_core::store::series::{self, LiveHour, Usage, Window};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::ApiError;
use crate::query::{readable_project, RangeQuery};
use crate::session::Session;
use crate::state::AppState;
use crate::validate::Problems;

/// Ranges up to this long are bucketed by hour unless `group_by` says otherwise; longer, by
/// day (as `/stats`).
const HOURLY_UP_TO: Duration = Duration::hours(48);

fn default_by(range: &TimeRange) -> GroupBy {
    range
        .group_by
        .unwrap_or(if range.to - range.from <= HOURLY_UP_TO {
            GroupBy::Hour
        } else {
            GroupBy::Day
        })
}

/// The project (404 unless the caller's organisation owns it), then every parameter checked
/// at once: `check` adds the route's own problems first, then the range's.
async fn checked<T>(
    state: &AppState,
    session: &Session,
    project_id: Uuid,
    range: &RangeQuery,
    check: impl FnOnce(&mut Problems) -> T,
) -> Result<(observe_core::db::PgClient, TimeRange, T), ApiError> {
    let client = state.db.get().await?;
    let (_, tier) = readable_project(&client, session, project_id).await?;
    let mut problems = Problems::default();
    let own = check(&mut problems);
    let range = range.check(state, tier, &mut problems);
    problems.finish()?;
    let range = range.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("range lost")))?;
    Ok((client, range, own))
}

/// `name` (required or not) and `labels`, checked into `problems`.
fn name_and_labels(
    problems: &mut Problems,
    name: &Option<String>,
    labels: &Option<String>,
    required: bool,
) -> (Option<String>, Option<Map<String, Value>>) {
    let name = match name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
        None if required => {
            problems.add("name", "is required: the metric to read");
            None
        }
        None => None,
        Some(text) => match check_name(text) {
            Ok(name) => Some(name),
            Err(reason) => {
                problems.add("name", reason);
                None
            }
        },
    };
    let labels = match parse_labels(labels.as_deref().unwrap_or_default()) {
        Ok(labels) => labels,
        Err(reason) => {
            problems.add("labels", reason);
            None
        }
    };
    (name, labels)
}

/// What to read of a metric.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MetricQuery {
    /// The metric's name (required).
    #[param(example = "revenue")]
    pub name: Option<String>,
    /// Only series whose labels hold every pair: `key:value,key:value` (a `\` makes the next
    /// character plain, for `,` `:` `\` inside names or values).
    #[param(example = "plan:pro,region:eu")]
    pub labels: Option<String>,
    /// `sum`, `avg` (weighted by count), `min`, `max`, `last` (by report time) or `p95`
    /// (histograms only, from merged sketches). Default: `sum` for counters, `last` for gauges,
    /// `avg` for histograms.
    pub agg: Option<String>,
}

/// One bucket of a metric's series.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetricPoint {
    /// The bucket's start (its hour, or its day's midnight in `tz`).
    pub start: DateTime<Utc>,
    /// The aggregation over the bucket. `sum` is 0 for a bucket without values (nothing was
    /// added); every other aggregation is null there (no reading to take it of).
    pub value: Option<f64>,
    /// Values reported in the bucket.
    pub count: i64,
}

/// A label set seen in the range.
#[derive(Debug, Serialize, ToSchema)]
pub struct LabelSet {
    #[schema(value_type = Object)]
    pub labels: Value,
    /// Values reported with it in the range.
    pub count: i64,
}

/// A metric over a range.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetricSeriesView {
    pub name: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    #[schema(example = "UTC")]
    pub tz: String,
    #[schema(example = "hour")]
    pub group_by: String,
    #[schema(example = "sum")]
    pub agg: String,
    /// The label filter applied (`{}`: none).
    #[schema(value_type = Object)]
    pub labels: Value,
    /// `counter`, `gauge` or `histogram`; null when the range holds no value; kinds joined by
    /// `,` if the metric changed kind.
    pub kind: Option<String>,
    /// The aggregation over the whole range (null as for a bucket).
    pub total: Option<f64>,
    /// Every bucket of the range.
    pub series: Vec<MetricPoint>,
    /// The label sets seen (matching the filter), most values first, at most 100.
    pub label_sets: Vec<LabelSet>,
    /// Whether more label sets were seen than listed.
    pub label_sets_truncated: bool,
}

/// One metric over a range: a zero-filled series of `agg` per bucket, its total, and the label
/// sets seen.
#[utoipa::path(
    tag = "metrics",
    security(("bearer" = [])),
    params(("project_id" = Uuid, Path), MetricQuery, RangeQuery),
    responses(
        (status = 200, body = MetricSeriesView),
        (status = 404, body = crate::error::ErrorBody),
        (status = 422, description = "A bad parameter, named in `details` (`p95` of a metric that is not a histogram names `agg`)", body = crate::error::ErrorBody),
    )
)]
#[get("/projects/{project_id}/metrics/query")]
pub async fn metrics_query(
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<Uuid>,
    metric: web::Query<MetricQuery>,
    range: web::Query<RangeQuery>,
) -> Result<web::Json<MetricSeriesView>, ApiError> {
    let project_id = path.into_inner();
    let (client, range, (name, labels, agg)) =
        checked(&state, &session, project_id, &range, |problems| {
            let (name, labels) = name_and_labels(problems, &metric.name, &metric.labels, true);
            let agg = match metric
                .agg
                .as_deref()
                .map(str::trim)
                .filter(|a| !a.is_empty())
            {
                None => None,
                Some(text) => match text.parse::<Agg>() {
                    Ok(agg) => Some(agg),
                    Err(reason) => {
                        problems.add("agg", reason);
                        None
                    }
                },
            };
            (name, labels, agg)
        })
        .await?;
    let name = name.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("name lost")))?;
    let by = default_by(&range);
    let window = Window::plan(&client, project_id, range, by, Utc::now()).await?;
    let filter = MetricFilter {
        names: vec![name.clone()],
        labels: labels.clone(),
    };
    let live = window.live(&client, project_id, &filter).await?;
    let sketches = agg == Some(Agg::P95);
    let found = series::series_of(
        &client,
        project_id,
        &name,
        labels.as_ref(),
        &window,
        &live,
        sketches,
    )
    .await?;
    let summary = series::summarize(&found, &window.starts);
    let kind = (!summary.kinds.is_empty())
        .then(|| summary.kinds.iter().cloned().collect::<Vec<_>>().join(","));
    if agg == Some(Agg::P95) {
        if let Some(kind) = kind.as_deref().filter(|k| *k != HISTOGRAM) {
            return Err(ApiError::Validation(vec![crate::error::FieldError::new(
                "agg",
                format!("p95 needs a histogram; `{name}` is a {kind} in this range"),
            )]));
        }
    }
    let agg = agg.unwrap_or_else(|| {
        Agg::default_for(
            (summary.kinds.len() == 1)
                .then_some(kind.as_deref())
                .flatten(),
        )
    });
    Ok(web::Json(MetricSeriesView {
        name,
        from: window.range.from,
        to: window.range.to,
        tz: window.range.tz.name().to_string(),
        group_by: by.as_str().to_string(),
        agg: agg.as_str().to_string(),
        labels: Value::Object(labels.unwrap_or_default()),
        kind,
        total: agg.of(&summary.total),
        series: summary
            .buckets
            .iter()
            .map(|(start, cell)| MetricPoint {
                start: *start,
                value: agg.of(cell),
                count: cell.count,
            })
            .collect(),
        label_sets: summary
            .label_sets
            .into_iter()
            .map(|(labels, count)| LabelSet { labels, count })
            .collect(),
        label_sets_truncated: summary.more_label_sets,
    }))
}

/// What to export.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `csv`, `prometheus` (text format 0.0.4) or `json`. Default `json`.
    #[param(example = "csv")]
    pub format: Option<String>,
    /// One metric only; default every metric.
    pub name: Option<String>,
    /// Only series whose labels hold every pair: `key:value,key:value`.
    pub labels: Option<String>,
}

/// Every series of the project's metrics over a range, per bucket (count, sum, min, max, last
/// value and its time; p50/p95/p99 for histograms), streamed: a body in chunks, one metric at a
/// time. CSV has one row per series and bucket with data; Prometheus text has each bucket as a
/// sample at its last report (counters and summary sums running from the range's start,
/// histograms as summaries, names translated to Prometheus's alphabet) and passes
/// `promtool check metrics`; JSON is one document. Should storage fail once the body has
/// begun, the connection is cut, so a partial file never looks whole.
#[utoipa::path(
    tag = "metrics",
    security(("bearer" = [])),
    params(("project_id" = Uuid, Path), ExportQuery, RangeQuery),
    responses(
        (status = 200, description = "`text/csv`, `text/plain; version=0.0.4` or `application/json`", content((String = "text/csv"), (String = "text/plain; version=0.0.4"), (Object = "application/json"))),
        (status = 404, body = crate::error::ErrorBody),
        (status = 422, description = "A bad parameter, named in `details`", body = crate::error::ErrorBody),
    )
)]
#[get("/projects/{project_id}/metrics/export")]
pub async fn metrics_export(
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<Uuid>,
    export: web::Query<ExportQuery>,
    range: web::Query<RangeQuery>,
) -> Result<HttpResponse, ApiError> {
    let project_id = path.into_inner();
    let (client, range, (format, name, labels)) =
        checked(&state, &session, project_id, &range, |problems| {
            let format = match export
                .format
                .as_deref()
                .map(str::trim)
                .filter(|f| !f.is_empty())
            {
                None => Format::Json,
                Some(text) => text.parse().unwrap_or_else(|reason: String| {
                    problems.add("format", reason);
                    Format::Json
                }),
            };
            let (name, labels) = name_and_labels(problems, &export.name, &export.labels, false);
            (format, name, labels)
        })
        .await?;
    let by = default_by(&range);
    let window = Window::plan(&client, project_id, range, by, Utc::now()).await?;
    let filter = MetricFilter {
        names: name.iter().cloned().collect(),
        labels: labels.clone(),
    };
    // The raw hours and the list of names before the first byte, so trouble there is still a
    // proper error answer.
    let live = window.live(&client, project_id, &filter).await?;
    let mut names = match name {
        Some(name) => vec![name],
        None => series::names_in(&client, project_id, &window, &live).await?,
    };
    if format == Format::Prometheus {
        // Names that share a Prometheus family next to each other: families are contiguous.
        names.sort_by_cached_key(|n| (metric_name(n), n.clone()));
    }
    drop(client);
    let export = Export {
        db: state.db.clone(),
        project_id,
        labels,
        window,
        live,
        names: names.into_iter(),
        encoder: Encoder::new(format),
        stage: Stage::Begin,
    };
    Ok(HttpResponse::Ok()
        .content_type(format.content_type())
        .streaming(stream::unfold(export, Export::next)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Begin,
    Names,
    Done,
}

/// The state of a streamed export between chunks.
struct Export {
    /// A connection is taken per metric and given back before its chunk is sent, so a slow
    /// reader holds none of the pool while it reads.
    db: PgPool,
    project_id: Uuid,
    labels: Option<Map<String, Value>>,
    window: Window,
    live: Vec<LiveHour>,
    names: std::vec::IntoIter<String>,
    encoder: Encoder,
    stage: Stage,
}

impl Export {
    /// The next chunk: the head, then one metric's series at a time, then the tail.
    async fn next(mut self) -> Option<(Result<Bytes, ApiError>, Self)> {
        match self.stage {
            Stage::Begin => {
                self.stage = Stage::Names;
                let head = self.encoder.begin(&self.window);
                if !head.is_empty() {
                    return Some((Ok(Bytes::from(head)), self));
                }
            }
            Stage::Names => {}
            Stage::Done => return None,
        }
        loop {
            let Some(name) = self.names.next() else {
                self.stage = Stage::Done;
                let tail = self.encoder.end();
                return (!tail.is_empty()).then(|| (Ok(Bytes::from(tail)), self));
            };
            match self.metric(&name).await {
                // An empty chunk would end a chunked body early: skip metrics without series.
                Ok(text) if text.is_empty() => continue,
                Ok(text) => return Some((Ok(Bytes::from(text)), self)),
                Err(e) => {
                    tracing::warn!(error = %e, metric = %name, "metrics export cut short");
                    self.stage = Stage::Done;
                    return Some((Err(e), self));
                }
            }
        }
    }

    async fn metric(&mut self, name: &str) -> Result<String, ApiError> {
        let client = self.db.get().await?;
        let found = series::series_of(
            &client,
            self.project_id,
            name,
            self.labels.as_ref(),
            &self.window,
            &self.live,
            true,
        )
        .await?;
        drop(client);
        let mut out = String::new();
        for s in &found {
            out.push_str(&self.encoder.series(s));
        }
        Ok(out)
    }
}

/// LLM usage of one model in one bucket.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelPoint {
    pub start: DateTime<Utc>,
    /// Null when the model has no price in `[ingest.llm_prices]` (tokens are still counted).
    pub cost_usd: Option<f64>,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// One model over the range.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelCosts {
    #[schema(example = "gpt-4o")]
    pub model: String,
    /// US dollars, priced at ingestion from `[ingest.llm_prices]`; null when the model has no
    /// price.
    pub cost_usd: Option<f64>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Every bucket of the range.
    pub series: Vec<ModelPoint>,
}

/// All models in one bucket, or over the range.
#[derive(Debug, Serialize, ToSchema)]
pub struct CostPoint {
    pub start: DateTime<Utc>,
    /// Of the models with a price.
    pub cost_usd: f64,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// The whole range, all models.
#[derive(Debug, Serialize, ToSchema)]
pub struct CostTotals {
    pub cost_usd: f64,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// LLM costs over a range.
#[derive(Debug, Serialize, ToSchema)]
pub struct CostsView {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    #[schema(example = "Africa/Lagos")]
    pub tz: String,
    #[schema(example = "day")]
    pub group_by: String,
    pub totals: CostTotals,
    /// Every bucket of the range, all models together, zero-filled.
    pub series: Vec<CostPoint>,
    /// Each model seen, most expensive first (unpriced ones last).
    pub models: Vec<ModelCosts>,
}

fn tokens(v: f64) -> i64 {
    // Token counts are whole numbers (ingestion refuses others), summed as floats.
    v.round() as i64
}

/// LLM cost (US dollars) and input/output tokens by model and day (`group_by=hour` for hours),
/// days counted in `tz`, from the `llm.*` series ingestion writes for LLM usage items.
#[utoipa::path(
    tag = "metrics",
    security(("bearer" = [])),
    params(("project_id" = Uuid, Path), RangeQuery),
    responses(
        (status = 200, body = CostsView),
        (status = 404, body = crate::error::ErrorBody),
        (status = 422, description = "A bad parameter, named in `details`", body = crate::error::ErrorBody),
    )
)]
#[get("/projects/{project_id}/costs")]
pub async fn costs(
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<Uuid>,
    range: web::Query<RangeQuery>,
) -> Result<web::Json<CostsView>, ApiError> {
    let project_id = path.into_inner();
    let (client, range, ()) = checked(&state, &session, project_id, &range, |_| ()).await?;
    let by = range.group_by.unwrap_or(GroupBy::Day);
    let window = Window::plan(&client, project_id, range, by, Utc::now()).await?;
    let by_model = series::costs(&client, project_id, &window).await?;

    let mut all: Vec<Usage> = vec![Usage::default(); window.starts.len()];
    let mut models = Vec::with_capacity(by_model.len());
    for (model, buckets) in by_model {
        let priced = buckets.values().any(|u| u.cost_usd.is_some());
        let mut total = Usage::default();
        let mut points = Vec::with_capacity(window.starts.len());
        for (i, start) in window.starts.iter().enumerate() {
            let usage = buckets.get(start).copied().unwrap_or_default();
            total.add(&usage);
            if let Some(sum) = all.get_mut(i) {
                sum.add(&usage);
            }
            points.push(ModelPoint {
                start: *start,
                cost_usd: priced.then(|| usage.cost_usd.unwrap_or(0.0)),
                input_tokens: tokens(usage.input_tokens),
                output_tokens: tokens(usage.output_tokens),
            });
        }
        models.push(ModelCosts {
            model,
            cost_usd: total.cost_usd,
            input_tokens: tokens(total.input_tokens),
            output_tokens: tokens(total.output_tokens),
            series: points,
        });
    }
    models.sort_by(|a, b| {
        let cost = |m: &ModelCosts| m.cost_usd.unwrap_or(f64::NEG_INFINITY);
        cost(b)
            .total_cmp(&cost(a))
            .then_with(|| a.model.cmp(&b.model))
    });
    let mut total = Usage::default();
    for u in &all {
        total.add(u);
    }
    Ok(web::Json(CostsView {
        from: window.range.from,
        to: window.range.to,
        tz: window.range.tz.name().to_string(),
        group_by: by.as_str().to_string(),
        totals: CostTotals {
            cost_usd: total.cost_usd.unwrap_or(0.0),
            input_tokens: tokens(total.input_tokens),
            output_tokens: tokens(total.output_tokens),
        },
        series: window
            .starts
            .iter()
            .zip(&all)
            .map(|(start, u)| CostPoint {
                start: *start,
                cost_usd: u.cost_usd.unwrap_or(0.0),
                input_tokens: tokens(u.input_tokens),
                output_tokens: tokens(u.output_tokens),
            })
            .collect(),
        models,
    }))
}
