// parallax/backend/cuda/detail/status_kernels.cuh — what a kernel reports back to the host: the first bad index and
// a count (device code only; nvcc, or the host SIMT emulator of tests/cuda_emulated).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace parallax::cuda::detail {

//! What a validating or counting kernel reports: the smallest index of an invalid input (`none` when all
//! are valid) and a count (e.g. of rows not ignored). Both are integers, so the atomics that form them give
//! the same result in any order. It lives in the context's reduction scratch.
struct KernelStatus {
  static constexpr unsigned long long none = ~0ull;
  unsigned long long first_bad;
  unsigned long long count;

  [[nodiscard]] bool ok() const noexcept { return first_bad == none; }
};

//! Records index `i` as invalid (the smallest one wins).
__device__ inline void report_bad(KernelStatus* s, std::int64_t i) {
  atomicMin(&s->first_bad, static_cast<unsigned long long>(i));
}

}  // namespace parallax::cuda::detail
