//! Billing through Squad (SPEC §5, §8): checkouts, the webhook that activates a plan, monthly
//! renewals with a grace period, cancellation at period end, and the downgrade to hobby.
//!
//! The rules are plain functions of a [`Subscription`] and a time ([`after_payment`], [`due`],
//! [`after_failed_charge`]); [`Billing`] carries them out against PostgreSQL and Squad. The
//! `Billing` actor (observe-actors) runs [`Billing::renew_due`] on the daily tick and
//! serialises webhooks; tests call both directly.
//!
//! **Never charge twice.** A renewal writes its payment (its Squad reference) and commits before
//! it calls Squad. A run that finds a payment of the period still pending — the last run died or
//! timed out between the two — asks Squad about that reference ([`Squad::verify`]) and charges
//! again only if Squad never saw it, under the same reference. One organisation's renewal runs
//! under a PostgreSQL advisory lock, so two instances (or a catch-up and a tick) never work on
//! it at once. **Never grant unpaid.** The webhook's signature is checked over the raw body, and
//! its claim is confirmed with Squad's verify endpoint (status and amount) before anything
//! changes; a payment is applied once (its row is locked and marked in the same transaction).
//!
//! **Tier changes** are written with the subscription and announced on the key/session change
//! channel ([`crate::keys::announce`]), so every instance's cached tier (rate limits, caps) is
//! forgotten within moments; monitors paused or slowed by a downgrade move their `updated_at`,
//! which every instance's monitor engine polls.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use chrono::{DateTime, Months, Utc};
use hkdf::Hkdf;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use uuid::Uuid;

use crate::config::{BillingSettings, Limit, Settings, TierLimits};
use crate::db::PgPool;
use crate::keys::{self, KeyCache, Scope};
use crate::mail::{self, HttpClient};
use crate::outbox;
use crate::squad::{self, Checkout, Squad, SquadError, TxStatus, Verified};
use crate::store::billing::{self as store, Payment, PaymentKind, PaymentState};
use crate::store::StoreError;

/// A paid plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Plan {
    Pro,
    Team,
}

impl Plan {
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Pro => "pro",
            Plan::Team => "team",
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Plan {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pro" => Ok(Plan::Pro),
            "team" => Ok(Plan::Team),
            other => Err(format!("{other:?} is not a plan; use \"pro\" or \"team\"")),
        }
    }
}

/// Where a subscription is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubState {
    /// Paid up to the period end.
    Active,
    /// A renewal failed; still on the plan, retried daily until `grace_until`.
    Grace,
    /// Back on hobby (cancelled, or unpaid after the grace period).
    Ended,
}

impl SubState {
    pub fn as_str(self) -> &'static str {
        match self {
            SubState::Active => "active",
            SubState::Grace => "grace",
            SubState::Ended => "ended",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "active" => SubState::Active,
            "grace" => SubState::Grace,
            _ => SubState::Ended,
        }
    }
}

/// An organisation's subscription.
#[derive(Clone, PartialEq, Eq)]
pub struct Subscription {
    pub organisation_id: Uuid,
    pub plan: Plan,
    pub state: SubState,
    /// Kobo per month.
    pub amount: u64,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub cancel_at_period_end: bool,
    pub grace_until: Option<DateTime<Utc>>,
    /// The saved card's token, encrypted ([`CardKey`]).
    pub card_token: Option<Vec<u8>>,
    pub card_last4: Option<String>,
    pub card_brand: Option<String>,
    /// Receipts and notices go here.
    pub email: String,
    pub updated_at: DateTime<Utc>,
}

/// The card token stays out of debug output, encrypted or not.
impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("organisation_id", &self.organisation_id)
            .field("plan", &self.plan)
            .field("state", &self.state)
            .field("period_end", &self.period_end)
            .field("cancel_at_period_end", &self.cancel_at_period_end)
            .field("grace_until", &self.grace_until)
            .field("card", &self.card_token.as_ref().map(|_| "[saved]"))
            .finish()
    }
}

/// One month after `t` (the same day of the month, or the month's last day).
pub fn add_month(t: DateTime<Utc>) -> DateTime<Utc> {
    t.checked_add_months(Months::new(1)).unwrap_or(t)
}

