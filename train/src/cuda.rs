//! libtorch's CUDA backend, loaded when a GPU is asked for rather than at every start.
//!
//! libtorch_cuda registers its kernels and CUDA hooks in static initializers, which with the CUDA
//! libraries it pulls in cost about 0.25 s and a few hundred MB of mappings per process. A CPU
//! worker never needs them, so the binaries are not linked to it (worker/build.rs) and
//! `load` opens it (RTLD_GLOBAL) before the first CUDA query: libtorch caches the answer of
//! its first query for the life of the process, so `load` must come first.

#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::sync::OnceLock;

/// The libtorch the binaries were built against (the project's torch wheel).
const LIBTORCH_LIB: Option<&str> = option_env!("CBSWEEP_LIBTORCH_LIB");

/// Loads libtorch_cuda once; Err says why it cannot be (a CPU-only libtorch, missing CUDA
/// libraries). Later calls return the first call's answer.
pub fn load() -> Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED.get_or_init(open).clone()
}

fn open() -> Result<(), String> {
    let mut tried = Vec::new();
    // the lib folder the binary was built against first, then the loader's own search
    let candidates = LIBTORCH_LIB.map(|dir| format!("{dir}/libtorch_cuda.so")).into_iter().chain(["libtorch_cuda.so".to_string()]);
    for name in candidates {
        let c = CString::new(name.clone()).map_err(|e| e.to_string())?;
        // SAFETY: dlopen with a valid C string; the handle is kept open for the process's life.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if !handle.is_null() {
            tracing::debug!(library = %name, "libtorch's CUDA backend loaded");
            return Ok(());
        }
        // SAFETY: dlerror returns null or a C string valid until the next dl* call on this thread.
        let why = unsafe { libc::dlerror() };
        let why = if why.is_null() { "unknown error".into() } else { unsafe { CStr::from_ptr(why) }.to_string_lossy().into_owned() };
        tried.push(why);
    }
    Err(format!("cannot load libtorch's CUDA backend: {}", tried.join("; ")))
}

/// Free and total bytes of CUDA device `device`, from the CUDA runtime libtorch_cuda brought in
/// (`cudaMemGetInfo`; tch does not expose it). None when the backend is not loaded, the runtime
/// is not found, or it reports an error (no driver, no such device).
pub fn memory_info(device: usize) -> Option<(u64, u64)> {
    load().ok()?;
    type SetDevice = unsafe extern "C" fn(i32) -> i32;
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    let symbol = |name: &str| {
        let c = CString::new(name).ok()?;
        // SAFETY: dlsym over the global scope (libtorch_cuda was opened RTLD_GLOBAL, and with it
        // the CUDA runtime it links) with a valid C string; null when absent.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c.as_ptr()) };
        (!p.is_null()).then_some(p)
    };
    let (set, info) = (symbol("cudaSetDevice")?, symbol("cudaMemGetInfo")?);
    // SAFETY: the symbols are the CUDA runtime's, whose C signatures these are:
    // cudaError_t cudaSetDevice(int), cudaError_t cudaMemGetInfo(size_t*, size_t*).
    let (set, info): (SetDevice, MemGetInfo) = unsafe { (std::mem::transmute(set), std::mem::transmute(info)) };
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: plain calls with valid out-pointers; 0 is cudaSuccess.
    let ok = unsafe { set(i32::try_from(device).ok()?) == 0 && info(&mut free, &mut total) == 0 };
    ok.then_some((free as u64, total as u64))
}

#[cfg(test)]
mod tests {
    /// On a machine without a GPU the query answers None (no driver, no device) instead of
    /// failing; on one with a GPU it answers free <= total, both non-zero.
    #[test]
    fn device_memory_is_read_or_absent() {
        match super::memory_info(0) {
            Some((free, total)) => assert!(free > 0 && free <= total, "free {free} of {total}"),
            None => assert!(!tch::Cuda::is_available(), "a GPU is there but its memory could not be read"),
        }
    }

    /// Without the backend libtorch has no CUDA kernels to run; with it loaded, the CUDA runtime
    /// itself answers (no driver or no device on a CPU machine), or the tensor is made on a GPU.
    /// Runs in a process of its own, as the first CUDA query's answer is kept for its life.
    #[test]
    fn loading_gives_libtorch_its_cuda_backend() {
        if std::env::var_os("CBSWEEP_CUDA_LOAD_CHILD").is_none() {
            let exe = std::env::current_exe().unwrap();
            let out = std::process::Command::new(exe)
                .args(["--exact", "cuda::tests::loading_gives_libtorch_its_cuda_backend", "--nocapture"])
                .env("CBSWEEP_CUDA_LOAD_CHILD", "1")
                .output()
                .unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "{text}");
            assert!(text.contains("cuda backend checked"), "the child ran no check: {text}");
            return;
        }
        super::load().expect("the project's torch wheel carries libtorch_cuda");
        match tch::Tensor::f_zeros([1], (tch::Kind::Float, tch::Device::Cuda(0))) {
            Ok(t) => assert_eq!(t.device(), tch::Device::Cuda(0)),
            Err(e) => {
                let e = e.to_string();
                // without the backend: "Could not run 'aten::empty.memory_format' with arguments
                // from the 'CUDA' backend" (or, in older releases, "without ATen_cuda library")
                assert!(!e.contains("'CUDA' backend") && !e.contains("ATen_cuda"), "libtorch still lacks its CUDA backend: {e}");
            }
        }
        println!("cuda backend checked");
    }
}
