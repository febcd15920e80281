//! The local cache: one SQLite database (`cache.db`) in the cache directory
//! (`AMIMAKE_CACHE_DIR`, else `cache.dir` in `amimake.yaml`, else
//! `~/.cache/amimake`).
//!
//! WAL journal, a busy timeout, and `BEGIN IMMEDIATE` for every write
//! transaction, so many amimake processes can share it. The schema lives in
//! `cache-schema/NNNN_*.sql`, applied in order and tracked by
//! `PRAGMA user_version`; a database written by a newer amimake is refused.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::cache::{now_unix, CacheEntry, CacheFuture, CacheMode, LayerCache};
use crate::error::{Error, Result};
use crate::hash::{LayerHash, LayerRecord};

/// Migrations, in order; `user_version` = number applied.
const MIGRATIONS: &[&str] = &[include_str!("../../cache-schema/0001_initial.sql")];
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);
pub const DB_FILE: &str = "cache.db";

/// Where the local cache lives.
pub fn cache_dir(config_dir: Option<&str>, project_root: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("AMIMAKE_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = config_dir {
        let dir = expand_home(dir);
        return if dir.is_absolute() {
            dir
        } else {
            project_root.join(dir)
        };
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(xdg).join("amimake");
    }
    home().join(".cache").join("amimake")
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

fn expand_home(p: &str) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => home().join(rest),
        None => PathBuf::from(p),
    }
}

/// A build-history row.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryRow {
    pub build_id: String,
    pub template: String,
    pub hash: String,
    pub target: String,
    pub started_at: f64,
    pub finished_at: f64,
    pub seconds: f64,
    pub result: String,
}

/// A cloud resource recorded for orphan cleanup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceRow {
    pub id: String,
    pub kind: String,
    pub region: Option<String>,
    pub build_id: String,
    pub layer: String,
    pub pid: i64,
}

/// Totals for `cache stats`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Stats {
    pub entries: i64,
    pub targets: Vec<(String, i64)>,
    pub templates: i64,
    pub builds: i64,
    pub builds_failed: i64,
    pub build_seconds_total: f64,
    pub database_bytes: u64,
    /// Disk used by local-backend layer trees, when there are any.
    pub local_tree_bytes: Option<u64>,
}

