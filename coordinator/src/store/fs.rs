//! Which filesystem a state folder is on, and whether the store may write there. SQLite's WAL
//! keeps its index in memory shared through the `-shm` file and relies on POSIX locks; a
//! network or cluster filesystem (NFS, Lustre, GPFS, ...) shares neither between hosts, so a
//! coordinator there, and a `cbsweep backup` or export from another node beside it, can corrupt
//! the state. So a process that takes a state folder for writing (a store, a restore) refuses
//! such a folder, naming it and what to do, unless the user overrides (`allow_network_state`).
//! Read-only opens (export, stats, plot, backup) are not checked: they write nothing, and with
//! no writer allowed on a network filesystem they read either a local state on its own host or
//! a stopped one (or a copy), which WAL does not corrupt.
//!
//! `classify` is a pure function of statfs(2)'s `f_type` (the Linux magic numbers of
//! linux/magic.h and the vendors' own); `check` probes the folder and judges, naming the
//! filesystem it refuses (the store makes that its `StoreError::NetworkFs`: this file knows no
//! store). FUSE only warns:
//! its one magic covers sshfs and gcsfuse as well as local filesystems (bindfs, ntfs-3g,
//! gocryptfs, virtiofs in container runtimes), and refusing those would block sound uses.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// What statfs says a folder's filesystem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FsKind {
    /// A filesystem of this machine (ext4, xfs, btrfs, zfs, tmpfs, overlay, ...).
    Local,
    /// FUSE: local or remote, statfs cannot tell.
    Fuse,
    /// A network or cluster filesystem, by name.
    Network(&'static str),
}

/// Whether the store may keep its state on a network filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NetworkState {
    Refuse,
    /// The user's override (`--allow-network-state`): go on, with a warning.
    Allow,
}

/// The process's choice: `Store::open` is reached through the scheduler, which knows nothing of
/// filesystems, so main sets it once for the whole process, before any store opens.
static ALLOW_NETWORK_STATE: AtomicBool = AtomicBool::new(false);

/// The network and cluster filesystems' statfs magic numbers, and their names.
const NETWORK: [(u32, &str); 16] = [
    (0x6969, "NFS"),
    (0x517B, "SMB"),
    (0xFF53_4D42, "CIFS"),
    (0xFE53_4D42, "SMB2"),
    (0x0BD0_0BD0, "Lustre"),
    (0x4750_4653, "GPFS (IBM Storage Scale)"),
    (0x00C3_6400, "CephFS"),
    (0x1983_0326, "BeeGFS"),
    (0x5346_414F, "AFS"),
    (0x0102_1997, "9p"),
    (0x7461_636F, "OCFS2"),
    (0x0116_1970, "GFS2"),
    (0xAAD7_AAEA, "PanFS"),
    (0x2003_0528, "OrangeFS"),
    (0x7375_7245, "Coda"),
    (0x0000_564C, "NCP"),
];

const FUSE: u32 = 0x6573_5546;

/// Lets the store write its state on a network filesystem from now on, in this process.
pub fn allow_network_state() {
    ALLOW_NETWORK_STATE.store(true, Ordering::Relaxed);
}

/// Refuses `dir` for writing when it is on a network filesystem and the user did not override
/// (`Err`: that filesystem's name); warns when it goes on there anyway (FUSE, or the override).
/// A folder whose filesystem cannot be probed is not refused.
pub(super) fn check(dir: &Path) -> Result<(), &'static str> {
    let policy = if ALLOW_NETWORK_STATE.load(Ordering::Relaxed) { NetworkState::Allow } else { NetworkState::Refuse };
    match magic(dir) {
        Ok(Some(m)) => judge(dir, classify(m), policy),
        Ok(None) => Ok(()),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot tell which filesystem the state is on (statfs); going on");
            Ok(())
        }
    }
}

/// The kind of filesystem whose statfs `f_type` is `magic` (its low 32 bits: every magic fits,
/// and a 32-bit `f_type` holds CIFS's sign-extended).
fn classify(magic: u32) -> FsKind {
    if magic == FUSE {
        return FsKind::Fuse;
    }
    NETWORK.iter().find(|(m, _)| *m == magic).map_or(FsKind::Local, |(_, name)| FsKind::Network(name))
}

/// The verdict on a folder of `kind` under `policy` (`Err`: the network filesystem refused).
fn judge(dir: &Path, kind: FsKind, policy: NetworkState) -> Result<(), &'static str> {
    match (kind, policy) {
        (FsKind::Local, _) => Ok(()),
        (FsKind::Network(kind), NetworkState::Refuse) => Err(kind),
        (FsKind::Network(kind), NetworkState::Allow) => {
            tracing::warn!(dir = %dir.display(), fs = kind, "state on a network filesystem, as allowed: SQLite's WAL can be corrupted there");
            Ok(())
        }
        (FsKind::Fuse, _) => {
            tracing::warn!(
                dir = %dir.display(),
                "state on a FUSE filesystem: if it is remote (sshfs, gcsfuse, s3fs, ...), SQLite's WAL can be corrupted there; keep the state on a local disk"
            );
            Ok(())
        }
    }
}

