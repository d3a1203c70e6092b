// The same link set-up as the worker (rpath to libtorch, libtorch_cuda kept): one script.
include!("../worker/build.rs");
