//! The schema migrator: applies `migrations/NNN_name.sql` in numeric order and records each in
//! `schema_migrations (version, name, checksum, applied_at)`.
//!
//! Guarantees:
//! - **One at a time.** The whole run holds a session-level `pg_advisory_lock`, so two
//!   gateways starting together are safe: the second waits, then finds nothing to do.
//! - **All or nothing per file.** Each file runs in its own transaction together with its
//!   `schema_migrations` row; a failing file leaves no trace and stops the run. (Statements
//!   that cannot run in a transaction, like `CREATE INDEX CONCURRENTLY`, are therefore not
//!   supported in migration files.)
//! - **History is immutable.** Before applying anything the migrator compares every recorded
//!   migration with the files: a changed checksum (SHA-256 of the file bytes), a missing file, or
//!   a new file numbered below the latest applied one stops the gateway with an error naming the
//!   file. Fix it by restoring the file and adding a new migration.
//! - **Idempotent.** Running again with no new files changes nothing.
//!
//! Migrations are applied by `db-gateway migrate`, and by `db-gateway serve` before it listens.

use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};
use tokio_postgres::{Client, NoTls};

/// Key of the advisory lock serialising migrators ("callmeb" in ASCII; any fixed value works
/// as long as nothing else in the database uses it).
pub const ADVISORY_LOCK_KEY: i64 = 0x0063_616c_6c6d_6562;

const CREATE_HISTORY_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version    BIGINT PRIMARY KEY,
    name       TEXT NOT NULL,
    checksum   TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)";

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot read migrations directory {}: {source}", .dir.display())]
    ReadDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read migration {file}: {source}")]
    ReadFile {
        file: String,
        source: std::io::Error,
    },
    #[error("migration file name `{0}` must look like NNN_name.sql")]
    BadFileName(String),
    #[error("migrations {first} and {second} share version {version}")]
    DuplicateVersion {
        version: i64,
        first: String,
        second: String,
    },
    #[error(
        "migration {file} changed after it was applied (checksum {actual} differs from recorded {recorded}); restore it and put the change in a new migration"
    )]
    ChecksumMismatch {
        file: String,
        recorded: String,
        actual: String,
    },
    #[error("migration version {version} ({name}) is recorded as applied but its file is missing")]
    MissingFile { version: i64, name: String },
    #[error(
        "migration {file} is numbered below the latest applied version {latest}; renumber it above {latest}"
    )]
    OutOfOrder { file: String, latest: i64 },
    #[error("migration {file} failed: {reason}")]
    Apply { file: String, reason: String },
    #[error("database error while migrating: {0}")]
    Database(String),
}

impl MigrateError {
    /// A stable identifier for scripts and logs.
    pub fn code(&self) -> &'static str {
        match self {
            MigrateError::ReadDir { .. } | MigrateError::ReadFile { .. } => "migrations_unreadable",
            MigrateError::BadFileName(_) => "invalid_migration_name",
            MigrateError::DuplicateVersion { .. } => "duplicate_migration_version",
            MigrateError::ChecksumMismatch { .. } => "migration_checksum_mismatch",
            MigrateError::MissingFile { .. } => "migration_file_missing",
            MigrateError::OutOfOrder { .. } => "migration_out_of_order",
            MigrateError::Apply { .. } => "migration_failed",
            MigrateError::Database(_) => "database_error",
        }
    }
}

fn database_error(error: tokio_postgres::Error) -> MigrateError {
    MigrateError::Database(match error.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => error.to_string(),
    })
}

/// One migration file.
#[derive(Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: i64,
    /// The part after `NNN_`, without `.sql`.
    pub name: String,
    pub file_name: String,
    /// SHA-256 of the file bytes, lower-case hex.
    pub checksum: String,
    sql: String,
}

impl fmt::Debug for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migration")
            .field("version", &self.version)
            .field("file_name", &self.file_name)
            .field("checksum", &self.checksum)
            .finish_non_exhaustive()
    }
}

