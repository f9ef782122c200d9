//! The schema migration runner.
//!
//! Migrations are the plain SQL files in `migrations/`, named `NNNN_what.sql` and embedded into
//! the binary at build time. Each runs in its own transaction and is recorded in
//! `schema_migrations` with a SHA-256 of its text. A recorded migration whose file has since
//! changed, or one the database has but this binary does not, stops the start: silently running
//! on a schema that differs from the code is worse than not starting.
//!
//! Instances starting together serialise on a session advisory lock held on the runner's own
//! (unpooled) connection, so exactly one applies each migration and the others then see it done.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/migrations.rs"));
}

/// Advisory lock key: "observe\0" as a number, so it does not collide with a customer's locks.
pub const LOCK_KEY: i64 = 0x6f62_7365_7276_6500;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: i64,
    pub name: String,
    pub sql: String,
    pub checksum: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration file name {0:?} does not start with a version number (expected e.g. 0002_add_users.sql)")]
    BadName(String),
    #[error("two migrations share version {0}")]
    DuplicateVersion(i64),
    #[error("migration {version} ({name}) was changed after it was applied (checksum {applied} in the database, {current} now); restore the original file and add a new migration for the change")]
    Modified {
        version: i64,
        name: String,
        applied: String,
        current: String,
    },
    #[error("the database has migration {version} ({name}), which this build does not know; run a build at least as new as the one that applied it")]
    Unknown { version: i64, name: String },
    #[error("migration {version} ({name}) failed: {source}")]
    Failed {
        version: i64,
        name: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("database error while migrating: {0}")]
    Db(#[from] tokio_postgres::Error),
}

impl Migration {
    pub fn new(file_name: &str, sql: &str) -> Result<Self, MigrateError> {
        let stem = file_name.strip_suffix(".sql").unwrap_or(file_name);
        let (number, _) = stem.split_once('_').unwrap_or((stem, ""));
        let version = number
            .parse::<i64>()
            .map_err(|_| MigrateError::BadName(file_name.to_string()))?;
        Ok(Self {
            version,
            name: stem.to_string(),
            sql: sql.to_string(),
            checksum: checksum(sql),
        })
    }
}

/// SHA-256 of a migration's text, in hex.
pub fn checksum(sql: &str) -> String {
    let digest = Sha256::digest(sql.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The migrations compiled into this binary, in version order.
pub fn embedded() -> Result<Vec<Migration>, MigrateError> {
    let mut migrations = embedded::EMBEDDED
        .iter()
        .map(|(name, sql)| Migration::new(name, sql))
        .collect::<Result<Vec<_>, _>>()?;
    migrations.sort_by_key(|m| m.version);
    for pair in migrations.windows(2) {
        if pair[0].version == pair[1].version {
            return Err(MigrateError::DuplicateVersion(pair[0].version));
        }
    }
    Ok(migrations)
}

/// Applies every pending migration; returns the names of those applied by this call.
pub async fn run(
    client: &mut Client,
    migrations: &[Migration],
) -> Result<Vec<String>, MigrateError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = apply_pending(client, migrations).await;
    // Unlock even on failure; closing the connection would also release it.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    let applied = result?;
    unlocked?;
    Ok(applied)
}

async fn apply_pending(
    client: &mut Client,
    migrations: &[Migration],
) -> Result<Vec<String>, MigrateError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    bigint      PRIMARY KEY,
                name       text        NOT NULL,
                checksum   text        NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
    let rows = client
        .query(
            "SELECT version, name, checksum FROM schema_migrations ORDER BY version",
            &[],
        )
        .await?;
    let mut done = std::collections::HashSet::new();
    for row in rows {
        let version: i64 = row.get(0);
        let name: String = row.get(1);
        let applied: String = row.get(2);
        match migrations.iter().find(|m| m.version == version) {
            None => return Err(MigrateError::Unknown { version, name }),
            Some(m) if m.checksum != applied => {
                return Err(MigrateError::Modified {
                    version,
                    name,
                    applied,
                    current: m.checksum.clone(),
                })
            }
            Some(_) => {
                done.insert(version);
            }
        }
    }

    let mut applied_now = Vec::new();
    for m in migrations.iter().filter(|m| !done.contains(&m.version)) {
        let failed = |source| MigrateError::Failed {
            version: m.version,
            name: m.name.clone(),
            source,
        };
        let tx = client.transaction().await?;
        tx.batch_execute(&m.sql).await.map_err(failed)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &m.checksum],
        )
        .await?;
        tx.commit().await.map_err(failed)?;
        tracing::info!(version = m.version, name = %m.name, "migration applied");
        applied_now.push(m.name.clone());
    }
    Ok(applied_now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_give_versions() {
        let m = Migration::new("0007_add_things.sql", "SELECT 1").unwrap();
        assert_eq!(m.version, 7);
        assert_eq!(m.name, "0007_add_things");
        assert_eq!(m.checksum.len(), 64);
        assert!(matches!(
            Migration::new("add_things.sql", ""),
            Err(MigrateError::BadName(_))
        ));
    }

    #[test]
    fn embedded_migrations_are_ordered_and_unique() {
        let all = embedded().unwrap();
        assert!(!all.is_empty());
        assert!(all.windows(2).all(|w| w[0].version < w[1].version));
    }

    #[test]
    fn checksum_changes_with_text() {
        assert_ne!(checksum("SELECT 1"), checksum("SELECT 2"));
        assert_eq!(checksum("x"), checksum("x"));
    }
}
