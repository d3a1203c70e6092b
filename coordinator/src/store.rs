//! Durable coordinator state in SQLite (WAL): sweeps, trials with their leases and attempts,
//! curves, workers. Every change that a reply acknowledges is committed in one transaction
//! before the reply leaves, so a kill -9 between any two statements loses nothing acknowledged.
//! The scheduler may group several commands in one transaction (`begin_batch`, `commit_batch`):
//! each method's own transaction is then a savepoint inside it, and the replies wait for the
//! batch's commit.
//!
//! Only the scheduler thread writes through a `Store`; result exports open their own read-only
//! connection (WAL lets them read while the scheduler writes; `export.rs` reads it as a
//! `cbsweep_results::ResultsSource`). A trial's row is `cbsweep_results::TrialRow`.

use cbsweep_common::memory;
use cbsweep_common::{
    AnalysisRecord, Attempt, EpochRecord, SweepId, SweepState, TrialId, TrialOutcome, TrialResult, TrialSpec, TrialState, WorkerId,
};
use cbsweep_results::TrialRow;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, params};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// The database file inside a coordinator's state directory.
pub const DB_FILE: &str = "cbsweep.sqlite";

/// Prepared statements kept per connection (more than the store has).
const STATEMENT_CACHE: usize = 64;

/// WAL pages (256 MiB) at which the writing connection checkpoints by itself while a
/// `Checkpointer` runs beside it (SQLite's default is 1000): only a backstop, since each such
/// checkpoint holds up the writer's commit (measured: 5-20 ms at 4,000 trials/s).
const BACKSTOP_CHECKPOINT_PAGES: i64 = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open coordinator state {}: {source}", path.display())]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("coordinator state: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("coordinator state holds an unreadable {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// The commit of a batch failed: none of its commands took effect.
    #[error("coordinator state: commit failed: {0}")]
    Commit(String),
    #[error("cannot start the checkpoint thread: {0}")]
    Thread(std::io::Error),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sweeps(
  sweep_id TEXT PRIMARY KEY,
  description TEXT NOT NULL,
  spec_toml TEXT NOT NULL,
  spec_path TEXT NOT NULL,
  overrides TEXT NOT NULL DEFAULT '',
  max_attempts INTEGER NOT NULL,
  pack_size INTEGER NOT NULL,
  lease_seconds INTEGER NOT NULL,
  state TEXT NOT NULL,
  created_ms INTEGER NOT NULL,
  finished_ms INTEGER);
CREATE TABLE IF NOT EXISTS trials(
  trial_id TEXT PRIMARY KEY,
  sweep_id TEXT NOT NULL REFERENCES sweeps(sweep_id),
  cell_index INTEGER NOT NULL,
  cell_key TEXT NOT NULL,
  condition TEXT NOT NULL,
  pack_key TEXT NOT NULL,
  spec_json TEXT NOT NULL,
  state TEXT NOT NULL,
  attempt INTEGER NOT NULL DEFAULT 0,
  worker_id TEXT,
  lease_expires_ms INTEGER,
  last_error TEXT,
  outcome TEXT,
  max_level INTEGER,
  final_level INTEGER,
  epochs_run INTEGER,
  wall_time_ms INTEGER,
  device TEXT,
  pack_size INTEGER,
  completed_ms INTEGER,
  UNIQUE(sweep_id, cell_key));
-- Grid order over immutable columns: a lease or a completion never writes this index. The
-- queue indexes are partial, so that a lease moves a trial from two small pending indexes to
-- the leased one and a completion only drops it from that: few pages per commit.
-- (trials_queue, trials_worker and trials_pack indexed every state: earlier state files.)
DROP INDEX IF EXISTS trials_queue;
DROP INDEX IF EXISTS trials_worker;
DROP INDEX IF EXISTS trials_pack;
CREATE INDEX IF NOT EXISTS trials_cells ON trials(sweep_id, cell_index);
CREATE INDEX IF NOT EXISTS trials_pending ON trials(sweep_id, cell_index) WHERE state = {pending};
CREATE INDEX IF NOT EXISTS trials_pending_pack ON trials(sweep_id, pack_key, cell_index) WHERE state = {pending};
CREATE INDEX IF NOT EXISTS trials_leased ON trials(sweep_id, worker_id) WHERE state = {leased};
CREATE TABLE IF NOT EXISTS curves(
  trial_id TEXT NOT NULL REFERENCES trials(trial_id),
  epoch INTEGER NOT NULL,
  level INTEGER NOT NULL,
  train_loss REAL NOT NULL,
  test_accuracy REAL NOT NULL,
  solved INTEGER NOT NULL,
  grad_norm REAL NOT NULL,
  core_learning INTEGER NOT NULL,
  cb_learning INTEGER NOT NULL,
  PRIMARY KEY(trial_id, epoch));
CREATE TABLE IF NOT EXISTS analyses(
  trial_id TEXT NOT NULL REFERENCES trials(trial_id),
  level INTEGER NOT NULL,
  epoch INTEGER NOT NULL,
  population TEXT NOT NULL,
  metric TEXT NOT NULL,
  value REAL NOT NULL,
  PRIMARY KEY(trial_id, level, population, metric));
CREATE TABLE IF NOT EXISTS workers(
  worker_id TEXT PRIMARY KEY,
  hostname TEXT NOT NULL,
  device TEXT NOT NULL,
  pid INTEGER NOT NULL,
  registered_ms INTEGER NOT NULL,
  last_seen_ms INTEGER NOT NULL);
";

/// A sweep's row.
#[derive(Clone, Debug)]
pub struct SweepRow {
    pub id: SweepId,
    pub description: String,
    /// The validated spec's resolved text (`SweepSpec::resolved`); older state files hold the
    /// user's text as given.
    pub spec_toml: String,
    pub spec_path: String,
    /// The spec overrides it was validated with, in `overrides_text`'s form.
    pub overrides: String,
    pub max_attempts: u32,
    pub pack_size: u32,
    pub lease_seconds: u32,
    pub state: SweepState,
    pub created_ms: i64,
    pub finished_ms: Option<i64>,
}

/// A trial handed to a worker.
#[derive(Clone, Debug)]
pub struct Leased {
    pub id: TrialId,
    pub attempt: Attempt,
    pub spec: TrialSpec,
    pub expires_ms: i64,
}

/// A worker seen lately: (id, hostname, device, trials it holds, milliseconds since seen).
pub type LiveWorker = (String, String, String, u32, i64);

/// Where a trial stands when a completion arrives.
#[derive(Clone, Debug)]
pub struct TrialLease {
    pub state: TrialState,
    pub attempt: u32,
    pub worker: Option<String>,
    pub sweep: SweepId,
    pub max_attempts: u32,
    /// The trial's cell key (for messages).
    pub cell: String,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// A thread that copies committed pages from the WAL into the database file (a passive
/// checkpoint) on a connection of its own, so that the writer's commits only append to the WAL
/// and never wait for a checkpoint's copying and fsyncs. It changes no content: what a commit
/// made durable stays so. Dropping it stops the thread after a last checkpoint.
pub struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn parse_state(s: &str) -> Result<TrialState, StoreError> {
    s.parse().map_err(|detail| StoreError::Corrupt { what: "trial state", detail })
}

/// SQL text with the states' names written in from the enums: `{pending}`, `{leased}`, `{done}`,
/// `{failed}` and `{cancelled}` become `TrialState`'s quoted names, `{sweep_running}`
/// `SweepState::Running`'s. So the store's SQL and the Rust types cannot drift apart, while the
/// statements keep literal states (the partial indexes are only used by queries that name their
/// state literally). Each distinct statement is built once and kept for the process's life.
fn sql(template: &'static str) -> &'static str {
    static BUILT: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<&'static str, &'static str>>> =
        std::sync::LazyLock::new(Default::default);
    let mut built = BUILT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    built.entry(template).or_insert_with(|| {
        let mut text = template.to_string();
        for st in TrialState::ALL {
            text = text.replace(&format!("{{{st}}}"), &format!("'{st}'"));
        }
        text = text.replace("{sweep_running}", &format!("'{}'", SweepState::Running));
        assert!(!text.contains('{'), "an unknown placeholder in {text}");
        Box::leak(text.into_boxed_str())
    })
}

fn parse_spec(json: &str) -> Result<TrialSpec, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt { what: "trial spec", detail: e.to_string() })
}

impl Store {
    /// Opens (creating if needed) the database in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join(DB_FILE);
        let open_err = |source| StoreError::Open { path: path.clone(), source };
        std::fs::create_dir_all(state_dir).map_err(|e| open_err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        let conn = Connection::open(&path).map_err(open_err)?;
        // WAL + NORMAL: a committed transaction survives a killed process (it is in the WAL,
        // which the OS holds); only a power loss could drop the last few.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(open_err)?;
        // Query plans that never depend on bound values: otherwise a cached statement with
        // `LIMIT ?` is compiled again on every call. A cache that holds every hot statement.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map_err(open_err)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.execute_batch(sql(SCHEMA)).map_err(open_err)?;
        migrate(&conn).map_err(open_err)?;
        Ok(Store { conn, path })
    }

    /// Opens the database read-only, for exports beside a running scheduler.
    pub fn open_read_only(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join(DB_FILE);
        let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|source| StoreError::Open { path: path.clone(), source })?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(Store { conn, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checkpoints this database every `every` while it is written, and ten times less often
    /// while it is not, on a thread of its own (see `Checkpointer`); this connection then
    /// checkpoints only as a backstop.
    pub fn checkpoint_in_background(&self, every: Duration) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open(&self.path).map_err(|source| StoreError::Open { path: self.path.clone(), source })?;
        conn.busy_timeout(Duration::from_secs(10))?;
        let (stop, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("cbsweep-checkpoint".into())
            .spawn(move || {
                // (frames in the WAL, frames checkpointed) after the last checkpoint
                let mut seen = None;
                let mut wait = every;
                loop {
                    let last = !matches!(rx.recv_timeout(wait), Err(mpsc::RecvTimeoutError::Timeout));
                    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))) {
                        Ok(frames) => {
                            wait = if seen == Some(frames) { every * 10 } else { every };
                            seen = Some(frames);
                        }
                        Err(e) => tracing::warn!(error = %e, "checkpoint failed"),
                    }
                    if last {
                        return;
                    }
                }
            })
            .map_err(StoreError::Thread)?;
        self.conn.pragma_update(None, "wal_autocheckpoint", BACKSTOP_CHECKPOINT_PAGES)?;
        Ok(Checkpointer { stop: Some(stop), thread: Some(thread) })
    }

    /// Opens a transaction that the following calls join (each as a savepoint) until
    /// `commit_batch` or `rollback_batch`.
    pub fn begin_batch(&self) -> Result<(), StoreError> {
        self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        Ok(())
    }

    pub fn commit_batch(&self) -> Result<(), StoreError> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(())
    }

    /// Undoes a batch whose commit failed (nothing of it was acknowledged).
    pub fn rollback_batch(&self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    pub fn sweep(&self, id: &SweepId) -> Result<Option<SweepRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT sweep_id, description, spec_toml, spec_path, overrides, max_attempts, pack_size, lease_seconds, state, created_ms, finished_ms FROM sweeps WHERE sweep_id = ?1",
                params![id.as_str()],
                sweep_row,
            )
            .optional()?)
    }

    pub fn sweeps(&self) -> Result<Vec<SweepRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT sweep_id, description, spec_toml, spec_path, overrides, max_attempts, pack_size, lease_seconds, state, created_ms, finished_ms FROM sweeps ORDER BY created_ms",
        )?;
        let rows = stmt.query_map([], sweep_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Cell keys and trial ids of a sweep's existing trials.
    pub fn cells(&self, sweep: &SweepId) -> Result<Vec<(String, TrialId, TrialSpec)>, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT cell_key, trial_id, spec_json FROM trials WHERE sweep_id = ?1")?;
        let rows = stmt
            .query_map(params![sweep.as_str()], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(|(k, id, json)| Ok((k, TrialId(id), parse_spec(&json)?))).collect()
    }

    /// Creates or updates a sweep and inserts the given new trials, in one transaction.
    pub fn upsert_sweep(&mut self, row: &SweepRow, new_trials: &[(u32, TrialSpec)]) -> Result<(), StoreError> {
        let tx = self.conn.savepoint()?;
        tx.execute(
            "INSERT INTO sweeps(sweep_id, description, spec_toml, spec_path, max_attempts, pack_size, lease_seconds, state, created_ms, finished_ms, overrides)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL, ?10)
             ON CONFLICT(sweep_id) DO UPDATE SET description = ?2, spec_toml = ?3, spec_path = ?4, max_attempts = ?5,
               pack_size = ?6, lease_seconds = ?7, state = ?8, finished_ms = NULL, overrides = ?10",
            params![
                row.id.as_str(),
                row.description,
                row.spec_toml,
                row.spec_path,
                row.max_attempts,
                row.pack_size,
                row.lease_seconds,
                row.state.as_str(),
                row.created_ms,
                row.overrides
            ],
        )?;
        {
            let mut ins = tx.prepare_cached(sql(
                "INSERT INTO trials(trial_id, sweep_id, cell_index, cell_key, condition, pack_key, spec_json, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, {pending})",
            ))?;
            for (index, t) in new_trials {
                let json = serde_json::to_string(t).map_err(|e| StoreError::Corrupt { what: "trial spec", detail: e.to_string() })?;
                ins.execute(params![t.id().as_str(), row.id.as_str(), index, t.cell_key(), t.condition(), t.pack_key().0, json])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn set_sweep_state(&self, sweep: &SweepId, state: SweepState, finished: Option<i64>) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE sweeps SET state = ?2, finished_ms = ?3 WHERE sweep_id = ?1",
            params![sweep.as_str(), state.as_str(), finished],
        )?;
        Ok(())
    }

    /// A sweep's state alone (its row without the spec text).
    pub fn sweep_state(&self, sweep: &SweepId) -> Result<Option<SweepState>, StoreError> {
        let state: Option<String> = self
            .conn
            .prepare_cached("SELECT state FROM sweeps WHERE sweep_id = ?1")?
            .query_row(params![sweep.as_str()], |r| r.get(0))
            .optional()?;
        state.map(|s| s.parse().map_err(|detail| StoreError::Corrupt { what: "sweep state", detail })).transpose()
    }

    pub fn register_worker(&self, id: &WorkerId, hostname: &str, device: &str, pid: u32) -> Result<(), StoreError> {
        let now = now_ms();
        self.conn.execute(
            "INSERT INTO workers(worker_id, hostname, device, pid, registered_ms, last_seen_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?5)
             ON CONFLICT(worker_id) DO UPDATE SET last_seen_ms = ?5",
            params![id.as_str(), hostname, device, pid, now],
        )?;
        Ok(())
    }

    /// Whether any sweep is running (else a worker that finds no work may exit).
    pub fn has_running_sweeps(&self) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached(sql("SELECT EXISTS(SELECT 1 FROM sweeps WHERE state = {sweep_running})"))?
            .query_row([], |r| r.get(0))?)
    }

    /// Every registered worker with the time it was last seen.
    pub fn workers(&self) -> Result<Vec<(WorkerId, i64)>, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT worker_id, last_seen_ms FROM workers")?;
        let rows = stmt.query_map([], |r| Ok((WorkerId(r.get(0)?), r.get(1)?)))?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Records when workers were last seen, in one transaction (the scheduler keeps these times
    /// in memory and writes them now and then, not on every call).
    pub fn touch_workers<'a>(&mut self, seen: impl IntoIterator<Item = (&'a WorkerId, i64)>) -> Result<(), StoreError> {
        let tx = self.conn.savepoint()?;
        {
            let mut upd = tx.prepare_cached("UPDATE workers SET last_seen_ms = ?2 WHERE worker_id = ?1")?;
            for (id, ms) in seen {
                upd.execute(params![id.as_str(), ms])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Workers seen in the last `within_ms`, with the number of trials each holds.
    pub fn live_workers(&self, within_ms: i64) -> Result<Vec<LiveWorker>, StoreError> {
        let now = now_ms();
        let mut stmt = self.conn.prepare_cached(sql("SELECT w.worker_id, w.hostname, w.device, w.last_seen_ms,
                    (SELECT COUNT(*) FROM trials t WHERE t.worker_id = w.worker_id AND t.state = {leased})
             FROM workers w WHERE w.last_seen_ms >= ?1 ORDER BY w.registered_ms"))?;
        let rows = stmt
            .query_map(params![now - within_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(4)?, now - r.get::<_, i64>(3)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Leases up to `max` pending trials of one pack key to `worker`, oldest cell first, from
    /// running sweeps, no more than fit in `memory_budget` (at least one). Each leased trial's
    /// attempt (the fencing token) goes up by one.
    pub fn lease(&mut self, worker: &WorkerId, max: u32, memory_budget: Option<NonZeroU64>) -> Result<Vec<Leased>, StoreError> {
        let now = now_ms();
        let tx = self.conn.savepoint()?;
        // Oldest running sweep first, then its oldest pending cell: each step an index lookup.
        let running: Vec<(String, u32, u32)> = {
            let mut stmt = tx.prepare_cached(sql(
                "SELECT sweep_id, pack_size, lease_seconds FROM sweeps WHERE state = {sweep_running} ORDER BY created_ms",
            ))?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<Vec<_>, _>>()?
        };
        let mut head = None;
        for (sweep, pack_size, lease_seconds) in running {
            let key: Option<String> = tx
                .prepare_cached(sql("SELECT pack_key FROM trials WHERE state = {pending} AND sweep_id = ?1 ORDER BY cell_index LIMIT 1"))?
                .query_row(params![sweep], |r| r.get(0))
                .optional()?;
            if let Some(key) = key {
                head = Some((sweep, key, pack_size, lease_seconds));
                break;
            }
        }
        let Some((sweep, pack_key, pack_size, lease_seconds)) = head else {
            tx.commit()?;
            return Ok(Vec::new());
        };
        let limit = max.min(pack_size).max(1);
        let expires = now + i64::from(lease_seconds) * 1000;
        let mut out = Vec::new();
        {
            let mut pick = tx.prepare_cached(sql(
                "SELECT trial_id, attempt, spec_json FROM trials WHERE state = {pending} AND sweep_id = ?1 AND pack_key = ?2
                 ORDER BY cell_index LIMIT ?3",
            ))?;
            let mut picked = pick
                .query_map(params![sweep, pack_key, limit], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?, r.get::<_, String>(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            // one pack key, one shape and budget: the head trial's spec sizes the pack
            if let (Some(budget), Some((id, _, json))) = (memory_budget, picked.first()) {
                let spec = parse_spec(json)?;
                let fit = memory::trials_within(budget.get(), &spec);
                if fit == 0 {
                    let trial_bytes = memory::trial_memory_bytes(&spec);
                    tracing::warn!(trial_id = %id, trial_bytes, budget_bytes = budget.get(), "trial exceeds the worker's memory budget; leasing it alone");
                }
                picked.truncate(usize::try_from(fit).unwrap_or(usize::MAX).max(1));
            }
            let mut upd = tx.prepare_cached(sql(
                "UPDATE trials SET state = {leased}, attempt = ?2, worker_id = ?3, lease_expires_ms = ?4 WHERE trial_id = ?1",
            ))?;
            for (id, attempt, json) in picked {
                upd.execute(params![id, attempt + 1, worker.as_str(), expires])?;
                out.push(Leased { id: TrialId(id), attempt: Attempt(attempt + 1), spec: parse_spec(&json)?, expires_ms: expires });
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Extends the leases `worker` still holds among `held`; returns the ones it no longer holds.
    pub fn renew(&mut self, worker: &WorkerId, held: &[(TrialId, Attempt)]) -> Result<Vec<TrialId>, StoreError> {
        let mut revoked = Vec::new();
        if held.is_empty() {
            return Ok(revoked);
        }
        let now = now_ms();
        let tx = self.conn.savepoint()?;
        {
            let mut upd = tx.prepare_cached(sql(
                "UPDATE trials SET lease_expires_ms = ?4 + 1000 * (SELECT lease_seconds FROM sweeps s WHERE s.sweep_id = trials.sweep_id)
                 WHERE trial_id = ?1 AND worker_id = ?2 AND attempt = ?3 AND state = {leased}",
            ))?;
            for (id, attempt) in held {
                if upd.execute(params![id.as_str(), worker.as_str(), attempt.0, now])? == 0 {
                    revoked.push(id.clone());
                }
            }
        }
        tx.commit()?;
        Ok(revoked)
    }

    /// The lease state of a trial, for deciding whether a completion is current.
    pub fn trial_lease(&self, id: &TrialId) -> Result<Option<TrialLease>, StoreError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT t.state, t.attempt, t.worker_id, t.sweep_id, s.max_attempts, t.cell_key FROM trials t JOIN sweeps s ON s.sweep_id = t.sweep_id WHERE t.trial_id = ?1",
            )?
            .query_row(params![id.as_str()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?, r.get::<_, Option<String>>(2)?, r.get::<_, String>(3)?, r.get::<_, u32>(4)?, r.get::<_, String>(5)?))
            })
            .optional()?;
        row.map(|(state, attempt, worker, sweep, max_attempts, cell)| {
            Ok(TrialLease { state: parse_state(&state)?, attempt, worker, sweep: SweepId(sweep), max_attempts, cell })
        })
        .transpose()
    }

    /// Records a finished attempt (completed or diverged): the trial row and its whole curve,
    /// in one transaction.
    pub fn record_done(&mut self, id: &TrialId, result: &TrialResult) -> Result<(), StoreError> {
        let tx = self.conn.savepoint()?;
        tx.prepare_cached("DELETE FROM curves WHERE trial_id = ?1")?.execute(params![id.as_str()])?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO curves(trial_id, epoch, level, train_loss, test_accuracy, solved, grad_norm, core_learning, cb_learning)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for e in &result.curve {
                ins.execute(params![
                    id.as_str(),
                    e.epoch,
                    e.level,
                    e.train_loss,
                    e.test_accuracy,
                    e.solved,
                    e.grad_norm,
                    e.core_learning,
                    e.cb_learning
                ])?;
            }
        }
        tx.prepare_cached("DELETE FROM analyses WHERE trial_id = ?1")?.execute(params![id.as_str()])?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT OR REPLACE INTO analyses(trial_id, level, epoch, population, metric, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for a in &result.analyses {
                ins.execute(params![id.as_str(), a.level, a.epoch, a.population, a.metric, a.value])?;
            }
        }
        tx.prepare_cached(sql(
            "UPDATE trials SET state = {done}, outcome = ?2, max_level = ?3, final_level = ?4, epochs_run = ?5, wall_time_ms = ?6,
               device = ?7, pack_size = ?8, completed_ms = ?9, lease_expires_ms = NULL, last_error = NULL WHERE trial_id = ?1",
        ))?
        .execute(params![
            id.as_str(),
            result.outcome.status(),
            result.max_level(),
            result.final_level(),
            result.curve.len() as u32,
            result.wall_time_ms as i64,
            result.device,
            result.pack_size,
            now_ms()
        ])?;
        tx.commit()?;
        Ok(())
    }

    /// Records a failed attempt: back to the queue, or failed for good when out of attempts.
    pub fn record_failure(&self, id: &TrialId, error: &str, terminal: bool) -> Result<(), StoreError> {
        let state = if terminal { TrialState::Failed } else { TrialState::Pending };
        self.conn
            .prepare_cached(
                "UPDATE trials SET state = ?2, last_error = ?3, lease_expires_ms = NULL,
                   outcome = CASE WHEN ?5 THEN ?6 ELSE outcome END,
                   completed_ms = CASE WHEN ?5 THEN ?4 ELSE completed_ms END
                 WHERE trial_id = ?1",
            )?
            .execute(params![id.as_str(), state.as_str(), error, now_ms(), terminal, TrialOutcome::Failed(String::new()).status()])?;
        Ok(())
    }

    /// Hands leases back unfinished (worker shutdown): the trials are pending again and the
    /// attempt does not count against max_attempts.
    pub fn release(&mut self, worker: &WorkerId, ids: &[TrialId]) -> Result<u32, StoreError> {
        let tx = self.conn.savepoint()?;
        let mut n = 0;
        {
            let mut upd = tx.prepare_cached(sql("UPDATE trials SET state = {pending}, attempt = attempt - 1, lease_expires_ms = NULL
                 WHERE trial_id = ?1 AND worker_id = ?2 AND state = {leased}"))?;
            for id in ids {
                n += upd.execute(params![id.as_str(), worker.as_str()])? as u32;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// Leases past their expiry: (trial, attempt, max_attempts).
    pub fn expired(&self, now: i64) -> Result<Vec<(TrialId, u32, u32)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(sql("SELECT t.trial_id, t.attempt, s.max_attempts FROM trials t JOIN sweeps s ON s.sweep_id = t.sweep_id
             WHERE t.state = {leased} AND t.lease_expires_ms < ?1"))?;
        let rows = stmt.query_map(params![now], |r| Ok((TrialId(r.get(0)?), r.get(1)?, r.get(2)?)))?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Every lease, whatever its expiry, goes back to the queue: for an embedded coordinator
    /// restarting after its own local workers died with it.
    pub fn reclaim_all_leases(&self) -> Result<u32, StoreError> {
        Ok(self.conn.execute(sql("UPDATE trials SET state = {pending}, lease_expires_ms = NULL WHERE state = {leased}"), [])? as u32)
    }

    /// Whether any trial of the sweep is still pending or leased (an index lookup).
    pub fn has_open_trials(&self, sweep: &SweepId) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached(sql("SELECT EXISTS(SELECT 1 FROM trials WHERE state = {pending} AND sweep_id = ?1)
                     OR EXISTS(SELECT 1 FROM trials WHERE state = {leased} AND sweep_id = ?1)"))?
            .query_row(params![sweep.as_str()], |r| r.get(0))?)
    }

    /// Sets every non-terminal trial of a sweep to cancelled.
    pub fn cancel(&self, sweep: &SweepId) -> Result<u32, StoreError> {
        Ok(self.conn.execute(
            sql("UPDATE trials SET state = {cancelled}, lease_expires_ms = NULL WHERE sweep_id = ?1 AND state IN ({pending}, {leased})"),
            params![sweep.as_str()],
        )? as u32)
    }

    /// Failed and cancelled trials of a sweep go back to the queue with fresh attempts.
    pub fn requeue_failed(&self, sweep: &SweepId) -> Result<u32, StoreError> {
        Ok(self.conn.execute(
            sql("UPDATE trials SET state = {pending}, attempt = 0, outcome = NULL, completed_ms = NULL WHERE sweep_id = ?1 AND state IN ({failed}, {cancelled})"),
            params![sweep.as_str()],
        )? as u32)
    }

    /// All trials of a sweep in grid order.
    pub fn trials(&self, sweep: &SweepId) -> Result<Vec<TrialRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT trial_id, sweep_id, cell_index, condition, spec_json, state, attempt, worker_id, last_error, outcome, max_level,
                    final_level, epochs_run, wall_time_ms, device, pack_size, completed_ms
             FROM trials WHERE sweep_id = ?1 ORDER BY cell_index",
        )?;
        let raw = stmt
            .query_map(params![sweep.as_str()], |r| {
                Ok((
                    (
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, u32>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                    ),
                    (r.get::<_, u32>(6)?, r.get(7)?, r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?),
                    (r.get(12)?, r.get::<_, Option<i64>>(13)?, r.get(14)?, r.get(15)?, r.get(16)?),
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        raw.into_iter()
            .map(
                |(
                    (id, sweep, cell_index, condition, json, state),
                    (attempt, worker, last_error, outcome, max_level, final_level),
                    (epochs_run, wall, device, pack_size, completed_ms),
                )| {
                    Ok(TrialRow {
                        id: TrialId(id),
                        sweep: SweepId(sweep),
                        cell_index,
                        condition,
                        spec: parse_spec(&json)?,
                        state: parse_state(&state)?,
                        attempt,
                        worker,
                        last_error,
                        outcome,
                        max_level,
                        final_level,
                        epochs_run,
                        wall_time_ms: wall.map(|w| w as u64),
                        device,
                        pack_size,
                        completed_ms,
                    })
                },
            )
            .collect()
    }

    /// Curve rows of a sweep's finished trials, ordered by trial and epoch.
    pub fn curves(&self, sweep: &SweepId) -> Result<Vec<(TrialId, EpochRecord)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            sql("SELECT c.trial_id, c.epoch, c.level, c.train_loss, c.test_accuracy, c.solved, c.grad_norm, c.core_learning, c.cb_learning
             FROM curves c JOIN trials t ON t.trial_id = c.trial_id WHERE t.sweep_id = ?1 AND t.state = {done} ORDER BY t.cell_index, c.epoch"),
        )?;
        let rows = stmt
            .query_map(params![sweep.as_str()], |r| {
                Ok((
                    TrialId(r.get(0)?),
                    EpochRecord {
                        epoch: r.get(1)?,
                        level: r.get(2)?,
                        train_loss: r.get(3)?,
                        test_accuracy: r.get(4)?,
                        solved: r.get(5)?,
                        grad_norm: r.get(6)?,
                        core_learning: r.get(7)?,
                        cb_learning: r.get(8)?,
                    },
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

impl Store {
    /// Checkpoint analyses of a sweep's finished trials.
    pub fn analyses(&self, sweep: &SweepId) -> Result<Vec<(TrialId, AnalysisRecord)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql("SELECT a.trial_id, a.level, a.epoch, a.population, a.metric, a.value
             FROM analyses a JOIN trials t ON t.trial_id = a.trial_id WHERE t.sweep_id = ?1 AND t.state = {done}
             ORDER BY t.cell_index, a.level, a.population, a.metric"))?;
        let rows = stmt
            .query_map(params![sweep.as_str()], |r| {
                Ok((
                    TrialId(r.get(0)?),
                    AnalysisRecord { level: r.get(1)?, epoch: r.get(2)?, population: r.get(3)?, metric: r.get(4)?, value: r.get(5)? },
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

fn sweep_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SweepRow> {
    Ok(SweepRow {
        id: SweepId(r.get(0)?),
        description: r.get(1)?,
        spec_toml: r.get(2)?,
        spec_path: r.get(3)?,
        overrides: r.get(4)?,
        max_attempts: r.get(5)?,
        pack_size: r.get(6)?,
        lease_seconds: r.get(7)?,
        state: r.get::<_, String>(8)?.parse().map_err(|e: String| {
            rusqlite::Error::FromSqlConversionFailure(8, rusqlite::types::Type::Text, format!("sweep state: {e}").into())
        })?,
        created_ms: r.get(9)?,
        finished_ms: r.get(10)?,
    })
}

/// Brings a state file written by an earlier version up to this schema: columns added since
/// are added with their defaults (SQLite's ALTER TABLE ADD COLUMN; nothing is rewritten).
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has = |table: &str, column: &str| -> rusqlite::Result<bool> {
        let mut stmt = conn.prepare(&format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"))?;
        stmt.exists(params![column])
    };
    if !has("sweeps", "overrides")? {
        conn.execute_batch("ALTER TABLE sweeps ADD COLUMN overrides TEXT NOT NULL DEFAULT ''")?;
    }
    Ok(())
}
