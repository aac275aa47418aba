// parallax/backend/cuda/detail/embedding_kernels.cuh — embedding lookup and its deterministic gradient kernels, whole
// table or a vocabulary shard (device code only; nvcc, or the host SIMT emulator of tests/cuda_emulated).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "grid.cuh"
#include "status_kernels.cuh"

namespace parallax::cuda::detail {

inline constexpr int embedding_warps = 8;      // forward: one warp per looked-up row
inline constexpr int embedding_threads = 128;  // backward: one block per table row, threads over its columns

//! out[i, :] = table[ids[i] - vocab_begin, :] when that row is in the shard, else 0; ids outside
//! [0, vocab_size) are reported (the smallest position wins).
template <class T>
__global__ void __launch_bounds__(embedding_warps * 32)
    embedding_forward_kernel(const std::int32_t* ids, const T* table, T* out, std::int64_t n, std::int64_t v,
                             std::int64_t d, std::int64_t vocab_begin, std::int64_t vocab_size,
                             KernelStatus* status) {
  const std::int64_t i = std::int64_t{blockIdx.x} * embedding_warps + threadIdx.x / 32;
  if (i >= n) return;
  const int lane = static_cast<int>(threadIdx.x % 32);
  const std::int32_t id = ids[i];
  if (lane == 0 && (id < 0 || id >= vocab_size)) report_bad(status, i);
  const std::int64_t row = id - vocab_begin;
  T* o = out + i * d;
  if (row >= 0 && row < v) {
    for (std::int64_t j = lane; j < d; j += 32) o[j] = table[row * d + j];
  } else {
    for (std::int64_t j = lane; j < d; j += 32) o[j] = T(0.f);
  }
}

//! The sort keys of the backward: the shard row of each position, or `skip` (past every row) for ids outside
//! the shard; and the positions 0..n-1.
template <class Index>
__global__ void embedding_keys_kernel(const Index* ids, std::int64_t n, std::int64_t v, std::int64_t vocab_begin,
                                      std::uint32_t skip, std::uint32_t* keys, Index* positions) {
  for (std::int64_t i = grid_index(); i < n; i += grid_stride()) {
    const std::int64_t row = ids[i] - vocab_begin;
    keys[i] = row >= 0 && row < v ? static_cast<std::uint32_t>(row) : skip;
    positions[i] = static_cast<Index>(i);
  }
}

//! After the stable sort by row: the block at the first entry of each row's run adds that run's dout rows, in
//! position order, in fp32, and adds the sum to the row of dtable once.
//! Blocks of embedding_backward_kernel over `n` sorted ids on a GPU with `sm_count` multiprocessors.
[[nodiscard]] inline unsigned embedding_backward_blocks(std::int64_t n, int sm_count) {
  return capped_blocks(n, 1, sm_count, 16);
}

template <class T, class G>
__global__ void __launch_bounds__(embedding_threads)
    embedding_backward_kernel(const std::uint32_t* keys, const std::int32_t* positions, const T* dout, G* dtable,
                              std::int64_t n, std::int64_t d, std::uint32_t skip) {
  for (std::int64_t s = blockIdx.x; s < n; s += gridDim.x) {
    const std::uint32_t row = keys[s];
    if (row == skip || (s > 0 && keys[s - 1] == row)) continue;
    for (std::int64_t c = threadIdx.x; c < d; c += embedding_threads) {
      float acc = 0.f;
      for (std::int64_t e = s; e < n && keys[e] == row; ++e) acc += float(dout[std::int64_t{positions[e]} * d + c]);
      G* g = dtable + std::int64_t{row} * d + c;
      *g = G(float(*g) + acc);
    }
  }
}

//! ids[n] = first + n / batch. (A template, like every kernel in these headers: a non-template __global__ function
//! would be defined once per translation unit that includes it.)
template <class Index>
__global__ void position_ids_kernel(Index* ids, std::int64_t n, std::int64_t first, std::int64_t batch) {
  for (std::int64_t i = grid_index(); i < n; i += grid_stride()) ids[i] = static_cast<Index>(first + i / batch);
}

}  // namespace parallax::cuda::detail
