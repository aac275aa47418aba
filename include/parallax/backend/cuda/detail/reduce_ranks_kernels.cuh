// parallax/backend/cuda/detail/reduce_ranks_kernels.cuh — the kernel that reduces the buffers of ranks sharing a GPU,
// in rank order (device code only; nvcc, or the host SIMT emulator of tests/cuda_emulated).
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_runtime.h>

#include "../../../comm/collective.hpp"
#include "../../../core/dtype.hpp"
#include "grid.cuh"

namespace parallax::cuda::detail {

//! Most rank buffers one reduction kernel takes (its pointers travel by value as a kernel argument).
inline constexpr int max_reduce_ranks = 64;

//! The input and output pointers of one reduction, passed by value (1 KiB of kernel parameters).
struct RankPointers {
  const void* in[max_reduce_ranks];
  void* out[max_reduce_ranks];
};

inline constexpr int reduce_ranks_threads = 256;

//! Blocks of reduce_ranks_kernel over `count` elements on a GPU with `sm_count` multiprocessors.
[[nodiscard]] inline unsigned reduce_ranks_blocks(std::int64_t count, int sm_count) {
  return capped_blocks(count, reduce_ranks_threads, sm_count, 16);
}

//! out[k][i] = op(in[0][i], ..., in[n-1][i]) for every output k, in rank order, 16-bit floats accumulating
//! in fp32: the arithmetic of `parallax::detail::reduce_buffers`, so results equal the host transport's
//! bitwise (NaN payloads aside). An output may alias an input: each element is read in full before it is written.
template <class T>
__global__ void reduce_ranks_kernel(RankPointers p, int n_out, int n, std::int64_t count, ReduceOp op) {
  using Acc = std::conditional_t<std::is_same_v<T, bf16> || std::is_same_v<T, fp16>, float, T>;
  for (std::int64_t i = grid_index(); i < count; i += grid_stride()) {
    Acc acc = static_cast<Acc>(static_cast<const T*>(p.in[0])[i]);
    for (int r = 1; r < n; ++r) {
      const Acc v = static_cast<Acc>(static_cast<const T*>(p.in[r])[i]);
      switch (op) {
        case ReduceOp::sum:
        case ReduceOp::avg: acc = static_cast<Acc>(acc + v); break;
        case ReduceOp::max: acc = acc < v ? v : acc; break;  // std::max's choice, NaN included
        case ReduceOp::min: acc = v < acc ? v : acc; break;  // std::min's choice
      }
    }
    if (op == ReduceOp::avg) acc = static_cast<Acc>(acc / static_cast<Acc>(n));
    const T result(acc);
    for (int k = 0; k < n_out; ++k) static_cast<T*>(p.out[k])[i] = result;
  }
}

}  // namespace parallax::cuda::detail
