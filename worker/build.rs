//! The worker's binaries link libtorch as the training crate's do: one script (train/build.rs).

#[path = "../train/build.rs"]
mod train_build;

fn main() {
    train_build::main();
}