pub struct LocalCache {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl LocalCache {
    /// Opens (creating and migrating as needed) the cache in `dir`.
    pub fn open(dir: &Path) -> Result<LocalCache> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path).map_err(|e| cache_err(&path, e))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| cache_err(&path, e))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let cache = LocalCache {
            conn: Mutex::new(conn),
            path,
        };
        cache.migrate()?;
        Ok(cache)
    }

    /// Opens an existing cache read-only, for commands that never write
    /// (`hash`, `show`); `None` when there is none yet.
    pub fn open_existing(dir: &Path) -> Result<Option<LocalCache>> {
        let path = dir.join(DB_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| cache_err(&path, e))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version != SCHEMA_VERSION {
            if version > SCHEMA_VERSION {
                return Err(newer_schema(&path, version));
            }
            return Ok(None);
        }
        Ok(Some(LocalCache {
            conn: Mutex::new(conn),
            path,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn migrate(&self) -> Result<()> {
        let mut conn = self.conn();
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        if version > SCHEMA_VERSION {
            return Err(newer_schema(&self.path, version));
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Another process may have migrated while we waited for the lock.
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(newer_schema(&self.path, version));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql)
                .map_err(|e| Error::Cache(format!("migration {} failed: {e}", i + 1)))?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        Ok(())
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction.
    fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Looks up many hashes at once (one read transaction).
    pub fn get_many(&self, keys: &[(&LayerHash, &str)]) -> Result<Vec<Option<CacheEntry>>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let mut out = Vec::with_capacity(keys.len());
        {
            let mut stmt = tx.prepare_cached(
                "SELECT hash, target, image, parent_hash, template, created_at, build_seconds, build_id
                 FROM layers WHERE hash = ?1 AND target = ?2",
            )?;
            for (hash, target) in keys {
                out.push(
                    stmt.query_row(params![hash.as_str(), target], row_to_entry)
                        .optional()?,
                );
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Marks entries as used now (one write transaction).
    pub fn touch(&self, keys: &[(&LayerHash, &str)]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let now = now_unix();
        self.write(|tx| {
            let mut stmt = tx.prepare_cached(
                "UPDATE layers SET last_used_at = ?3 WHERE hash = ?1 AND target = ?2",
            )?;
            for (hash, target) in keys {
                stmt.execute(params![hash.as_str(), target, now])?;
            }
            Ok(())
        })
    }

    /// Records a finished layer build: the entry (when built), the history
    /// row, the inputs for `explain`, and the template's last built hash.
    pub fn record_build(
        &self,
        entry: Option<&CacheEntry>,
        history: &HistoryRow,
        record: Option<&LayerRecord>,
    ) -> Result<()> {
        let record_json = record.map(|r| serde_json::to_string(r).expect("record serializes"));
        self.write(|tx| {
            if let Some(e) = entry {
                insert_entry(tx, e)?;
                tx.execute(
                    "INSERT INTO last_built (template, target, hash, built_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (template, target) DO UPDATE SET hash = excluded.hash, built_at = excluded.built_at",
                    params![e.template, e.target, e.hash.as_str(), e.created_at],
                )?;
                if let Some(json) = &record_json {
                    tx.execute(
                        "INSERT OR REPLACE INTO layer_records (hash, record) VALUES (?1, ?2)",
                        params![e.hash.as_str(), json],
                    )?;
                }
            }
            tx.execute(
                "INSERT INTO builds (build_id, template, hash, target, started_at, finished_at, seconds, result)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    history.build_id,
                    history.template,
                    history.hash,
                    history.target,
                    history.started_at,
                    history.finished_at,
                    history.seconds,
                    history.result
                ],
            )?;
            Ok(())
        })
    }

    /// Median duration of the last `n` successful builds of a template.
    pub fn estimate(&self, template: &str, target: &str, n: usize) -> Result<Option<f64>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT seconds FROM builds WHERE template = ?1 AND target = ?2 AND result = 'built'
             ORDER BY id DESC LIMIT ?3",
        )?;
        let secs: Vec<f64> = stmt
            .query_map(params![template, target, n as i64], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if secs.is_empty() {
            return Ok(None);
        }
        Ok(Some(median(secs)))
    }

    /// Estimates for every template with history on `target` (one query):
    /// the median of each template's last `n` successful builds.
    pub fn estimates(
        &self,
        target: &str,
        n: usize,
    ) -> Result<std::collections::HashMap<String, f64>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT template, seconds FROM builds WHERE target = ?1 AND result = 'built' ORDER BY id DESC",
        )?;
        let mut recent: std::collections::HashMap<String, Vec<f64>> =
            std::collections::HashMap::new();
        let rows = stmt.query_map(params![target], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?))
        })?;
        for row in rows {
            let (template, secs) = row?;
            let list = recent.entry(template).or_default();
            if list.len() < n {
                list.push(secs);
            }
        }
        Ok(recent.into_iter().map(|(t, v)| (t, median(v))).collect())
    }

    /// The record of the hash `template` was last built with on `target`.
    pub fn last_built(
        &self,
        template: &str,
        target: &str,
    ) -> Result<Option<(LayerHash, Option<LayerRecord>)>> {
        let conn = self.conn();
        let row: Option<(String, Option<String>)> = conn
            .prepare_cached(
                "SELECT lb.hash, r.record FROM last_built lb LEFT JOIN layer_records r ON r.hash = lb.hash
                 WHERE lb.template = ?1 AND lb.target = ?2",
            )?
            .query_row(params![template, target], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(row.and_then(|(hash, record)| {
            let hash = LayerHash::parse(&hash)?;
            Some((hash, record.and_then(|j| serde_json::from_str(&j).ok())))
        }))
    }

    /// Entries of `hash` on targets starting with `target_prefix`.
    pub fn entries_for_hash(
        &self,
        hash: &LayerHash,
        target_prefix: &str,
    ) -> Result<Vec<CacheEntry>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT hash, target, image, parent_hash, template, created_at, build_seconds, build_id
             FROM layers WHERE hash = ?1 AND substr(target, 1, length(?2)) = ?2 ORDER BY created_at DESC",
        )?;
        let rows = stmt
            .query_map(params![hash.as_str(), target_prefix], row_to_entry)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// All entries, optionally for one target, newest first.
    pub fn list(&self, target: Option<&str>) -> Result<Vec<(CacheEntry, i64)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT hash, target, image, parent_hash, template, created_at, build_seconds, build_id, last_used_at
             FROM layers WHERE ?1 IS NULL OR target = ?1 ORDER BY template, created_at DESC",
        )?;
        let rows = stmt
            .query_map(params![target], |r| Ok((row_to_entry(r)?, r.get(8)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Removes entries of a template (by name) or a hash (full or a prefix
    /// of at least 8 digits), on all targets or one. Returns how many.
    pub fn forget(&self, template_or_hash: &str, target: Option<&str>) -> Result<usize> {
        let is_hash_prefix =
            template_or_hash.len() >= 8 && template_or_hash.chars().all(|c| c.is_ascii_hexdigit());
        self.write(|tx| {
            let n = if is_hash_prefix {
                let pattern = format!("{}%", template_or_hash.to_ascii_lowercase());
                tx.execute(
                    "DELETE FROM layers WHERE hash LIKE ?1 AND (?2 IS NULL OR target = ?2)",
                    params![pattern, target],
                )?
            } else {
                tx.execute(
                    "DELETE FROM layers WHERE template = ?1 AND (?2 IS NULL OR target = ?2)",
                    params![template_or_hash, target],
                )?
            };
            Ok(n)
        })
    }

    pub fn put_entry(&self, entry: &CacheEntry) -> Result<()> {
        self.write(|tx| insert_entry(tx, entry))
    }

    /// The entry for (hash, target), if any.
    pub fn get(&self, hash: &LayerHash, target: &str) -> Result<Option<CacheEntry>> {
        Ok(self.get_many(&[(hash, target)])?.pop().flatten())
    }

    pub fn remove(&self, hash: &LayerHash, target: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM layers WHERE hash = ?1 AND target = ?2",
                params![hash.as_str(), target],
            )?;
            Ok(())
        })
    }

    pub fn stats(&self) -> Result<Stats> {
        let conn = self.conn();
        let entries = conn.query_row("SELECT count(*) FROM layers", [], |r| r.get(0))?;
        let templates = conn.query_row("SELECT count(DISTINCT template) FROM layers", [], |r| {
            r.get(0)
        })?;
        let mut stmt =
            conn.prepare("SELECT target, count(*) FROM layers GROUP BY target ORDER BY target")?;
        let targets = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let (builds, builds_failed, build_seconds_total): (i64, i64, f64) = conn.query_row(
            "SELECT count(*), coalesce(sum(result = 'failed'), 0), coalesce(sum(CASE WHEN result = 'built' THEN seconds END), 0.0) FROM builds",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let database_bytes = ["", "-wal", "-shm"]
            .iter()
            .filter_map(|s| std::fs::metadata(format!("{}{s}", self.path.display())).ok())
            .map(|m| m.len())
            .sum();
        Ok(Stats {
            entries,
            targets,
            templates,
            builds,
            builds_failed,
            build_seconds_total,
            database_bytes,
            local_tree_bytes: None,
        })
    }

    /// The last recorded resolution of a source key: (image, unix seconds).
    pub fn resolution(&self, key: &str) -> Result<Option<(String, i64)>> {
        let conn = self.conn();
        let row = conn
            .prepare_cached("SELECT image, resolved_at FROM source_resolutions WHERE key = ?1")?
            .query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(row)
    }

    pub fn record_resolution(&self, key: &str, image: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO source_resolutions (key, image, resolved_at) VALUES (?1, ?2, ?3)",
                params![key, image, now_unix()],
            )?;
            Ok(())
        })
    }

    /// Records a cloud resource about to be created (or just created).
    pub fn record_resource(
        &self,
        id: &str,
        kind: &str,
        region: &str,
        build_id: &str,
        layer: &str,
        hash: &str,
    ) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO resources (id, kind, region, build_id, layer, hash, pid, created_at, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'live')",
                params![id, kind, region, build_id, layer, hash, std::process::id(), now_unix()],
            )?;
            Ok(())
        })
    }

    /// Replaces a placeholder ID (`pending:<token>`) with the real one.
    pub fn rename_resource(&self, old: &str, new: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE resources SET id = ?2 WHERE id = ?1",
                params![old, new],
            )?;
            Ok(())
        })
    }

    /// The resource is gone (or owned by the cache now).
    pub fn forget_resource(&self, id: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute("DELETE FROM resources WHERE id = ?1", params![id])?;
            Ok(())
        })
    }

    /// Every recorded resource: (id, kind, region, build id, pid).
    pub fn resources(&self) -> Result<Vec<ResourceRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, kind, region, build_id, layer, pid FROM resources ORDER BY created_at",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ResourceRow {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    region: r.get(2)?,
                    build_id: r.get(3)?,
                    layer: r.get(4)?,
                    pid: r.get(5)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Every build id in the history.
    pub fn build_ids(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT DISTINCT build_id FROM builds")?;
        let rows = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// `PRAGMA integrity_check`; `ok` when healthy.
    pub fn integrity_check(&self) -> Result<String> {
        let conn = self.conn();
        Ok(conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }

    pub fn history(&self, limit: usize) -> Result<Vec<HistoryRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT build_id, template, hash, target, started_at, finished_at, seconds, result
             FROM builds ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt
            .query_map(params![limit as i64], |r| {
                Ok(HistoryRow {
                    build_id: r.get(0)?,
                    template: r.get(1)?,
                    hash: r.get(2)?,
                    target: r.get(3)?,
                    started_at: r.get(4)?,
                    finished_at: r.get(5)?,
                    seconds: r.get(6)?,
                    result: r.get(7)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }
}

impl LayerCache for LocalCache {
    fn name(&self) -> String {
        format!("local ({})", self.path.display())
    }

    fn get_many<'a>(
        &'a self,
        hashes: &'a [LayerHash],
        target: &'a str,
    ) -> CacheFuture<'a, Vec<Option<CacheEntry>>> {
        Box::pin(async move {
            let keys: Vec<(&LayerHash, &str)> = hashes.iter().map(|h| (h, target)).collect();
            LocalCache::get_many(self, &keys)
        })
    }

    fn put<'a>(&'a self, entry: &'a CacheEntry) -> CacheFuture<'a, ()> {
        Box::pin(async move { self.put_entry(entry) })
    }

    fn check(&self) -> CacheFuture<'_, CacheMode> {
        Box::pin(async move {
            let status = self.integrity_check()?;
            if status != "ok" {
                return Err(Error::Cache(format!(
                    "{}: integrity check: {status}",
                    self.path.display()
                )));
            }
            Ok(CacheMode::ReadWrite)
        })
    }
}

fn median(mut secs: Vec<f64>) -> f64 {
    secs.sort_by(|a, b| a.total_cmp(b));
    let mid = secs.len() / 2;
    if secs.len() % 2 == 1 {
        secs[mid]
    } else {
        (secs[mid - 1] + secs[mid]) / 2.0
    }
}

fn insert_entry(tx: &rusqlite::Transaction<'_>, e: &CacheEntry) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO layers (hash, target, image, parent_hash, template, created_at, last_used_at, build_seconds, build_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8)
         ON CONFLICT (hash, target) DO UPDATE SET image = excluded.image, parent_hash = excluded.parent_hash,
           template = excluded.template, created_at = excluded.created_at, last_used_at = excluded.last_used_at,
           build_seconds = excluded.build_seconds, build_id = excluded.build_id",
        params![
            e.hash.as_str(),
            e.target,
            e.image,
            e.parent_hash,
            e.template,
            e.created_at,
            e.build_seconds,
            e.build_id
        ],
    )?;
    Ok(())
}

