//! A worker started against another torch release's libtorch refuses to start (exit code 2),
//! naming both releases, instead of failing every trial.
//!
//! What the worker reads is the version of the install its libtorch_cpu.so was loaded from
//! (torch/version.py beside the lib folder). So the check runs everywhere, CI included, against
//! the build's own libraries laid out as another install: a folder shaped like a wheel's
//! (torch/lib holding hard links, or copies, of the libraries; torch/version.py; the CUDA
//! runtime wheels beside it through links), labelled once with the build's release (it passes)
//! and once with another (refused). The loader takes it as it would another torch, and the
//! libraries are the build's own, so it always gets as far as the check.
//!
//! A real torch of another release is `a_worker_loaded_against_a_real_other_torch_refuses_to_start`,
//! ignored unless asked for (`cargo nextest run --run-ignored all`, with
//! CBSWEEP_TEST_OTHER_TORCH_LIB the lib folder of, e.g., a torch 2.11 install when the build is
//! against 2.13). A loader that refuses that libtorch before the worker's check (a missing
//! symbol, exit code 127: a build against 2.11 given 2.13) fails it: nothing was checked.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The torch release the worker was built against, and that torch's lib folder (worker/build.rs).
const BUILT_VERSION: Option<&str> = option_env!("CBSWEEP_TORCH_VERSION");
const BUILT_LIB: Option<&str> = option_env!("CBSWEEP_LIBTORCH_LIB");

fn worker(lib: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cbsweep-worker"));
    // no token: a worker that passes the check stops at once, before any connection
    cmd.args(["--coordinator", "http://127.0.0.1:9", "--device", "cpu", "--give-up-after-s", "1"]).env_remove("CBSWEEP_TOKEN");
    cmd.env_remove("LD_LIBRARY_PATH");
    if let Some(lib) = lib {
        // the binaries' run path is a RUNPATH, which LD_LIBRARY_PATH overrides
        cmd.env("LD_LIBRARY_PATH", lib);
    }
    cmd.output().expect("cannot start cbsweep-worker")
}

/// The build's torch laid out as an install of torch `version` under `dir`: the lib folder of
/// the result. libtorch_cpu.so is a hard link or a copy (the worker finds its install by the
/// path the library is mapped from, which a symbolic link would resolve to the build's own).
fn relabelled_torch(dir: &Path, version: &str) -> PathBuf {
    let built_lib = std::fs::canonicalize(BUILT_LIB.expect("worker/build.rs records the libtorch it links")).unwrap();
    let torch = built_lib.parent().unwrap();
    let site = torch.parent().unwrap();
    let (new_site, new_torch) = (dir.join("site-packages"), dir.join("site-packages/torch"));
    let new_lib = new_torch.join("lib");
    std::fs::create_dir_all(&new_lib).unwrap();
    std::fs::write(new_torch.join("version.py"), format!("__version__ = '{version}'\n")).unwrap();
    // libtorch_cpu.so's run paths reach the CUDA wheels at $ORIGIN/../../nvidia/...
    for entry in std::fs::read_dir(site).unwrap().flatten() {
        if entry.file_name() != "torch" {
            std::os::unix::fs::symlink(entry.path(), new_site.join(entry.file_name())).unwrap();
        }
    }
    for entry in std::fs::read_dir(&built_lib).unwrap().flatten() {
        let (from, to) = (entry.path(), new_lib.join(entry.file_name()));
        if entry.file_type().unwrap().is_file() {
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).unwrap();
            }
        } else {
            std::os::unix::fs::symlink(&from, &to).unwrap();
        }
    }
    new_lib
}

/// "2.12.0" for a build against "2.13.0+cu130": a release other than the build's.
fn another_release(built: &str) -> String {
    let mut parts = built.split(['.', '+']);
    let major: u32 = parts.next().unwrap().parse().unwrap();
    let minor: u32 = parts.next().unwrap().parse().unwrap();
    format!("{major}.{}.0", if minor > 0 { minor - 1 } else { minor + 1 })
}

/// Exit code 2, naming the build's release, the loaded one (`loaded`, when known) and its folder,
/// and the fix.
fn assert_refused(out: &Output, lib: &Path, loaded: Option<&str>) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lib = std::fs::canonicalize(lib).unwrap().display().to_string();
    let built = format!("this worker was built against torch {}", BUILT_VERSION.unwrap());
    let from = format!("loaded libtorch {}", loaded.map_or(String::new(), |v| format!("{v} from {lib}")));
    for part in [built.as_str(), &from, &lib, "scripts/build-against-torch.sh PYTHON"] {
        assert!(stderr.contains(part), "{part:?} missing from: {stderr}");
    }
}

#[test]
fn a_worker_with_the_libtorch_it_was_built_against_passes_the_check() {
    let out = worker(None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected the missing token's failure: {stderr}");
    assert!(stderr.contains("no token") && !stderr.contains("built against"), "{stderr}");
}

#[test]
fn a_worker_loaded_from_an_install_of_another_release_refuses_to_start_and_of_its_own_passes() {
    let built = BUILT_VERSION.expect("worker/build.rs records the torch version it builds against");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // the same libraries labelled with the build's own release: loaded from there, they pass
    let own = relabelled_torch(&dir.path().join("own"), built);
    let out = worker(Some(&own));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected the missing token's failure: {stderr}");
    assert!(stderr.contains("no token") && !stderr.contains("built against") && !stderr.contains("cannot confirm"), "{stderr}");
    // ... and labelled with another release, refused
    let other = another_release(built);
    let lib = relabelled_torch(&dir.path().join("other"), &other);
    assert_refused(&worker(Some(&lib)), &lib, Some(&other));
}

#[test]
#[ignore = "needs CBSWEEP_TEST_OTHER_TORCH_LIB, the lib folder of a torch of another release; run with --run-ignored"]
fn a_worker_loaded_against_a_real_other_torch_refuses_to_start() {
    let lib = std::env::var("CBSWEEP_TEST_OTHER_TORCH_LIB")
        .expect("set CBSWEEP_TEST_OTHER_TORCH_LIB to the lib folder of a torch of another release than the build's");
    let lib = PathBuf::from(lib);
    let out = worker(Some(&lib));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(127),
        "the dynamic loader refused that libtorch before the worker could check it (nothing was checked): {stderr}"
    );
    assert_refused(&out, &lib, None);
}