/// What [`Migrator::run`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MigrationReport {
    /// File names applied by this run, in order.
    pub applied: Vec<String>,
    /// How many were already applied before this run.
    pub already_applied: usize,
}

/// Where one migration stands (`db-gateway migrate --status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub version: i64,
    pub name: String,
    pub state: MigrationState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationState {
    Applied {
        applied_at: DateTime<Utc>,
    },
    Pending,
    /// Applied, but the file has changed since.
    ChecksumMismatch {
        applied_at: DateTime<Utc>,
    },
    /// Applied, but the file is gone.
    MissingFile {
        applied_at: DateTime<Utc>,
    },
}

impl MigrationState {
    /// Whether this state stops the gateway from starting.
    pub fn is_drift(&self) -> bool {
        matches!(
            self,
            MigrationState::ChecksumMismatch { .. } | MigrationState::MissingFile { .. }
        )
    }
}

/// A row of `schema_migrations`.
struct AppliedRow {
    version: i64,
    name: String,
    checksum: String,
    applied_at: DateTime<Utc>,
}

/// The migration files of one directory, sorted by version.
#[derive(Debug, Clone)]
pub struct Migrator {
    migrations: Vec<Migration>,
}

impl Migrator {
    /// Reads every `*.sql` file of `dir` (other files, e.g. a README, are ignored).
    pub fn from_dir(dir: &Path) -> Result<Self, MigrateError> {
        let read_dir_error = |source| MigrateError::ReadDir {
            dir: dir.to_path_buf(),
            source,
        };
        let mut migrations = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_dir_error)? {
            let path = entry.map_err(read_dir_error)?.path();
            let Some(file_name) = path.file_name().and_then(|name| name.to_str()) else {
                continue;
            };
            if !file_name.ends_with(".sql") || !path.is_file() {
                continue;
            }
            let file_name = file_name.to_owned();
            let (version, name) = parse_file_name(&file_name)?;
            let bytes = std::fs::read(&path).map_err(|source| MigrateError::ReadFile {
                file: file_name.clone(),
                source,
            })?;
            let sql = String::from_utf8(bytes).map_err(|_| MigrateError::ReadFile {
                file: file_name.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"),
            })?;
            migrations.push(Migration {
                version,
                name,
                checksum: hex::encode(Sha256::digest(sql.as_bytes())),
                file_name,
                sql,
            });
        }
        Self::from_migrations(migrations)
    }

    fn from_migrations(mut migrations: Vec<Migration>) -> Result<Self, MigrateError> {
        migrations.sort_by(|a, b| {
            a.version
                .cmp(&b.version)
                .then_with(|| a.file_name.cmp(&b.file_name))
        });
        for pair in migrations.windows(2) {
            if pair[0].version == pair[1].version {
                return Err(MigrateError::DuplicateVersion {
                    version: pair[0].version,
                    first: pair[0].file_name.clone(),
                    second: pair[1].file_name.clone(),
                });
            }
        }
        Ok(Self { migrations })
    }

    pub fn migrations(&self) -> &[Migration] {
        &self.migrations
    }

    /// Applies every pending migration under the advisory lock. See the module docs for what
    /// is refused.
    pub async fn run(&self, client: &mut Client) -> Result<MigrationReport, MigrateError> {
        client
            .execute("SELECT pg_advisory_lock($1)", &[&ADVISORY_LOCK_KEY])
            .await
            .map_err(database_error)?;
        let outcome = self.run_locked(client).await;
        // Unlocking can only fail if the connection is gone, which releases the lock anyway.
        let unlocked = client
            .execute("SELECT pg_advisory_unlock($1)", &[&ADVISORY_LOCK_KEY])
            .await;
        if let Err(error) = unlocked {
            tracing::warn!(error = %error, "could not release the migration lock explicitly");
        }
        outcome
    }

    async fn run_locked(&self, client: &mut Client) -> Result<MigrationReport, MigrateError> {
        client
            .batch_execute(CREATE_HISTORY_TABLE)
            .await
            .map_err(database_error)?;
        let applied = read_history(client).await?;
        self.check_history(&applied)?;

        let mut report = MigrationReport {
            applied: Vec::new(),
            already_applied: applied.len(),
        };
        for migration in &self.migrations {
            if applied.iter().any(|row| row.version == migration.version) {
                continue;
            }
            apply(client, migration).await?;
            tracing::info!(migration = %migration.file_name, "applied migration");
            report.applied.push(migration.file_name.clone());
        }
        Ok(report)
    }

    /// Refuses drift: changed or missing applied files, and new files numbered below history.
    fn check_history(&self, applied: &[AppliedRow]) -> Result<(), MigrateError> {
        for row in applied {
            match self.migrations.iter().find(|m| m.version == row.version) {
                None => {
                    return Err(MigrateError::MissingFile {
                        version: row.version,
                        name: row.name.clone(),
                    });
                }
                Some(file) if file.checksum != row.checksum => {
                    return Err(MigrateError::ChecksumMismatch {
                        file: file.file_name.clone(),
                        recorded: row.checksum.clone(),
                        actual: file.checksum.clone(),
                    });
                }
                Some(_) => {}
            }
        }
        if let Some(latest) = applied.iter().map(|row| row.version).max() {
            let skipped = self.migrations.iter().find(|m| {
                m.version < latest && !applied.iter().any(|row| row.version == m.version)
            });
            if let Some(skipped) = skipped {
                return Err(MigrateError::OutOfOrder {
                    file: skipped.file_name.clone(),
                    latest,
                });
            }
        }
        Ok(())
    }

    /// Every file and every recorded migration with its state; reads only, takes no lock.
    pub async fn status(&self, client: &Client) -> Result<Vec<MigrationStatus>, MigrateError> {
        let exists: bool = client
            .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
            .await
            .map_err(database_error)?
            .get(0);
        let applied = if exists {
            read_history(client).await?
        } else {
            Vec::new()
        };
        let mut statuses: Vec<MigrationStatus> = self
            .migrations
            .iter()
            .map(|file| {
                let state = match applied.iter().find(|row| row.version == file.version) {
                    None => MigrationState::Pending,
                    Some(row) if row.checksum != file.checksum => {
                        MigrationState::ChecksumMismatch {
                            applied_at: row.applied_at,
                        }
                    }
                    Some(row) => MigrationState::Applied {
                        applied_at: row.applied_at,
                    },
                };
                MigrationStatus {
                    version: file.version,
                    name: file.name.clone(),
                    state,
                }
            })
            .collect();
        for row in &applied {
            if !self
                .migrations
                .iter()
                .any(|file| file.version == row.version)
            {
                statuses.push(MigrationStatus {
                    version: row.version,
                    name: row.name.clone(),
                    state: MigrationState::MissingFile {
                        applied_at: row.applied_at,
                    },
                });
            }
        }
        statuses.sort_by_key(|status| status.version);
        Ok(statuses)
    }
}

