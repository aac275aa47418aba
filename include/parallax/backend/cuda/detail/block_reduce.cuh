// parallax/backend/cuda/detail/block_reduce.cuh — warp- and block-wide reductions in a fixed order (nvcc only).
#pragma once

#include <cuda_runtime.h>

namespace parallax::cuda::detail {

struct SumOp {
  template <class A>
  __device__ A operator()(A a, A b) const {
    return a + b;
  }
};
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

//! op over the 32 lanes of a full warp, by a butterfly of shuffles: every lane gets the same value (the
//! operations are commutative), and the order is fixed, so the result is repeatable bit for bit.
template <class A, class Op>
__device__ A warp_all_reduce(A v, Op op) {
  for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

//! op over a block of `Threads` threads (a multiple of 32, at most 1024), returned to every thread: the warps'
//! results, then those in warp order. Every thread of the block must call it; it may be called again at once.
template <int Threads, class A, class Op>
__device__ A block_all_reduce(A v, Op op) {
  static_assert(Threads % 32 == 0 && Threads <= 1024, "block_all_reduce: Threads must be a multiple of 32, <= 1024");
  constexpr int warps = Threads / 32;
  __shared__ A warp_totals[warps];
  v = warp_all_reduce(v, op);
  if (threadIdx.x % 32 == 0) warp_totals[threadIdx.x / 32] = v;
  __syncthreads();
  v = warp_totals[0];
  for (int w = 1; w < warps; ++w) v = op(v, warp_totals[w]);
  __syncthreads();  // warp_totals may be overwritten by the next call
  return v;
}

}  // namespace parallax::cuda::detail
