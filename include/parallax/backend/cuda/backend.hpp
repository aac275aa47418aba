// parallax/backend/cuda/backend.hpp — cuda::Backend: the GPU backend type that modules are templated on (nvcc only).
#pragma once

#include "check.hpp"
#include "context.hpp"
#include "device.hpp"
#include "elementwise.cuh"
#include "gemm.hpp"
#include "memory.hpp"
#include "reduce.cuh"
#include "stream.hpp"

namespace parallax::cuda {

//! The GPU backend: one rank per GPU (or several ranks sharing one), memory is GPU global memory,
//! GEMM is cuBLAS, kernels run on the rank's compute stream. Models `parallax::Backend`.
//!
//! Including it also makes `ThreadCommunicator<cuda::Memory>` usable (ranks as threads sharing a GPU).
//! @code
//! parallax::launch<parallax::cuda::Backend>(4, [](parallax::Rank<parallax::cuda::Backend>& rank) { ... });
//! @endcode
struct Backend : Gemm, Elementwise {
  static constexpr const char* name = "cuda";
  using Memory = cuda::Memory;
  using Context = cuda::Context;
  //! Number of visible GPUs; 0 when there is none or no driver (never throws).
  static int device_count() noexcept { return cuda::device_count(); }
};

}  // namespace parallax::cuda
