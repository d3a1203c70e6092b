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
//!
//! This file: opening (schema, migration of older state files), batches, the row types and the
//! helpers the others share; `sweeps.rs` (sweeps, workers), `leases.rs` (the trial queue),
//! `read.rs` (what the results read), `resume.rs` (trials' checkpoints and what interruptions
//! cost), `wal.rs` (the WAL merge: the thread that copies the WAL into the database file, SQLite's "checkpoint", unrelated to trials' checkpoints), `fs.rs`
//! (the refusal of a state folder on a network filesystem). The children use this file; it uses
//! none of them but `fs.rs`, which the lock calls.

mod backup;
pub mod fs;
mod leases;
mod read;
mod resume;
mod sweeps;
pub mod wal;

use cbsweep_common::{Attempt, SweepId, SweepState, TrialId, TrialSpec, TrialState};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, params};
use std::path::{Path, PathBuf};

/// The database file inside a coordinator's state directory.
pub const DB_FILE: &str = "cbsweep.sqlite";

/// The lock file inside a state directory: held (flock, exclusive) by the one process that
/// writes the state, and naming it, so a second coordinator or `cbsweep run` on the same
/// folder is refused instead of reclaiming the first one's leases.
pub const LOCK_FILE: &str = "lock";

/// How long `Store::open` waits for the lock before refusing: long enough for a process that
/// is just letting go of the same state (a restart), far shorter than any real run.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// How long a connection waits for another's lock before its statement fails (SQLite's
/// busy_timeout), for every connection of the state: the writer's, the checkpoint thread's, the
/// readers'.
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Prepared statements kept per connection (more than the store has).
const STATEMENT_CACHE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open coordinator state {}: {source}", path.display())]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("coordinator state: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("coordinator state holds an unreadable {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// The commit of a batch failed: none of its commands took effect. `retryable`: it may pass
    /// once the disk has room again (see `StoreError::retryable`).
    #[error("coordinator state: commit failed: {detail}")]
    Commit { detail: String, retryable: bool },
    #[error("cannot start the checkpoint thread: {0}")]
    Thread(std::io::Error),
    #[error("coordinator state {} is in use by {holder}: stop it first, or give this one another --state (or --out)", dir.display())]
    Locked { dir: PathBuf, holder: String },
    /// The state folder is on a network filesystem, where SQLite's WAL is unsafe (`fs.rs`).
    #[error(
        "coordinator state {} is on a network filesystem ({kind}): SQLite's write-ahead log needs shared memory and POSIX locks that {kind} does not keep between hosts, and the state can be corrupted there; keep the state on a local disk (`--state` on e.g. /tmp or node-local scratch, `--out` on the shared disk for results; for `cbsweep run`, an --out on a local disk), or pass --allow-network-state (or set CBSWEEP_ALLOW_NETWORK_STATE=1) to use it anyway at your own risk",
        dir.display()
    )]
    NetworkFs { dir: PathBuf, kind: &'static str },
    #[error("cannot lock coordinator state {}: {source}", path.display())]
    Lock { path: PathBuf, source: std::io::Error },
    /// The state file is missing, empty or damaged in a folder that held a state before.
    #[error("coordinator state {} {what}: restore a backup with `cbsweep restore --state {} FILE`, or move the folder away to start anew", path.display(), path.parent().unwrap_or(Path::new(".")).display())]
    Damaged { path: PathBuf, what: String },
    /// The state file cannot be read: why, and what to do.
    #[error("cannot read coordinator state {}: {why}", path.display())]
    Unreadable { path: PathBuf, why: String },
    #[error("cannot write the backup {}: {source} (check that its folder exists and this user may write it)", path.display())]
    BackupWrite { path: PathBuf, source: rusqlite::Error },
    #[error("cannot back up or restore coordinator state {}: {source}", path.display())]
    Backup { path: PathBuf, source: rusqlite::Error },
    /// A backup or restore that would destroy or lose a state, refused before it wrote anything.
    #[error("refused: {} {why}", path.display())]
    Refused { path: PathBuf, why: String },
    #[error("{}: {source}", path.display())]
    File { path: PathBuf, source: std::io::Error },
}

