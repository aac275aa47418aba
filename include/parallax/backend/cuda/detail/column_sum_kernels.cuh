// parallax/backend/cuda/detail/column_sum_kernels.cuh — deterministic column sums of [N, D] terms into [D] outputs
// (device code only; nvcc, or the host SIMT emulator of tests/cuda_emulated).
#pragma once

#include <algorithm>
#include <cstdint>

#include <cuda_runtime.h>

#include "grid.cuh"

namespace parallax::cuda::detail {

inline constexpr int colsum_cols = 32;  // columns of a block (a warp wide: coalesced rows)
inline constexpr int colsum_rows = 8;   // rows a block's warps take in turn
inline constexpr std::int64_t colsum_max_chunks = 1024;
inline constexpr std::int64_t colsum_min_chunk_rows = 64;

//! Rows per chunk and chunks of a column sum over `n` rows: a function of `n` only, so the order of the
//! additions (and the result) does not depend on the GPU.
struct ColumnChunks {
  std::int64_t rows, count;
};
[[nodiscard]] inline ColumnChunks column_chunks(std::int64_t n) {
  const std::int64_t rows = std::max(colsum_min_chunk_rows, (n + colsum_max_chunks - 1) / colsum_max_chunks);
  return {rows, (n + rows - 1) / rows};
}

//! Pass 1: block (x, y) sums `term` over the rows of chunk y for the 32 columns from 32 x into
//! partial[k][y][column], k < K. `term(r, c, acc)` adds its K terms of element (r, c) to acc[0..K).
//! Each thread adds its rows in order, then the 8 row-threads' sums are added in order.
template <int K, class Term>
__global__ void __launch_bounds__(colsum_cols * colsum_rows)
    column_partial_kernel(Term term, std::int64_t n, std::int64_t d, std::int64_t chunk_rows, float* partial) {
  __shared__ float sums[K][colsum_rows][colsum_cols];
  const std::int64_t c = std::int64_t{blockIdx.x} * colsum_cols + threadIdx.x;
  const std::int64_t begin = std::int64_t{blockIdx.y} * chunk_rows;
  const std::int64_t end = begin + chunk_rows < n ? begin + chunk_rows : n;
  float acc[K] = {};
  if (c < d)
    for (std::int64_t r = begin + threadIdx.y; r < end; r += colsum_rows) term(r, c, acc);
  for (int k = 0; k < K; ++k) sums[k][threadIdx.y][threadIdx.x] = acc[k];
  __syncthreads();
  if (threadIdx.y != 0 || c >= d) return;
  for (int k = 0; k < K; ++k) {
    float s = sums[k][0][threadIdx.x];
    for (int y = 1; y < colsum_rows; ++y) s += sums[k][y][threadIdx.x];
    partial[(std::int64_t{k} * gridDim.y + blockIdx.y) * d + c] = s;
  }
}

//! The K outputs of a column sum, passed to the kernel by value; a null one is skipped.
template <class G, int K>
struct ColumnOutputs {
  G* p[K];
};

//! Blocks of column_final_kernel (256 threads, a thread per column) over `d` columns.
[[nodiscard]] inline unsigned column_final_blocks(std::int64_t d, int sm_count) {
  return capped_blocks(d, 256, sm_count, 4);
}

//! Pass 2: out[k][c] += sum over the chunks, in chunk order, of partial[k][chunk][c].
template <int K, class G>
__global__ void column_final_kernel(const float* partial, std::int64_t chunks, std::int64_t d,
                                    ColumnOutputs<G, K> out) {
  for (std::int64_t c = grid_index(); c < d; c += grid_stride())
    for (int k = 0; k < K; ++k) {
      if (out.p[k] == nullptr) continue;
      float s = 0.f;
      for (std::int64_t y = 0; y < chunks; ++y) s += partial[(k * chunks + y) * d + c];
      out.p[k][c] = G(float(out.p[k][c]) + s);
    }
}

}  // namespace parallax::cuda::detail
