//! The durable email outbox: the `email_outbox` table and every statement on it.
//!
//! A route writes the email with [`enqueue`] in the same transaction as whatever the email
//! carries (a reset token, say), so either both exist or neither does; the Mailer sends it
//! after the commit. A row is `pending` until it is `sent` or `failed`.
//!
//! **Claiming** is safe when several instances share the database: [`claim_due`] and [`claim`]
//! take due rows with `FOR UPDATE SKIP LOCKED`, count the attempt and push `next_attempt_at`
//! one lease into the future in the same statement. No other deliverer sees the row again
//! until the lease has passed, and by then the claimer has recorded an outcome with
//! [`mark_sent`], [`mark_retry`] or [`mark_failed`] — or died, and the row comes back.
//!
//! Intervals are computed by PostgreSQL (`now()`), so instances with skewed clocks agree.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use crate::mail::Email;

/// Ids of outbox rows (re-exported for crates that do not depend on `uuid`).
pub use uuid::Uuid;

/// Outbox errors are storage errors: one mapping (connection trouble → unavailable) for all.
pub type OutboxError = crate::store::StoreError;

/// Where a row stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Sent,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Sent => "sent",
            Status::Failed => "failed",
        }
    }

    fn from_column(s: &str) -> Self {
        match s {
            "sent" => Status::Sent,
            "failed" => Status::Failed,
            // The column's CHECK allows only these three.
            _ => Status::Pending,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of `email_outbox`.
#[derive(Clone)]
pub struct OutboxRow {
    pub id: Uuid,
    pub kind: String,
    pub to_address: String,
    pub subject: String,
    pub text_body: String,
    pub html_body: String,
    pub status: Status,
    /// `resend` or `log` once sent.
    pub provider: Option<String>,
    /// Attempts started so far (a claim counts one).
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub provider_message_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

impl OutboxRow {
    /// The email this row holds.
    pub fn email(&self) -> Email {
        Email {
            kind: self.kind.clone(),
            to: self.to_address.clone(),
            subject: self.subject.clone(),
            text: self.text_body.clone(),
            html: self.html_body.clone(),
        }
    }
}

/// Bodies hold single-use links: `Debug` shows only their sizes.
impl fmt::Debug for OutboxRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxRow")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("to_address", &self.to_address)
            .field("subject", &self.subject)
            .field(
                "text_body",
                &format_args!("<{} bytes>", self.text_body.len()),
            )
            .field(
                "html_body",
                &format_args!("<{} bytes>", self.html_body.len()),
            )
            .field("status", &self.status)
            .field("provider", &self.provider)
            .field("attempts", &self.attempts)
            .field("next_attempt_at", &self.next_attempt_at)
            .field("last_error", &self.last_error)
            .field("provider_message_id", &self.provider_message_id)
            .field("created_at", &self.created_at)
            .field("sent_at", &self.sent_at)
            .finish()
    }
}

const COLUMNS: &str = "id, kind, to_address, subject, text_body, html_body, status, provider, \
     attempts, next_attempt_at, last_error, provider_message_id, created_at, sent_at";

fn outbox_row(row: &Row) -> OutboxRow {
    let status: String = row.get(6);
    OutboxRow {
        id: row.get(0),
        kind: row.get(1),
        to_address: row.get(2),
        subject: row.get(3),
        text_body: row.get(4),
        html_body: row.get(5),
        status: Status::from_column(&status),
        provider: row.get(7),
        attempts: row.get(8),
        next_attempt_at: row.get(9),
        last_error: row.get(10),
        provider_message_id: row.get(11),
        created_at: row.get(12),
        sent_at: row.get(13),
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Writes `email` as a pending row, due now, and returns its id. Takes any client, so a route
/// calls it inside the transaction that creates what the email carries; send
/// `Deliver { id }` to the Mailer once that transaction committed.
/// Emails waiting to be sent (due now or later): the outbox's backlog, for `/metrics`.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "outbox.pending", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn pending(client: &impl GenericClient) -> Result<i64, OutboxError> {
    let row = client
        .query_one(
            "SELECT count(*) FROM email_outbox WHERE status = 'pending'",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "outbox.enqueue", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn enqueue(client: &impl GenericClient, email: &Email) -> Result<Uuid, OutboxError> {
    let id = Uuid::now_v7();
    client
        .execute(
            "INSERT INTO email_outbox (id, kind, to_address, subject, text_body, html_body) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &id,
                &email.kind,
                &email.to,
                &email.subject,
                &email.text,
                &email.html,
            ],
        )
        .await?;
    Ok(id)
}

/// Claims up to `limit` due pending rows, oldest due first, for `lease`: each claimed row's
/// `attempts` grows by one and its `next_attempt_at` moves to `now() + lease`. Rows another
/// transaction holds are skipped, never waited for.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "outbox.claim_due", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn claim_due(
    client: &impl GenericClient,
    limit: i64,
    lease: Duration,
) -> Result<Vec<OutboxRow>, OutboxError> {
    let rows = client
        .query(
            format!(
                "UPDATE email_outbox \
                 SET attempts = attempts + 1, \
                     next_attempt_at = now() + make_interval(secs => $2::float8) \
                 WHERE id IN ( \
                     SELECT id FROM email_outbox \
                     WHERE status = 'pending' AND next_attempt_at <= now() \
                     ORDER BY next_attempt_at \
                     LIMIT $1 \
                     FOR UPDATE SKIP LOCKED) \
                 RETURNING {COLUMNS}"
            )
            .as_str(),
            &[&limit.max(0), &secs(lease)],
        )
        .await?;
    let mut rows: Vec<OutboxRow> = rows.iter().map(outbox_row).collect();
    rows.sort_by_key(|r| (r.created_at, r.id));
    Ok(rows)
}

/// Claims row `id` like [`claim_due`] does, if it is pending, due and not held elsewhere.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "outbox.claim", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn claim(
    client: &impl GenericClient,
    id: Uuid,
    lease: Duration,
) -> Result<Option<OutboxRow>, OutboxError> {
    let row = client
        .query_opt(
            format!(
                "UPDATE email_outbox \
                 SET attempts = attempts + 1, \
                     next_attempt_at = now() + make_interval(secs => $2::float8) \
                 WHERE id IN ( \
                     SELECT id FROM email_outbox \
                     WHERE id = $1 AND status = 'pending' AND next_attempt_at <= now() \
                     FOR UPDATE SKIP LOCKED) \
                 RETURNING {COLUMNS}"
            )
            .as_str(),
            &[&id, &secs(lease)],
        )
        .await?;
    Ok(row.as_ref().map(outbox_row))
}

/// Records a successful send. Returns false if the row was not pending.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "outbox.mark_sent", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn mark_sent(
    client: &impl GenericClient,
    id: Uuid,
    provider: &str,
    provider_message_id: Option<&str>,
) -> Result<bool, OutboxError> {
    let n = client
        .execute(
            // Once a provider has it, the body is dropped: bodies carry single-use links whose
            // tokens are otherwise stored only as hashes. The `log` provider's rows keep
            // theirs, as that is where a self-hoster reads them.
            "UPDATE email_outbox \
             SET status = 'sent', provider = $2, provider_message_id = $3, sent_at = now(), \
                 text_body = CASE WHEN $2 = 'log' THEN text_body ELSE '' END, \
                 html_body = CASE WHEN $2 = 'log' THEN html_body ELSE '' END \
             WHERE id = $1 AND status = 'pending'",
            &[&id, &provider, &provider_message_id],
        )
        .await?;
    Ok(n == 1)
}

