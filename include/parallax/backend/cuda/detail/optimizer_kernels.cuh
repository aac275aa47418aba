// parallax/backend/cuda/detail/optimizer_kernels.cuh — fused SGD and Adam(W) update kernels (device code only; nvcc, or
// the host SIMT emulator of tests/cuda_emulated).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "../../optimizer_args.hpp"
#include "grid.cuh"

namespace parallax::cuda::detail {

template <class G>
__global__ void sgd_step_kernel(SgdArgs args, float* w, const G* g, float* buf, std::int64_t n) {
  for (std::int64_t i = grid_index(); i < n; i += grid_stride())
    parallax::detail::sgd_update(args, w[i], float(g[i]), buf != nullptr ? buf + i : nullptr);
}

template <class G>
__global__ void adam_step_kernel(AdamArgs args, float* w, const G* g, float* m, float* v, std::int64_t n) {
  for (std::int64_t i = grid_index(); i < n; i += grid_stride())
    parallax::detail::adam_update(args, w[i], float(g[i]), m[i], v[i]);
}

}  // namespace parallax::cuda::detail
