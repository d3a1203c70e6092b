//! Backing the state up while a coordinator runs (SQLite's online backup, over a read-only
//! connection: the scheduler keeps writing) and restoring a backup into a state folder that no
//! coordinator holds. Both check the copy they make or take, and neither can destroy a state:
//! a backup refuses to write over the state's own files (by identity: symlinks, `./`, hard links
//! all resolve to the same file) or over any existing file unless told to; a restore takes only a
//! cbsweep state of a known schema and keeps the state it replaces beside it.

use super::{DB_FILE, LOCK_FILE, Store, StoreError, check_integrity, lock_state};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, MAIN_DB, OpenFlags};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The tables (and a column of each) every cbsweep state has had since its first schema: what
/// `restore` asks of a file before it takes it as a state.
const KNOWN_SCHEMA: [(&str, &str); 4] = [("sweeps", "spec_toml"), ("trials", "spec_json"), ("curves", "trial_id"), ("analyses", "metric")];

/// The state's own files in `state_dir`: the database, its write-ahead log and shared memory,
/// a rollback journal, the lock.
fn own_files(state_dir: &Path) -> Vec<PathBuf> {
    let db = state_dir.join(DB_FILE);
    let mut files: Vec<PathBuf> = ["-wal", "-shm", "-journal"].iter().map(|s| PathBuf::from(format!("{}{s}", db.display()))).collect();
    files.insert(0, db);
    files.push(state_dir.join(LOCK_FILE));
    files
}

/// (device, inode) of an existing file or folder.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Store {
    /// Copies this database, consistently, to `to`: one snapshot in one step (writers do not
    /// restart it, so it ends in bounded time however busy the state is), written under a
    /// temporary name beside `to`, checked, then renamed into place. Refuses a `to` that is one
    /// of the state's own files, or any existing file unless `overwrite`.
    pub fn backup_to(&self, to: &Path, overwrite: bool) -> Result<(), StoreError> {
        let refuse = |why: String| StoreError::Refused { path: to.to_owned(), why };
        let state_dir = self.path.parent().unwrap_or(Path::new("."));
        let target = identity(to);
        let parent = to.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let in_state_dir = identity(parent).is_some() && identity(parent) == identity(state_dir);
        for own in own_files(state_dir) {
            let same_file = target.is_some() && target == identity(&own);
            let same_name = in_state_dir && to.file_name() == own.file_name();
            if same_file || same_name {
                return Err(refuse(format!(
                    "is the coordinator state's own {} (it would destroy the state it copies): back up to a file outside {}",
                    own.file_name().unwrap_or_default().to_string_lossy(),
                    state_dir.display()
                )));
            }
        }
        if target.is_some() && !overwrite {
            return Err(refuse("exists: pass --overwrite to replace it, or name another file".into()));
        }
        let name = to.file_name().ok_or_else(|| refuse("names no file".into()))?;
        let tmp = parent.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
        let result = self.snapshot_to(&tmp, to).and_then(|()| {
            let copy = Connection::open_with_flags(&tmp, OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(|source| StoreError::BackupWrite { path: to.to_owned(), source })?;
            check_integrity(&copy, to)?;
            drop(copy);
            std::fs::rename(&tmp, to).map_err(|source| StoreError::File { path: to.to_owned(), source })
        });
        // the temporary file and whatever SQLite made beside it; a copy in place has none
        let beside = ["", "-journal", "-wal", "-shm"].map(|s| PathBuf::from(format!("{}{s}", tmp.display())));
        for f in &beside[usize::from(result.is_ok())..] {
            let _ = std::fs::remove_file(f);
        }
        result
    }

    /// Copies every page of this database to a new file `tmp` in one backup step: one read
    /// transaction, one consistent snapshot, however much the state is written meanwhile. The
    /// copy is one file (a rollback journal, not the state's write-ahead log): nothing is left
    /// beside it, and it can be moved as it is.
    fn snapshot_to(&self, tmp: &Path, to: &Path) -> Result<(), StoreError> {
        let err = |source| StoreError::BackupWrite { path: to.to_owned(), source };
        let mut dst = Connection::open(tmp).map_err(err)?;
        let backup = Backup::new(&self.conn, &mut dst).map_err(err)?;
        loop {
            match backup.step(-1).map_err(err)? {
                StepResult::Done => {
                    drop(backup);
                    return dst.pragma_update(None, "journal_mode", "DELETE").map_err(err);
                }
                // a writer held the lock for a moment: the next step copies the whole snapshot again
                StepResult::More | StepResult::Busy | StepResult::Locked => std::thread::sleep(std::time::Duration::from_millis(20)),
                _ => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    }

    /// Puts the backup `from` in place as the state in `state_dir`; refused while a coordinator
    /// holds that folder, and when `from` is not a sound cbsweep state of a known schema. A state
    /// it replaces is kept beside it (returned: `cbsweep.sqlite.replaced-SECONDS`).
    pub fn restore_from(state_dir: &Path, from: &Path) -> Result<Option<PathBuf>, StoreError> {
        let src = Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|source| StoreError::Backup { path: from.to_owned(), source })?;
        check_integrity(&src, from)?;
        check_schema(&src, from)?;
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::File { path: state_dir.to_owned(), source })?;
        let _lock = lock_state(state_dir)?;
        let db = state_dir.join(DB_FILE);
        if identity(from).is_some() && identity(from) == identity(&db) {
            return Err(StoreError::Refused { path: from.to_owned(), why: "is the state it would replace".into() });
        }
        let kept = if db.exists() { Some(set_aside(&db)?) } else { None };
        for stale in [db.with_extension("sqlite-wal"), db.with_extension("sqlite-shm")] {
            let _ = std::fs::remove_file(stale);
        }
        let tmp = db.with_extension("restore");
        let _ = std::fs::remove_file(&tmp);
        src.backup(MAIN_DB, &tmp, None::<fn(rusqlite::backup::Progress)>)
            .map_err(|source| StoreError::Backup { path: from.to_owned(), source })?;
        std::fs::rename(&tmp, &db).map_err(|source| StoreError::File { path: db.clone(), source })?;
        Ok(kept)
    }
}

