//! Outgoing email: the message type, the templates, the providers, and delivery of the durable
//! outbox ([`crate::outbox`]).
//!
//! Every email is written to the outbox first (by the route, in the transaction that makes the
//! token it carries), then sent by the Mailer actor through one of two providers:
//!
//! - [`Provider::Resend`] when `RESEND_API_KEY` is set: `POST {resend.base_url}/emails` through
//!   awc, with the outbox id as Resend's `Idempotency-Key`, so a retry after a lost answer does
//!   not send the email twice.
//! - [`Provider::Log`] otherwise: one log line with the address, subject and text body, and
//!   the row is kept in the outbox, marked sent. In development the body is whole (a
//!   developer reads reset links there); in production every `token=` value in it is
//!   redacted, since logs are shipped and kept where a token must not be (SPEC §10).
//!
//! A failed send is classified by [`SendError::is_retryable`]: network trouble, timeouts, 429
//! and 5xx come back after an exponential backoff ([`retry_delay`]) until `mail.max_attempts`;
//! any other 4xx fails the row at once. The API key is never logged, and neither errors nor
//! `Debug` output carry email bodies (they hold reset links).

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::Serialize;
use uuid::Uuid;

use crate::config::{MailSettings, ResendSettings, Settings};
use crate::db::PgPool;
use crate::outbox::{self, OutboxError, OutboxRow};

/// The HTTP client the Resend provider sends with (`!Send`: build one per arbiter).
pub use awc::Client as HttpClient;

/// Longest wait for Resend's answer (status line and headers) to a send.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for the body of Resend's answer once its headers arrived.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a claimed row stays out of other deliverers' reach. Longer than a whole send
/// ([`SEND_TIMEOUT`] + [`BODY_TIMEOUT`]) plus the database round trips around it, so two
/// instances never send one row at the same time; a row whose deliverer died is picked up again
/// once the lease has passed.
pub const CLAIM_LEASE: Duration = Duration::from_secs(120);
/// Longest delay between two attempts, however many came before.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);
/// Largest Resend answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Longest error text kept in the outbox.
const MAX_REASON_CHARS: usize = 300;

/// One email, as written to the outbox.
#[derive(Clone, PartialEq, Eq)]
pub struct Email {
    /// What it is for, e.g. `"password_reset"`, `"email_change"`.
    pub kind: String,
    pub to: String,
    pub subject: String,
    /// Plain-text body.
    pub text: String,
    /// HTML body.
    pub html: String,
}

/// Bodies hold single-use links: `Debug` shows only their sizes.
impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Email")
            .field("kind", &self.kind)
            .field("to", &self.to)
            .field("subject", &self.subject)
            .field("text", &format_args!("<{} bytes>", self.text.len()))
            .field("html", &format_args!("<{} bytes>", self.html.len()))
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Templates
// ---------------------------------------------------------------------------------------------

/// Escapes `s` for HTML text and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The shared HTML frame: a greeting, paragraphs (already escaped), one button, the link in
/// plain text for clients that hide buttons, and a closing note (already escaped).
fn html_page(title: &str, name: &str, paragraphs: &[String], button: &str, link: &str) -> String {
    let link = html_escape(link);
    let mut body = String::new();
    for p in paragraphs {
        body.push_str("<p>");
        body.push_str(p);
        body.push_str("</p>\n");
    }
    format!(
        "<!doctype html>\n<html>\n<head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body style=\"font-family: sans-serif; line-height: 1.5; color: #222;\">\n\
         <p>Hi {name},</p>\n{body}\
         <p><a href=\"{link}\" style=\"display: inline-block; padding: 10px 16px; background: #222; color: #fff; text-decoration: none; border-radius: 4px;\">{button}</a></p>\n\
         <p style=\"font-size: 13px; color: #666;\">Or paste this link into your browser:<br>{link}</p>\n\
         <p style=\"font-size: 13px; color: #666;\">— observe</p>\n\
         </body>\n</html>\n",
        title = html_escape(title),
        name = html_escape(name),
        button = html_escape(button),
    )
}

