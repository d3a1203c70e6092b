//! The same link set-up as the training crate (rpath to libtorch, its path for loading libtorch_cuda): one script.

#[path = "../train/build.rs"]
mod train_build;

fn main() {
    train_build::main();
}
