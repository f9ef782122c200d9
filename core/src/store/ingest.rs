//! Writing ingested items: one transaction per flush, shared by every request in it.
//!
//! [`write`] takes the requests an IngestActor buffered for one project and, in one
//! transaction: takes each quota category's usage row for the month under a row lock and
//! decides, request by request and in order, which ones still fit under the organisation's
//! monthly cap (a request fits whole or not at all); COPYs (binary) the raw rows of the
//! accepted requests into `events`, `errors`, `requests` and `metrics`; upserts identities
//! and people, and error groups with their affected people; adds the accepted counts to the
//! usage rows; commits. Either all of it is stored or none of it, so a request answered 202
//! is stored whole and a failed flush can be retried as it is.
//!
//! Locks are always taken in the same order (usage rows by category, then error groups by
//! fingerprint), so concurrent flushes for one organisation, from one instance or several,
//! queue instead of deadlocking.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::pin;

use chrono::{DateTime, NaiveDate, Utc};
use deadpool_postgres::Client;
use serde_json::{json, Map, Value};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{Json, Type};
use uuid::Uuid;

use tracing::Instrument;

use super::{Refusal, StoreError};
use crate::config::Limit;
use crate::db::statement;
use crate::ingest::{
    Category, ErrorItem, Event, Identify, Items, MetricItem, MetricKind, RequestItem,
};

/// One request's items, as buffered.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub received_at: DateTime<Utc>,
    pub items: &'a Items,
    /// The organisation's monthly cap for the items' category when the request came in.
    pub cap: Limit,
}

/// Whose items a flush writes, and which usage month they count against.
#[derive(Debug, Clone, Copy)]
pub struct Job {
    pub project_id: Uuid,
    pub organisation_id: Uuid,
    pub month: NaiveDate,
}

/// What became of one request of a committed transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Stored,
    /// The organisation's monthly cap for the category has no room for it: nothing stored.
    OverQuota,
}

/// What one flush wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Raw rows COPYed (events, errors, requests, metrics).
    pub rows: usize,
    /// How long its COMMIT took.
    pub commit: std::time::Duration,
}

/// The server process running a flush's transaction, and the transaction's id: enough to look
/// the transaction up (`txid_status`) and to end it from another connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub pid: i32,
    pub txid: i64,
}

/// Why a transaction did not (knowingly) commit.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Nothing was committed and the transaction is over: the flush can be retried as it is.
    #[error(transparent)]
    Failed(#[from] StoreError),
    /// Nothing was committed (COMMIT was never sent), but the connection broke or went silent,
    /// so the transaction may still be open on the server, holding the usage row's lock until
    /// `idle_in_transaction_session_timeout`: [`fence`] it before writing again.
    #[error("flush abandoned: {error}")]
    Abandoned {
        backend: Backend,
        #[source]
        error: StoreError,
    },
    /// COMMIT was sent and no answer came: the transaction may or may not have committed.
    /// [`settle`] tells which; retrying blindly could store the batch twice.
    #[error("commit outcome unknown: {error}")]
    Uncertain {
        backend: Backend,
        /// What the transaction decided for each request, in order, if it committed.
        verdicts: Vec<Verdict>,
        #[source]
        error: StoreError,
    },
}

/// Whether the transaction `txid` committed: `Some(true)` committed, `Some(false)` aborted (or
/// never committed), `None` still in progress (ask again later).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "ingest.committed", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn committed(
    client: &tokio_postgres::Client,
    txid: i64,
) -> Result<Option<bool>, StoreError> {
    let row = client.query_one("SELECT txid_status($1)", &[&txid]).await?;
    Ok(match row.get::<_, Option<String>>(0).as_deref() {
        Some("committed") => Some(true),
        Some("in progress") => None,
        // "aborted", or NULL: too old for the commit log, and a flush is retried within
        // seconds, so it was not ours to find.
        _ => Some(false),
    })
}

/// Ends `backend`'s session if it is still running that transaction (a pid alone may have
/// been reused by then). Its transaction aborts and its locks go. Returns whether it was
/// still there.
///
/// This is how PostgreSQL's own tooling fences a session it has lost contact with
/// (`pg_terminate_backend`); it needs the same role as the flushing connection, which
/// observe's connections share.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "ingest.fence", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn fence(client: &tokio_postgres::Client, backend: Backend) -> Result<bool, StoreError> {
    let row = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE pid = $1 AND backend_xid IS NOT NULL
               AND backend_xid::text::bigint = $2::bigint % 4294967296",
            &[&backend.pid, &backend.txid],
        )
        .await?;
    Ok(row.get::<_, i64>(0) > 0)
}

