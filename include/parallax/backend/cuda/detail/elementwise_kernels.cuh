// parallax/backend/cuda/detail/elementwise_kernels.cuh — elementwise, cast and reduction kernels like host::Elementwise
// (device code only; nvcc, or the host SIMT emulator of tests/cuda_emulated).
#pragma once

#include <algorithm>
#include <cstdint>

#include <cuda_runtime.h>

#include "../../../core/detail/float_bits.hpp"
#include "block_reduce.cuh"
#include "grid.cuh"

namespace parallax::cuda::detail {

inline constexpr int elementwise_threads = 256;
inline constexpr int reduce_threads = 256;
inline constexpr int reduce_max_blocks = 1024;

//! Blocks of an elementwise grid-stride launch over `n` elements on a GPU with `sm_count` multiprocessors.
[[nodiscard]] inline unsigned elementwise_blocks(std::int64_t n, int sm_count) {
  return capped_blocks(n, elementwise_threads, sm_count, 16);
}

//! Blocks of the first reduction pass. It depends on `n` only (not on the GPU), so a reduction of a given
//! size always adds in the same order: the result is bitwise repeatable.
[[nodiscard]] inline unsigned reduce_blocks(std::int64_t n) {
  const std::int64_t wanted = (n + reduce_threads * 8 - 1) / (reduce_threads * 8);
  return static_cast<unsigned>(std::clamp<std::int64_t>(wanted, 1, reduce_max_blocks));
}

template <class T>
__global__ void fill_kernel(T* x, std::int64_t n, T value) {
  for (std::int64_t i = grid_index(); i < n; i += grid_stride())
    x[i] = value;
}

template <class S, class D>
__global__ void cast_kernel(const S* src, D* dst, std::int64_t n) {
  for (std::int64_t i = grid_index(); i < n; i += grid_stride())
    dst[i] = D(float(src[i]));
}

template <class T>
__global__ void scale_kernel(T* x, std::int64_t n, float a) {
  for (std::int64_t i = grid_index(); i < n; i += grid_stride())
    x[i] = T(__fmul_rn(a, float(x[i])));
}

// Separate multiplies and adds (no fused multiply-add), so fp32 results equal the host backend's bitwise.
template <class T, class S>
__global__ void axpby_kernel(float a, const S* x, float b, T* y, std::int64_t n) {
  for (std::int64_t i = grid_index(); i < n; i += grid_stride()) {
    const float ax = __fmul_rn(a, float(x[i]));
    y[i] = T(__fadd_rn(ax, b == 0.f ? 0.f : __fmul_rn(b, float(y[i]))));
  }
}

//! y[i] += b[i % d] over the n elements of y [n / d, d].
template <class T>
__global__ void add_bias_kernel(const T* b, T* y, std::int64_t n, std::int64_t d) {
  for (std::int64_t i = grid_index(); i < n; i += grid_stride()) y[i] = T(float(y[i]) + float(b[i % d]));
}

//! The term of a bias gradient: dy[r, c].
template <class T>
struct BiasGradTerm {
  const T* dy;
  std::int64_t d;
  __device__ void operator()(std::int64_t r, std::int64_t c, float* acc) const { acc[0] += float(dy[r * d + c]); }
};

//! What a reduction adds up per element.
struct SumTerm {
  template <class T>
  __device__ double operator()(T v) const { return double(float(v)); }
};
struct SquareTerm {
  template <class T>
  __device__ double operator()(T v) const {
    const double d = float(v);
    return d * d;
  }
};
struct NonfiniteTerm {
  template <class T>
  __device__ unsigned long long operator()(T v) const {
    return (parallax::detail::float_to_bits(float(v)) & 0x7f800000u) == 0x7f800000u ? 1ull : 0ull;
  }
};

//! Pass 1: block b writes the sum of `term` over its grid-stride share of x to partial[b].
template <class Acc, class T, class Term>
__global__ void __launch_bounds__(reduce_threads)
    reduce_partial_kernel(const T* x, std::int64_t n, Acc* partial, Term term) {
  Acc acc{0};
  for (std::int64_t i = grid_index(); i < n; i += grid_stride())
    acc += term(x[i]);
  acc = block_all_reduce<reduce_threads>(acc, SumOp{});
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

//! Pass 2: one block adds the partial sums.
template <class Acc>
__global__ void __launch_bounds__(reduce_threads) reduce_final_kernel(const Acc* partial, int count, Acc* out) {
  Acc acc{0};
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = block_all_reduce<reduce_threads>(acc, SumOp{});
  if (threadIdx.x == 0) *out = acc;
}

//! Adds x[0..n) in index order on one thread: the per-piece results of a batched reduction, added like the host's
//! loop over the pieces.
template <class Acc>
__global__ void sum_in_order_kernel(const Acc* x, int n, Acc* out) {
  Acc s{0};
  for (int i = 0; i < n; ++i) s += x[i];
  *out = s;
}

}  // namespace parallax::cuda::detail