fn minutes(n: i64) -> String {
    if n == 1 {
        "1 minute".to_string()
    } else {
        format!("{n} minutes")
    }
}

/// The password-reset email to `to`: `link` carries the single-use token and works for
/// `expires_minutes`.
pub fn password_reset(to: &str, name: &str, link: &str, expires_minutes: i64) -> Email {
    let subject = "Reset your observe password";
    let expires = minutes(expires_minutes);
    let text = format!(
        "Hi {name},\n\n\
         Someone (hopefully you) asked to reset the password of your observe account.\n\
         Open this link to choose a new password:\n\n\
         {link}\n\n\
         The link works once and expires in {expires}. If you did not ask for this, ignore this \
         email: your password stays as it is.\n\n\
         — observe\n"
    );
    let html = html_page(
        subject,
        name,
        &[
            "Someone (hopefully you) asked to reset the password of your observe account."
                .to_string(),
            format!(
                "The link below works once and expires in {}. If you did not ask for this, \
                 ignore this email: your password stays as it is.",
                html_escape(&expires)
            ),
        ],
        "Choose a new password",
        link,
    );
    Email {
        kind: "password_reset".to_string(),
        to: to.to_string(),
        subject: subject.to_string(),
        text,
        html,
    }
}

/// Kobo as naira for people: `500000` → `₦5,000.00`.
pub fn naira(kobo: u64) -> String {
    let whole = (kobo / 100).to_string();
    let mut grouped = String::new();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("₦{grouped}.{:02}", kobo % 100)
}

/// The receipt of a paid checkout or renewal.
pub fn billing_receipt(
    to: &str,
    plan: &str,
    amount_kobo: u64,
    reference: &str,
    paid_until: DateTime<Utc>,
    link: &str,
) -> Email {
    let subject = format!("Your observe {plan} receipt");
    let amount = naira(amount_kobo);
    let until = paid_until.format("%Y-%m-%d").to_string();
    let text = format!(
        "Hi,\n\nThank you: we received {amount} for observe {plan}.\n\
         Reference: {reference}\nPaid until: {until}\n\n\
         Your plan and invoices: {link}\n\n— observe\n"
    );
    let html = html_page(
        &subject,
        "there",
        &[
            format!(
                "Thank you: we received {} for observe {}.",
                html_escape(&amount),
                html_escape(plan)
            ),
            format!(
                "Reference: {}<br>Paid until: {}",
                html_escape(reference),
                html_escape(&until)
            ),
        ],
        "See your plan",
        link,
    );
    Email {
        kind: "billing_receipt".to_string(),
        to: to.to_string(),
        subject,
        text,
        html,
    }
}

/// A renewal charge failed; the plan stays until `grace_until`.
pub fn billing_renewal_failed(
    to: &str,
    plan: &str,
    amount_kobo: u64,
    grace_until: DateTime<Utc>,
    link: &str,
) -> Email {
    let subject = format!("Your observe {plan} renewal failed");
    let amount = naira(amount_kobo);
    let until = grace_until.format("%Y-%m-%d %H:%M UTC").to_string();
    let text = format!(
        "Hi,\n\nWe could not charge {amount} for your observe {plan} plan. We will try again \
         daily; if it still fails by {until}, your organisation moves to the free hobby tier \
         (your data stays).\n\nUpdate your card: {link}\n\n— observe\n"
    );
    let html = html_page(
        &subject,
        "there",
        &[format!(
            "We could not charge {} for your observe {} plan. We will try again daily; if it \
             still fails by {}, your organisation moves to the free hobby tier (your data stays).",
            html_escape(&amount),
            html_escape(plan),
            html_escape(&until)
        )],
        "Update your card",
        link,
    );
    Email {
        kind: "billing_renewal_failed".to_string(),
        to: to.to_string(),
        subject,
        text,
        html,
    }
}

