// The CUDA half of the shim, compiled only when the libtorch that torch-sys links has CUDA (and the
// CUDA runtime headers are found): whole-step CUDA graphs (`at::cuda::CUDAGraph`, captured on a
// side stream as `torch.cuda.graph` does) and the caching allocator's memory statistics.
//
// Only functions exported by libtorch_cuda and libc10_cuda are called (no CUDA runtime call of our
// own), so the binary needs no libcudart of a given version at link time. Errors come back as
// heap-allocated messages, as in shim.cpp.

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include "guarded.h"

#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>

namespace {

using altup_moe_native::guarded;

// A graph with its side stream. Warm-up and capture run on the side stream (the device is
// synchronised on the way in and out, so the side stream sees every earlier kernel and later
// work sees every captured one); replays run on the stream that is current at the call.
struct Graph {
  c10::DeviceIndex device;
  c10::cuda::CUDAStream side;
  std::optional<c10::cuda::CUDAStream> previous;
  at::cuda::CUDAGraph graph;

  explicit Graph(c10::DeviceIndex d) : device(d), side(c10::cuda::getStreamFromPool(false, d)) {}

  void enter() {
    if (previous) {
      return;
    }
    c10::cuda::set_device(device);
    c10::cuda::device_synchronize();
    previous = c10::cuda::getCurrentCUDAStream(device);
    c10::cuda::setCurrentCUDAStream(side);
  }

  void leave() {
    if (!previous) {
      return;
    }
    c10::cuda::device_synchronize();
    c10::cuda::setCurrentCUDAStream(*previous);
    previous.reset();
  }
};

}  // namespace

extern "C" {

char* amoe_cuda_graph_new(int device, void** out) {
  return guarded([&] { *out = new Graph(static_cast<c10::DeviceIndex>(device)); });
}

void amoe_cuda_graph_free(void* graph) {
  auto* g = static_cast<Graph*>(graph);
  try {
    g->leave();
  } catch (...) {
  }
  delete g;
}

// Makes the graph's side stream current (for warm-up steps before the capture).
char* amoe_cuda_graph_enter(void* graph) {
  return guarded([&] { static_cast<Graph*>(graph)->enter(); });
}

// Restores the stream that was current before `amoe_cuda_graph_enter`.
char* amoe_cuda_graph_leave(void* graph) {
  return guarded([&] { static_cast<Graph*>(graph)->leave(); });
}

// Starts capturing on the side stream (entering it if needed). Everything libtorch launches on
// the device until `amoe_cuda_graph_capture_end` is recorded, not run.
char* amoe_cuda_graph_capture_begin(void* graph) {
  return guarded([&] {
    auto* g = static_cast<Graph*>(graph);
    g->enter();
    g->graph.capture_begin();
  });
}

// Ends the capture, instantiates the graph and leaves the side stream.
char* amoe_cuda_graph_capture_end(void* graph) {
  return guarded([&] {
    auto* g = static_cast<Graph*>(graph);
    try {
      g->graph.capture_end();
    } catch (...) {
      g->leave();
      throw;
    }
    g->leave();
  });
}

// Launches the captured work once.
char* amoe_cuda_graph_replay(void* graph) {
  return guarded([&] { static_cast<Graph*>(graph)->graph.replay(); });
}

// Bytes the caching allocator has handed out on `device`: now and at the peak since the last
// reset.
char* amoe_cuda_memory(int device, int64_t* allocated, int64_t* peak) {
  return guarded([&] {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    const auto& bytes = stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)];
    *allocated = bytes.current;
    *peak = bytes.peak;
  });
}

char* amoe_cuda_reset_peak_memory(int device) {
  return guarded(
      [&] { c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device)); });
}

}  // extern "C"