/// The period a confirmed checkout of `plan` buys at `now`: a payment for the plan the
/// organisation already has, while it is paid up, extends its period by a month; anything else
/// (first payment, another plan, after the end) starts a month from now.
pub fn after_payment(
    current: Option<&Subscription>,
    plan: Plan,
    now: DateTime<Utc>,
) -> (DateTime<Utc>, DateTime<Utc>) {
    match current {
        Some(s) if s.state != SubState::Ended && s.plan == plan && s.period_end > now => {
            (s.period_start, add_month(s.period_end))
        }
        _ => (now, add_month(now)),
    }
}

/// What the renewal run does with a subscription at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    NotDue,
    /// Charge the saved card for the next period.
    Charge,
    /// Cancelled at period end, and the end has come: back to hobby, no charge.
    End,
}

pub fn due(s: &Subscription, now: DateTime<Utc>) -> Due {
    match s.state {
        SubState::Ended => Due::NotDue,
        _ if s.period_end > now => Due::NotDue,
        _ if s.cancel_at_period_end => Due::End,
        _ => Due::Charge,
    }
}

/// What a failed renewal charge leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Still on the plan until then; retried by each run.
    Grace(DateTime<Utc>),
    /// The grace period is over: back to hobby.
    Downgrade,
}

pub fn after_failed_charge(s: &Subscription, now: DateTime<Utc>, grace_days: u32) -> AfterFailure {
    match (s.state, s.grace_until) {
        (SubState::Grace, Some(until)) if now >= until => AfterFailure::Downgrade,
        (SubState::Grace, Some(until)) => AfterFailure::Grace(until),
        _ if grace_days == 0 => AfterFailure::Downgrade,
        _ => AfterFailure::Grace(now + chrono::Duration::days(i64::from(grace_days))),
    }
}

/// The reference of the `attempt`th renewal charge (from 1) of the period ending `period_end`:
/// the same inputs give the same reference, which is what makes a repeated run find its charge.
pub fn renewal_reference(
    organisation_id: Uuid,
    period_end: DateTime<Utc>,
    attempt: usize,
) -> String {
    format!(
        "obs_r_{}_{}_{attempt}",
        organisation_id.simple(),
        period_end.timestamp_micros()
    )
}

/// Encrypts saved-card tokens at rest: AES-256-GCM under a key derived from `SECRET_KEY` with
/// HKDF-SHA256 (so the signing key itself never encrypts anything), a random 96-bit nonce per
/// token, stored in front of the ciphertext.
#[derive(Clone)]
pub struct CardKey(Aes256Gcm);

impl CardKey {
    pub fn derive(secret_key: &SecretString) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(b"observe"), secret_key.expose_secret().as_bytes());
        let mut key = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's limit (255 × 32): this cannot fail.
        let _ = hk.expand(b"card-token v1", &mut key);
        CardKey(Aes256Gcm::new(&key.into()))
    }

    pub fn seal(&self, token: &SecretString) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .0
            .encrypt(Nonce::from_slice(&nonce), token.expose_secret().as_bytes())
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend(sealed);
        out
    }

    /// The token, or `None` if the bytes were not sealed by this key (another `SECRET_KEY`).
    pub fn open(&self, sealed: &[u8]) -> Option<SecretString> {
        if sealed.len() < 12 + 16 {
            return None;
        }
        let (nonce, body) = sealed.split_at(12);
        let plain = self.0.decrypt(Nonce::from_slice(nonce), body).ok()?;
        String::from_utf8(plain).ok().map(SecretString::from)
    }
}

/// Why a billing action failed.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the payment provider failed: {0}")]
    Provider(#[source] SquadError),
    #[error("the webhook's signature is missing or wrong")]
    InvalidSignature,
    #[error("the organisation has no subscription")]
    NoSubscription,
    /// The saved card's token was sealed under another SECRET_KEY: the operator's trouble,
    /// never the customer's (no grace, no email); the subscription is left as it is.
    #[error("the saved card of organisation {0} cannot be opened with this SECRET_KEY (was it changed, or do instances differ?)")]
    CardUnreadable(Uuid),
}