impl StoreError {
    /// Whether the error may pass by itself, the state untouched: a full disk (or quota), an
    /// I/O error, a lock held a moment. The caller should retry (the workers do, keeping their
    /// results); nothing of the failed call took effect.
    pub fn retryable(&self) -> bool {
        use rusqlite::ErrorCode as C;
        match self {
            StoreError::Sql(rusqlite::Error::SqliteFailure(e, _)) => {
                matches!(e.code, C::DiskFull | C::SystemIoFailure | C::DatabaseBusy | C::DatabaseLocked | C::OutOfMemory)
            }
            StoreError::Commit { retryable, .. } => *retryable,
            _ => false,
        }
    }
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
  finished_ms INTEGER,
  checkpoint_every INTEGER NOT NULL DEFAULT 10,
  checkpoint_seconds INTEGER NOT NULL DEFAULT 300);
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
  -- attempts that do not count toward max_attempts: leases handed back, attempts before a retry
  uncounted INTEGER NOT NULL DEFAULT 0,
  worker_id TEXT,
  -- on the running coordinator's lease clock (monotonic, stopped while the state cannot be
  -- written, restarted at each start: see scheduler/clock.rs), not Unix time
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
  -- the latest epoch an attempt reported; epochs trained again after an interruption (past
  -- the checkpoint the next attempt resumed from); attempts that resumed from a checkpoint
  progress_epoch INTEGER NOT NULL DEFAULT 0,
  epochs_lost INTEGER NOT NULL DEFAULT 0,
  resumes INTEGER NOT NULL DEFAULT 0,
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
-- The latest checkpoint of each unfinished trial (its whole training state, as the worker
-- wrote it); dropped once the trial is done.
CREATE TABLE IF NOT EXISTS trial_checkpoints(
  trial_id TEXT PRIMARY KEY REFERENCES trials(trial_id),
  attempt INTEGER NOT NULL,
  epochs_done INTEGER NOT NULL,
  sha256 TEXT NOT NULL,
  saved_ms INTEGER NOT NULL,
  data BLOB NOT NULL);
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
    /// The checkpoint cadence (`RunPolicy::checkpoint_every`, `checkpoint_seconds`).
    pub checkpoint_every: u32,
    pub checkpoint_seconds: u32,
}

impl SweepRow {
    /// The `[run]` settings the row holds.
    pub fn run_policy(&self) -> cbsweep_common::RunPolicy {
        cbsweep_common::RunPolicy {
            max_attempts: self.max_attempts,
            pack_size: self.pack_size,
            lease_seconds: self.lease_seconds,
            checkpoint_every: self.checkpoint_every,
            checkpoint_seconds: self.checkpoint_seconds,
        }
    }
}

/// A trial handed to a worker.
#[derive(Clone, Debug)]
pub struct Leased {
    pub id: TrialId,
    pub attempt: Attempt,
    pub spec: TrialSpec,
    /// When the lease expires unless renewed: on the lease clock as the store returns it; the
    /// scheduler turns it into Unix ms (an estimate, for the worker's information).
    pub expires_ms: i64,
    /// The checkpoint this attempt resumes from: (epochs done, bytes); None: from scratch.
    pub resume: Option<(u32, u64)>,
    /// Its sweep's checkpoint cadence: (epochs, seconds).
    pub cadence: (u32, u32),
}

/// A trial's stored checkpoint.
#[derive(Clone, Debug)]
pub struct StoredCheckpoint {
    pub attempt: u32,
    pub epochs_done: u32,
    pub sha256: String,
    pub saved_ms: i64,
    pub data: Vec<u8>,
}

/// What a sweep's interruptions cost, for its status: epochs trained again, attempts resumed,
/// and of its running trials the oldest latest checkpoint's time and how many have none.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ResumeTally {
    pub epochs_lost: u64,
    pub resumes: u32,
    pub oldest_checkpoint_ms: Option<i64>,
    pub running_without_checkpoint: u32,
}

