//! Billing rows: subscriptions, payments (the record of every transaction observe started with
//! Squad, written before Squad is called) and billing events; and the enforcement of the hobby
//! tier when a subscription ends.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{GenericClient, StoreError};
use crate::billing::{Plan, SubState, Subscription};

const SUBSCRIPTION_COLUMNS: &str = "organisation_id, plan, state, amount, current_period_start, \
     current_period_end, cancel_at_period_end, grace_until, card_token, card_last4, card_brand, \
     email, updated_at";

fn subscription(row: &tokio_postgres::Row) -> Subscription {
    Subscription {
        organisation_id: row.get(0),
        plan: row.get::<_, &str>(1).parse().unwrap_or(Plan::Pro),
        state: SubState::parse(row.get(2)),
        amount: u64::try_from(row.get::<_, i64>(3)).unwrap_or(0),
        period_start: row.get(4),
        period_end: row.get(5),
        cancel_at_period_end: row.get(6),
        grace_until: row.get(7),
        card_token: row.get(8),
        card_last4: row.get(9),
        card_brand: row.get(10),
        email: row.get(11),
        updated_at: row.get(12),
    }
}

/// The organisation's subscription; with `lock`, its row is locked for the transaction.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "billing.subscription_of", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn subscription_of(
    client: &impl GenericClient,
    organisation_id: Uuid,
    lock: bool,
) -> Result<Option<Subscription>, StoreError> {
    let sql = format!(
        "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE organisation_id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    Ok(client
        .query_opt(&sql, &[&organisation_id])
        .await?
        .as_ref()
        .map(subscription))
}

/// Writes `s` whole (insert or replace).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "billing.save_subscription", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn save_subscription(
    client: &impl GenericClient,
    s: &Subscription,
) -> Result<(), StoreError> {
    let amount = i64::try_from(s.amount).unwrap_or(i64::MAX);
    client
        .execute(
            "INSERT INTO subscriptions (organisation_id, plan, state, amount,
                 current_period_start, current_period_end, cancel_at_period_end, grace_until,
                 card_token, card_last4, card_brand, email)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (organisation_id) DO UPDATE SET
                 plan = EXCLUDED.plan, state = EXCLUDED.state, amount = EXCLUDED.amount,
                 current_period_start = EXCLUDED.current_period_start,
                 current_period_end = EXCLUDED.current_period_end,
                 cancel_at_period_end = EXCLUDED.cancel_at_period_end,
                 grace_until = EXCLUDED.grace_until, card_token = EXCLUDED.card_token,
                 card_last4 = EXCLUDED.card_last4, card_brand = EXCLUDED.card_brand,
                 email = EXCLUDED.email, updated_at = now()",
            &[
                &s.organisation_id,
                &s.plan.as_str(),
                &s.state.as_str(),
                &amount,
                &s.period_start,
                &s.period_end,
                &s.cancel_at_period_end,
                &s.grace_until,
                &s.card_token,
                &s.card_last4,
                &s.card_brand,
                &s.email,
            ],
        )
        .await?;
    Ok(())
}

