//! Building and running the server: migrations, pools, actors, HTTP, and a shutdown that
//! drains.
//!
//! [`Application::build`] does everything up to a bound listener (so tests can bind port 0 and
//! read the port); [`Application::run_until_stopped`] serves until SIGTERM/SIGINT (or a stop
//! through [`Application::handle`]), then stops taking connections, lets in-flight requests
//! finish, sends `Drain` to every buffering actor and waits for them, all within
//! `server.shutdown_timeout_secs`.

use std::net::TcpListener;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix_web::dev::{Server, ServerHandle};
use actix_web::http::Method;
use actix_web::{middleware::from_fn, web, App, HttpResponse, HttpServer};
use observe_actors::{Backoff, Supervisor};
use observe_core::config::Settings;
use observe_core::db::{self, DbError};
use observe_core::metrics::Metrics;
use utoipa::OpenApi;
use utoipa_actix_web::service_config::ServiceConfig as DocConfig;
use utoipa_actix_web::AppExt;
use utoipa_scalar::{Scalar, Servable};

use crate::error::extractor_configs;
use crate::middleware::request_context;
use crate::openapi::{fallback, ApiDoc, RouteTable};
use crate::routes;
use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] observe_core::metrics::PrometheusError),
    #[error("cannot set up password hashing: {0}")]
    Auth(#[from] observe_core::auth::AuthError),
    #[error("invalid REDIS_URL: {0}")]
    Redis(#[from] observe_core::redis::RedisError),
    /// Settings are validated before start; this is a schedule that still could not be used.
    #[error("invalid job schedule: {0}")]
    Schedule(#[from] observe_core::jobs::ScheduleError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("PostgreSQL was not reachable within {secs} s at start ({last}); check DATABASE_URL and that the server runs (`make services`)")]
    DatabaseNotReachable { secs: u64, last: String },
}

/// Extra routes a caller adds next to the API (tests add probes that fail on purpose).
pub type ExtraRoutes = Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>;

pub struct Application {
    port: u16,
    server: Server,
    state: AppState,
    shutdown_timeout: Duration,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        Self::build_with(settings, None).await
    }

    pub async fn build_with(
        settings: Settings,
        extra_routes: Option<ExtraRoutes>,
    ) -> Result<Self, StartupError> {
        // Bound first: the address links and emails point at (`server.public_url`, when not
        // set) is known only once the port is (tests bind port 0).
        let bind = settings.server.bind.clone();
        let listener = TcpListener::bind(&bind).map_err(|source| StartupError::Bind {
            addr: bind.clone(),
            source,
        })?;
        let local = listener
            .local_addr()
            .map_err(|source| StartupError::Bind { addr: bind, source })?;
        let port = local.port();
        let mut settings = settings;
        if settings.server.public_url.trim().is_empty() {
            let host = if local.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                local.ip().to_string()
            };
            settings.server.public_url = if local.is_ipv6() && !local.ip().is_unspecified() {
                format!("http://[{host}]:{port}")
            } else {
                format!("http://{host}:{port}")
            };
        }
        migrate_with_retry(&settings).await?;
        let metrics = Metrics::new()?;
        let keys = observe_core::keys::KeyCache::new(&settings.api_keys, metrics.clone());
        let sessions = observe_core::sessions::SessionCache::new(&settings.auth);
        let supervisor = Supervisor::new(metrics.clone(), Backoff::default());
        let settings = Arc::new(settings);
        // Actors run on this (the main) arbiter; HTTP workers reach them through AppState.
        let pool = db::pool(&settings.database)?.with_metrics(&metrics);
        let mailer = observe_actors::mailer::start(
            &supervisor,
            &actix::Arbiter::current(),
            settings.clone(),
            pool.clone(),
        );
        let redis = observe_core::redis::pool(&settings.redis)?;
        let limiter = observe_core::gcra::Limiter::new(
            redis.clone(),
            settings.redis.key_prefix.clone(),
            metrics.clone(),
        );
        let ingest = observe_actors::ingest::IngestRegistry::new(
            supervisor.clone(),
            actix::Arbiter::current(),
            Arc::new(settings.ingest.clone()),
            pool.clone(),
            metrics.clone(),
        );
        observe_actors::partitions::start(
            &supervisor,
            &actix::Arbiter::current(),
            pool.clone(),
            settings.ingest.partitions_ahead_days,
            Duration::from_millis(settings.maintenance.partition_lock_timeout_ms),
        );
        let tiers = observe_core::tiers::TierPolicy::new(settings.tiers.clone());
        // The monitor engine: CheckWriter and ShardManager here (drained at shutdown), the
        // MonitorActors on arbiters of their own.
        let monitors = observe_actors::monitor::start(
            &supervisor,
            &actix::Arbiter::current(),
            &settings,
            pool.clone(),
            metrics.clone(),
            tiers.clone(),
            mailer.clone(),
        );
        let billing =
            observe_core::billing::Billing::from_settings(pool.clone(), &settings, keys.clone());
        let billing_actor = observe_actors::billing::start(
            &supervisor,
            &actix::Arbiter::current(),
            billing.clone(),
            &settings,
            pool.clone(),
            metrics.clone(),
            mailer.clone(),
        )?;
        let auth_limits = observe_core::ratelimit::AuthLimits::new(limiter.clone(), &settings);
        let state = AppState {
            auth_limits,
            sessions,
            limiter,
            ingest,
            monitors,
            mailer,
            billing,
            billing_actor,
            keys,
            passwords: observe_core::auth::Passwords::new(&settings.auth)?,
            tokens: observe_core::auth::AccessTokens::new(&settings.auth),
            tiers,
            db: pool,
            redis,
            supervisor,
            metrics,
            settings,
        };
        observe_actors::keys::start(
            &state.supervisor,
            &actix::Arbiter::current(),
            state.settings.clone(),
            state.db.clone(),
            state.keys.clone(),
            state.sessions.clone(),
        );
        // Purges deleted projects' raw rows in the background and stops their actors here.
        observe_actors::purge::start(
            &state.supervisor,
            &actix::Arbiter::current(),
            state.settings.clone(),
            state.db.clone(),
            state.metrics.clone(),
            state.ingest.clone(),
            state.monitors.clone(),
        );
        // The Aggregator: raw rows → hourly rollups, on its cron ticks (once per cluster).
        if state.settings.jobs.enabled {
            observe_actors::aggregator::start(
                &state.supervisor,
                &actix::Arbiter::current(),
                &state.settings,
                state.db.clone(),
                state.metrics.clone(),
            )?;
            // Retention: daily, once per cluster.
            observe_actors::retention::start(
                &state.supervisor,
                &actix::Arbiter::current(),
                &state.settings,
                state.tiers.clone(),
                state.db.clone(),
                state.metrics.clone(),
            )?;
        }
        let shutdown_timeout = Duration::from_secs(state.settings.server.shutdown_timeout_secs);

        let app_state = state.clone();
        let mut server = HttpServer::new(move || {
            let (json, query, path, payload) =
                extractor_configs(app_state.settings.server.body_limit_bytes);
            let extra = extra_routes.clone();
            let (app, doc) = App::new()
                .wrap(from_fn(request_context))
                .app_data(web::Data::new(app_state.clone()))
                // One outgoing HTTP client per worker (awc clients are not Send).
                .app_data(web::Data::new(observe_core::mail::http_client()))
                .app_data(json)
                .app_data(query)
                .app_data(path)
                .app_data(payload)
                .into_utoipa_app()
                .openapi(ApiDoc::openapi())
                .configure(|cfg: &mut DocConfig| routes::register(cfg))
                .split_for_parts();
            let table = web::Data::new(
                RouteTable::from_doc(&doc)
                    .with("/openapi.json", Method::GET)
                    .with("/docs", Method::GET)
                    .with("/", Method::GET)
                    .with("/assets/{name}", Method::GET),
            );
            let doc_json = web::Data::new(doc.clone());
            app.app_data(table)
                .app_data(doc_json)
                .route("/openapi.json", web::get().to(openapi_json))
                // The dashboard: the app's shell and files (not API routes: not in the doc).
                .route("/", web::get().to(routes::dashboard::index))
                .route("/assets/{name}", web::get().to(routes::dashboard::asset))
                .service(Scalar::with_url("/docs", doc).custom_html(routes::dashboard::DOCS_HTML))
                .configure(|cfg| {
                    if let Some(extra) = &extra {
                        extra(cfg);
                    }
                })
                .default_service(web::to(fallback))
        })
        // A streamed answer (exports) is written in pieces; with Nagle's algorithm on, a piece
        // waits for the client's delayed ACK of the one before (40 ms on Linux) on a kept-alive
        // connection, measured as a flat 44 ms for every CSV export by make bench-queries.
        .tcp_nodelay(true)
        .listen(listener)
        .map_err(|source| StartupError::Bind {
            addr: "listener".into(),
            source,
        })?
        .shutdown_timeout(shutdown_timeout.as_secs())
        .disable_signals();
        if state.settings.server.workers > 0 {
            server = server.workers(state.settings.server.workers);
        }
        Ok(Self {
            port,
            server: server.run(),
            state,
            shutdown_timeout,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops the server as a signal would (graceful).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until a stop signal, then drains. Returns once everything is written out or the
    /// shutdown timeout ran out.
    pub async fn run_until_stopped(self, listen_to_signals: bool) -> std::io::Result<()> {
        let handle = self.server.handle();
        // When the stop began, so the drain gets what is left of one shutdown budget.
        let stop_began = Arc::new(OnceLock::<Instant>::new());
        if listen_to_signals {
            let stop_began = stop_began.clone();
            actix_web::rt::spawn(async move {
                let signal = wait_for_signal().await;
                let _ = stop_began.set(Instant::now());
                tracing::info!(
                    signal,
                    "shutdown requested: no new connections, finishing requests"
                );
                actix_web::rt::spawn(async move { handle.stop(true).await });
                // A second signal means the operator will not wait.
                let again = wait_for_signal().await;
                tracing::warn!(signal = again, "second signal: exiting without draining");
                std::process::exit(130);
            });
        }
        tracing::info!(port = self.port, "observe listening");
        let served = self.server.await;
        let started = Instant::now();
        let spent = stop_began.get().map(Instant::elapsed).unwrap_or_default();
        let budget = self
            .shutdown_timeout
            .saturating_sub(spent)
            .max(Duration::from_secs(1));
        let drained = self.state.supervisor.drain_all(budget).await;
        tracing::info!(
            drained,
            drain_ms = started.elapsed().as_millis() as u64,
            "shutdown complete"
        );
        served
    }
}

async fn openapi_json(doc: web::Data<utoipa::openapi::OpenApi>) -> HttpResponse {
    HttpResponse::Ok().json(doc.get_ref())
}

/// Applies migrations, retrying while PostgreSQL is unreachable (it may still be starting),
/// for at most `server.startup_timeout_secs`. Other migration errors fail at once.
async fn migrate_with_retry(settings: &Settings) -> Result<(), StartupError> {
    let secs = settings.server.startup_timeout_secs;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut delay = Duration::from_millis(250);
    loop {
        // Bounded as a whole: a lock held by a stuck instance, or a server that vanishes
        // mid-run, must not hang the start past its timeout.
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = tokio::time::timeout(left, db::migrate(&settings.database)).await;
        let error = match attempt {
            Ok(Ok(applied)) => {
                tracing::info!(applied = applied.len(), "schema up to date");
                return Ok(());
            }
            Ok(Err(DbError::Unavailable(e))) => e,
            Ok(Err(other)) => return Err(other.into()),
            Err(_) => "migrations did not finish in time (is another instance holding the migration lock?)".to_string(),
        };
        if Instant::now() + delay >= deadline {
            return Err(StartupError::DatabaseNotReachable { secs, last: error });
        }
        tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "PostgreSQL not ready for migrations yet");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Waits for SIGTERM or SIGINT and names it.
async fn wait_for_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
