// The same link set-up as the worker (rpath to libtorch, its path for loading libtorch_cuda): one script.
include!("../worker/build.rs");