/// Organisations whose subscription is due for the renewal run at `now`.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "billing.due", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn due(client: &impl GenericClient, now: DateTime<Utc>) -> Result<Vec<Uuid>, StoreError> {
    Ok(client
        .query(
            "SELECT organisation_id FROM subscriptions
             WHERE state IN ('active', 'grace') AND current_period_end <= $1
             ORDER BY current_period_end, organisation_id",
            &[&now],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// A transaction observe started with Squad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub reference: String,
    pub organisation_id: Uuid,
    pub kind: PaymentKind,
    pub plan: Plan,
    pub amount: u64,
    pub email: String,
    pub state: PaymentState,
    pub renews_period_end: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentKind {
    Checkout,
    Renewal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentState {
    Pending,
    Succeeded,
    Failed,
}

impl PaymentState {
    fn as_str(self) -> &'static str {
        match self {
            PaymentState::Pending => "pending",
            PaymentState::Succeeded => "succeeded",
            PaymentState::Failed => "failed",
        }
    }
}

fn payment(row: &tokio_postgres::Row) -> Payment {
    Payment {
        reference: row.get(0),
        organisation_id: row.get(1),
        kind: if row.get::<_, &str>(2) == "renewal" {
            PaymentKind::Renewal
        } else {
            PaymentKind::Checkout
        },
        plan: row.get::<_, &str>(3).parse().unwrap_or(Plan::Pro),
        amount: u64::try_from(row.get::<_, i64>(4)).unwrap_or(0),
        email: row.get(5),
        state: match row.get::<_, &str>(6) {
            "succeeded" => PaymentState::Succeeded,
            "failed" => PaymentState::Failed,
            _ => PaymentState::Pending,
        },
        renews_period_end: row.get(7),
    }
}

const PAYMENT_COLUMNS: &str =
    "reference, organisation_id, kind, plan, amount, email, state, renews_period_end";

/// Records a payment as pending (committed before Squad hears of it).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "billing.record_payment", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn record_payment(client: &impl GenericClient, p: &Payment) -> Result<(), StoreError> {
    let amount = i64::try_from(p.amount).unwrap_or(i64::MAX);
    let kind = match p.kind {
        PaymentKind::Checkout => "checkout",
        PaymentKind::Renewal => "renewal",
    };
    client
        .execute(
            "INSERT INTO payments (reference, organisation_id, kind, plan, amount, email, state,
                                   renews_period_end)
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7)",
            &[
                &p.reference,
                &p.organisation_id,
                &kind,
                &p.plan.as_str(),
                &amount,
                &p.email,
                &p.renews_period_end,
            ],
        )
        .await?;
    Ok(())
}

/// The payment of `reference`; with `lock`, locked for the transaction.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "billing.payment_of", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn payment_of(
    client: &impl GenericClient,
    reference: &str,
    lock: bool,
) -> Result<Option<Payment>, StoreError> {
    let sql = format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE reference = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    Ok(client
        .query_opt(&sql, &[&reference])
        .await?
        .as_ref()
        .map(payment))
}

/// The renewal payments recorded for the period ending `period_end`, oldest first.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "billing.renewals_of_period", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn renewals_of_period(
    client: &impl GenericClient,
    organisation_id: Uuid,
    period_end: DateTime<Utc>,
) -> Result<Vec<Payment>, StoreError> {
    Ok(client
        .query(
            &format!(
                "SELECT {PAYMENT_COLUMNS} FROM payments
                 WHERE organisation_id = $1 AND kind = 'renewal' AND renews_period_end = $2
                 ORDER BY created_at, reference"
            ),
            &[&organisation_id, &period_end],
        )
        .await?
        .iter()
        .map(payment)
        .collect())
}

#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "billing.set_payment_state", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn set_payment_state(
    client: &impl GenericClient,
    reference: &str,
    state: PaymentState,
    failure: Option<&str>,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE payments SET state = $2, failure = $3, updated_at = now() WHERE reference = $1",
            &[&reference, &state.as_str(), &failure],
        )
        .await?;
    Ok(())
}

/// One line of the billing history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingEvent {
    pub id: Uuid,
    pub kind: String,
    pub reference: Option<String>,
    pub plan: Option<String>,
    pub amount: Option<i64>,
    pub created_at: DateTime<Utc>,
}

#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "billing.record_event", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn record_event(
    client: &impl GenericClient,
    organisation_id: Uuid,
    kind: &str,
    reference: Option<&str>,
    plan: Option<Plan>,
    amount: Option<u64>,
) -> Result<(), StoreError> {
    let amount = amount.map(|a| i64::try_from(a).unwrap_or(i64::MAX));
    client
        .execute(
            "INSERT INTO billing_events (id, organisation_id, kind, reference, plan, amount)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &Uuid::now_v7(),
                &organisation_id,
                &kind,
                &reference,
                &plan.map(Plan::as_str),
                &amount,
            ],
        )
        .await?;
    Ok(())
}