/// The subscription ended: back on hobby (`unpaid`: after a failed renewal's grace period).
pub fn billing_ended(
    to: &str,
    plan: &str,
    unpaid: bool,
    paused_monitors: usize,
    link: &str,
) -> Email {
    let subject = "Your observe organisation is now on the hobby tier".to_string();
    let why = if unpaid {
        format!("The renewal of your {plan} plan could not be charged during the grace period.")
    } else {
        format!("Your {plan} plan ended as you asked.")
    };
    let monitors = if paused_monitors > 0 {
        format!(
            " {paused_monitors} monitor(s) beyond the hobby limit were paused (not deleted); \
             the oldest keep running."
        )
    } else {
        String::new()
    };
    let text = format!(
        "Hi,\n\n{why} Your organisation is on the free hobby tier now; all your data is kept.{monitors}\n\n\
         Upgrade again: {link}\n\n— observe\n"
    );
    let html = html_page(
        &subject,
        "there",
        &[format!(
            "{} Your organisation is on the free hobby tier now; all your data is kept.{}",
            html_escape(&why),
            html_escape(&monitors)
        )],
        "Upgrade again",
        link,
    );
    Email {
        kind: "billing_ended".to_string(),
        to: to.to_string(),
        subject,
        text,
        html,
    }
}

/// The confirmation of an email change, sent to the new address: `link` confirms it.
pub fn email_change(name: &str, new_email: &str, link: &str) -> Email {
    let subject = "Confirm your new email address for observe";
    let text = format!(
        "Hi {name},\n\n\
         Someone (hopefully you) asked to change the email address of your observe account to \
         {new_email}.\n\
         Open this link to confirm it:\n\n\
         {link}\n\n\
         Until you confirm, your account keeps its current address. If you did not ask for \
         this, ignore this email.\n\n\
         — observe\n"
    );
    let html = html_page(
        subject,
        name,
        &[
            format!(
                "Someone (hopefully you) asked to change the email address of your observe \
                 account to <strong>{}</strong>.",
                html_escape(new_email)
            ),
            "Until you confirm, your account keeps its current address. If you did not ask \
             for this, ignore this email."
                .to_string(),
        ],
        "Confirm this address",
        link,
    );
    Email {
        kind: "email_change".to_string(),
        to: new_email.to_string(),
        subject: subject.to_string(),
        text,
        html,
    }
}

/// What an uptime alert is about.
#[derive(Debug, Clone, Copy)]
pub struct MonitorAlert<'a> {
    pub monitor_name: &'a str,
    pub url: &'a str,
    /// The failure kind that opened the incident (`timeout`, `status`...).
    pub cause: &'a str,
    /// The opening check's error text, if any.
    pub error: Option<&'a str>,
    /// When the incident started (RFC 3339).
    pub started_at: &'a str,
    /// When it was resolved (RFC 3339), for the recovery email.
    pub resolved_at: Option<&'a str>,
    /// The monitor in the dashboard.
    pub link: &'a str,
}

/// The "monitor is down" email to an organisation owner (an incident opened).
pub fn monitor_down(to: &str, name: &str, alert: &MonitorAlert<'_>) -> Email {
    let subject = format!("[observe] {} is down", short(alert.monitor_name, 120));
    let error = alert.error.unwrap_or("");
    let text = format!(
        "Hi {name},\n\n\
         Your monitor {monitor} ({url}) is down since {started} (cause: {cause}{sep}{error}).\n\
         You will get one more email when it recovers.\n\n\
         {link}\n\n\
         — observe\n",
        monitor = alert.monitor_name,
        url = alert.url,
        started = alert.started_at,
        cause = alert.cause,
        sep = if error.is_empty() { "" } else { ": " },
        link = alert.link,
    );
    let mut paragraphs = vec![format!(
        "Your monitor <strong>{}</strong> ({}) is down since {}.",
        html_escape(alert.monitor_name),
        html_escape(alert.url),
        html_escape(alert.started_at)
    )];
    paragraphs.push(if error.is_empty() {
        format!("Cause: {}.", html_escape(alert.cause))
    } else {
        format!(
            "Cause: {} ({}).",
            html_escape(alert.cause),
            html_escape(error)
        )
    });
    paragraphs.push("You will get one more email when it recovers.".to_string());
    let html = html_page(&subject, name, &paragraphs, "Open the monitor", alert.link);
    Email {
        kind: "monitor_down".to_string(),
        to: to.to_string(),
        subject,
        text,
        html,
    }
}