async fn read_history(client: &Client) -> Result<Vec<AppliedRow>, MigrateError> {
    let rows = client
        .query(
            "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(database_error)?;
    Ok(rows
        .iter()
        .map(|row| AppliedRow {
            version: row.get(0),
            name: row.get(1),
            checksum: row.get(2),
            applied_at: row.get(3),
        })
        .collect())
}

async fn apply(client: &mut Client, migration: &Migration) -> Result<(), MigrateError> {
    let failed = |error: tokio_postgres::Error| MigrateError::Apply {
        file: migration.file_name.clone(),
        reason: describe_failure(&error, &migration.sql),
    };
    let transaction = client.transaction().await.map_err(database_error)?;
    transaction
        .batch_execute(&migration.sql)
        .await
        .map_err(failed)?;
    transaction
        .execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&migration.version, &migration.name, &migration.checksum],
        )
        .await
        .map_err(failed)?;
    transaction.commit().await.map_err(failed)
}

/// The server's message with SQLSTATE and the line it points at. Migration SQL is ours, so
/// unlike request errors the message is safe to show.
fn describe_failure(error: &tokio_postgres::Error, sql: &str) -> String {
    let Some(db) = error.as_db_error() else {
        return error.to_string();
    };
    let mut reason = format!("{} (SQLSTATE {})", db.message(), db.code().code());
    if let Some(tokio_postgres::error::ErrorPosition::Original(position)) = db.position() {
        // `position` counts characters from 1.
        let before: String = sql
            .chars()
            .take((*position as usize).saturating_sub(1))
            .collect();
        reason.push_str(&format!(" at line {}", before.matches('\n').count() + 1));
    }
    if let Some(detail) = db.detail() {
        reason.push_str(&format!("; {detail}"));
    }
    reason
}

