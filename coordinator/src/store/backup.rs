//! Backing the state up while a coordinator runs (SQLite's online backup, over a read-only
//! connection: the scheduler keeps writing) and restoring a backup into a state folder that no
//! coordinator holds. Both check the copy they make or take.

use super::{DB_FILE, Store, StoreError, check_integrity, lock_state};
use rusqlite::{Connection, MAIN_DB};
use std::path::Path;

impl Store {
    /// Copies this database, consistently, to `to` (written under a temporary name, checked,
    /// then renamed into place).
    pub fn backup_to(&self, to: &Path) -> Result<(), StoreError> {
        let tmp = to.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        self.conn
            .backup(MAIN_DB, &tmp, None::<fn(rusqlite::backup::Progress)>)
            .map_err(|source| StoreError::Backup { path: to.to_owned(), source })?;
        let copy = Connection::open(&tmp).map_err(|source| StoreError::Backup { path: to.to_owned(), source })?;
        check_integrity(&copy, to)?;
        drop(copy);
        std::fs::rename(&tmp, to).map_err(|source| StoreError::File { path: to.to_owned(), source })
    }

    /// Puts the backup `from` in place as the state in `state_dir`; refused while a coordinator
    /// holds that folder, and when `from` is not a sound state file.
    pub fn restore_from(state_dir: &Path, from: &Path) -> Result<(), StoreError> {
        let src = Connection::open_with_flags(from, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|source| StoreError::Backup { path: from.to_owned(), source })?;
        check_integrity(&src, from)?;
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::File { path: state_dir.to_owned(), source })?;
        let _lock = lock_state(state_dir)?;
        let db = state_dir.join(DB_FILE);
        for stale in [db.with_extension("sqlite-wal"), db.with_extension("sqlite-shm")] {
            let _ = std::fs::remove_file(stale);
        }
        let tmp = db.with_extension("restore");
        let _ = std::fs::remove_file(&tmp);
        src.backup(MAIN_DB, &tmp, None::<fn(rusqlite::backup::Progress)>)
            .map_err(|source| StoreError::Backup { path: from.to_owned(), source })?;
        std::fs::rename(&tmp, &db).map_err(|source| StoreError::File { path: db.clone(), source })
    }
}