/// A page of the organisation's billing events, newest first, after `cursor` `(created_at, id)`.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "billing.events_page", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn events_page(
    client: &impl GenericClient,
    organisation_id: Uuid,
    cursor: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<BillingEvent>, StoreError> {
    let (at, id) = cursor.unzip();
    Ok(client
        .query(
            "SELECT id, kind, reference, plan, amount, created_at FROM billing_events
             WHERE organisation_id = $1
               AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
             ORDER BY created_at DESC, id DESC LIMIT $4",
            &[&organisation_id, &at, &id, &limit],
        )
        .await?
        .iter()
        .map(|r| BillingEvent {
            id: r.get(0),
            kind: r.get(1),
            reference: r.get(2),
            plan: r.get(3),
            amount: r.get(4),
            created_at: r.get(5),
        })
        .collect())
}

/// Sets the organisation's tier (`hobby`, `pro`, `team`).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "billing.set_tier", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn set_tier(
    client: &impl GenericClient,
    organisation_id: Uuid,
    tier: &str,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE organisations SET tier = $2 WHERE id = $1",
            &[&organisation_id, &tier],
        )
        .await?;
    Ok(())
}

/// What enforcing a smaller tier changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enforced {
    /// Monitors paused for being beyond the monitor limit (the newest ones).
    pub paused: Vec<Uuid>,
    /// Monitors whose interval was raised to the tier's minimum.
    pub slowed: Vec<Uuid>,
}

/// Keeps the organisation's oldest `max_monitors` running monitors (`None`: no limit) and
/// pauses the others; raises intervals below `min_interval_secs`. Data is kept; projects beyond
/// the tier's limit stay, and creating more is refused where projects are created.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "billing.enforce_limits", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn enforce_limits(
    client: &impl GenericClient,
    organisation_id: Uuid,
    max_monitors: Option<u64>,
    min_interval_secs: u32,
) -> Result<Enforced, StoreError> {
    let mut out = Enforced::default();
    if let Some(max) = max_monitors {
        let keep = i64::try_from(max).unwrap_or(i64::MAX);
        out.paused = client
            .query(
                "UPDATE monitors SET paused = true, updated_at = now()
                 WHERE id IN (
                     SELECT m.id FROM monitors m JOIN projects p ON p.id = m.project_id
                     WHERE p.organisation_id = $1 AND NOT m.paused
                     ORDER BY m.created_at, m.id OFFSET $2)
                 RETURNING id",
                &[&organisation_id, &keep],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
    }
    let min = i32::try_from(min_interval_secs).unwrap_or(i32::MAX);
    out.slowed = client
        .query(
            "UPDATE monitors m SET interval_seconds = $2, updated_at = now()
             FROM projects p
             WHERE p.id = m.project_id AND p.organisation_id = $1 AND m.interval_seconds < $2
             RETURNING m.id",
            &[&organisation_id, &min],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(out)
}

/// The owners' addresses and names of an organisation, first owner first.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "billing.owners", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn owners(
    client: &impl GenericClient,
    organisation_id: Uuid,
) -> Result<Vec<(String, String)>, StoreError> {
    Ok(client
        .query(
            "SELECT u.email, u.name FROM memberships m JOIN users u ON u.id = m.user_id
             WHERE m.organisation_id = $1 AND m.role = 'owner' ORDER BY m.created_at, u.id",
            &[&organisation_id],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Subscriptions per state and the monthly recurring revenue (kobo) of those still paying
/// (active or in grace, not cancelled at period end), for `/admin/stats`.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "billing.totals", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn totals(client: &impl GenericClient) -> Result<(Vec<(String, i64)>, i64), StoreError> {
    let by_state = client
        .query(
            "SELECT state, count(*) FROM subscriptions GROUP BY state ORDER BY state",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mrr: i64 = client
        .query_one(
            "SELECT coalesce(sum(amount), 0)::bigint FROM subscriptions
             WHERE state IN ('active', 'grace') AND NOT cancel_at_period_end",
            &[],
        )
        .await?
        .get(0);
    Ok((by_state, mrr))
}
