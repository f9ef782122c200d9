//! Billing (SPEC §7): start a checkout with Squad, Squad's webhook, cancel at period end, the
//! subscription and its history. The rules live in [`observe_core::billing`]; the webhook goes
//! through the Billing actor. Without Squad's secret key every route answers 503
//! `billing_disabled`. Changing billing (initiate, cancel) is for owners; members may look.

use actix_web::{get, post, web, HttpRequest};
use chrono::{DateTime, Utc};
use observe_actors::billing::Webhook;
use observe_core::billing::{Billing, BillingError, Plan, SubState, Subscription};
use observe_core::mail::HttpClient;
use observe_core::squad::SIGNATURE_HEADER;
use observe_core::store::accounts::{self, Role};
use observe_core::store::billing as store;
use observe_core::store::Cursor;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{ApiError, FieldError};
use crate::routes::projects::{List, ListQuery};
use crate::session::Session;
use crate::state::AppState;

/// How long the webhook's answer waits for the Billing actor (Squad's verify call included).
const WEBHOOK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn service(state: &AppState) -> Result<&Billing, ApiError> {
    state.billing.as_ref().ok_or(ApiError::BillingDisabled)
}

/// The signed-in user's role in the session's organisation must be owner.
async fn owner_email(state: &AppState, session: &Session) -> Result<String, ApiError> {
    let client = state.db.get().await?;
    let role = accounts::membership(&client, session.user_id, session.org_id)
        .await?
        .map(|(_, role)| role);
    if role != Some(Role::Owner) {
        return Err(ApiError::Forbidden(
            "only an owner of the organisation may change its billing",
        ));
    }
    accounts::user_by_id(&client, session.user_id)
        .await?
        .map(|u| u.email)
        .ok_or_else(ApiError::unauthorized)
}

fn provider_error(e: BillingError) -> ApiError {
    match e {
        BillingError::Provider(cause) => {
            tracing::warn!(error = %cause, "Squad call failed");
            ApiError::PaymentProvider
        }
        BillingError::Store(e) => e.into(),
        BillingError::NoSubscription => ApiError::NotFound,
        BillingError::InvalidSignature => ApiError::Unauthorized {
            code: "invalid_signature",
            message: "the x-squad-encrypted-body signature is missing or does not match the body",
        },
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct Initiate {
    /// `pro` or `team`.
    #[schema(example = "pro")]
    pub plan: String,
}

/// A checkout to send the payer to.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckoutView {
    /// The payment's reference (Squad's `transaction_ref`).
    pub reference: String,
    /// Squad's payment page.
    pub checkout_url: String,
    /// Kobo.
    #[schema(example = 500000)]
    pub amount: u64,
    #[schema(example = "pro")]
    pub plan: String,
}

/// Starts paying for `pro` or `team`: answers Squad's checkout URL. The plan starts when Squad
/// confirms the payment (its webhook, checked with Squad's verify endpoint); the card is saved
/// for the monthly renewals.
#[utoipa::path(
    tag = "billing",
    security(("bearer" = [])),
    request_body = Initiate,
    responses(
        (status = 200, body = CheckoutView),
        (status = 403, body = crate::error::ErrorBody, description = "`forbidden`: not an owner"),
        (status = 422, body = crate::error::ErrorBody),
        (status = 502, body = crate::error::ErrorBody, description = "`payment_provider_error`"),
        (status = 503, body = crate::error::ErrorBody, description = "`billing_disabled`"),
    )
)]
#[post("/billing/initiate")]
pub async fn initiate(
    session: Session,
    state: web::Data<AppState>,
    http: web::Data<HttpClient>,
    body: web::Json<Initiate>,
) -> Result<web::Json<CheckoutView>, ApiError> {
    let billing = service(&state)?;
    let plan: Plan = body.plan.trim().parse().map_err(|reason: String| {
        ApiError::Validation(vec![FieldError {
            field: "plan".into(),
            reason,
        }])
    })?;
    let email = owner_email(&state, &session).await?;
    let started = billing
        .initiate(&http, session.org_id, &email, plan)
        .await
        .map_err(provider_error)?;
    Ok(web::Json(CheckoutView {
        reference: started.reference,
        checkout_url: started.checkout_url,
        amount: started.amount,
        plan: started.plan.as_str().to_string(),
    }))
}

/// Receipt of a webhook.
#[derive(Debug, Serialize, ToSchema)]
pub struct Received {
    pub received: bool,
}

/// Squad's notification of a payment. Signed with `x-squad-encrypted-body` (HMAC-SHA512 of the
/// raw body under the secret key); confirmed with Squad before anything is granted; applied
/// once (a replay changes nothing). A 2xx means handled; Squad retries anything else.
#[utoipa::path(
    tag = "billing",
    request_body(content = Object, description = "Squad's notification, e.g. `{\"Event\": \"charge_successful\", \"TransactionRef\": \"...\", \"Body\": {...}}`"),
    responses(
        (status = 200, body = Received),
        (status = 401, body = crate::error::ErrorBody, description = "`invalid_signature`"),
        (status = 502, body = crate::error::ErrorBody, description = "Squad's verify endpoint failed: send again"),
        (status = 503, body = crate::error::ErrorBody, description = "`billing_disabled`, or busy: send again"),
    )
)]
#[post("/billing/webhook")]
pub async fn webhook(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<web::Json<Received>, ApiError> {
    service(&state)?;
    let actor = state
        .billing_actor
        .as_ref()
        .ok_or(ApiError::BillingDisabled)?;
    let signature = req
        .headers()
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (reply, answer) = oneshot::channel();
    let busy = ApiError::Unavailable {
        what: "billing",
        retry_after_secs: 5,
    };
    if actor
        .addr()
        .try_send(Webhook {
            body: body.to_vec(),
            signature,
            reply,
        })
        .is_err()
    {
        return Err(busy);
    }
    match tokio::time::timeout(WEBHOOK_WAIT, answer).await {
        Ok(Ok(Ok(_outcome))) => Ok(web::Json(Received { received: true })),
        Ok(Ok(Err(e))) => Err(provider_error(e)),
        Ok(Err(_)) | Err(_) => Err(busy),
    }
}

/// The saved card, as far as it is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CardView {
    pub last4: Option<String>,
    pub brand: Option<String>,
}