/// Records a failed attempt that is worth repeating: the row is due again `retry_in` from now
/// (the database's now). Returns false if the row was not pending.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "outbox.mark_retry", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn mark_retry(
    client: &impl GenericClient,
    id: Uuid,
    error: &str,
    retry_in: Duration,
) -> Result<bool, OutboxError> {
    let n = client
        .execute(
            "UPDATE email_outbox \
             SET last_error = $2, next_attempt_at = now() + make_interval(secs => $3::float8) \
             WHERE id = $1 AND status = 'pending'",
            &[&id, &error, &secs(retry_in)],
        )
        .await?;
    Ok(n == 1)
}

/// Records that the row will not be sent (refused for good, or out of attempts). Returns false
/// if the row was not pending.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "outbox.mark_failed", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn mark_failed(
    client: &impl GenericClient,
    id: Uuid,
    error: &str,
) -> Result<bool, OutboxError> {
    let n = client
        .execute(
            "UPDATE email_outbox SET status = 'failed', last_error = $2, \
                 text_body = '', html_body = '' \
             WHERE id = $1 AND status = 'pending'",
            &[&id, &error],
        )
        .await?;
    Ok(n == 1)
}

/// Row `id`, whatever its status.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "outbox.get", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn get(client: &impl GenericClient, id: Uuid) -> Result<Option<OutboxRow>, OutboxError> {
    let row = client
        .query_opt(
            format!("SELECT {COLUMNS} FROM email_outbox WHERE id = $1").as_str(),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(outbox_row))
}
