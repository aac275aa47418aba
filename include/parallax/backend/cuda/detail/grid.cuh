// parallax/backend/cuda/detail/grid.cuh — grid-stride loop indices and grid sizes for the CUDA backend's kernels
// (device code only; nvcc, or the host SIMT emulator of tests/cuda_emulated).
#pragma once

#include <algorithm>
#include <cstdint>

#include <cuda_runtime.h>

namespace parallax::cuda::detail {

//! This thread's first index in a grid-stride loop (64-bit, so tensors may exceed 2^31 elements).
__device__ inline std::int64_t grid_index() { return std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x; }
//! The stride of a grid-stride loop: the number of threads in the grid.
__device__ inline std::int64_t grid_stride() { return std::int64_t{gridDim.x} * blockDim.x; }

//! Blocks of a grid-stride launch: one per `per_block` items of `work`, at most `per_sm` per streaming
//! multiprocessor of a GPU with `sm_count` of them (enough to fill it; the loop covers the rest).
[[nodiscard]] inline unsigned capped_blocks(std::int64_t work, std::int64_t per_block, int sm_count, int per_sm) {
  const std::int64_t wanted = (work + per_block - 1) / per_block;
  return static_cast<unsigned>(std::min<std::int64_t>(wanted, std::int64_t{sm_count} * per_sm));
}

}  // namespace parallax::cuda::detail