impl From<tokio_postgres::Error> for BillingError {
    fn from(e: tokio_postgres::Error) -> Self {
        BillingError::Store(e.into())
    }
}

impl From<deadpool_postgres::PoolError> for BillingError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        BillingError::Store(StoreError::Unavailable(e.to_string()))
    }
}

/// A started checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub reference: String,
    pub checkout_url: String,
    pub amount: u64,
    pub plan: Plan,
}

/// What a webhook did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    Applied,
    /// Already applied before (a replay): nothing changed.
    AlreadyApplied,
    /// Not an event or reference of observe's: nothing to do.
    Ignored,
    /// Squad does not confirm the payment (not successful, or another amount): nothing granted.
    NotConfirmed,
}

/// What one renewal run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Renewed {
    pub charged: u64,
    pub failed: u64,
    pub downgraded: u64,
    pub ended: u64,
}

/// Emails queued in a committed transaction, to hand to the Mailer.
pub type Queued = Vec<Uuid>;

/// Billing's service: PostgreSQL, Squad and the rules above. Cheap to clone.
#[derive(Clone)]
pub struct Billing {
    db: PgPool,
    squad: Squad,
    card_key: CardKey,
    settings: BillingSettings,
    hobby: TierLimits,
    billing_url: String,
    /// This instance's API-key cache: a tier change is forgotten here at once (the others hear
    /// of it through the change channel).
    keys: KeyCache,
}

/// Key of the advisory locks of renewals (with the organisation's hash as the second key).
const RENEWAL_LOCK: i32 = 0x0b5e_b111;

impl Billing {
    /// Billing of these settings, or `None` when Squad's secret key is not set.
    pub fn from_settings(db: PgPool, settings: &Settings, keys: KeyCache) -> Option<Self> {
        if !settings.squad.enabled() {
            return None;
        }
        let timeout = Duration::from_millis(settings.billing.request_timeout_ms);
        Some(Self {
            db,
            squad: Squad::new(&settings.squad, timeout),
            card_key: CardKey::derive(&settings.auth.secret_key),
            settings: settings.billing.clone(),
            hobby: settings.tiers.hobby.clone(),
            billing_url: if settings.billing.callback_url.is_empty() {
                settings.dashboard_link("/billing")
            } else {
                settings.billing.callback_url.clone()
            },
            keys,
        })
    }

    pub fn amount(&self, plan: Plan) -> u64 {
        match plan {
            Plan::Pro => self.settings.pro_amount,
            Plan::Team => self.settings.team_amount,
        }
    }

    /// Starts a checkout of `plan` for the organisation, paid by `email`.
    pub async fn initiate(
        &self,
        http: &HttpClient,
        organisation_id: Uuid,
        email: &str,
        plan: Plan,
    ) -> Result<Started, BillingError> {
        let reference = format!("obs_c_{}", Uuid::new_v4().simple());
        let amount = self.amount(plan);
        {
            let mut client = self.db.get().await?;
            let tx = client.transaction().await?;
            store::record_payment(
                &tx,
                &Payment {
                    reference: reference.clone(),
                    organisation_id,
                    kind: PaymentKind::Checkout,
                    plan,
                    amount,
                    email: email.to_string(),
                    state: PaymentState::Pending,
                    renews_period_end: None,
                },
            )
            .await?;
            store::record_event(
                &tx,
                organisation_id,
                "checkout_started",
                Some(&reference),
                Some(plan),
                Some(amount),
            )
            .await?;
            tx.commit().await?;
        }
        let checkout = Checkout {
            amount,
            email,
            transaction_ref: &reference,
            callback_url: &self.billing_url,
        };
        match self.squad.initiate(http, &checkout).await {
            Ok(checkout_url) => Ok(Started {
                reference,
                checkout_url,
                amount,
                plan,
            }),
            Err(e) => {
                if let Ok(client) = self.db.get().await {
                    let _ = store::set_payment_state(
                        &client,
                        &reference,
                        PaymentState::Failed,
                        Some(&e.to_string()),
                    )
                    .await;
                }
                Err(BillingError::Provider(e))
            }
        }
    }