/// The "monitor recovered" email to an organisation owner (the incident closed).
pub fn monitor_recovered(to: &str, name: &str, alert: &MonitorAlert<'_>) -> Email {
    let subject = format!("[observe] {} is up again", short(alert.monitor_name, 120));
    let resolved = alert.resolved_at.unwrap_or("now");
    let text = format!(
        "Hi {name},\n\n\
         Your monitor {monitor} ({url}) is up again since {resolved}; it was down since \
         {started} (cause: {cause}).\n\n\
         {link}\n\n\
         — observe\n",
        monitor = alert.monitor_name,
        url = alert.url,
        started = alert.started_at,
        cause = alert.cause,
        link = alert.link,
    );
    let html = html_page(
        &subject,
        name,
        &[format!(
            "Your monitor <strong>{}</strong> ({}) is up again since {}; it was down since {} \
             (cause: {}).",
            html_escape(alert.monitor_name),
            html_escape(alert.url),
            html_escape(resolved),
            html_escape(alert.started_at),
            html_escape(alert.cause)
        )],
        "Open the monitor",
        alert.link,
    );
    Email {
        kind: "monitor_recovered".to_string(),
        to: to.to_string(),
        subject,
        text,
        html,
    }
}

// ---------------------------------------------------------------------------------------------
// Providers
// ---------------------------------------------------------------------------------------------

/// Where email goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// The Resend HTTP API.
    Resend,
    /// One log line per email (no `RESEND_API_KEY` configured).
    Log,
}

impl Provider {
    /// `Resend` when an API key is configured, else `Log`.
    pub fn from_settings(resend: &ResendSettings) -> Self {
        if resend.api_key.expose_secret().trim().is_empty() {
            Provider::Log
        } else {
            Provider::Resend
        }
    }

    /// The name stored in `email_outbox.provider`.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Resend => "resend",
            Provider::Log => "log",
        }
    }
}

/// Why a send failed. The texts never hold the API key or the email's bodies.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Connecting or talking to the provider failed.
    #[error("network error: {0}")]
    Network(String),
    /// No answer within the timeout.
    #[error("no answer within the timeout")]
    Timeout,
    /// 429: the provider wants fewer requests.
    #[error("rate limited by the provider (429)")]
    RateLimited { retry_after: Option<Duration> },
    /// 5xx, or a 408/409 (a request with the same idempotency key still in progress).
    #[error("the provider answered {status}")]
    Unavailable { status: u16 },
    /// Any other 4xx: this email will never be accepted as it is (or the key is wrong).
    #[error("the provider refused the email ({status}): {reason}")]
    Rejected { status: u16, reason: String },
    /// A success status without the expected `{"id": ...}`.
    #[error("unexpected answer from the provider: {0}")]
    InvalidResponse(String),
    /// The request could not be built (a bad `resend.base_url`, say).
    #[error("invalid provider configuration: {0}")]
    Config(String),
}

impl SendError {
    /// Whether the same send may succeed later (network, timeout, 429, 5xx).
    pub fn is_retryable(&self) -> bool {
        match self {
            SendError::Network(_)
            | SendError::Timeout
            | SendError::RateLimited { .. }
            | SendError::Unavailable { .. } => true,
            SendError::Rejected { .. } | SendError::InvalidResponse(_) | SendError::Config(_) => {
                false
            }
        }
    }

