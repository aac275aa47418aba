// parallax/backend/cuda/detail/grid.cuh — grid-stride loop indices for the CUDA backend's kernels (nvcc only).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace parallax::cuda::detail {

//! This thread's first index in a grid-stride loop (64-bit, so tensors may exceed 2^31 elements).
__device__ inline std::int64_t grid_index() { return std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x; }
//! The stride of a grid-stride loop: the number of threads in the grid.
__device__ inline std::int64_t grid_stride() { return std::int64_t{gridDim.x} * blockDim.x; }

}  // namespace parallax::cuda::detail
