// parallax/backend/cuda/detail/gemm_epilogue_kernels.cuh — the unfused epilogue kernel of GEMMs with a bias and GELU
// (device code only; nvcc, or the host SIMT emulator of tests/cuda_emulated).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "../../host/activation.hpp"
#include "grid.cuh"

namespace parallax::cuda::detail {

//! The unfused epilogue of `gemm_bias_act`, after a plain GEMM into the fp32 `product` [count / n, n]: v = product
//! + bias, pre = v, c = act(v), each part when asked for, rounded to T once. `product` may be `c` itself when T is
//! fp32 (each element is read before it is written).
template <class T>
__global__ void bias_act_kernel(const float* product, T* c, const T* bias, T* pre, bool gelu, std::int64_t count,
                                std::int64_t n) {
  for (std::int64_t i = grid_index(); i < count; i += grid_stride()) {
    float v = product[i];
    if (bias != nullptr) v += float(bias[i % n]);
    if (pre != nullptr) pre[i] = T(v);
    c[i] = T(gelu ? host::detail::gelu(v) : v);
  }
}

}  // namespace parallax::cuda::detail
