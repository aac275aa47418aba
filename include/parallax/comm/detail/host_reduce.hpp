// parallax/comm/detail/host_reduce.hpp — reduction of several rank buffers, elementwise, in a fixed rank order.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../../core/dtype.hpp"
#include "../collective.hpp"

namespace parallax::detail {

//! out[i] = op(in[0][i], ..., in[n-1][i]) for i in [0, count), combining in rank order, so results are
//! bitwise identical on every rank and every run. 16-bit floats accumulate in fp32 and round once; `avg`
//! divides the sum by n. `out` may alias one of the inputs.
template <Element T>
void reduce_buffers(T* out, const T* const* in, int n, std::int64_t count, ReduceOp op) {
  using Acc = std::conditional_t<std::is_same_v<T, bf16> || std::is_same_v<T, fp16>, float, T>;
  for (std::int64_t i = 0; i < count; ++i) {
    Acc acc = static_cast<Acc>(in[0][i]);
    for (int r = 1; r < n; ++r) {
      const Acc v = static_cast<Acc>(in[r][i]);
      switch (op) {
        case ReduceOp::sum:
        case ReduceOp::avg: acc = static_cast<Acc>(acc + v); break;
        case ReduceOp::max: acc = std::max(acc, v); break;
        case ReduceOp::min: acc = std::min(acc, v); break;
      }
    }
    if (op == ReduceOp::avg) acc = static_cast<Acc>(acc / static_cast<Acc>(n));
    out[i] = T(acc);
  }
}

//! `reduce_buffers` on a run-time element type.
inline void reduce_buffers(DType t, void* out, const void* const* in, int n, std::int64_t count, ReduceOp op) {
  auto go = [&]<class T>(T*) { reduce_buffers(static_cast<T*>(out), reinterpret_cast<const T* const*>(in), n, count, op); };
  switch (t) {
    case DType::f32: go(static_cast<float*>(nullptr)); break;
    case DType::bf16: go(static_cast<bf16*>(nullptr)); break;
    case DType::f16: go(static_cast<fp16*>(nullptr)); break;
    case DType::i32: go(static_cast<std::int32_t*>(nullptr)); break;
    case DType::i64: go(static_cast<std::int64_t*>(nullptr)); break;
    case DType::f64: go(static_cast<double*>(nullptr)); break;
  }
}

}  // namespace parallax::detail