    /// Handles a webhook: `signature` is the `x-squad-encrypted-body` header, `body` the raw
    /// bytes it signs. Returns what it did and the emails it queued.
    pub async fn webhook(
        &self,
        http: &HttpClient,
        body: &[u8],
        signature: Option<&str>,
    ) -> Result<(WebhookOutcome, Queued), BillingError> {
        if !squad::verify_signature(self.squad.secret_key(), body, signature) {
            return Err(BillingError::InvalidSignature);
        }
        let Some(note) = squad::parse_notification(body) else {
            return Ok((WebhookOutcome::Ignored, Vec::new()));
        };
        if !note.event.eq_ignore_ascii_case("charge_successful") {
            return Ok((WebhookOutcome::Ignored, Vec::new()));
        }
        let payment = {
            let client = self.db.get().await?;
            store::payment_of(&client, &note.reference, false).await?
        };
        let Some(payment) = payment else {
            tracing::info!(reference = %note.reference, "webhook for a reference observe did not start; ignored");
            return Ok((WebhookOutcome::Ignored, Vec::new()));
        };
        if payment.state == PaymentState::Succeeded {
            return Ok((WebhookOutcome::AlreadyApplied, Vec::new()));
        }
        // The webhook is a claim; Squad's verify endpoint is the truth.
        let confirmed = match self.squad.verify(http, &payment.reference).await {
            Ok(Verified::Found(t)) => t.status == TxStatus::Success && t.amount == payment.amount,
            Ok(Verified::NotFound) => false,
            Err(e) => return Err(BillingError::Provider(e)),
        };
        if !confirmed {
            tracing::warn!(reference = %payment.reference, "webhook not confirmed by Squad's verify; nothing granted");
            return Ok((WebhookOutcome::NotConfirmed, Vec::new()));
        }
        let card = note.token.as_ref().map(|t| SavedCard {
            token: self.card_key.seal(t),
            last4: note.card_last4.clone(),
            brand: note.card_brand.clone(),
        });
        self.apply_success(&payment.reference, card, Utc::now())
            .await
    }

    /// Applies the confirmed payment `reference` once: activates, extends or renews the
    /// subscription, sets the tier, records the event and queues the receipt.
    async fn apply_success(
        &self,
        reference: &str,
        card: Option<SavedCard>,
        now: DateTime<Utc>,
    ) -> Result<(WebhookOutcome, Queued), BillingError> {
        let mut client = self.db.get().await?;
        let tx = client.transaction().await?;
        let Some(payment) = store::payment_of(&tx, reference, true).await? else {
            return Ok((WebhookOutcome::Ignored, Vec::new()));
        };
        if payment.state == PaymentState::Succeeded {
            return Ok((WebhookOutcome::AlreadyApplied, Vec::new()));
        }
        let org = payment.organisation_id;
        let current = store::subscription_of(&tx, org, true).await?;
        let (kind, next) = match payment.kind {
            PaymentKind::Checkout => {
                let (start, end) = after_payment(current.as_ref(), payment.plan, now);
                let mut s = current.clone().unwrap_or_else(|| Subscription {
                    organisation_id: org,
                    plan: payment.plan,
                    state: SubState::Active,
                    amount: payment.amount,
                    period_start: start,
                    period_end: end,
                    cancel_at_period_end: false,
                    grace_until: None,
                    card_token: None,
                    card_last4: None,
                    card_brand: None,
                    email: payment.email.clone(),
                    updated_at: now,
                });
                s.plan = payment.plan;
                s.amount = payment.amount;
                s.period_start = start;
                s.period_end = end;
                s.email = payment.email.clone();
                ("payment_succeeded", s)
            }
            PaymentKind::Renewal => {
                let Some(mut s) = current.clone() else {
                    return Ok((WebhookOutcome::Ignored, Vec::new()));
                };
                // Applied once: only while the period it renews is still the current one.
                if payment.renews_period_end != Some(s.period_end) {
                    store::set_payment_state(&tx, reference, PaymentState::Succeeded, None).await?;
                    tx.commit().await?;
                    return Ok((WebhookOutcome::AlreadyApplied, Vec::new()));
                }
                s.period_start = s.period_end;
                s.period_end = add_month(s.period_end);
                ("renewal_succeeded", s)
            }
        };
        let mut next = next;
        next.state = SubState::Active;
        next.cancel_at_period_end = false;
        next.grace_until = None;
        if let Some(card) = card {
            next.card_token = Some(card.token);
            next.card_last4 = card.last4;
            next.card_brand = card.brand;
        }
        store::save_subscription(&tx, &next).await?;
        store::set_payment_state(&tx, reference, PaymentState::Succeeded, None).await?;
        store::set_tier(&tx, org, next.plan.as_str()).await?;
        store::record_event(
            &tx,
            org,
            kind,
            Some(reference),
            Some(next.plan),
            Some(payment.amount),
        )
        .await?;
        let receipt = mail::billing_receipt(
            &next.email,
            next.plan.as_str(),
            payment.amount,
            reference,
            next.period_end,
            &self.billing_url,
        );
        let queued = vec![outbox::enqueue(&tx, &receipt).await?];
        keys::announce(&tx, Scope::Organisation(org)).await?;
        tx.commit().await?;
        self.keys.forget(Scope::Organisation(org));
        tracing::info!(organisation_id = %org, plan = next.plan.as_str(), event = kind, period_end = %next.period_end, "subscription paid");
        Ok((WebhookOutcome::Applied, queued))
    }