/// `NNN_name.sql` → (NNN, name). The name may not be empty; digits may be any count.
fn parse_file_name(file_name: &str) -> Result<(i64, String), MigrateError> {
    let bad = || MigrateError::BadFileName(file_name.to_owned());
    let stem = file_name.strip_suffix(".sql").ok_or_else(bad)?;
    let (digits, name) = stem.split_once('_').ok_or_else(bad)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || name.is_empty() {
        return Err(bad());
    }
    let version = digits.parse().map_err(|_| bad())?;
    Ok((version, name.to_owned()))
}

/// Opens a dedicated connection for migrating (not from the pool: the advisory lock is held
/// by the session).
pub async fn connect(config: &tokio_postgres::Config) -> Result<Client, MigrateError> {
    let (client, connection) = config.connect(NoTls).await.map_err(database_error)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(error = %error, "migration connection ended with an error");
        }
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migration(version: i64, file_name: &str) -> Migration {
        Migration {
            version,
            name: file_name.to_owned(),
            file_name: file_name.to_owned(),
            checksum: "c".to_owned(),
            sql: String::new(),
        }
    }

    fn row(version: i64, checksum: &str) -> AppliedRow {
        AppliedRow {
            version,
            name: format!("m{version}"),
            checksum: checksum.to_owned(),
            applied_at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn file_names_parse_to_version_and_name() {
        assert_eq!(
            parse_file_name("001_core.sql").unwrap(),
            (1, "core".to_owned())
        );
        assert_eq!(
            parse_file_name("12_add_x_y.sql").unwrap(),
            (12, "add_x_y".to_owned())
        );
        for bad in [
            "core.sql",
            "_core.sql",
            "001_.sql",
            "001core.sql",
            "0a1_core.sql",
            "001_core.txt",
        ] {
            assert!(
                matches!(parse_file_name(bad), Err(MigrateError::BadFileName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn duplicate_versions_are_refused() {
        let error =
            Migrator::from_migrations(vec![migration(1, "001_a.sql"), migration(1, "1_b.sql")])
                .unwrap_err();
        assert_eq!(error.code(), "duplicate_migration_version");
    }

    #[test]
    fn history_checks_name_the_offending_file() {
        let migrator =
            Migrator::from_migrations(vec![migration(1, "001_a.sql"), migration(2, "002_b.sql")])
                .unwrap();
        assert!(migrator.check_history(&[row(1, "c")]).is_ok());
        let changed = migrator.check_history(&[row(1, "other")]).unwrap_err();
        assert_eq!(changed.code(), "migration_checksum_mismatch");
        assert!(changed.to_string().contains("001_a.sql"));
        let missing = migrator
            .check_history(&[row(1, "c"), row(3, "c")])
            .unwrap_err();
        assert_eq!(missing.code(), "migration_file_missing");
        assert!(missing.to_string().contains("m3"));
        let skipped = migrator.check_history(&[row(2, "c")]).unwrap_err();
        assert_eq!(skipped.code(), "migration_out_of_order");
        assert!(skipped.to_string().contains("001_a.sql"));
    }
}