/// What an uncertain transaction turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Committed,
    /// It did not commit and never will: its requests can be written again.
    Aborted,
    /// Still open on the server (its COMMIT never arrived); it was told to end, so ask again.
    Pending,
}

/// Looks up an uncertain transaction and, if the server still runs it, ends it, so that the
/// next look finds it aborted rather than waiting on a session that may never speak again.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "ingest.settle", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn settle(
    client: &tokio_postgres::Client,
    backend: Backend,
) -> Result<Settled, StoreError> {
    match committed(client, backend.txid).await? {
        Some(true) => Ok(Settled::Committed),
        Some(false) => Ok(Settled::Aborted),
        None => {
            fence(client, backend).await?;
            Ok(Settled::Pending)
        }
    }
}

/// [`settle`] through a connection of `pool`, the whole look bounded by `timeout`; a
/// connection that failed is kept out of the pool.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "ingest.look_up", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn look_up(
    pool: &crate::db::PgPool,
    backend: Backend,
    timeout: std::time::Duration,
) -> Result<Settled, StoreError> {
    let look = async {
        let client = pool.get().await?;
        let settled = settle(&client, backend).await;
        if settled.is_err() {
            discard(client);
        }
        settled
    };
    tokio::time::timeout(timeout, look)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "PostgreSQL did not answer in time".into(),
            ))
        })
}

/// `fut`, unless `deadline` passes first: then the connection is considered gone.
async fn bounded<T>(
    deadline: tokio::time::Instant,
    fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout_at(deadline, fut).await {
        Ok(result) => result.map_err(StoreError::from),
        Err(_) => Err(StoreError::Unavailable(
            "PostgreSQL did not answer in time (flush timeout)".into(),
        )),
    }
}

/// Stores `requests` of `job` in one transaction; see the module documentation. Every step
/// shares one deadline `timeout` from now: a connection that goes silent (a black hole, where
/// no error ever comes) ends the attempt instead of holding it forever.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "ingest.transaction", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn write(
    client: &mut Client,
    job: &Job,
    requests: &[Request<'_>],
    timeout: std::time::Duration,
) -> Result<(Vec<Verdict>, Written), WriteError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let tx = bounded(deadline, client.transaction()).await?;
    // Assigns the transaction its id now, so an interrupted COMMIT can be looked up later and
    // an abandoned transaction ended from another connection.
    let row = bounded(
        deadline,
        tx.query_one("SELECT txid_current(), pg_backend_pid()", &[]),
    )
    .await?;
    let backend = Backend {
        txid: row.get(0),
        pid: row.get(1),
    };
    let body = async {
        match tokio::time::timeout_at(deadline, fill(&tx, job, requests)).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(
                "PostgreSQL did not answer in time (flush timeout)".into(),
            )),
        }
    };
    let (verdicts, mut written) = match body.await {
        Ok(done) => done,
        // The server answered with an error: it ended the transaction itself.
        Err(error @ (StoreError::Db(_) | StoreError::Conflict(_))) => {
            return Err(WriteError::Failed(error))
        }
        Err(error @ StoreError::Unavailable(_)) => {
            return Err(WriteError::Abandoned { backend, error })
        }
    };
    let committing = std::time::Instant::now();
    let commit = bounded(deadline, tx.commit()).instrument(statement("ingest.commit"));
    match commit.await {
        Ok(()) => {
            written.commit = committing.elapsed();
            Ok((verdicts, written))
        }
        // A lost or silent connection leaves the outcome unknown; a server-side refusal (a
        // deferred constraint) is a clean abort.
        Err(error @ StoreError::Unavailable(_)) => Err(WriteError::Uncertain {
            backend,
            verdicts,
            error,
        }),
        Err(other) => Err(WriteError::Failed(other)),
    }
}