/// A worker seen lately: (id, hostname, device, trials it holds, milliseconds since seen).
pub type LiveWorker = (String, String, String, u32, i64);

/// Where a trial stands when a completion arrives.
#[derive(Clone, Debug)]
pub struct TrialLease {
    pub state: TrialState,
    /// The current attempt, the fencing token: it only ever grows.
    pub attempt: u32,
    /// The attempts that count toward `max_attempts` (not those handed back, nor those before a
    /// retry-failed).
    pub counted: u32,
    pub worker: Option<String>,
    pub sweep: SweepId,
    pub max_attempts: u32,
    /// The trial's cell key (for messages).
    pub cell: String,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// The state folder's lock, held while this store may write (None when read-only).
    _lock: Option<nix::fcntl::Flock<std::fs::File>>,
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
        // A folder that held a state before (a store left its lock file there; a token alone
        // says nothing, scripts write it before the first start) whose database is gone or
        // empty lost every sweep: refuse rather than start anew over it.
        let used_before = state_dir.join(LOCK_FILE).exists();
        let lock = lock_state(state_dir)?;
        let size = std::fs::metadata(&path).map(|m| m.len()).ok();
        if used_before && size.unwrap_or(0) == 0 {
            let what = if size.is_none() { "is missing" } else { "is empty (0 bytes)" };
            return Err(StoreError::Damaged { path, what: format!("{what}, but this folder held a coordinator's state before") });
        }
        let conn = Connection::open(&path).map_err(open_err)?;
        check_integrity(&conn, &path)?;
        // WAL + NORMAL: a committed transaction survives a killed process (it is in the WAL,
        // which the OS holds); only a power loss could drop the last few.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // Query plans that never depend on bound values: otherwise a cached statement with
        // `LIMIT ?` is compiled again on every call. A cache that holds every hot statement.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map_err(open_err)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.execute_batch(sql(SCHEMA)).map_err(open_err)?;
        migrate(&conn).map_err(open_err)?;
        Ok(Store { conn, path, _lock: Some(lock) })
    }

    /// Opens the database read-only, for exports beside a running scheduler, and reads its
    /// schema, so that a state it cannot read is refused here, naming the file and why. A state
    /// on a read-only disk (or in a folder this user may not write) is read as it is on disk
    /// (SQLite's `immutable`): its write-ahead log's shared memory cannot be made there, and no
    /// process can be writing it, which the state's lock confirms.
    pub fn open_read_only(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join(DB_FILE);
        let unreadable = |why: String| StoreError::Unreadable { path: path.clone(), why };
        if let Err(e) = std::fs::File::open(&path) {
            return Err(unreadable(match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "no such file: name the folder the coordinator keeps its state in (--state DIR, or the --out OUT of `cbsweep run`)"
                        .into()
                }
                std::io::ErrorKind::PermissionDenied => "permission denied: run this as a user who may read it".into(),
                _ => e.to_string(),
            }));
        }
        let probe = |conn: Connection| -> Result<Store, rusqlite::Error> {
            conn.busy_timeout(BUSY_TIMEOUT)?;
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0))?;
            Ok(Store { conn, path: path.clone(), _lock: None })
        };
        let first = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).and_then(probe);
        match first {
            Ok(store) => Ok(store),
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::CannotOpen) => {
                // A WAL database needs its -shm file, which SQLite makes beside it: not on a
                // read-only disk. Read the file as it is, if that is all there is to read.
                let wal = PathBuf::from(format!("{}-wal", path.display()));
                if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
                    return Err(unreadable(format!(
                        "its folder is not writable, and its write-ahead log {} holds commits SQLite can only read with a -shm file beside it: copy the folder somewhere writable and read the copy",
                        wal.display()
                    )));
                }
                if let Some(holder) = lock_holder(state_dir) {
                    return Err(unreadable(format!(
                        "its folder is not writable for this user while {holder} writes it: run this as that process's user, or read a `cbsweep backup` of it"
                    )));
                }
                Connection::open_with_flags(
                    immutable_uri(&path),
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
                )
                .and_then(probe)
                .map_err(|e| unreadable(format!("{e}: check that this user may read it")))
            }
            Err(e) => Err(unreadable(format!("{e}: check that it is a cbsweep state and that this user may read it"))),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows this connection has inserted, changed or deleted since it opened (rolled back ones
    /// included): a batch that changed it wrote something.
    pub fn total_changes(&self) -> u64 {
        self.conn.total_changes()
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
}

/// SQLite's quick check of every page: a damaged file is refused at start, naming it, instead of
/// failing call after call later.
fn check_integrity(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let damaged = |what: String| StoreError::Damaged { path: path.to_owned(), what };
    let verdict: Vec<String> = conn
        .prepare("PRAGMA quick_check(5)")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| damaged(format!("cannot be read ({e})")))?;
    if verdict != ["ok"] {
        return Err(damaged(format!("is damaged ({})", verdict.join("; "))));
    }
    Ok(())
}

