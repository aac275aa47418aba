// parallax/backend/cuda/detail/gemm_epilogue_kernels.cuh — the unfused epilogue kernel of GEMMs with a bias and GELU
// (device code only; nvcc, or the host SIMT emulator of tests/cuda_emulated).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "../../host/activation.hpp"
#include "grid.cuh"

namespace parallax::cuda::detail {

//! The unfused epilogue of `gemm_bias_act`, after a plain GEMM into c [count / n, n]: v = c + bias, pre = v, c =
//! act(v), each part when asked for.
template <class T>
__global__ void bias_act_kernel(T* c, const T* bias, T* pre, bool gelu, std::int64_t count, std::int64_t n) {
  for (std::int64_t i = grid_index(); i < count; i += grid_stride()) {
    float v = float(c[i]);
    if (bias != nullptr) v += float(bias[i % n]);
    if (pre != nullptr) pre[i] = T(v);
    c[i] = T(gelu ? host::detail::gelu(v) : v);
  }
}

}  // namespace parallax::cuda::detail