/// Everything a flush's transaction does before COMMIT.
async fn fill(
    tx: &tokio_postgres::Transaction<'_>,
    job: &Job,
    requests: &[Request<'_>],
) -> Result<(Vec<Verdict>, Written), StoreError> {
    let verdicts = apply_quotas(tx, job.organisation_id, job.month, requests).await?;
    let stored: Vec<&Request<'_>> = requests
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| **v == Verdict::Stored)
        .map(|(r, _)| r)
        .collect();

    let mut rows = 0;
    let mut events = Vec::new();
    let mut errors = Vec::new();
    let mut calls = Vec::new();
    let mut metrics = Vec::new();
    let mut identifies = Vec::new();
    for request in &stored {
        let at = request.received_at;
        match request.items {
            Items::Events(v) => events.extend(v.iter().map(|i| (at, i))),
            Items::Errors(v) => errors.extend(v.iter().map(|i| (at, i))),
            Items::Requests(v) => calls.extend(v.iter().map(|i| (at, i))),
            Items::Metrics { rows, .. } => metrics.extend(rows.iter().map(|i| (at, i))),
            Items::Identify(v) => identifies.extend(v.iter()),
        }
    }
    // An event that carries both a visitor and a user links them, as an identify call would
    // (Segment's and PostHog's rule): the visitor's other events count as that person too.
    let implied: Vec<Identify> = implied_identities(&events);
    identifies.extend(implied.iter());
    let project_id = job.project_id;
    rows += copy_events(tx, project_id, &events).await?;
    rows += copy_errors(tx, project_id, &errors).await?;
    rows += copy_requests(tx, project_id, &calls).await?;
    rows += copy_metrics(tx, project_id, &metrics).await?;
    upsert_error_groups(tx, project_id, &errors).await?;
    let identified = upsert_identities(tx, project_id, &identifies).await?;
    mark_dirty_hours(
        tx,
        project_id,
        &events,
        &errors,
        &calls,
        &metrics,
        &identifies,
    )
    .await?;
    mark_identified(tx, project_id, &identified).await?;
    Ok((
        verdicts,
        Written {
            rows,
            commit: std::time::Duration::ZERO,
        },
    ))
}

/// Visitors whose user is new or changed: who they are changed for hours already rolled up
/// (migration 0011), which the Aggregator finds and recomputes.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "ingest.mark_identified", otel.kind = "client", db.system.name = "postgresql"))]
async fn mark_identified(
    tx: &tokio_postgres::Transaction<'_>,
    project_id: Uuid,
    visitors: &[String],
) -> Result<(), StoreError> {
    if visitors.is_empty() {
        return Ok(());
    }
    tx.execute(
        "INSERT INTO rollup_dirty_visitors (project_id, visitor_id)
         SELECT $1, v FROM unnest($2::text[]) AS t(v) ON CONFLICT DO NOTHING",
        &[&project_id, &visitors],
    )
    .await?;
    Ok(())
}

/// The visitor → user links events carry: one per visitor, its latest event's user, with no
/// traits.
fn implied_identities(events: &[(DateTime<Utc>, &Event)]) -> Vec<Identify> {
    let mut latest: BTreeMap<&str, (&str, DateTime<Utc>)> = BTreeMap::new();
    for (_, e) in events {
        if let Some(user) = e.user_id.as_deref() {
            let entry = latest
                .entry(e.visitor_id.as_str())
                .or_insert((user, e.timestamp));
            if e.timestamp >= entry.1 {
                *entry = (user, e.timestamp);
            }
        }
    }
    latest
        .into_iter()
        .map(|(visitor, (user, timestamp))| Identify {
            visitor_id: visitor.to_string(),
            user_id: user.to_string(),
            traits: Map::new(),
            timestamp,
        })
        .collect()
}

/// The start of `at`'s hour (UTC).
pub fn hour_of(at: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::{DurationRound, TimeDelta};
    at.duration_trunc(TimeDelta::hours(1)).unwrap_or(at)
}

/// Records, in the flush's transaction, which hours of which rollups it touched (see
/// migration 0008): one statement, a handful of rows.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "ingest.mark_dirty_hours", otel.kind = "client", db.system.name = "postgresql"))]
async fn mark_dirty_hours(
    tx: &tokio_postgres::Transaction<'_>,
    project_id: Uuid,
    events: &[(DateTime<Utc>, &Event)],
    errors: &[(DateTime<Utc>, &ErrorItem)],
    calls: &[(DateTime<Utc>, &RequestItem)],
    metrics: &[(DateTime<Utc>, &MetricItem)],
    identifies: &[&Identify],
) -> Result<(), StoreError> {
    let mut touched: BTreeSet<(&'static str, DateTime<Utc>)> = BTreeSet::new();
    touched.extend(events.iter().map(|(_, e)| ("events", hour_of(e.timestamp))));
    // An identify call changes who counts as an identified person in its hour.
    touched.extend(identifies.iter().map(|i| ("events", hour_of(i.timestamp))));
    touched.extend(errors.iter().map(|(_, e)| ("errors", hour_of(e.timestamp))));
    touched.extend(
        calls
            .iter()
            .map(|(_, r)| ("requests", hour_of(r.timestamp))),
    );
    touched.extend(
        metrics
            .iter()
            .map(|(_, m)| ("metrics", hour_of(m.timestamp))),
    );
    if touched.is_empty() {
        return Ok(());
    }
    let (kinds, hours): (Vec<&str>, Vec<DateTime<Utc>>) = touched.into_iter().unzip();
    tx.execute(
        "INSERT INTO rollup_dirty (kind, project_id, hour)
         SELECT k, $1, h FROM unnest($2::text[], $3::timestamptz[]) AS t(k, h)
         ON CONFLICT DO NOTHING",
        &[&project_id, &kinds, &hours],
    )
    .await?;
    Ok(())
}

/// What became of one request of a [`flush`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Stored,
    OverQuota,
    /// PostgreSQL refused its data (see [`Refusal`]): nothing of it is stored, and it never
    /// will be.
    Refused {
        refusal: Refusal,
        sqlstate: String,
    },
    /// Not written (the database is unavailable): write it again later.
    Retry,
    /// In the transaction whose commit outcome is unknown; the verdict it gets if that
    /// transaction committed.
    Uncertain(Verdict),
}

