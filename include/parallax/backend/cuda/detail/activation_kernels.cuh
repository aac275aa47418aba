// parallax/backend/cuda/detail/activation_kernels.cuh — GELU forward and backward kernels (device code only; nvcc, or
// the host SIMT emulator of tests/cuda_emulated).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "../../host/activation.hpp"
#include "grid.cuh"

namespace parallax::cuda::detail {

// GELU and its derivative are the host kernel's (host::detail::gelu, gelu_grad): one definition for both backends.
template <class T>
__global__ void gelu_forward_kernel(const T* x, T* y, std::int64_t n) {
  for (std::int64_t i = grid_index(); i < n; i += grid_stride()) y[i] = T(host::detail::gelu(float(x[i])));
}

template <class T>
__global__ void gelu_backward_kernel(const T* x, const T* dy, T* dx, std::int64_t n) {
  for (std::int64_t i = grid_index(); i < n; i += grid_stride())
    dx[i] = T(float(dy[i]) * host::detail::gelu_grad(float(x[i])));
}

}  // namespace parallax::cuda::detail
