// parallax/backend/cuda/detail/head_layout_kernels.cuh — the copy kernel between sequence-first activations and
// head-major attention operands (device code only; nvcc, or the host SIMT emulator of tests/cuda_emulated).
#pragma once

#include <cuda_runtime.h>

#include "head_offset.hpp"

namespace parallax::cuda::detail {

//! Moves unit u of the packed operand to or from its place in the head-major operands (`head_unit_offset`), for
//! every u < total. `Unit` is a 16-byte chunk when every row of Dh elements is made of whole aligned chunks, else
//! one element; the section's pointer is chosen by value, not by indexing an array (which would live in local memory).
template <bool ToHeads, class Unit, class Index>
__global__ void head_layout_kernel(Unit* packed, Unit* q, Unit* k, Unit* v, HeadDims d, Index units, Index total) {
  const auto stride = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index u = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; u < total; u += stride) {
    int s = 0;
    const Index o = head_unit_offset(u, units, d, s);
    Unit* head = s == 0 ? q : s == 1 ? k : v;
    if constexpr (ToHeads)
      head[o] = packed[u];
    else
      packed[u] = head[o];
  }
}

}  // namespace parallax::cuda::detail