/// What a [`flush`] did.
#[derive(Debug)]
pub struct FlushReport {
    /// One per request, in order.
    pub fates: Vec<Fate>,
    /// Raw rows committed.
    pub rows: usize,
    /// Transactions tried (1 unless a refusal made the flush isolate it).
    pub transactions: usize,
    /// The transaction whose outcome is unknown (its requests are [`Fate::Uncertain`]).
    pub uncertain: Option<Backend>,
    /// A transaction left open on the server, to [`fence`] before the next write.
    pub abandoned: Option<Backend>,
    /// Why requests are [`Fate::Retry`] or [`Fate::Uncertain`].
    pub error: Option<StoreError>,
    /// Time spent in COMMIT, over the flush's transactions.
    pub commit_seconds: f64,
}

/// Writes `requests` of `job` with one transaction if it can. When PostgreSQL refuses the
/// data of some request (SQLSTATE class 22, 23 or 54: it would refuse it on every retry), the
/// batch is split in halves and each half written in its own transaction, down to the
/// refused requests alone: they are [`Fate::Refused`] and every other request is committed
/// at once (about 2·log2(n) transactions per refused request). Unavailability stops the
/// flush: what was not committed is [`Fate::Retry`].
///
/// `fence_first` is a transaction an earlier flush abandoned: it is ended first, so its row
/// locks cannot hold this one back. Connections that broke or went silent are taken out of
/// the pool, never handed to the next flush.
pub async fn flush(
    pool: &crate::db::PgPool,
    job: &Job,
    requests: &[Request<'_>],
    fence_first: Option<Backend>,
    timeout: std::time::Duration,
) -> FlushReport {
    let mut report = FlushReport {
        fates: vec![Fate::Retry; requests.len()],
        rows: 0,
        transactions: 0,
        uncertain: None,
        abandoned: fence_first,
        error: None,
        commit_seconds: 0.0,
    };
    let mut client = match tokio::time::timeout(timeout, pool.get()).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => {
            report.error = Some(e.into());
            return report;
        }
        Err(_) => {
            report.error = Some(StoreError::Unavailable(
                "no PostgreSQL connection in time (flush timeout)".into(),
            ));
            return report;
        }
    };
    if let Some(backend) = fence_first {
        match tokio::time::timeout(timeout, fence(&client, backend)).await {
            Ok(Ok(_)) => report.abandoned = None,
            Ok(Err(e)) => {
                report.error = Some(e);
                discard_if_broken(client, report.error.as_ref());
                return report;
            }
            Err(_) => {
                report.error = Some(StoreError::Unavailable(
                    "PostgreSQL did not answer in time (fencing)".into(),
                ));
                discard(client);
                return report;
            }
        }
    }
    // Ranges still to write, the next one last; halves are pushed right first.
    let mut todo = Vec::with_capacity(8);
    todo.push(0..requests.len());
    while let Some(range) = todo.pop() {
        report.transactions += 1;
        match write(&mut client, job, &requests[range.clone()], timeout).await {
            Ok((verdicts, written)) => {
                report.rows += written.rows;
                report.commit_seconds += written.commit.as_secs_f64();
                for (fate, verdict) in report.fates[range].iter_mut().zip(verdicts) {
                    *fate = match verdict {
                        Verdict::Stored => Fate::Stored,
                        Verdict::OverQuota => Fate::OverQuota,
                    };
                }
            }
            Err(WriteError::Failed(error)) => match error.refusal() {
                Some((refusal, sqlstate)) if range.len() == 1 => {
                    report.fates[range.start] = Fate::Refused { refusal, sqlstate };
                }
                Some(_) => {
                    let mid = range.start + range.len() / 2;
                    todo.push(mid..range.end);
                    todo.push(range.start..mid);
                }
                None => {
                    report.error = Some(error);
                    break;
                }
            },
            Err(WriteError::Abandoned { backend, error }) => {
                report.abandoned = Some(backend);
                report.error = Some(error);
                break;
            }
            Err(WriteError::Uncertain {
                backend,
                verdicts,
                error,
            }) => {
                for (fate, verdict) in report.fates[range].iter_mut().zip(verdicts) {
                    *fate = Fate::Uncertain(verdict);
                }
                report.uncertain = Some(backend);
                report.error = Some(error);
                break;
            }
        }
    }
    discard_if_broken(client, report.error.as_ref());
    report
}