    /// Stops renewal at the period end.
    pub async fn cancel(&self, organisation_id: Uuid) -> Result<Subscription, BillingError> {
        let mut client = self.db.get().await?;
        let tx = client.transaction().await?;
        let mut s = store::subscription_of(&tx, organisation_id, true)
            .await?
            .filter(|s| s.state != SubState::Ended)
            .ok_or(BillingError::NoSubscription)?;
        if !s.cancel_at_period_end {
            s.cancel_at_period_end = true;
            store::save_subscription(&tx, &s).await?;
            store::record_event(
                &tx,
                organisation_id,
                "cancel_requested",
                None,
                Some(s.plan),
                None,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(s)
    }

    /// The renewal run at `now`: every due subscription charged, put in grace, downgraded or
    /// ended. One subscription's trouble never stops the others'.
    pub async fn renew_due(
        &self,
        http: &HttpClient,
        now: DateTime<Utc>,
    ) -> Result<(Renewed, Queued), BillingError> {
        let due_orgs = {
            let client = self.db.get().await?;
            store::due(&client, now).await?
        };
        let mut total = Renewed::default();
        let mut queued = Vec::new();
        let mut first_error = None;
        for org in due_orgs {
            match self.renew_one(http, org, now, &mut total).await {
                Ok(mut q) => queued.append(&mut q),
                Err(e) => {
                    tracing::warn!(organisation_id = %org, error = %e, "renewal not done; the next run tries again");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            // Every due subscription failed for a reason of observe's (database down): a failed run.
            Some(e) if total == Renewed::default() && queued.is_empty() => Err(e),
            _ => Ok((total, queued)),
        }
    }

    async fn renew_one(
        &self,
        http: &HttpClient,
        org: Uuid,
        now: DateTime<Utc>,
        total: &mut Renewed,
    ) -> Result<Queued, BillingError> {
        // A session-level advisory lock on a connection held for the organisation's renewal,
        // Squad's answer included: no transaction stays open across the network call, and the
        // lock goes with the connection if this process dies.
        let client = self.db.get().await?;
        let org_key = i32::from_be_bytes(org.as_bytes()[..4].try_into().unwrap_or([0; 4]));
        let locked: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&RENEWAL_LOCK, &org_key],
            )
            .await?
            .get(0);
        if !locked {
            return Ok(Vec::new());
        }
        let result = self.renew_locked(http, org, now, total).await;
        let _ = client
            .execute(
                "SELECT pg_advisory_unlock($1, $2)",
                &[&RENEWAL_LOCK, &org_key],
            )
            .await;
        result
    }

    async fn renew_locked(
        &self,
        http: &HttpClient,
        org: Uuid,
        now: DateTime<Utc>,
        total: &mut Renewed,
    ) -> Result<Queued, BillingError> {
        let sub = {
            let client = self.db.get().await?;
            store::subscription_of(&client, org, false).await?
        };
        let Some(sub) = sub else {
            return Ok(Vec::new());
        };
        match due(&sub, now) {
            Due::NotDue => return Ok(Vec::new()),
            Due::End => {
                total.ended += 1;
                return self.end(org, "ended", None, now).await;
            }
            Due::Charge => {}
        }
        let earlier = {
            let client = self.db.get().await?;
            store::renewals_of_period(&client, org, sub.period_end).await?
        };
        // A charge of this period whose outcome is not known here: ask Squad first.
        let pending = earlier
            .iter()
            .find(|p| p.state == PaymentState::Pending)
            .cloned();
        let outcome = match pending {
            Some(p) => match self.squad.verify(http, &p.reference).await {
                Ok(Verified::Found(t)) => Charged::Known(p.reference, t.status, t.amount),
                // Squad never received it: charging now, under the same reference, is the
                // first and only charge.
                Ok(Verified::NotFound) => self.charge(http, &sub, &p.reference).await,
                Err(e) => return Err(BillingError::Provider(e)),
            },
            None => {
                let reference = renewal_reference(org, sub.period_end, earlier.len() + 1);
                {
                    let client = self.db.get().await?;
                    store::record_payment(
                        &client,
                        &Payment {
                            reference: reference.clone(),
                            organisation_id: org,
                            kind: PaymentKind::Renewal,
                            plan: sub.plan,
                            amount: sub.amount,
                            email: sub.email.clone(),
                            state: PaymentState::Pending,
                            renews_period_end: Some(sub.period_end),
                        },
                    )
                    .await?;
                }
                self.charge(http, &sub, &reference).await
            }
        };
        match outcome {
            Charged::Known(reference, TxStatus::Success, amount) if amount == sub.amount => {
                let (_, queued) = self.apply_success(&reference, None, now).await?;
                total.charged += 1;
                Ok(queued)
            }
            Charged::Known(reference, TxStatus::Pending, _) => {
                tracing::info!(organisation_id = %org, reference = %reference, "renewal charge still pending at Squad; asked again next run");
                Ok(Vec::new())
            }
            Charged::Known(reference, status, _) => {
                let why = match status {
                    TxStatus::Failed(why) => why,
                    _ => "amount differs from the subscription's".to_string(),
                };
                {
                    let client = self.db.get().await?;
                    store::set_payment_state(&client, &reference, PaymentState::Failed, Some(&why))
                        .await?;
                }
                self.failed(&sub, &reference, now, total).await
            }
            Charged::NoCard => self.failed(&sub, "", now, total).await,
            Charged::Unreadable => {
                tracing::error!(organisation_id = %org, "a saved card cannot be opened with this SECRET_KEY; renewal left as it is");
                Err(BillingError::CardUnreadable(org))
            }
            Charged::Unknown(reference, e) => {
                tracing::warn!(organisation_id = %org, reference = %reference, error = %e, "renewal charge outcome unknown; verified before any retry");
                Ok(Vec::new())
            }
        }
    }

    /// Charges the subscription's card under `reference` (already recorded).
    async fn charge(&self, http: &HttpClient, sub: &Subscription, reference: &str) -> Charged {
        let Some(sealed) = sub.card_token.as_deref() else {
            return Charged::NoCard;
        };
        let Some(token) = self.card_key.open(sealed) else {
            return Charged::Unreadable;
        };
        match self
            .squad
            .charge_card(http, token.expose_secret(), sub.amount, reference)
            .await
        {
            Ok(t) => Charged::Known(reference.to_string(), t.status, t.amount),
            Err(e) => Charged::Unknown(reference.to_string(), e),
        }
    }

    /// A renewal charge failed: grace, or the downgrade once grace is over.
    async fn failed(
        &self,
        sub: &Subscription,
        reference: &str,
        now: DateTime<Utc>,
        total: &mut Renewed,
    ) -> Result<Queued, BillingError> {
        match after_failed_charge(sub, now, self.settings.grace_days) {
            AfterFailure::Downgrade => {
                total.downgraded += 1;
                let failure = Some(reference).filter(|r| !r.is_empty());
                self.end(sub.organisation_id, "downgraded", failure, now)
                    .await
            }
            AfterFailure::Grace(until) => {
                total.failed += 1;
                let mut client = self.db.get().await?;
                let tx = client.transaction().await?;
                let mut s = sub.clone();
                s.state = SubState::Grace;
                s.grace_until = Some(until);
                store::save_subscription(&tx, &s).await?;
                store::record_event(
                    &tx,
                    s.organisation_id,
                    "renewal_failed",
                    (!reference.is_empty()).then_some(reference),
                    Some(s.plan),
                    Some(s.amount),
                )
                .await?;
                let email = mail::billing_renewal_failed(
                    &s.email,
                    s.plan.as_str(),
                    s.amount,
                    until,
                    &self.billing_url,
                );
                let queued = vec![outbox::enqueue(&tx, &email).await?];
                tx.commit().await?;
                tracing::info!(organisation_id = %s.organisation_id, grace_until = %until, "renewal failed; in grace");
                Ok(queued)
            }
        }
    }

    /// Ends the subscription: hobby tier, its limits enforced, an event and an email. A
    /// downgrade after a failed charge records that failure first, like every other.
    async fn end(
        &self,
        org: Uuid,
        kind: &'static str,
        failed_reference: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Queued, BillingError> {
        let mut client = self.db.get().await?;
        let tx = client.transaction().await?;
        let Some(mut s) = store::subscription_of(&tx, org, true).await? else {
            return Ok(Vec::new());
        };
        if s.state == SubState::Ended {
            return Ok(Vec::new());
        }
        s.state = SubState::Ended;
        s.grace_until = None;
        store::save_subscription(&tx, &s).await?;
        store::set_tier(&tx, org, "hobby").await?;
        let max_monitors = match self.hobby.monitors {
            Limit::Max(n) => Some(n),
            Limit::Unlimited => None,
        };
        let enforced =
            store::enforce_limits(&tx, org, max_monitors, self.hobby.min_monitor_interval_secs)
                .await?;
        if kind == "downgraded" {
            store::record_event(
                &tx,
                org,
                "renewal_failed",
                failed_reference,
                Some(s.plan),
                Some(s.amount),
            )
            .await?;
        }
        store::record_event(&tx, org, kind, None, Some(s.plan), None).await?;
        let email = mail::billing_ended(
            &s.email,
            s.plan.as_str(),
            kind == "downgraded",
            enforced.paused.len(),
            &self.billing_url,
        );
        let queued = vec![outbox::enqueue(&tx, &email).await?];
        keys::announce(&tx, Scope::Organisation(org)).await?;
        tx.commit().await?;
        self.keys.forget(Scope::Organisation(org));
        tracing::info!(organisation_id = %org, reason = kind, paused_monitors = enforced.paused.len(), slowed_monitors = enforced.slowed.len(), at = %now, "subscription ended; back on hobby");
        Ok(queued)
    }
}

/// A saved card from a webhook, its token already sealed.
struct SavedCard {
    token: Vec<u8>,
    last4: Option<String>,
    brand: Option<String>,
}

/// What a renewal charge came to.
enum Charged {
    /// Squad's answer: the status and amount of the reference.
    Known(String, TxStatus, u64),
    /// No saved card.
    NoCard,
    /// A saved card sealed under another key.
    Unreadable,
    /// No answer: Squad may or may not have charged.
    Unknown(String, SquadError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn at(month: u32, day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, month, day, 0, 0, 0)
            .single()
            .unwrap()
    }

    fn sub(state: SubState, end: DateTime<Utc>) -> Subscription {
        Subscription {
            organisation_id: Uuid::nil(),
            plan: Plan::Pro,
            state,
            amount: 500_000,
            period_start: add_month(end) - chrono::Duration::days(62),
            period_end: end,
            cancel_at_period_end: false,
            grace_until: None,
            card_token: None,
            card_last4: None,
            card_brand: None,
            email: "a@example.com".into(),
            updated_at: end,
        }
    }

    #[test]
    fn a_first_payment_starts_a_month_and_a_second_extends_it() {
        let now = at(3, 10);
        assert_eq!(after_payment(None, Plan::Pro, now), (now, at(4, 10)));
        let s = sub(SubState::Active, at(4, 1));
        assert_eq!(after_payment(Some(&s), Plan::Pro, now).1, at(5, 1));
        assert_eq!(
            after_payment(Some(&s), Plan::Team, now),
            (now, at(4, 10)),
            "another plan starts afresh"
        );
        let ended = sub(SubState::Ended, at(4, 1));
        assert_eq!(after_payment(Some(&ended), Plan::Pro, now).0, now);
        assert_eq!(add_month(at(1, 31)), at(2, 28), "the month's last day");
    }

    #[test]
    fn renewals_are_due_at_the_period_end_and_cancelled_ones_end() {
        let s = sub(SubState::Active, at(4, 1));
        assert_eq!(due(&s, at(3, 31)), Due::NotDue);
        assert_eq!(due(&s, at(4, 1)), Due::Charge);
        let mut c = s.clone();
        c.cancel_at_period_end = true;
        assert_eq!(due(&c, at(3, 31)), Due::NotDue, "paid up to the end");
        assert_eq!(due(&c, at(4, 1)), Due::End);
        assert_eq!(due(&sub(SubState::Ended, at(1, 1)), at(4, 1)), Due::NotDue);
        assert_eq!(due(&sub(SubState::Grace, at(4, 1)), at(4, 2)), Due::Charge);
    }

    #[test]
    fn a_failure_starts_grace_and_one_after_it_downgrades() {
        let active = sub(SubState::Active, at(4, 1));
        let AfterFailure::Grace(until) = after_failed_charge(&active, at(4, 1), 3) else {
            panic!("grace expected");
        };
        assert_eq!(until, at(4, 4));
        let mut grace = active.clone();
        grace.state = SubState::Grace;
        grace.grace_until = Some(until);
        assert_eq!(
            after_failed_charge(&grace, at(4, 2), 3),
            AfterFailure::Grace(until),
            "grace does not move with each retry"
        );
        assert_eq!(
            after_failed_charge(&grace, at(4, 4), 3),
            AfterFailure::Downgrade
        );
        assert_eq!(
            after_failed_charge(&active, at(4, 1), 0),
            AfterFailure::Downgrade
        );
    }

    #[test]
    fn card_tokens_are_sealed_and_only_their_key_opens_them() {
        let key = CardKey::derive(&SecretString::from("a".repeat(40)));
        let sealed = key.seal(&SecretString::from("tok_123"));
        assert!(!sealed.windows(7).any(|w| w == b"tok_123"), "not in clear");
        assert_eq!(
            key.open(&sealed).map(|t| t.expose_secret().to_string()),
            Some("tok_123".into())
        );
        assert_ne!(
            sealed,
            key.seal(&SecretString::from("tok_123")),
            "a nonce each time"
        );
        let other = CardKey::derive(&SecretString::from("b".repeat(40)));
        assert!(other.open(&sealed).is_none());
        assert!(key.open(b"short").is_none());
    }

    #[test]
    fn renewal_references_are_stable_per_period_and_attempt() {
        let org = Uuid::from_u128(7);
        let r = renewal_reference(org, at(4, 1), 1);
        assert_eq!(r, renewal_reference(org, at(4, 1), 1));
        assert_ne!(r, renewal_reference(org, at(4, 1), 2));
        assert_ne!(r, renewal_reference(org, at(5, 1), 1));
        assert!(r.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    }

    proptest! {
        /// However the runs fall, a subscription is charged only when due, and after the
        /// grace days a failure always downgrades.
        #[test]
        fn runs_never_downgrade_inside_grace_and_always_after(days in prop::collection::vec(0i64..6, 1..10), grace in 1u32..5) {
            let mut s = sub(SubState::Active, at(4, 1));
            let mut now = at(4, 1);
            let mut first_failure = None;
            for d in days {
                now += chrono::Duration::days(d);
                if due(&s, now) != Due::Charge {
                    continue;
                }
                let failed_at = *first_failure.get_or_insert(now);
                match after_failed_charge(&s, now, grace) {
                    AfterFailure::Grace(until) => {
                        prop_assert!(now < failed_at + chrono::Duration::days(i64::from(grace)) || s.state == SubState::Active);
                        s.state = SubState::Grace;
                        s.grace_until = Some(until);
                    }
                    AfterFailure::Downgrade => {
                        prop_assert!(now >= failed_at + chrono::Duration::days(i64::from(grace)));
                        s.state = SubState::Ended;
                    }
                }
            }
        }
    }
}
