// parallax/comm/detail/host_reduce.hpp — reduction of several rank buffers, elementwise, in a fixed rank order.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../../config.hpp"
#include "../../core/dtype.hpp"
#include "../collective.hpp"

namespace parallax::detail {

//! The type a reduction of T accumulates in: fp32 for the 16-bit floats, T otherwise.
template <class T>
using ReduceAcc = std::conditional_t<std::is_same_v<T, bf16> || std::is_same_v<T, fp16>, float, T>;

struct ReduceSum {
  template <class A>
  static A apply(A a, A b) noexcept { return static_cast<A>(a + b); }
};
struct ReduceMax {
  template <class A>
  static A apply(A a, A b) noexcept { return std::max(a, b); }
};
struct ReduceMin {
  template <class A>
  static A apply(A a, A b) noexcept { return std::min(a, b); }
};

//! Elements reduced per block: the block's accumulators stay in L1 while the rank buffers stream through.
inline constexpr std::int64_t reduce_block = 1024;

// One block of `m` elements at offset i0 (m is a compile-time constant for full blocks, so the loops
// vectorize without a scalar tail). Rank order per element: ((in0 op in1) op in2) ... Every input of
// the block is read before any output is written, so outputs may alias inputs.
template <class T, class Op, class M>
PARALLAX_ALWAYS_INLINE void reduce_block_of(T* const* outs, int n_out, const T* const* in, int n, std::int64_t i0, M m,
                                            bool avg, ReduceAcc<T>* acc) {
  using Acc = ReduceAcc<T>;
  const T* a = in[0] + i0;
  for (std::int64_t j = 0; j < m; ++j) acc[j] = static_cast<Acc>(a[j]);
  for (int r = 1; r < n; ++r) {
    const T* b = in[r] + i0;
    for (std::int64_t j = 0; j < m; ++j) acc[j] = Op::apply(acc[j], static_cast<Acc>(b[j]));
  }
  if (avg) {
    const Acc d = static_cast<Acc>(n);
    for (std::int64_t j = 0; j < m; ++j) acc[j] = static_cast<Acc>(acc[j] / d);
  }
  for (int k = 0; k < n_out; ++k) {
    T* o = outs[k] + i0;
    for (std::int64_t j = 0; j < m; ++j) o[j] = T(acc[j]);
  }
}

template <class T, class Op>
void reduce_buffers_with(T* const* outs, int n_out, const T* const* in, int n, std::int64_t count, bool avg) {
  alignas(64) ReduceAcc<T> acc[reduce_block];  // local, so the compiler knows it aliases no buffer
  std::int64_t i0 = 0;
  for (; i0 + reduce_block <= count; i0 += reduce_block)
    reduce_block_of<T, Op>(outs, n_out, in, n, i0, std::integral_constant<std::int64_t, reduce_block>{}, avg, acc);
  if (i0 < count) reduce_block_of<T, Op>(outs, n_out, in, n, i0, count - i0, avg, acc);
}

//! outs[k][i] = op(in[0][i], ..., in[n-1][i]) for i in [0, count) and every k < n_out, combining in rank
//! order, so results are bitwise identical on every rank and every run. 16-bit floats accumulate in fp32
//! and round once; `avg` divides the sum by n. Outputs may alias inputs (element for element).
template <Element T>
void reduce_buffers(T* const* outs, int n_out, const T* const* in, int n, std::int64_t count, ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: reduce_buffers_with<T, ReduceSum>(outs, n_out, in, n, count, false); break;
    case ReduceOp::avg: reduce_buffers_with<T, ReduceSum>(outs, n_out, in, n, count, true); break;
    case ReduceOp::max: reduce_buffers_with<T, ReduceMax>(outs, n_out, in, n, count, false); break;
    case ReduceOp::min: reduce_buffers_with<T, ReduceMin>(outs, n_out, in, n, count, false); break;
  }
}

//! out[i] = op(in[0][i], ..., in[n-1][i]): `reduce_buffers` with one output.
template <Element T>
void reduce_buffers(T* out, const T* const* in, int n, std::int64_t count, ReduceOp op) {
  reduce_buffers(&out, 1, in, n, count, op);
}

//! `reduce_buffers` on a run-time element type, into each of `outs[0..n_out)`.
inline void reduce_buffers(DType t, void* const* outs, int n_out, const void* const* in, int n, std::int64_t count,
                           ReduceOp op) {
  dispatch(t, [&]<class T>(std::type_identity<T>) {
    reduce_buffers(reinterpret_cast<T* const*>(outs), n_out, reinterpret_cast<const T* const*>(in), n, count, op);
  });
}

//! `reduce_buffers` on a run-time element type.
inline void reduce_buffers(DType t, void* out, const void* const* in, int n, std::int64_t count, ReduceOp op) {
  reduce_buffers(t, &out, 1, in, n, count, op);
}

}  // namespace parallax::detail
