//! The WAL merge (SQLite calls it a checkpoint; cbsweep keeps that word for a trial's saved
//! training state): a thread that copies committed pages from the WAL into the database file on a
//! connection of its own, so the writer's commits only append to the WAL. It changes no
//! content; it only moves what a commit already made durable.

use super::{BUSY_TIMEOUT, Store, StoreError};
use rusqlite::Connection;
use std::sync::mpsc;
use std::time::Duration;

/// WAL pages (256 MiB) at which the writing connection checkpoints by itself while a
/// `WalMerger` runs beside it (SQLite's default is 1000): only a backstop, since each such
/// checkpoint holds up the writer's commit (measured: 5-20 ms at 4,000 trials/s).
const BACKSTOP_CHECKPOINT_PAGES: i64 = 65_536;

/// A thread that copies committed pages from the WAL into the database file (a passive
/// checkpoint) on a connection of its own, so that the writer's commits only append to the WAL
/// and never wait for a checkpoint's copying and fsyncs. It changes no content: what a commit
/// made durable stays so. Dropping it stops the thread after a last checkpoint.
pub struct WalMerger {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WalMerger {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Store {
    /// Checkpoints this database every `every` while it is written, and ten times less often
    /// while it is not, on a thread of its own (see `WalMerger`); this connection then
    /// checkpoints only as a backstop.
    pub fn merge_wal_in_background(&self, every: Duration) -> Result<WalMerger, StoreError> {
        let conn = Connection::open(&self.path).map_err(|source| StoreError::Open { path: self.path.clone(), source })?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
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
        Ok(WalMerger { stop: Some(stop), thread: Some(thread) })
    }
}
