//! Links the worker's binaries to libtorch the way they need at run time:
//! - an rpath to the libtorch they were built against (the torch wheel in the project's virtual
//!   environment), so they run without LD_LIBRARY_PATH;
//! - the path of that libtorch, for `torch::cuda::load`: libtorch_cuda is not linked (no symbol of
//!   it is referenced, so the linker's --as-needed drops it) but opened when a GPU is asked for.
//!
//! benches/build.rs runs the same script as a module.

pub(crate) fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    // The real path, so libtorch's own $ORIGIN-relative rpaths (to the CUDA wheels) resolve.
    let lib = std::fs::canonicalize(&lib).unwrap_or_else(|_| lib.into());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-env=CBSWEEP_LIBTORCH_LIB={}", lib.display());
}