/// Refuses a database that is not a cbsweep state: one missing a table (or its column) that
/// every schema has had.
fn check_schema(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    for (table, column) in KNOWN_SCHEMA {
        let found: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")
            .and_then(|mut s| s.exists([table, column]))
            .map_err(|source| StoreError::Backup { path: path.to_owned(), source })?;
        if !found {
            return Err(StoreError::Refused {
                path: path.to_owned(),
                why: format!(
                    "is not a cbsweep coordinator state (no table {table} with a column {column}): restore a file written by `cbsweep backup`"
                ),
            });
        }
    }
    Ok(())
}

/// Copies the state `db` (its write-ahead log included) to a file beside it, before a restore
/// replaces it; a database SQLite cannot open is moved aside as it is.
fn set_aside(db: &Path) -> Result<PathBuf, StoreError> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let aside = PathBuf::from(format!("{}.replaced-{secs}", db.display()));
    let copied = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .and_then(|c| c.backup(MAIN_DB, &aside, None::<fn(rusqlite::backup::Progress)>));
    if copied.is_err() {
        let _ = std::fs::remove_file(&aside);
        std::fs::rename(db, &aside).map_err(|source| StoreError::File { path: aside.clone(), source })?;
    }
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    /// A state folder with one sweep's worth of schema, its store closed.
    fn state(dir: &Path) -> PathBuf {
        let state = dir.join("state");
        drop(Store::open(&state).unwrap());
        state
    }

    /// Records a sweep named `name` straight into the database.
    fn add_sweep(db: &Path, name: &str) {
        Connection::open(db)
            .unwrap()
            .execute(
                "INSERT INTO sweeps(sweep_id, description, spec_toml, spec_path, max_attempts, pack_size, lease_seconds, state, created_ms) \
                 VALUES (?1, '', '', '', 1, 1, 1, 'running', 0)",
                [name],
            )
            .unwrap();
    }

    fn sweeps(db: &Path) -> i64 {
        Connection::open(db).unwrap().query_row("SELECT count(*) FROM sweeps", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_backup_onto_the_states_own_files_is_refused_however_they_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let db = state.join(DB_FILE);
        add_sweep(&db, "s");
        let before = std::fs::read(&db).unwrap();
        std::os::unix::fs::symlink(&db, dir.path().join("link.sqlite")).unwrap();
        std::fs::hard_link(&db, dir.path().join("hard.sqlite")).unwrap();
        let dotted = state.join(".").join(DB_FILE);
        let store = Store::open_read_only(&state).unwrap();
        for to in [db.clone(), dotted, dir.path().join("link.sqlite"), dir.path().join("hard.sqlite"), state.join("cbsweep.sqlite-wal")] {
            for overwrite in [false, true] {
                let e = store.backup_to(&to, overwrite).unwrap_err().to_string();
                assert!(e.contains("own") && e.contains("destroy the state"), "{}: {e}", to.display());
            }
        }
        assert_eq!(std::fs::read(&db).unwrap(), before, "the state is untouched");
        let left: Vec<_> =
            std::fs::read_dir(&state).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n.to_string_lossy().contains("tmp")).collect();
        assert!(left.is_empty(), "no temporary file left: {left:?}");

        // an existing file elsewhere: only with --overwrite
        let other = dir.path().join("other.sqlite");
        std::fs::write(&other, b"keep me").unwrap();
        let e = store.backup_to(&other, false).unwrap_err().to_string();
        assert!(e.contains("exists") && e.contains("--overwrite"), "{e}");
        assert_eq!(std::fs::read(&other).unwrap(), b"keep me");
        store.backup_to(&other, true).unwrap();
        assert_eq!(sweeps(&other), sweeps(&db));
    }

    #[test]
    fn a_restore_takes_only_a_cbsweep_state_and_keeps_the_one_it_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let db = state.join(DB_FILE);
        add_sweep(&db, "live");
        let live = sweeps(&db);
        assert_eq!(live, 1);
        // a sound SQLite database that is no cbsweep state
        let foreign = dir.path().join("foreign.sqlite");
        Connection::open(&foreign).unwrap().execute_batch("CREATE TABLE notes(x TEXT); INSERT INTO notes VALUES ('hi');").unwrap();
        let e = Store::restore_from(&state, &foreign).unwrap_err().to_string();
        assert!(e.contains("is not a cbsweep coordinator state") && e.contains("foreign.sqlite"), "{e}");
        assert_eq!(sweeps(&db), live, "the state is untouched");

        // an empty state from a backup: restored, and the replaced one kept beside it
        let empty = dir.path().join("empty");
        let backup = dir.path().join("backup.sqlite");
        Store::open_read_only(&self::state(&empty)).unwrap().backup_to(&backup, false).unwrap();
        let kept = Store::restore_from(&state, &backup).unwrap().expect("the replaced state is kept");
        assert_eq!((sweeps(&db), sweeps(&kept)), (0, live), "{}", kept.display());
        assert!(kept.starts_with(&state));
    }

    /// A backup copies one snapshot in one step: a state written all the time (SQLite's
    /// page-by-page backup restarts at every write and never ends) is still copied, consistent.
    #[test]
    fn a_backup_ends_while_the_state_is_written_all_the_time() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let db = state.join(DB_FILE);
        let (stop, written) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        // a state of some 20,000 pages ...
        Connection::open(&db)
            .unwrap()
            .execute_batch(
                "CREATE TABLE load(x BLOB); BEGIN; \
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) \
                 INSERT INTO load SELECT randomblob(4000) FROM n; COMMIT;",
            )
            .unwrap();
        // ... written every few milliseconds, as a busy coordinator's progress reports do
        let writer = {
            let (stop, written, db) = (stop.clone(), written.clone(), db.clone());
            std::thread::spawn(move || {
                let conn = Connection::open(&db).unwrap();
                conn.busy_timeout(super::super::BUSY_TIMEOUT).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    conn.execute("INSERT INTO load VALUES (randomblob(100))", []).unwrap();
                    written.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(std::time::Duration::from_millis(3));
                }
            })
        };
        while written.load(Ordering::Relaxed) < 10 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let backup = dir.path().join("busy.sqlite");
        let copier = {
            let (state, backup) = (state.clone(), backup.clone());
            std::thread::spawn(move || {
                let r = Store::open_read_only(&state).and_then(|s| s.backup_to(&backup, false));
                tx.send(r.map_err(|e| e.to_string())).unwrap();
            })
        };
        // generous: one step copies ~80 MB in about a second; the copy that restarts at every
        // write never ends
        let result = rx.recv_timeout(std::time::Duration::from_secs(60));
        let during = written.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        result.expect("the backup ended while the state was written").unwrap();
        copier.join().unwrap();
        let copied: i64 = Connection::open(&backup).unwrap().query_row("SELECT count(*) FROM load", [], |r| r.get(0)).unwrap();
        assert!(copied >= 20_000 && copied as u64 <= 20_000 + during, "a consistent snapshot: {copied} rows, {during} written meanwhile");
    }
}
