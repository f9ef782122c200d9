//! The PostgreSQL connection pool and its health check.
//!
//! The pool is lazy: building it opens no connection, so observe starts (and answers
//! `/health/live`) while PostgreSQL is down, and picks connections up again once it is back.

use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use secrecy::ExposeSecret;
use tokio_postgres::NoTls;

use crate::config::DatabaseSettings;
use crate::migrate::{self, MigrateError};

/// A connection taken from the pool (back to it when dropped).
pub use deadpool_postgres::Client as PgClient;
pub use deadpool_postgres::PoolError;

/// The pool: deadpool's, with the time each checkout waited and the checkouts that timed out
/// counted in `/metrics` once [`PgPool::with_metrics`] gave it somewhere to count them.
#[derive(Clone)]
pub struct PgPool {
    inner: Pool,
    metrics: Option<PoolMetrics>,
}

/// Where a pool's checkouts are counted.
#[derive(Clone)]
struct PoolMetrics {
    wait: prometheus::Histogram,
    timeouts: prometheus::IntCounter,
}

impl PgPool {
    /// Counts this pool's checkouts into `metrics` (`observe_db_pool_wait_seconds`,
    /// `observe_db_pool_timeouts_total`).
    pub fn with_metrics(self, metrics: &crate::metrics::Metrics) -> Self {
        Self {
            metrics: Some(PoolMetrics {
                wait: metrics.db_pool_wait.clone(),
                timeouts: metrics.db_pool_timeouts.clone(),
            }),
            ..self
        }
    }

    /// A connection, waiting at most the pool's `acquire_timeout_secs` for one.
    pub async fn get(&self) -> Result<PgClient, PoolError> {
        let began = Instant::now();
        let client = self.inner.get().await;
        if let Some(m) = &self.metrics {
            m.wait.observe(began.elapsed().as_secs_f64());
            if matches!(client, Err(PoolError::Timeout(_))) {
                m.timeouts.inc();
            }
        }
        client
    }

    pub fn status(&self) -> deadpool_postgres::Status {
        self.inner.status()
    }
}
pub use tokio_postgres::Error as PgError;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid DATABASE_URL: {0}")]
    Config(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
}

fn pg_config(settings: &DatabaseSettings) -> Result<tokio_postgres::Config, DbError> {
    let mut config: tokio_postgres::Config = settings
        .url
        .expose_secret()
        .parse()
        .map_err(|e: tokio_postgres::Error| DbError::Config(e.to_string()))?;
    config.connect_timeout(Duration::from_secs(settings.connect_timeout_secs));
    if config.get_application_name().is_none() {
        config.application_name("observe");
    }
    // Server-side bounds, sent as startup options so every connection has them from its
    // first statement. Options already in the URL come first; ours are appended.
    let bounds = format!(
        "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
        settings.statement_timeout_ms, settings.idle_in_transaction_timeout_ms
    );
    let options = match config.get_options() {
        Some(given) if !given.trim().is_empty() => format!("{given} {bounds}"),
        _ => bounds,
    };
    config.options(options);
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(settings.keepalive_idle_secs.max(1)))
        .keepalives_interval(Duration::from_secs(settings.keepalive_interval_secs.max(1)))
        .keepalives_retries(settings.keepalive_retries.max(1));
    if settings.tcp_user_timeout_secs > 0 {
        config.tcp_user_timeout(Duration::from_secs(settings.tcp_user_timeout_secs));
    }
    Ok(config)
}

/// Builds the pool without connecting.
pub fn pool(settings: &DatabaseSettings) -> Result<PgPool, DbError> {
    let manager = Manager::from_config(
        pg_config(settings)?,
        NoTls,
        ManagerConfig {
            // Fast recycling still drops connections whose socket closed (`is_closed`).
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let wait = Duration::from_secs(settings.acquire_timeout_secs);
    let create = Duration::from_secs(settings.connect_timeout_secs);
    Pool::builder(manager)
        .max_size(settings.pool_max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(wait))
        .create_timeout(Some(create))
        .recycle_timeout(Some(create))
        .build()
        .map(|inner| PgPool {
            inner,
            metrics: None,
        })
        .map_err(|e| DbError::Config(e.to_string()))
}

/// One round trip through the pool.
pub async fn ping(pool: &PgPool) -> Result<(), DbError> {
    let client = pool
        .get()
        .await
        .map_err(|e| DbError::Unavailable(e.to_string()))?;
    client
        .simple_query("SELECT 1")
        .await
        .map_err(|e| DbError::Unavailable(e.to_string()))?;
    Ok(())
}

/// A connection of its own, outside the pool (for session state: advisory locks, LISTEN). The
/// caller drives the returned connection.
pub async fn connect_dedicated(
    settings: &DatabaseSettings,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    ),
    DbError,
> {
    pg_config(settings)?
        .connect(NoTls)
        .await
        .map_err(|e| DbError::Unavailable(e.to_string()))
}

/// Applies pending migrations over a dedicated connection (the advisory lock must live on one
/// session, which a pooled connection does not guarantee).
pub async fn migrate(settings: &DatabaseSettings) -> Result<Vec<String>, DbError> {
    let (mut client, connection) = connect_dedicated(settings).await?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "migration connection closed with an error");
        }
    });
    let migrations = migrate::embedded()?;
    // A migration may rightly take longer than any request statement: lift the bound for
    // this session only (the advisory lock wait is bounded by `startup_timeout_secs`).
    let result = match client.batch_execute("SET statement_timeout = 0").await {
        Ok(()) => migrate::run(&mut client, &migrations).await,
        Err(e) => Err(MigrateError::from(e)),
    };
    drop(client);
    let _ = driver.await;
    Ok(result?)
}

/// Figures of the pool for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolFigures {
    /// Connections open.
    pub size: i64,
    /// Connections open and idle.
    pub available: i64,
    pub max: i64,
    /// Requests waiting for a connection now.
    pub waiting: i64,
}

pub fn pool_status(pool: &PgPool) -> PoolFigures {
    let s = pool.status();
    PoolFigures {
        size: s.size as i64,
        available: s.available as i64,
        max: s.max_size as i64,
        waiting: s.waiting as i64,
    }
}

/// The span of a named PostgreSQL statement (or a store function's few statements), for
/// traces: its name, never its parameters. At `debug`, so not built when traces are off.
pub fn statement(name: &'static str) -> tracing::Span {
    tracing::debug_span!(
        "db",
        otel.name = name,
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = name,
    )
}
