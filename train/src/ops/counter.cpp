// A counter of the ATen operations the dispatcher runs on the calling thread, through libtorch's
// RecordFunction callbacks (the mechanism its profiler uses; thread-local, so tests running
// beside it in one process add nothing): the op-count test and the bench read how many
// operations (each a kernel launch on a GPU) one SGD step dispatches. Compiled by worker/build.rs
// against the libtorch the worker links.
#include <ATen/record_function.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>

namespace {
std::atomic<uint64_t> counted{0};
at::CallbackHandle handle = 0;
// With CBSWEEP_OPS_NAMES set, the count per operator name, printed to stderr at the stop: what
// to cut first.
bool by_name = false;
std::mutex names_lock;
std::map<std::string, uint64_t> names;

std::unique_ptr<at::ObserverContext> on_enter(const at::RecordFunction& fn) {
  counted.fetch_add(1, std::memory_order_relaxed);
  if (by_name) {
    std::lock_guard<std::mutex> guard(names_lock);
    names[fn.name()] += 1;
  }
  return nullptr;
}
}  // namespace

extern "C" void cbsweep_ops_start() {
  counted.store(0);
  by_name = std::getenv("CBSWEEP_OPS_NAMES") != nullptr;
  names.clear();
  if (handle == 0) {
    handle = at::addThreadLocalCallback(
        at::RecordFunctionCallback(on_enter).scopes({at::RecordScope::FUNCTION}).needsInputs(false));
  }
}

extern "C" uint64_t cbsweep_ops_stop() {
  if (handle != 0) {
    at::removeCallback(handle);
    handle = 0;
  }
  for (const auto& [name, n] : names) {
    std::fprintf(stderr, "%8llu %s\n", static_cast<unsigned long long>(n), name.c_str());
  }
  return counted.load();
}
