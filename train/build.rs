//! Links the binaries of each crate that runs libtorch (the training crate's tests, the worker,
//! the benches; worker/build.rs and benches/build.rs run this script as a module) the way they
//! need at run time:
//! - a run path to the libtorch they were built against (the torch wheel in the project's virtual
//!   environment, or the torch scripts/build-against-torch.sh was given), then to each folder of
//!   CBSWEEP_EXTRA_RPATH (colon-separated: where the same torch lies on the node that runs them),
//!   so they run without LD_LIBRARY_PATH;
//! - the path of that libtorch, for `cbsweep_train::cuda::load`: libtorch_cuda is not linked (no symbol of
//!   it is referenced, so the linker's --as-needed drops it) but opened when a GPU is asked for;
//! - its torch version (`CBSWEEP_TORCH_VERSION`), read beside its lib folder by the parser the
//!   worker checks the loaded libtorch with (`cbsweep_train::libtorch_version`), else from the
//!   CBSWEEP_TORCH_VERSION the build was given.
//!
//! - the ATen operation counter (src/ops/counter.cpp), compiled against that libtorch's
//!   headers, for the training crate only (its tests count operations).

#[path = "src/libtorch_version.rs"]
#[allow(dead_code, unreachable_pub)]
mod libtorch_version;

pub(crate) fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=CBSWEEP_EXTRA_RPATH");
    println!("cargo:rerun-if-env-changed=CBSWEEP_TORCH_VERSION");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    if std::env::var("CARGO_PKG_NAME").as_deref() == Ok("cbsweep-train") {
        compile_op_counter(std::path::Path::new(&lib));
    }
    // The real path, so libtorch's own $ORIGIN-relative rpaths (to the CUDA wheels) resolve.
    let lib = std::fs::canonicalize(&lib).unwrap_or_else(|_| lib.into());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    for extra in std::env::var("CBSWEEP_EXTRA_RPATH").unwrap_or_default().split(':').filter(|d| !d.is_empty()) {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{extra}");
    }
    println!("cargo:rustc-env=CBSWEEP_LIBTORCH_LIB={}", lib.display());
    for file in libtorch_version::version_files(&lib).iter().filter(|f| f.exists()) {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let version = libtorch_version::version_beside(&lib).or_else(|| std::env::var("CBSWEEP_TORCH_VERSION").ok().filter(|v| !v.is_empty()));
    match version {
        Some(version) => println!("cargo:rustc-env=CBSWEEP_TORCH_VERSION={version}"),
        None => println!(
            "cargo:warning=no torch version beside {} (version.py, build-version) and no CBSWEEP_TORCH_VERSION: the worker cannot check the libtorch it loads",
            lib.display()
        ),
    }
}

/// Compiles the ATen operation counter against the headers of the libtorch in `lib`'s parent
/// (the C++ ABI as torch-sys builds its own wrappers: the wheels since torch 2.7 use the new one).
fn compile_op_counter(lib: &std::path::Path) {
    println!("cargo:rerun-if-changed=src/ops/counter.cpp");
    let root = lib.parent().unwrap_or(lib);
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("src/ops/counter.cpp")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("cbsweep_ops");
}
