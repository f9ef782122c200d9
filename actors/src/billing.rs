//! The Billing actor (SPEC §3): Squad's webhooks, and the daily renewals (SPEC §8: 00:00 UTC).
//!
//! **Owns:** this instance's handling of webhooks. A [`Webhook`] message is checked, confirmed
//! with Squad and applied by [`Billing::webhook`]; one at a time per instance (the payment row's
//! lock orders them across instances), so a burst of retried webhooks never piles up calls to
//! Squad. Receipts are handed to the Mailer once their outbox rows are committed.
//!
//! **Renewals** run as the `renewals` job of a [`JobRunner`](crate::jobs::JobRunner): the tick is
//! claimed once per cluster, a tick missed while observe was down is caught up at start, and
//! [`Billing::renew_due`] is state-driven (every subscription whose period ended), so a failed
//! run's work is done by the next one. Its idempotency (never two charges) is in
//! `observe_core::billing`.
//!
//! **Mailbox:** 64; a full one answers the webhook 503, and Squad sends it again.
//! **Restart:** a panic restarts it; a webhook in flight is lost with it and Squad resends it.

use std::sync::Arc;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use futures_util::future::LocalBoxFuture;
use observe_core::billing::{Billing, BillingError, WebhookOutcome};
use observe_core::config::Settings;
use observe_core::db::PgPool;
use observe_core::jobs::{Ran, Schedule, ScheduleError};
use observe_core::mail::{self, HttpClient};
use observe_core::metrics::Metrics;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::jobs::{self, Job, JobError};
use crate::mailer::{deliver_soon, Mailer};
use crate::supervisor::{Lifeline, Supervised, SupervisedActor, Supervisor};

/// A webhook's raw body and its signature header, as received, and where to answer. Send it
/// with `try_send`: a full mailbox is the route's 503.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Webhook {
    pub body: Vec<u8>,
    pub signature: Option<String>,
    pub reply: oneshot::Sender<Result<WebhookOutcome, BillingError>>,
}

pub struct BillingActor {
    _lifeline: Lifeline,
    billing: Billing,
    mailer: Supervised<Mailer>,
    http: HttpClient,
}

impl SupervisedActor for BillingActor {
    const KIND: &'static str = "Billing";
    const MAILBOX: usize = 64;
}

impl Actor for BillingActor {
    type Context = Context<Self>;
}

impl Handler<Webhook> for BillingActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: Webhook, _: &mut Context<Self>) -> Self::Result {
        let (billing, http) = (self.billing.clone(), self.http.clone());
        let Webhook {
            body,
            signature,
            reply,
        } = msg;
        let work = async move { billing.webhook(&http, &body, signature.as_deref()).await };
        AtomicResponse::new(Box::pin(actix::fut::wrap_future::<_, Self>(work).map(
            move |result, act, _| {
                let answer = result.map(|(outcome, queued)| {
                    hand_to_mailer(&act.mailer, &queued);
                    outcome
                });
                // The route may have given up waiting; the work is done either way.
                let _ = reply.send(answer);
            },
        )))
    }
}

fn hand_to_mailer(mailer: &Supervised<Mailer>, queued: &[Uuid]) {
    for id in queued {
        deliver_soon(mailer, *id);
    }
}

/// The renewals job.
pub struct Renewals {
    billing: Billing,
    mailer: Supervised<Mailer>,
}

impl Job for Renewals {
    fn name(&self) -> &'static str {
        "renewals"
    }

    fn run(&self, _tick: DateTime<Utc>) -> LocalBoxFuture<'static, Result<Ran, JobError>> {
        let (billing, mailer) = (self.billing.clone(), self.mailer.clone());
        Box::pin(async move {
            // The runner's thread is an actix one: awc's client is built here.
            let http = mail::http_client();
            let (renewed, queued) = billing.renew_due(&http, Utc::now()).await?;
            hand_to_mailer(&mailer, &queued);
            tracing::info!(
                job = "renewals",
                charged = renewed.charged,
                failed = renewed.failed,
                downgraded = renewed.downgraded,
                ended = renewed.ended,
                "renewals done"
            );
            Ok(Ran {
                rows: renewed.charged + renewed.failed + renewed.downgraded + renewed.ended,
            })
        })
    }
}

/// Starts the Billing actor and, when this instance runs jobs, the renewals job. `None` when
/// billing is not configured.
pub fn start(
    supervisor: &Supervisor,
    arbiter: &ArbiterHandle,
    settings: &Settings,
    pool: PgPool,
    metrics: Metrics,
    mailer: Supervised<Mailer>,
) -> Result<Option<Supervised<BillingActor>>, ScheduleError> {
    let Some(billing) = Billing::from_settings(pool.clone(), settings) else {
        return Ok(None);
    };
    let schedule = Schedule::parse(&settings.jobs.renewals)?;
    let actor = {
        let (billing, mailer) = (billing.clone(), mailer.clone());
        supervisor.spawn("billing", arbiter, move |lifeline| BillingActor {
            _lifeline: lifeline,
            billing: billing.clone(),
            mailer: mailer.clone(),
            // Runs on `arbiter`: the awc client (`!Send`) is built there.
            http: mail::http_client(),
        })
    };
    if settings.jobs.enabled {
        jobs::start(
            supervisor,
            arbiter,
            Arc::new(Renewals { billing, mailer }),
            schedule,
            pool,
            Arc::new(settings.jobs.clone()),
            metrics,
        );
    }
    Ok(Some(actor))
}
