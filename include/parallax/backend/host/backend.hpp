// parallax/backend/host/backend.hpp — host::Backend: the CPU backend type that modules are templated on.
#pragma once

#include "context.hpp"
#include "elementwise.hpp"
#include "gemm.hpp"
#include "memory.hpp"

namespace parallax::host {

//! The CPU backend: ranks are threads, memory is host memory, GEMM is CBLAS or a portable loop.
//! Models `parallax::Backend`.
struct Backend : Gemm, Elementwise {
  static constexpr const char* name = "host";
  using Memory = host::Memory;
  using Context = host::Context;
  //! Number of devices ranks can be placed on (0: the host backend needs none).
  static int device_count() noexcept { return 0; }
};

}  // namespace parallax::host