/// Takes the state folder for writing (opening the store, restoring a backup): refuses a folder
/// on a network filesystem (`fs::check`, before anything is written there), then takes its
/// exclusive lock (waiting up to `LOCK_WAIT`) and writes who holds it into the lock file;
/// refuses, naming the holder, when another process keeps it.
fn lock_state(state_dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, StoreError> {
    use nix::fcntl::{Flock, FlockArg};
    use std::io::Write;
    fs::check(state_dir).map_err(|kind| StoreError::NetworkFs { dir: state_dir.to_owned(), kind })?;
    let path = state_dir.join(LOCK_FILE);
    let lock_err = |source| StoreError::Lock { path: path.clone(), source };
    let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(lock_err)?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
                let holder = format!(
                    "pid {} on {} ({})",
                    std::process::id(),
                    host.trim(),
                    std::env::args().collect::<Vec<_>>().join(" ").chars().take(200).collect::<String>()
                );
                lock.set_len(0).map_err(lock_err)?;
                (&*lock).write_all(holder.as_bytes()).map_err(lock_err)?;
                return Ok(lock);
            }
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                file = f;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let holder =
                    std::fs::read_to_string(&path).ok().filter(|h| !h.trim().is_empty()).unwrap_or_else(|| "another process".into());
                return Err(StoreError::Locked { dir: state_dir.to_owned(), holder: holder.trim().to_string() });
            }
            Err((_, e)) => return Err(lock_err(std::io::Error::from(e))),
        }
    }
}

/// Who holds the lock of `state_dir` (a coordinator or `cbsweep run` writing it), if anyone: a
/// shared lock is tried on the lock file, opened for reading only.
fn lock_holder(state_dir: &Path) -> Option<String> {
    use nix::fcntl::{Flock, FlockArg};
    let path = state_dir.join(LOCK_FILE);
    let file = std::fs::File::open(&path).ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_) => None,
        Err(_) => Some(
            std::fs::read_to_string(&path)
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "another process".into()),
        ),
    }
}

/// An SQLite URI that reads `path` as it is on disk, taking no lock and making no file beside
/// it (`immutable=1`): for a state that nothing can write.
fn immutable_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for b in path.as_os_str().as_encoded_bytes() {
        match b {
            b'?' | b'#' | b'%' => uri.push_str(&format!("%{b:02X}")),
            b if b.is_ascii_graphic() => uri.push(char::from(*b)),
            b => uri.push_str(&format!("%{b:02X}")),
        }
    }
    uri + "?immutable=1"
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
    let added = [
        ("trials", "uncounted", "INTEGER NOT NULL DEFAULT 0"),
        ("trials", "progress_epoch", "INTEGER NOT NULL DEFAULT 0"),
        ("trials", "epochs_lost", "INTEGER NOT NULL DEFAULT 0"),
        ("trials", "resumes", "INTEGER NOT NULL DEFAULT 0"),
        ("sweeps", "checkpoint_every", "INTEGER NOT NULL DEFAULT 10"),
        ("sweeps", "checkpoint_seconds", "INTEGER NOT NULL DEFAULT 300"),
    ];
    for (table, column, decl) in added {
        if !has(table, column)? {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
        }
    }
    Ok(())
}