    /// The earliest retry the provider asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SendError::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}

/// A new HTTP client for the Resend provider, with [`SEND_TIMEOUT`]. Build it on the thread
/// (arbiter) that uses it.
pub fn http_client() -> HttpClient {
    awc::Client::builder()
        .timeout(SEND_TIMEOUT)
        .add_default_header((
            awc::http::header::USER_AGENT,
            concat!("observe/", env!("CARGO_PKG_VERSION")),
        ))
        .finish()
}

#[derive(Serialize)]
struct ResendRequest<'a> {
    from: &'a str,
    to: [&'a str; 1],
    subject: &'a str,
    text: &'a str,
    html: &'a str,
}

#[derive(serde::Deserialize)]
struct ResendAccepted {
    id: String,
}

/// `s` cut to `max` characters, control characters dropped (it goes into logs and the outbox).
fn short(s: &str, max: usize) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(max).collect();
    if s.chars().filter(|c| !c.is_control()).count() > max {
        out.push('…');
    }
    out
}

/// What a refusal says about itself: Resend answers `{"statusCode", "name", "message"}`.
fn refusal_reason(body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let reason = match (field("name"), field("message")) {
        (Some(name), Some(message)) => format!("{name}: {message}"),
        (None, Some(message)) => message,
        (Some(name), None) => name,
        (None, None) => "no reason given".to_string(),
    };
    short(&reason, 200)
}

fn send_error(e: awc::error::SendRequestError) -> SendError {
    use awc::error::SendRequestError as E;
    match e {
        E::Timeout => SendError::Timeout,
        E::Url(e) => SendError::Config(format!("bad URL: {e}")),
        E::Http(e) => SendError::Config(e.to_string()),
        E::Connect(e) => SendError::Network(format!("connect: {e}")),
        other => SendError::Network(other.to_string()),
    }
}

/// Sends `email` through Resend; `idempotency_key` (the outbox id) makes a repeated send of
/// the same email a no-op at Resend for 24 hours. Returns Resend's message id.
#[tracing::instrument(level = "debug", name = "http.client", skip_all, fields(otel.name = "resend POST /emails", otel.kind = "client", peer.service = "resend"))]
pub async fn send_via_resend(
    client: &HttpClient,
    resend: &ResendSettings,
    email: &Email,
    idempotency_key: &str,
) -> Result<String, SendError> {
    let url = format!("{}/emails", resend.base_url.trim_end_matches('/'));
    let body = ResendRequest {
        from: &resend.from_email,
        to: [&email.to],
        subject: &email.subject,
        text: &email.text,
        html: &email.html,
    };
    let res = client
        .post(url)
        .insert_header((
            awc::http::header::AUTHORIZATION,
            format!("Bearer {}", resend.api_key.expose_secret().trim()),
        ))
        .insert_header(("Idempotency-Key", idempotency_key));
    let mut res = crate::trace::inject(res, &tracing::Span::current())
        .send_json(&body)
        .await
        .map_err(send_error)?
        .timeout(BODY_TIMEOUT);
    let status = res.status();
    let answer = res
        .body()
        .limit(MAX_ANSWER_BYTES)
        .await
        .map_err(|e| match e {
            awc::error::PayloadError::Io(ref io) if io.kind() == std::io::ErrorKind::TimedOut => {
                SendError::Timeout
            }
            other => SendError::Network(format!("reading the answer: {other}")),
        });
    if status.is_success() {
        let answer = answer?;
        return serde_json::from_slice::<ResendAccepted>(&answer)
            .map(|a| a.id)
            .map_err(|_| {
                SendError::InvalidResponse(format!("{status} without a message id in its body"))
            });
    }
    let code = status.as_u16();
    match code {
        429 => {
            let retry_after = res
                .headers()
                .get(awc::http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            Err(SendError::RateLimited { retry_after })
        }
        408 | 409 | 500..=599 => Err(SendError::Unavailable { status: code }),
        _ => Err(SendError::Rejected {
            status: code,
            reason: answer
                .map(|a| refusal_reason(&a))
                .unwrap_or_else(|_| "no reason given".to_string()),
        }),
    }
}

/// Writes `email` to the log as one line (the `log` provider). The line holds the text body,
/// so a developer without a mail provider can read the links it carries; with `redact` (in
/// production) the tokens in those links are replaced by `[redacted]`.
pub fn write_to_log(outbox_id: Uuid, email: &Email, redact: bool) {
    let body = if redact {
        redact_tokens(&email.text)
    } else {
        email.text.clone()
    };
    tracing::info!(
        outbox_id = %outbox_id,
        kind = %email.kind,
        to = %email.to,
        subject = %email.subject,
        body = %body,
        redacted = redact,
        "email written to the log (no RESEND_API_KEY configured)"
    );
}

/// `text` with the value of every `token=` parameter replaced by `[redacted]`.
pub fn redact_tokens(text: &str) -> String {
    const MARK: &str = "token=";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(MARK) {
        let (before, after) = rest.split_at(at + MARK.len());
        out.push_str(before);
        let end = after
            .find(|c: char| {
                !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '%'))
            })
            .unwrap_or(after.len());
        if end > 0 {
            out.push_str("[redacted]");
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------------
// Delivery of the outbox
// ---------------------------------------------------------------------------------------------

/// Delay before the attempt that follows the `attempts`-th failed one:
/// `retry_base_secs * 2^(attempts-1)`, at most [`MAX_RETRY_DELAY`].
pub fn retry_delay(mail: &MailSettings, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    Duration::from_secs(mail.retry_base_secs)
        .saturating_mul(1u32 << exp)
        .min(MAX_RETRY_DELAY)
}

/// What became of one claimed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handed to the provider (Resend's message id; none for the log provider).
    Sent { provider_message_id: Option<String> },
    /// Failed for now; due again after `retry_in`.
    Retry { retry_in: Duration, error: String },
    /// Will not be sent: refused for good, or out of attempts.
    Failed { error: String },
}

/// What one pass over the outbox did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    pub claimed: usize,
    pub sent: usize,
    pub retried: usize,
    pub failed: usize,
}

