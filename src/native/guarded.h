// The shim's one way out of C++: run a body, and turn any exception it throws into an error
// message for Rust (heap-allocated, freed by `amoe_free_error`), so that no C++ exception crosses
// the boundary. Shared by shim.cpp, fused.cpp and cuda.cpp.

#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <exception>

namespace altup_moe_native {

// A malloc'd copy of `message` (null if memory ran out).
inline char* copy_message(const char* message) {
  const size_t n = std::strlen(message);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out != nullptr) {
    std::memcpy(out, message, n + 1);
  }
  return out;
}

// Runs `body`: nullptr on success, else the exception's message.
template <typename F>
char* guarded(F&& body) {
  try {
    body();
    return nullptr;
  } catch (const c10::Error& e) {
    return copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return copy_message(e.what());
  } catch (...) {
    return copy_message("unknown C++ exception in libtorch");
  }
}

}  // namespace altup_moe_native