/// `dir`'s statfs `f_type`; None where this platform's magic numbers are not Linux's. Unit
/// tests set the answer for their thread (`tests::FAKE_MAGIC`): no NFS can be mounted there.
fn magic(dir: &Path) -> std::io::Result<Option<u32>> {
    #[cfg(test)]
    if let Some(m) = tests::FAKE_MAGIC.get() {
        return Ok(Some(m));
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let s = nix::sys::statfs::statfs(dir).map_err(std::io::Error::from)?;
        Ok(Some(s.filesystem_type().0 as u32))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = dir;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DB_FILE, LOCK_FILE, Store, StoreError};
    use std::cell::Cell;

    thread_local! {
        /// The magic the probe answers on this thread (the store opens on the caller's thread).
        pub(super) static FAKE_MAGIC: Cell<Option<u32>> = const { Cell::new(None) };
    }

    /// Runs `f` with the state folders on this thread seen as on a filesystem of `magic`.
    fn on_fs<T>(magic: u32, f: impl FnOnce() -> T) -> T {
        FAKE_MAGIC.set(Some(magic));
        let out = f();
        FAKE_MAGIC.set(None);
        out
    }

    #[test]
    fn network_and_cluster_filesystems_are_named_by_their_magic() {
        for (magic, name) in [
            (0x6969, "NFS"),
            (0xFF53_4D42, "CIFS"),
            (0xFE53_4D42, "SMB2"),
            (0x517B, "SMB"),
            (0x0BD0_0BD0, "Lustre"),
            (0x4750_4653, "GPFS (IBM Storage Scale)"),
            (0x00C3_6400, "CephFS"),
            (0x1983_0326, "BeeGFS"),
            (0x5346_414F, "AFS"),
            (0x0102_1997, "9p"),
            (0x7461_636F, "OCFS2"),
            (0x0116_1970, "GFS2"),
        ] {
            assert_eq!(classify(magic), FsKind::Network(name), "{magic:#x}");
        }
        // A 32-bit f_type holds CIFS's magic sign-extended; its low 32 bits are the magic.
        assert_eq!(classify(0xFF53_4D42_u32 as i32 as i64 as u32), FsKind::Network("CIFS"));
        assert_eq!(classify(0x6573_5546), FsKind::Fuse);
    }

    #[test]
    fn local_filesystems_are_local() {
        // ext2/3/4, xfs, btrfs, zfs, tmpfs, overlay, squashfs
        for magic in [0xEF53, 0x5846_5342, 0x9123_683E, 0x2FC1_2FC1, 0x0102_1994, 0x794C_7630, 0x7371_7368] {
            assert_eq!(classify(magic), FsKind::Local, "{magic:#x}");
        }
    }

    #[test]
    fn a_network_state_is_refused_with_what_to_do_unless_allowed() {
        let dir = Path::new("/shared/cbsweep");
        let kind = judge(dir, FsKind::Network("Lustre"), NetworkState::Refuse).unwrap_err();
        assert_eq!(kind, "Lustre");
        let msg = StoreError::NetworkFs { dir: dir.to_owned(), kind }.to_string();
        for part in [
            "/shared/cbsweep",
            "Lustre",
            "shared memory",
            "locks",
            "--state",
            "local disk",
            "--out",
            "--allow-network-state",
            "CBSWEEP_ALLOW_NETWORK_STATE=1",
        ] {
            assert!(msg.contains(part), "{part:?} missing from: {msg}");
        }
        assert!(judge(dir, FsKind::Network("Lustre"), NetworkState::Allow).is_ok());
        assert!(judge(dir, FsKind::Fuse, NetworkState::Refuse).is_ok(), "FUSE warns only");
        assert!(judge(dir, FsKind::Local, NetworkState::Refuse).is_ok());
    }

    #[test]
    fn the_store_refuses_a_state_folder_on_nfs_and_writes_nothing_there() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let e = on_fs(0x6969, || Store::open(&state)).err().expect("refused");
        assert!(matches!(&e, StoreError::NetworkFs { kind: "NFS", dir } if dir == &state), "{e:?}");
        assert!(!state.join(DB_FILE).exists() && !state.join(LOCK_FILE).exists(), "nothing written in {}", state.display());
        // The same folder on a local filesystem (ext4) opens.
        assert!(on_fs(0xEF53, || Store::open(&state)).is_ok());
    }

    #[test]
    fn a_restore_into_a_folder_on_lustre_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let backup = dir.path().join("backup.sqlite");
        on_fs(0xEF53, || Store::open(&dir.path().join("a"))).unwrap().backup_to(&backup, false).unwrap();
        let target = dir.path().join("b");
        let e = on_fs(0x0BD0_0BD0, || Store::restore_from(&target, &backup)).unwrap_err();
        assert!(matches!(e, StoreError::NetworkFs { kind: "Lustre", .. }), "{e:?}");
        assert!(!target.join(DB_FILE).exists());
        assert!(on_fs(0xEF53, || Store::restore_from(&target, &backup)).is_ok());
    }

    #[test]
    fn the_probe_reads_the_magic_that_stat_reports() {
        let dir = tempfile::tempdir().unwrap();
        let m = magic(dir.path()).unwrap().expect("a Linux magic");
        let Ok(out) = std::process::Command::new("stat").args(["-f", "-c", "%t"]).arg(dir.path()).output() else { return };
        assert_eq!(format!("{m:x}"), String::from_utf8_lossy(&out.stdout).trim());
    }
}
