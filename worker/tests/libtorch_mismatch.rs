//! A worker started against another torch release's libtorch refuses to start (exit code 2),
//! naming both releases, instead of failing every trial. The other torch is the lib folder in
//! CBSWEEP_TEST_OTHER_TORCH_LIB (e.g. `.../site-packages/torch/lib` of a torch 2.11 install when
//! the build is against 2.13; its CUDA runtime wheels beside it, which libtorch_cpu needs even on
//! the CPU); without it that case skips, saying so. (A worker built against 2.11 and given
//! 2.13's libraries does not get as far: the loader misses a symbol and exits with 127.)

use std::process::{Command, Output};

fn worker(other_lib: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cbsweep-worker"));
    // no token: a worker that passes the check stops at once, before any connection
    cmd.args(["--coordinator", "http://127.0.0.1:9", "--device", "cpu", "--give-up-after-s", "1"]).env_remove("CBSWEEP_TOKEN");
    cmd.env_remove("LD_LIBRARY_PATH");
    if let Some(lib) = other_lib {
        // the binaries' run path is a RUNPATH, which LD_LIBRARY_PATH overrides
        cmd.env("LD_LIBRARY_PATH", lib);
    }
    cmd.output().expect("cannot start cbsweep-worker")
}

#[test]
fn a_worker_with_the_libtorch_it_was_built_against_passes_the_check() {
    let out = worker(None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected the missing token's failure: {stderr}");
    assert!(stderr.contains("no token") && !stderr.contains("built against"), "{stderr}");
}

#[test]
fn a_worker_loaded_against_another_torch_release_refuses_to_start() {
    let Ok(lib) = std::env::var("CBSWEEP_TEST_OTHER_TORCH_LIB") else {
        eprintln!("skipped: set CBSWEEP_TEST_OTHER_TORCH_LIB to the lib folder of a torch of another release than the build's");
        return;
    };
    let out = worker(Some(&lib));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // an older build against a newer libtorch may not get that far: the loader misses a symbol
    if out.status.code() == Some(127) && stderr.contains("undefined symbol") {
        eprintln!("the dynamic loader refused the other libtorch before the worker's check: {stderr}");
        return;
    }
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lib = std::fs::canonicalize(&lib).map_or(lib, |p| p.display().to_string());
    for part in ["this worker was built against torch", &lib, "scripts/build-against-torch.sh PYTHON"] {
        assert!(stderr.contains(part), "{part:?} missing from: {stderr}");
    }
}