/// The organisation's plan and subscription.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionView {
    /// The tier now: `hobby`, `pro` or `team`.
    #[schema(example = "pro")]
    pub plan: String,
    /// `none` (never paid), `active`, `grace` (a renewal failed; retried daily until
    /// `grace_until`) or `ended` (back on hobby).
    #[schema(example = "active")]
    pub state: String,
    pub current_period_start: Option<DateTime<Utc>>,
    pub current_period_end: Option<DateTime<Utc>>,
    /// No renewal at the period end (cancelled).
    pub cancel_at_period_end: bool,
    pub grace_until: Option<DateTime<Utc>>,
    /// Kobo per month.
    pub amount: Option<u64>,
    pub card: Option<CardView>,
}

impl SubscriptionView {
    fn of(s: Option<&Subscription>) -> Self {
        match s {
            None => SubscriptionView {
                plan: "hobby".into(),
                state: "none".into(),
                current_period_start: None,
                current_period_end: None,
                cancel_at_period_end: false,
                grace_until: None,
                amount: None,
                card: None,
            },
            Some(s) => SubscriptionView {
                plan: if s.state == SubState::Ended {
                    "hobby".into()
                } else {
                    s.plan.as_str().into()
                },
                state: s.state.as_str().into(),
                current_period_start: Some(s.period_start),
                current_period_end: Some(s.period_end),
                cancel_at_period_end: s.cancel_at_period_end,
                grace_until: s.grace_until,
                amount: Some(s.amount),
                card: s.card_token.as_ref().map(|_| CardView {
                    last4: s.card_last4.clone(),
                    brand: s.card_brand.clone(),
                }),
            },
        }
    }
}

/// Stops renewal at the end of the paid period: the plan stays until then, then the
/// organisation is on hobby (its data kept).
#[utoipa::path(
    tag = "billing",
    security(("bearer" = [])),
    responses(
        (status = 200, body = SubscriptionView),
        (status = 403, body = crate::error::ErrorBody, description = "`forbidden`: not an owner"),
        (status = 404, body = crate::error::ErrorBody, description = "no subscription to cancel"),
        (status = 503, body = crate::error::ErrorBody, description = "`billing_disabled`"),
    )
)]
#[post("/billing/cancel")]
pub async fn cancel(
    session: Session,
    state: web::Data<AppState>,
) -> Result<web::Json<SubscriptionView>, ApiError> {
    let billing = service(&state)?;
    owner_email(&state, &session).await?;
    let s = billing
        .cancel(session.org_id)
        .await
        .map_err(provider_error)?;
    Ok(web::Json(SubscriptionView::of(Some(&s))))
}

/// The organisation's subscription (`state: none` if it never paid).
#[utoipa::path(
    tag = "billing",
    security(("bearer" = [])),
    responses(
        (status = 200, body = SubscriptionView),
        (status = 503, body = crate::error::ErrorBody, description = "`billing_disabled`"),
    )
)]
#[get("/billing/subscription")]
pub async fn subscription(
    session: Session,
    state: web::Data<AppState>,
) -> Result<web::Json<SubscriptionView>, ApiError> {
    service(&state)?;
    let client = state.db.get().await?;
    let s = store::subscription_of(&client, session.org_id, false).await?;
    Ok(web::Json(SubscriptionView::of(s.as_ref())))
}

/// One line of the billing history.
#[derive(Debug, Serialize, ToSchema)]
pub struct BillingEventView {
    pub id: Uuid,
    /// `checkout_started`, `payment_succeeded`, `renewal_succeeded`, `renewal_failed`,
    /// `cancel_requested`, `downgraded` (unpaid after the grace period) or `ended`.
    #[schema(example = "payment_succeeded")]
    pub kind: String,
    pub reference: Option<String>,
    pub plan: Option<String>,
    /// Kobo.
    pub amount: Option<i64>,
    pub created_at: DateTime<Utc>,
}

/// The organisation's billing history, newest first.
#[utoipa::path(
    tag = "billing",
    security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, body = List<BillingEventView>),
        (status = 503, body = crate::error::ErrorBody, description = "`billing_disabled`"),
    )
)]
#[get("/billing/events")]
pub async fn events(
    session: Session,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<web::Json<List<BillingEventView>>, ApiError> {
    service(&state)?;
    let (limit, after) = query.parse()?;
    let client = state.db.get().await?;
    let mut rows = store::events_page(
        &client,
        session.org_id,
        after.map(|c| (c.created_at, c.id)),
        limit as i64 + 1,
    )
    .await?;
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|e| {
            Cursor {
                created_at: e.created_at,
                id: e.id,
            }
            .encode()
        })
    } else {
        None
    };
    Ok(web::Json(List {
        items: rows
            .into_iter()
            .map(|e| BillingEventView {
                id: e.id,
                kind: e.kind,
                reference: e.reference,
                plan: e.plan,
                amount: e.amount,
                created_at: e.created_at,
            })
            .collect(),
        next_cursor,
    }))
}