fn row_to_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<CacheEntry> {
    let hash: String = r.get(0)?;
    Ok(CacheEntry {
        hash: LayerHash::parse(&hash).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                "bad layer hash".into(),
            )
        })?,
        target: r.get(1)?,
        image: r.get(2)?,
        parent_hash: r.get(3)?,
        template: r.get(4)?,
        created_at: r.get(5)?,
        build_seconds: r.get(6)?,
        build_id: r.get(7)?,
    })
}

fn cache_err(path: &Path, e: rusqlite::Error) -> Error {
    Error::Cache(format!("{}: {e}", path.display()))
}

fn newer_schema(path: &Path, version: i64) -> Error {
    Error::Cache(format!(
        "{} has schema version {version}, but this amimake knows only up to {SCHEMA_VERSION}; upgrade amimake, or point AMIMAKE_CACHE_DIR at another directory",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(LocalCache::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = LocalCache::open(dir.path()).err().expect("must refuse");
        assert!(err.to_string().contains("upgrade amimake"), "{err}");
    }

    #[test]
    fn estimate_is_median_of_recent_builds() {
        let dir = tempfile::tempdir().unwrap();
        let c = LocalCache::open(dir.path()).unwrap();
        assert_eq!(c.estimate("t", "simulate", 5).unwrap(), None);
        for (i, s) in [10.0, 30.0, 20.0, 1000.0].iter().enumerate() {
            let row = HistoryRow {
                build_id: format!("b{i}"),
                template: "t".into(),
                hash: "h".into(),
                target: "simulate".into(),
                started_at: 0.0,
                finished_at: *s,
                seconds: *s,
                result: if i == 3 {
                    "failed".into()
                } else {
                    "built".into()
                },
            };
            c.record_build(None, &row, None).unwrap();
        }
        assert_eq!(c.estimate("t", "simulate", 5).unwrap(), Some(20.0));
        assert_eq!(c.estimates("simulate", 5).unwrap().get("t"), Some(&20.0));
    }
}
