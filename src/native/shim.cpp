// The libtorch calls that tch does not bind, as plain C functions over tch's tensor handles.
//
// tch hands out `at::Tensor*` handles (`Tensor::as_ptr`); each function here takes such handles,
// calls libtorch, and returns nullptr on success or a heap-allocated error message (freed with
// `amoe_free_error`) when libtorch throws: no C++ exception crosses into Rust. Compiled by
// build.rs against the headers of the libtorch that torch-sys links.

#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_foreach_zero.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/stack.h>
#include <ATen/record_function.h>

#include "guarded.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

namespace {

using altup_moe_native::copy_message;
using altup_moe_native::guarded;

std::vector<at::Tensor> list(at::Tensor* const* tensors, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(*tensors[i]);
  }
  return out;
}

// The ATen-operation counter: a RecordFunction callback on every c10/ATen operation. With
// timing on, the top-level operations' wall time is also summed per operation name.
std::atomic<int64_t> g_top_level_ops{0};
std::atomic<int64_t> g_all_ops{0};
std::atomic<bool> g_timing{false};
thread_local int t_depth = 0;
std::optional<at::CallbackHandle> g_counter;
std::mutex g_times_mutex;
std::map<std::string, std::pair<int64_t, double>> g_times;  // name -> (calls, seconds)

struct Started : at::ObserverContext {
  std::chrono::steady_clock::time_point at;
};

std::unique_ptr<at::ObserverContext> count_start(const at::RecordFunction&) {
  const bool top = t_depth == 0;
  if (top) {
    g_top_level_ops.fetch_add(1, std::memory_order_relaxed);
  }
  g_all_ops.fetch_add(1, std::memory_order_relaxed);
  ++t_depth;
  if (top && g_timing.load(std::memory_order_relaxed)) {
    auto started = std::make_unique<Started>();
    started->at = std::chrono::steady_clock::now();
    return started;
  }
  return nullptr;
}

void count_end(const at::RecordFunction& fn, at::ObserverContext* context) {
  --t_depth;
  if (context != nullptr) {
    const auto started = static_cast<Started*>(context)->at;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    std::lock_guard<std::mutex> lock(g_times_mutex);
    auto& entry = g_times[fn.name()];
    entry.first += 1;
    entry.second += seconds;
  }
}

}  // namespace

extern "C" {

void amoe_free_error(char* error) {
  std::free(error);
}

// The deterministic-algorithms flag (plain setters and getters of the global context; they do
// not throw).
void amoe_set_deterministic(bool enabled) {
  at::globalContext().setDeterministicAlgorithms(enabled, /*warn_only=*/false);
}

bool amoe_is_deterministic() {
  return at::globalContext().deterministicAlgorithms();
}

// One AdamW step over `n` parameters with libtorch's fused kernel (all on one device, one dtype
// per list): `step` is the shared f32 step-count tensor (already advanced by the caller), `lr` a
// scalar learning-rate tensor on the device (read by the kernel, so that a captured step sees a
// new value at each replay), `found_inf` an optional scalar f32 flag: when it holds 1 the kernel
// leaves everything unchanged.
char* amoe_fused_adamw(at::Tensor* const* params, at::Tensor* const* grads, at::Tensor* const* exp_avgs,
                       at::Tensor* const* exp_avg_sqs, size_t n, const at::Tensor* step, const at::Tensor* lr,
                       double beta1, double beta2, double weight_decay, double eps, const at::Tensor* found_inf) {
  return guarded([&] {
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> steps(n, *step);
    std::optional<at::Tensor> inf;
    if (found_inf != nullptr) {
      inf = *found_inf;
    }
    const auto p = list(params, n), g = list(grads, n), m = list(exp_avgs, n), v = list(exp_avg_sqs, n);
    at::_fused_adamw_(p, g, m, v, {}, steps, *lr, beta1, beta2, weight_decay, eps, false, false, std::nullopt, inf);
  });
}

// The L2 norms of `n` tensors (`dtype` < 0: each tensor's own dtype, else a c10::ScalarType),
// stacked into a new `[n]` tensor written to `*out`.
char* amoe_foreach_norm(at::Tensor* const* tensors, size_t n, int dtype, at::Tensor** out) {
  return guarded([&] {
    at::NoGradGuard no_grad;
    std::optional<at::ScalarType> kind;
    if (dtype >= 0) {
      kind = static_cast<at::ScalarType>(dtype);
    }
    *out = new at::Tensor(at::stack(at::_foreach_norm(list(tensors, n), 2, kind)));
  });
}

// Multiplies `n` tensors in place by the scalar tensor `scale`.
char* amoe_foreach_mul_(at::Tensor* const* tensors, size_t n, const at::Tensor* scale) {
  return guarded([&] {
    at::NoGradGuard no_grad;
    at::_foreach_mul_(list(tensors, n), *scale);
  });
}

// Zeroes `n` tensors in place.
char* amoe_foreach_zero_(at::Tensor* const* tensors, size_t n) {
  return guarded([&] {
    at::NoGradGuard no_grad;
    at::_foreach_zero_(list(tensors, n));
  });
}

// Starts counting the ATen operations of the calling thread, and of the autograd work it starts
// on other threads (libtorch carries thread-local callbacks there); the counts restart at zero.
// With `timing`, top-level operations are also timed per name. One counter at a time: the
// caller serialises.
char* amoe_op_counter_start(bool timing) {
  return guarded([&] {
    g_top_level_ops = 0;
    g_all_ops = 0;
    g_timing = timing;
    {
      std::lock_guard<std::mutex> lock(g_times_mutex);
      g_times.clear();
    }
    if (!g_counter) {
      g_counter = at::addThreadLocalCallback(
          at::RecordFunctionCallback(count_start, count_end).scopes({at::RecordScope::FUNCTION}));
    }
  });
}

// Stops counting (on the thread that started); the counts stay readable.
char* amoe_op_counter_stop() {
  return guarded([&] {
    if (g_counter) {
      at::removeCallback(*g_counter);
      g_counter.reset();
    }
  });
}

// Operations counted since the start: those called from outside any other operation
// (`top_level`), and all of them, nested calls included (`all`).
void amoe_op_counts(int64_t* top_level, int64_t* all) {
  *top_level = g_top_level_ops.load();
  *all = g_all_ops.load();
}

// The timed operations as text, one `name<TAB>calls<TAB>seconds` line each (heap-allocated,
// freed with `amoe_free_error`).
char* amoe_op_times() {
  std::string out;
  std::lock_guard<std::mutex> lock(g_times_mutex);
  for (const auto& [name, entry] : g_times) {
    out += name + "\t" + std::to_string(entry.first) + "\t" + std::to_string(entry.second) + "\n";
  }
  return copy_message(out.c_str());
}

}  // extern "C"
