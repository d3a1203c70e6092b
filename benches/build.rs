//! The same link set-up as the worker (rpath to libtorch, its path for loading libtorch_cuda): one script.

#[path = "../worker/build.rs"]
mod worker_build;

fn main() {
    worker_build::main();
}