impl DeliveryReport {
    fn count(&mut self, outcome: &Outcome) {
        self.claimed += 1;
        match outcome {
            Outcome::Sent { .. } => self.sent += 1,
            Outcome::Retry { .. } => self.retried += 1,
            Outcome::Failed { .. } => self.failed += 1,
        }
    }
}

/// Claims and sends up to `limit` due rows, one at a time, each under its own lease. Errors
/// are those of the outbox (database); send failures are recorded in the rows.
pub async fn deliver_due(
    pool: &PgPool,
    client: &HttpClient,
    settings: &Settings,
    limit: usize,
) -> Result<DeliveryReport, OutboxError> {
    let mut report = DeliveryReport::default();
    while report.claimed < limit {
        let row = {
            let conn = pool.get().await?;
            outbox::claim_due(&conn, 1, CLAIM_LEASE).await?.pop()
        };
        let Some(row) = row else { break };
        let outcome = deliver_claimed(pool, client, settings, &row).await?;
        report.count(&outcome);
    }
    Ok(report)
}

/// Sends row `id` now if it is pending, due and not being sent elsewhere; `None` otherwise
/// (already sent, failed, waiting for a retry, or claimed by another deliverer).
pub async fn deliver_one(
    pool: &PgPool,
    client: &HttpClient,
    settings: &Settings,
    id: Uuid,
) -> Result<Option<Outcome>, OutboxError> {
    let row = {
        let conn = pool.get().await?;
        outbox::claim(&conn, id, CLAIM_LEASE).await?
    };
    match row {
        Some(row) => Ok(Some(deliver_claimed(pool, client, settings, &row).await?)),
        None => Ok(None),
    }
}

