// Links the worker's binaries to libtorch the way they need at run time:
// - an rpath to the libtorch they were built against (the torch wheel in the project's virtual
//   environment), so they run without LD_LIBRARY_PATH;
// - libtorch_cuda kept as a dependency even though no symbol of it is referenced directly (the
//   linker's --as-needed would drop it, and then libtorch sees no GPU on a CUDA node).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    // The real path, so libtorch's own $ORIGIN-relative rpaths (to the CUDA wheels) resolve.
    let lib = std::fs::canonicalize(&lib).unwrap_or_else(|_| lib.into());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
}