/// Keeps a connection out of the pool: it broke, or it may be stuck behind a silent peer.
fn discard(client: deadpool_postgres::Client) {
    drop(deadpool_postgres::Object::take(client));
}

fn discard_if_broken(client: deadpool_postgres::Client, error: Option<&StoreError>) {
    if matches!(error, Some(StoreError::Unavailable(_))) {
        discard(client);
    }
}

/// Decides which requests fit under their monthly caps and counts them, under the usage rows'
/// locks (held until the transaction ends).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "ingest.apply_quotas", otel.kind = "client", db.system.name = "postgresql"))]
async fn apply_quotas(
    tx: &tokio_postgres::Transaction<'_>,
    organisation_id: Uuid,
    month: NaiveDate,
    requests: &[Request<'_>],
) -> Result<Vec<Verdict>, StoreError> {
    let mut verdicts = vec![Verdict::Stored; requests.len()];
    let categories: BTreeSet<Category> =
        requests.iter().map(|r| r.items.kind().category()).collect();
    for category in categories {
        // Creates the month's row if needed and locks it; returns the count so far.
        let row = tx
            .query_one(
                "INSERT INTO usage (organisation_id, month, category, count)
                 VALUES ($1, $2, $3, 0)
                 ON CONFLICT (organisation_id, month, category)
                 DO UPDATE SET count = usage.count
                 RETURNING count",
                &[&organisation_id, &month, &category.as_str()],
            )
            .await?;
        let mut used = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
        let mut added = 0u64;
        for (request, verdict) in requests.iter().zip(verdicts.iter_mut()) {
            if request.items.kind().category() != category {
                continue;
            }
            let n = request.items.len() as u64;
            if request.cap.allows(used, n) {
                used += n;
                added += n;
            } else {
                *verdict = Verdict::OverQuota;
            }
        }
        if added > 0 {
            tx.execute(
                "UPDATE usage SET count = count + $4
                 WHERE organisation_id = $1 AND month = $2 AND category = $3",
                &[
                    &organisation_id,
                    &month,
                    &category.as_str(),
                    &i64::try_from(added).unwrap_or(i64::MAX),
                ],
            )
            .await?;
        }
    }
    Ok(verdicts)
}

#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "ingest.copy_events", otel.kind = "client", db.system.name = "postgresql"))]
async fn copy_events(
    tx: &tokio_postgres::Transaction<'_>,
    project_id: Uuid,
    rows: &[(DateTime<Utc>, &Event)],
) -> Result<usize, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let sink = tx
        .copy_in(
            "COPY events (project_id, id, ts, received_at, name, visitor_id, user_id, url, referrer, properties) FROM STDIN BINARY",
        )
        .await?;
    let mut writer = pin!(BinaryCopyInWriter::new(
        sink,
        &[
            Type::UUID,
            Type::UUID,
            Type::TIMESTAMPTZ,
            Type::TIMESTAMPTZ,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::JSONB,
        ],
    ));
    for (received_at, e) in rows {
        writer
            .as_mut()
            .write(&[
                &project_id,
                &Uuid::now_v7(),
                &e.timestamp,
                received_at,
                &e.name,
                &e.visitor_id,
                &e.user_id,
                &e.url,
                &e.referrer,
                &Json(&e.properties),
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(rows.len())
}

#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "ingest.copy_errors", otel.kind = "client", db.system.name = "postgresql"))]
async fn copy_errors(
    tx: &tokio_postgres::Transaction<'_>,
    project_id: Uuid,
    rows: &[(DateTime<Utc>, &ErrorItem)],
) -> Result<usize, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let sink = tx
        .copy_in(
            "COPY errors (project_id, ts, received_at, fingerprint, type, message, stack_trace, level, environment, release, url, user_id, visitor_id, tags, context) FROM STDIN BINARY",
        )
        .await?;
    let mut writer = pin!(BinaryCopyInWriter::new(
        sink,
        &[
            Type::UUID,
            Type::TIMESTAMPTZ,
            Type::TIMESTAMPTZ,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::JSONB,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::JSONB,
            Type::JSONB,
        ],
    ));
    for (received_at, e) in rows {
        let stack = e.stack_trace.as_ref().map(Json);
        let context = (!e.context.is_empty()).then_some(Json(&e.context));
        writer
            .as_mut()
            .write(&[
                &project_id,
                &e.timestamp,
                received_at,
                &e.fingerprint,
                &e.error_type,
                &e.message,
                &stack,
                &e.level,
                &e.environment,
                &e.release,
                &e.url,
                &e.user_id,
                &e.visitor_id,
                &Json(&e.tags),
                &context,
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(rows.len())
}

#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "ingest.copy_requests", otel.kind = "client", db.system.name = "postgresql"))]
async fn copy_requests(
    tx: &tokio_postgres::Transaction<'_>,
    project_id: Uuid,
    rows: &[(DateTime<Utc>, &RequestItem)],
) -> Result<usize, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let sink = tx
        .copy_in(
            "COPY requests (project_id, id, ts, received_at, method, route, status_code, duration_ms, user_agent, ip, request_size, response_size) FROM STDIN BINARY",
        )
        .await?;
    let mut writer = pin!(BinaryCopyInWriter::new(
        sink,
        &[
            Type::UUID,
            Type::UUID,
            Type::TIMESTAMPTZ,
            Type::TIMESTAMPTZ,
            Type::TEXT,
            Type::TEXT,
            Type::INT4,
            Type::FLOAT8,
            Type::TEXT,
            Type::TEXT,
            Type::INT8,
            Type::INT8,
        ],
    ));
    for (received_at, r) in rows {
        writer
            .as_mut()
            .write(&[
                &project_id,
                &Uuid::now_v7(),
                &r.timestamp,
                received_at,
                &r.method,
                &r.route,
                &i32::from(r.status_code),
                &r.duration_ms,
                &r.user_agent,
                &r.ip,
                &r.request_size,
                &r.response_size,
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(rows.len())
}

fn kind_str(kind: MetricKind) -> &'static str {
    match kind {
        MetricKind::Counter => "counter",
        MetricKind::Gauge => "gauge",
        MetricKind::Histogram => "histogram",
    }
}

#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "ingest.copy_metrics", otel.kind = "client", db.system.name = "postgresql"))]
async fn copy_metrics(
    tx: &tokio_postgres::Transaction<'_>,
    project_id: Uuid,
    rows: &[(DateTime<Utc>, &MetricItem)],
) -> Result<usize, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let sink = tx
        .copy_in(
            "COPY metrics (project_id, ts, received_at, name, kind, value, labels) FROM STDIN BINARY",
        )
        .await?;
    let mut writer = pin!(BinaryCopyInWriter::new(
        sink,
        &[
            Type::UUID,
            Type::TIMESTAMPTZ,
            Type::TIMESTAMPTZ,
            Type::TEXT,
            Type::TEXT,
            Type::FLOAT8,
            Type::JSONB,
        ],
    ));
    for (received_at, m) in rows {
        writer
            .as_mut()
            .write(&[
                &project_id,
                &m.timestamp,
                received_at,
                &m.name,
                &kind_str(m.kind),
                &m.value,
                &Json(&m.labels),
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(rows.len())
}

/// One error group's share of a flush.
struct GroupUpdate<'a> {
    first: &'a ErrorItem,
    last: &'a ErrorItem,
    count: i64,
}

/// The person an error reached: the user if known, else the visitor.
fn person(e: &ErrorItem) -> Option<String> {
    e.user_id
        .as_ref()
        .map(|u| format!("u:{u}"))
        .or_else(|| e.visitor_id.as_ref().map(|v| format!("v:{v}")))
}

/// What the group keeps of its latest occurrence.
fn occurrence(e: &ErrorItem) -> Value {
    json!({
        "timestamp": e.timestamp,
        "type": e.error_type,
        "message": e.message,
        "level": e.level,
        "stack_trace": e.stack_trace,
        "environment": e.environment,
        "release": e.release,
        "url": e.url,
        "user_id": e.user_id,
        "visitor_id": e.visitor_id,
        "tags": e.tags,
        "context": (!e.context.is_empty()).then_some(&e.context),
    })
}

/// One upsert for every group in the flush, then the distinct people they reached.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "ingest.upsert_error_groups", otel.kind = "client", db.system.name = "postgresql"))]
async fn upsert_error_groups(
    tx: &tokio_postgres::Transaction<'_>,
    project_id: Uuid,
    rows: &[(DateTime<Utc>, &ErrorItem)],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    // BTreeMaps: sorted by fingerprint, the order every flush locks groups in.
    let mut groups: BTreeMap<&str, GroupUpdate<'_>> = BTreeMap::new();
    let mut people: BTreeSet<(&str, String)> = BTreeSet::new();
    for (_, e) in rows {
        let group = groups.entry(e.fingerprint.as_str()).or_insert(GroupUpdate {
            first: e,
            last: e,
            count: 0,
        });
        group.count += 1;
        if e.timestamp < group.first.timestamp {
            group.first = e;
        }
        if e.timestamp >= group.last.timestamp {
            group.last = e;
        }
        if let Some(p) = person(e) {
            people.insert((e.fingerprint.as_str(), p));
        }
    }
    let mut fingerprints = Vec::with_capacity(groups.len());
    let mut types = Vec::with_capacity(groups.len());
    let mut messages = Vec::with_capacity(groups.len());
    let mut levels = Vec::with_capacity(groups.len());
    let mut firsts = Vec::with_capacity(groups.len());
    let mut lasts = Vec::with_capacity(groups.len());
    let mut counts = Vec::with_capacity(groups.len());
    let mut occurrences = Vec::with_capacity(groups.len());
    for (fingerprint, g) in &groups {
        fingerprints.push(*fingerprint);
        types.push(g.first.error_type.as_str());
        messages.push(g.first.message.as_str());
        levels.push(g.last.level.as_str());
        firsts.push(g.first.timestamp);
        lasts.push(g.last.timestamp);
        counts.push(g.count);
        occurrences.push(occurrence(g.last));
    }
    tx.execute(
        "INSERT INTO error_groups
             (project_id, fingerprint, type, message, level, first_seen, last_seen,
              occurrences, last_occurrence)
         SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::timestamptz[], $7::timestamptz[], $8::int8[], $9::jsonb[])
         ON CONFLICT (project_id, fingerprint) DO UPDATE SET
             occurrences = error_groups.occurrences + EXCLUDED.occurrences,
             first_seen = least(error_groups.first_seen, EXCLUDED.first_seen),
             last_seen = greatest(error_groups.last_seen, EXCLUDED.last_seen),
             level = CASE WHEN EXCLUDED.last_seen >= error_groups.last_seen
                          THEN EXCLUDED.level ELSE error_groups.level END,
             last_occurrence = CASE WHEN EXCLUDED.last_seen >= error_groups.last_seen
                                    THEN EXCLUDED.last_occurrence
                                    ELSE error_groups.last_occurrence END,
             -- A new occurrence of a resolved error reopens it: a regression.
             status = CASE WHEN error_groups.status = 'resolved'
                           THEN 'unresolved' ELSE error_groups.status END,
             resolved_at = CASE WHEN error_groups.status = 'resolved'
                                THEN NULL ELSE error_groups.resolved_at END,
             regressed_at = CASE WHEN error_groups.status = 'resolved'
                                 THEN now() ELSE error_groups.regressed_at END,
             regressions = error_groups.regressions
                           + CASE WHEN error_groups.status = 'resolved' THEN 1 ELSE 0 END",
        &[
            &project_id,
            &fingerprints,
            &types,
            &messages,
            &levels,
            &firsts,
            &lasts,
            &counts,
            &occurrences,
        ],
    )
    .await?;
    if !people.is_empty() {
        let (people_fps, people_ids): (Vec<&str>, Vec<&str>) =
            people.iter().map(|(f, p)| (*f, p.as_str())).unzip();
        tx.execute(
            "WITH added AS (
                 INSERT INTO error_group_people (project_id, fingerprint, person)
                 SELECT $1, * FROM unnest($2::text[], $3::text[])
                 ON CONFLICT DO NOTHING
                 RETURNING fingerprint
             )
             UPDATE error_groups g SET affected_people = g.affected_people + a.n
             FROM (SELECT fingerprint, count(*) AS n FROM added GROUP BY fingerprint) a
             WHERE g.project_id = $1 AND g.fingerprint = a.fingerprint",
            &[&project_id, &people_fps, &people_ids],
        )
        .await?;
    }
    Ok(())
}

/// A user's merged traits and first and last identify time.
type Person = (Map<String, Value>, DateTime<Utc>, DateTime<Utc>);

/// Identify calls: visitor → user (the latest call wins) and the user's traits, merged.
/// Returns the visitors whose user is new or changed: their past hours count someone else now.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "ingest.upsert_identities", otel.kind = "client", db.system.name = "postgresql"))]
async fn upsert_identities(
    tx: &tokio_postgres::Transaction<'_>,
    project_id: Uuid,
    calls: &[&Identify],
) -> Result<Vec<String>, StoreError> {
    if calls.is_empty() {
        return Ok(Vec::new());
    }
    // One row per key per statement (ON CONFLICT cannot touch a row twice): fold the calls
    // in time order first, later ones winning, as the upsert does against stored rows.
    let mut ordered: Vec<&Identify> = calls.to_vec();
    ordered.sort_by_key(|c| c.timestamp);
    let mut visitors: BTreeMap<&str, (&str, DateTime<Utc>, DateTime<Utc>)> = BTreeMap::new();
    let mut users: BTreeMap<&str, Person> = BTreeMap::new();
    for call in ordered {
        let v = visitors.entry(call.visitor_id.as_str()).or_insert((
            call.user_id.as_str(),
            call.timestamp,
            call.timestamp,
        ));
        v.0 = call.user_id.as_str();
        v.2 = call.timestamp;
        let u = users
            .entry(call.user_id.as_str())
            .or_insert_with(|| (Map::new(), call.timestamp, call.timestamp));
        u.0.extend(call.traits.iter().map(|(k, v)| (k.clone(), v.clone())));
        u.2 = call.timestamp;
    }
    let (mut vids, mut uids, mut vfirst, mut vlast) = (vec![], vec![], vec![], vec![]);
    for (visitor, (user, first, last)) in &visitors {
        vids.push(*visitor);
        uids.push(*user);
        vfirst.push(*first);
        vlast.push(*last);
    }
    // `before` sees the rows as they were before this statement (one snapshot for the whole
    // statement): the visitors whose user the upsert set anew are the ones it returns with a
    // different user than before.
    let changed: Vec<String> = tx
        .query(
            "WITH incoming AS (
                 SELECT * FROM unnest($2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[])
                     AS t(visitor_id, user_id, first_seen, last_seen)),
             before AS (
                 SELECT i.visitor_id, i.user_id FROM identities i
                 WHERE i.project_id = $1 AND i.visitor_id = ANY($2)),
             upserted AS (
                 INSERT INTO identities (project_id, visitor_id, user_id, first_seen, last_seen)
                 SELECT $1, * FROM incoming
                 ON CONFLICT (project_id, visitor_id) DO UPDATE SET
                     user_id = CASE WHEN EXCLUDED.last_seen >= identities.last_seen
                                    THEN EXCLUDED.user_id ELSE identities.user_id END,
                     first_seen = least(identities.first_seen, EXCLUDED.first_seen),
                     last_seen = greatest(identities.last_seen, EXCLUDED.last_seen)
                 RETURNING visitor_id, user_id)
             SELECT u.visitor_id FROM upserted u LEFT JOIN before b USING (visitor_id)
             WHERE b.user_id IS DISTINCT FROM u.user_id",
            &[&project_id, &vids, &uids, &vfirst, &vlast],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (mut pids, mut traits, mut pfirst, mut plast) = (vec![], vec![], vec![], vec![]);
    for (user, (t, first, last)) in users {
        pids.push(user);
        traits.push(Value::Object(t));
        pfirst.push(first);
        plast.push(last);
    }
    tx.execute(
        "INSERT INTO people (project_id, user_id, traits, first_seen, last_seen)
         SELECT $1, * FROM unnest($2::text[], $3::jsonb[], $4::timestamptz[], $5::timestamptz[])
         ON CONFLICT (project_id, user_id) DO UPDATE SET
             traits = CASE WHEN EXCLUDED.last_seen >= people.last_seen
                           THEN people.traits || EXCLUDED.traits
                           ELSE EXCLUDED.traits || people.traits END,
             first_seen = least(people.first_seen, EXCLUDED.first_seen),
             last_seen = greatest(people.last_seen, EXCLUDED.last_seen)",
        &[&project_id, &pids, &traits, &pfirst, &plast],
    )
    .await?;
    Ok(changed)
}

/// Items counted this month against an organisation's caps, by category.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "ingest.usage", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn usage(
    client: &impl super::GenericClient,
    organisation_id: Uuid,
    month: NaiveDate,
) -> Result<BTreeMap<String, i64>, StoreError> {
    let rows = client
        .query(
            "SELECT category, count FROM usage WHERE organisation_id = $1 AND month = $2",
            &[&organisation_id, &month],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The first day of `at`'s month (UTC): the usage month items count against.
pub fn month_of(at: DateTime<Utc>) -> NaiveDate {
    use chrono::Datelike;
    at.date_naive().with_day(1).unwrap_or(at.date_naive())
}
