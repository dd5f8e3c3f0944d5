//! `vault-server backup` and `vault-server restore`. SQLite is copied with
//! its online backup API while servers serve; PostgreSQL is backed up with
//! its own `pg_dump` and `pg_restore`, which these commands name instead of
//! wrapping (docs/server.md, "Backup and restore").

use std::path::{Path, PathBuf};

use crate::store::{redact_url, sqlite};

/// The SQLite file of `--database`, or what to run instead on PostgreSQL.
fn sqlite_path<'a>(database: &'a str, pg_instead: &str) -> Result<&'a Path, (String, i32)> {
    if let Some(path) = database.strip_prefix("sqlite:") {
        return Ok(Path::new(path.strip_prefix("//").unwrap_or(path)));
    }
    if database.starts_with("postgres://") || database.starts_with("postgresql://") {
        return Err((
            format!(
                "on PostgreSQL use its own tools, which take a consistent snapshot while \
                 servers serve: {pg_instead}, with URL = {} (libpq reads the same URL; add \
                 --schema=NAME when its options set a search_path; see docs/server.md, \
                 'Backup and restore')",
                redact_url(database)
            ),
            2,
        ));
    }
    Err((
        format!(
            "unsupported --database '{}': use sqlite:PATH or postgres://…",
            redact_url(database)
        ),
        2,
    ))
}

fn describe(c: &sqlite::Contents) -> String {
    format!(
        "schema version {}, {} users, {} vaults, {} records",
        c.schema_version, c.users, c.vaults, c.records
    )
}

fn report(json: bool, what: &str, file: &Path, c: &sqlite::Contents) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                what: file.display().to_string(),
                "schema_version": c.schema_version,
                "users": c.users,
                "vaults": c.vaults,
                "records": c.records,
            })
        );
    } else {
        println!("{what} {}: {}", file.display(), describe(c));
    }
}

/// `vault-server backup --to FILE`.
pub async fn backup(database: &str, to: PathBuf, json: bool) -> Result<(), (String, i32)> {
    let db = sqlite_path(database, "pg_dump --format=custom --file=FILE URL")?.to_owned();
    let target = to.clone();
    let c = tokio::task::spawn_blocking(move || sqlite::backup(&db, &target))
        .await
        .map_err(|e| (format!("backup failed: {e}"), 1))?
        .map_err(|e| (e, 1))?;
    report(json, "backed up to", &to, &c);
    Ok(())
}

/// `vault-server restore --from FILE [--force]`.
pub async fn restore(
    database: &str,
    from: PathBuf,
    force: bool,
    json: bool,
) -> Result<(), (String, i32)> {
    let db = sqlite_path(
        database,
        "pg_restore --clean --if-exists --no-owner --dbname=URL FILE",
    )?
    .to_owned();
    let source = from.clone();
    let c = tokio::task::spawn_blocking(move || sqlite::restore(&source, &db, force))
        .await
        .map_err(|e| (format!("restore failed: {e}"), 1))?
        .map_err(|e| {
            let code = if e.contains("add --force") { 5 } else { 1 };
            (e, code)
        })?;
    report(json, "restored from", &from, &c);
    Ok(())
}