/// Sends a row this deliverer has claimed (its `attempts` already counts this attempt) and
/// records the outcome. No pooled connection is held while the provider is being called.
#[tracing::instrument(level = "debug", name = "mail.deliver", skip_all, fields(outbox_id = %row.id, attempt = row.attempts))]
pub async fn deliver_claimed(
    pool: &PgPool,
    client: &HttpClient,
    settings: &Settings,
    row: &OutboxRow,
) -> Result<Outcome, OutboxError> {
    let max_attempts = settings.mail.max_attempts.max(1);
    let attempts = u32::try_from(row.attempts).unwrap_or(u32::MAX);
    let provider = Provider::from_settings(&settings.resend);
    let email = row.email();

    let outcome = if attempts > max_attempts {
        // Earlier attempts were cut short (the process died while sending): the row is out of
        // attempts without a recorded answer.
        Outcome::Failed {
            error: format!(
                "gave up after {max_attempts} attempts: {}",
                row.last_error
                    .as_deref()
                    .unwrap_or("the deliverer stopped while sending")
            ),
        }
    } else {
        match provider {
            Provider::Log => {
                let redact = settings.server.mode == crate::config::Mode::Production;
                write_to_log(row.id, &email, redact);
                Outcome::Sent {
                    provider_message_id: None,
                }
            }
            Provider::Resend => {
                let key = format!("observe-email/{}", row.id);
                match send_via_resend(client, &settings.resend, &email, &key).await {
                    Ok(id) => Outcome::Sent {
                        provider_message_id: Some(id),
                    },
                    Err(e) if !e.is_retryable() => Outcome::Failed {
                        error: short(&e.to_string(), MAX_REASON_CHARS),
                    },
                    Err(e) if attempts >= max_attempts => Outcome::Failed {
                        error: short(
                            &format!("gave up after {attempts} attempts: {e}"),
                            MAX_REASON_CHARS,
                        ),
                    },
                    Err(e) => {
                        let backoff = retry_delay(&settings.mail, attempts);
                        let retry_in = e
                            .retry_after()
                            .map_or(backoff, |asked| asked.max(backoff))
                            .min(MAX_RETRY_DELAY);
                        Outcome::Retry {
                            retry_in,
                            error: short(&e.to_string(), MAX_REASON_CHARS),
                        }
                    }
                }
            }
        }
    };

    let conn = pool.get().await?;
    match &outcome {
        Outcome::Sent {
            provider_message_id,
        } => {
            outbox::mark_sent(
                &conn,
                row.id,
                provider.name(),
                provider_message_id.as_deref(),
            )
            .await?;
            tracing::info!(
                outbox_id = %row.id,
                kind = %row.kind,
                provider = provider.name(),
                attempts,
                "email sent"
            );
        }
        Outcome::Retry { retry_in, error } => {
            outbox::mark_retry(&conn, row.id, error, *retry_in).await?;
            tracing::warn!(
                outbox_id = %row.id,
                kind = %row.kind,
                attempts,
                max_attempts,
                retry_in_secs = retry_in.as_secs(),
                error = %error,
                "email not sent; will retry"
            );
        }
        Outcome::Failed { error } => {
            outbox::mark_failed(&conn, row.id, error).await?;
            tracing::error!(
                outbox_id = %row.id,
                kind = %row.kind,
                attempts,
                error = %error,
                "email failed for good"
            );
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn resend(key: &str) -> ResendSettings {
        ResendSettings {
            api_key: SecretString::from(key.to_string()),
            from_email: "observe <noreply@localhost>".into(),
            base_url: "http://127.0.0.1:1".into(),
        }
    }

    #[test]
    fn templates_escape_every_interpolated_value_in_html() {
        let e = password_reset(
            "a@example.com",
            "<script>alert(1)</script>",
            "https://app/reset?token=x&y=\"z\"",
            60,
        );
        assert_eq!(e.kind, "password_reset");
        assert_eq!(e.to, "a@example.com");
        assert!(!e.html.contains("<script>"), "{}", e.html);
        assert!(e.html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(e
            .html
            .contains("href=\"https://app/reset?token=x&amp;y=&quot;z&quot;\""));
        assert!(e.text.contains("https://app/reset?token=x&y=\"z\""));
        assert!(e.text.contains("expires in 60 minutes"));

        let e = email_change("Ann", "new<b>@example.com", "https://app/confirm?t=1");
        assert_eq!(e.kind, "email_change");
        assert_eq!(e.to, "new<b>@example.com");
        assert!(e.html.contains("new&lt;b&gt;@example.com"));
        assert!(e.text.contains("https://app/confirm?t=1"));
    }

    #[test]
    fn redaction_removes_every_token_value_and_keeps_the_rest() {
        let text = "Reset: https://app/reset-password?token=abc-DEF_123 (1 hour)\n\
                    again https://app/x?a=1&token=zz9&b=2 and token= alone";
        let redacted = redact_tokens(text);
        assert_eq!(
            redacted,
            "Reset: https://app/reset-password?token=[redacted] (1 hour)\n\
             again https://app/x?a=1&token=[redacted]&b=2 and token= alone"
        );
        assert!(!redacted.contains("abc-DEF_123") && !redacted.contains("zz9"));
        assert_eq!(redact_tokens("no links"), "no links");
    }

    #[test]
    fn debug_output_hides_bodies() {
        let e = password_reset("a@example.com", "Ann", "https://app/reset?token=SECRET", 60);
        let shown = format!("{e:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("a@example.com"));
    }

    #[test]
    fn provider_follows_the_api_key() {
        assert_eq!(Provider::from_settings(&resend("")), Provider::Log);
        assert_eq!(Provider::from_settings(&resend("  ")), Provider::Log);
        assert_eq!(Provider::from_settings(&resend("re_123")), Provider::Resend);
        assert_eq!(Provider::Resend.name(), "resend");
        assert_eq!(Provider::Log.name(), "log");
    }

    #[test]
    fn monitor_alerts_are_escaped() {
        let alert = MonitorAlert {
            monitor_name: "<script>x</script>",
            url: "https://example.com/?a=1&b=2",
            cause: "status",
            error: Some("unexpected status 500"),
            started_at: "2026-01-01T00:00:00Z",
            resolved_at: Some("2026-01-01T00:05:00Z"),
            link: "http://localhost:3000/projects/p/monitors/m",
        };
        let down = monitor_down("a@example.com", "Ada", &alert);
        assert_eq!(down.kind, "monitor_down");
        assert!(down.subject.contains("is down"));
        assert!(!down.html.contains("<script>"));
        assert!(down.html.contains("&lt;script&gt;"));
        assert!(down.html.contains("a=1&amp;b=2"));
        assert!(down.text.contains("unexpected status 500"));
        let up = monitor_recovered("a@example.com", "Ada", &alert);
        assert_eq!(up.kind, "monitor_recovered");
        assert!(up.text.contains("up again"));
        assert!(!up.html.contains("<script>"));
    }

    #[test]
    fn retryable_and_permanent_failures_are_told_apart() {
        assert!(SendError::Network("x".into()).is_retryable());
        assert!(SendError::Timeout.is_retryable());
        assert!(SendError::RateLimited { retry_after: None }.is_retryable());
        assert!(SendError::Unavailable { status: 503 }.is_retryable());
        assert!(!SendError::Rejected {
            status: 422,
            reason: "x".into()
        }
        .is_retryable());
        assert!(!SendError::InvalidResponse("x".into()).is_retryable());
    }

    #[test]
    fn retry_delays_double_and_cap() {
        let mail = MailSettings {
            max_attempts: 8,
            retry_base_secs: 5,
            poll_interval_secs: 5,
        };
        assert_eq!(retry_delay(&mail, 1), Duration::from_secs(5));
        assert_eq!(retry_delay(&mail, 2), Duration::from_secs(10));
        assert_eq!(retry_delay(&mail, 4), Duration::from_secs(40));
        assert_eq!(retry_delay(&mail, 100), MAX_RETRY_DELAY);
    }

    #[test]
    fn refusal_reasons_are_short_and_plain() {
        let body =
            br#"{"statusCode":422,"name":"validation_error","message":"Invalid `to` field."}"#;
        assert_eq!(
            refusal_reason(body),
            "validation_error: Invalid `to` field."
        );
        assert_eq!(refusal_reason(b"<html>"), "no reason given");
        let long = format!(r#"{{"message":"{}"}}"#, "x".repeat(500));
        assert_eq!(refusal_reason(long.as_bytes()).chars().count(), 201);
    }
}
