// parallax/backend/host/cross_entropy.hpp — host fused softmax cross-entropy, whole or over a vocabulary shard.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>

#include <fmt/format.h>

#include "../../core/dtype.hpp"
#include "../../core/view.hpp"
#include "../../error.hpp"
#include "context.hpp"
#include "detail/kernel_args.hpp"
#include "memory.hpp"

namespace parallax::host {

namespace detail {

template <class T>
float row_max_f32(const T* z, std::int64_t v) {
  float m = -std::numeric_limits<float>::infinity();
  for (std::int64_t j = 0; j < v; ++j) m = std::max(m, float(z[j]));
  return m;
}

template <class T>
float row_sum_exp(const T* z, std::int64_t v, float shift) {
  float s = 0.f;
  for (std::int64_t j = 0; j < v; ++j) s += std::exp(float(z[j]) - shift);
  return s;
}

//! Checks logits [N, V] and the [N] operands; returns N.
template <class... S>
std::int64_t ce_rows(const char* op, const Shape& logits, const S&... named) {
  expect_rank(op, "logits", logits, 2, "[N, V]");
  (expect_shape(op, named.first, named.second, Shape{logits[0]}), ...);
  return logits[0];
}

//! Throws for a target that is neither `ignore` nor >= 0 (nor < `vocab` when `vocab` >= 0).
inline void check_ce_targets(const char* op, View<const std::int32_t, Memory> targets, std::int32_t ignore,
                          std::int64_t vocab) {
  for (std::int64_t n = 0; n < targets.numel(); ++n) {
    const std::int32_t y = targets.data()[n];
    if (y != ignore && (y < 0 || (vocab >= 0 && y >= vocab)))
      throw Error(vocab >= 0 ? fmt::format("{}: target {} at row {} is outside [0, {}) and is not ignore_index {}", op,
                                           y, n, vocab, ignore)
                             : fmt::format("{}: target {} at row {} is negative and is not ignore_index {}", op, y, n,
                                           ignore));
  }
}

}  // namespace detail

//! Softmax cross-entropy kernels of the host backend. For logits z[N, V] (storage T, fp32 math) and targets y[N]:
//!   lse[n] = m[n] + log sum_j exp(z[n, j] - m[n]),  m[n] = max_j z[n, j],  loss[n] = lse[n] - z[n, y[n]],
//! and rows whose target is `ignore_index` have loss 0 and gradient 0.
//!
//! Vocabulary-parallel use: rank r holds the column slice [vb, vb + Vl) of the logits (targets are global):
//! @code
//! CrossEntropy::row_max(ctx, z_r, m);                         // then all_reduce(m, max)
//! CrossEntropy::sum_exp_shifted(ctx, z_r, m, s);              // then all_reduce(s, sum)
//! CrossEntropy::target_logit(ctx, z_r, y, vb, ignore, zy);    // then all_reduce(zy, sum)
//! auto valid = CrossEntropy::cross_entropy_combine(ctx, m, s, zy, y, ignore, losses, lse);
//! CrossEntropy::cross_entropy_backward(ctx, z_r, y, lse, ignore, 1.f / valid, dz_r, vb);
//! @endcode
struct CrossEntropy {
  //! Writes losses[N] and lse[N] (lse also for ignored rows) and returns the number of rows not ignored.
  //! Throws if a target is neither ignore_index nor in [0, V), naming the row and the target.
  template <FloatElement T>
  static std::int64_t cross_entropy_forward(const Context&, View<const T, Memory> logits,
                                            View<const std::int32_t, Memory> targets, std::int32_t ignore_index,
                                            View<float, Memory> losses, View<float, Memory> lse) {
    constexpr const char* op = "cross_entropy_forward";
    const std::int64_t n = detail::ce_rows(op, logits.shape(), std::pair{"targets", targets.shape()},
                                           std::pair{"losses", losses.shape()}, std::pair{"lse", lse.shape()});
    const std::int64_t v = logits.shape()[1];
    detail::check_ce_targets(op, targets, ignore_index, v);
    std::int64_t valid = 0;
    for (std::int64_t r = 0; r < n; ++r) {
      const T* z = logits.data() + r * v;
      const std::int32_t y = targets.data()[r];
      const float m = detail::row_max_f32(z, v), l = m + std::log(detail::row_sum_exp(z, v, m));
      lse.data()[r] = l;
      losses.data()[r] = y == ignore_index ? 0.f : l - float(z[y]);
      valid += y != ignore_index;
    }
    return valid;
  }

  //! dlogits[n, j] = dloss_scale * (exp(z[n, j] - lse[n]) - [vb + j == y[n]]) for rows not ignored, 0 for ignored
  //! rows (overwritten); lse is the forward's (global) lse. On the whole logits (vb = 0) this is the gradient of
  //! dloss_scale * sum_n loss[n]; on a shard, with vocab_begin = vb, it is that gradient's column slice.
  //! Throws for negative targets other than ignore_index (the forward checks the upper bound). `dlogits` may
  //! alias `logits`.
  template <FloatElement T>
  static void cross_entropy_backward(const Context&, detail::In<T> logits, View<const std::int32_t, Memory> targets,
                                     View<const float, Memory> lse, std::int32_t ignore_index, float dloss_scale,
                                     View<T, Memory> dlogits, std::int64_t vocab_begin = 0) {
    constexpr const char* op = "cross_entropy_backward";
    const std::int64_t n = detail::ce_rows(op, logits.shape(), std::pair{"targets", targets.shape()},
                                           std::pair{"lse", lse.shape()});
    detail::expect_shape(op, "dlogits", dlogits.shape(), logits.shape());
    detail::check_ce_targets(op, targets, ignore_index, -1);
    const std::int64_t v = logits.shape()[1];
    for (std::int64_t r = 0; r < n; ++r) {
      const T* z = logits.data() + r * v;
      T* dz = dlogits.data() + r * v;
      const std::int32_t y = targets.data()[r];
      const float l = lse.data()[r];
      for (std::int64_t j = 0; j < v; ++j)
        dz[j] = y == ignore_index ? T(0.f)
                                  : T(dloss_scale * (std::exp(float(z[j]) - l) - (vocab_begin + j == y ? 1.f : 0.f)));
    }
  }

  //! out[n] = max_j z[n, j] over this slice's columns (-inf for an empty slice).
  template <FloatElement T>
  static void row_max(const Context&, View<const T, Memory> logits, View<float, Memory> out) {
    const std::int64_t n = detail::ce_rows("row_max", logits.shape(), std::pair{"out", out.shape()});
    const std::int64_t v = logits.shape()[1];
    for (std::int64_t r = 0; r < n; ++r) out.data()[r] = detail::row_max_f32(logits.data() + r * v, v);
  }

  //! out[n] = sum_j exp(z[n, j] - shift[n]) over this slice's columns; shift is the global row max.
  template <FloatElement T>
  static void sum_exp_shifted(const Context&, View<const T, Memory> logits, View<const float, Memory> shift,
                              View<float, Memory> out) {
    const std::int64_t n = detail::ce_rows("sum_exp_shifted", logits.shape(), std::pair{"shift", shift.shape()},
                                           std::pair{"out", out.shape()});
    const std::int64_t v = logits.shape()[1];
    for (std::int64_t r = 0; r < n; ++r) out.data()[r] = detail::row_sum_exp(logits.data() + r * v, v, shift.data()[r]);
  }

  //! out[n] = z[n, y[n] - vocab_begin] when the (global) target y[n] lies in this slice [vocab_begin, vocab_begin + V)
  //! and is not ignore_index, else 0 (so the sum over slices is the target logit). Throws for negative targets.
  template <FloatElement T>
  static void target_logit(const Context&, View<const T, Memory> logits, View<const std::int32_t, Memory> targets,
                           std::int64_t vocab_begin, std::int32_t ignore_index, View<float, Memory> out) {
    constexpr const char* op = "target_logit";
    const std::int64_t n = detail::ce_rows(op, logits.shape(), std::pair{"targets", targets.shape()},
                                           std::pair{"out", out.shape()});
    detail::check_ce_targets(op, targets, ignore_index, -1);
    const std::int64_t v = logits.shape()[1];
    for (std::int64_t r = 0; r < n; ++r) {
      const std::int64_t j = std::int64_t{targets.data()[r]} - vocab_begin;
      const bool here = targets.data()[r] != ignore_index && j >= 0 && j < v;
      out.data()[r] = here ? float(logits.data()[r * v + j]) : 0.f;
    }
  }

  //! From the pieces reduced over the slices: lse[n] = max[n] + log sum_exp[n], loss[n] = lse[n] - target_logit[n]
  //! (0 for ignored rows). Returns the number of rows not ignored.
  static std::int64_t cross_entropy_combine(const Context&, View<const float, Memory> global_max,
                                            View<const float, Memory> global_sum_exp,
                                            View<const float, Memory> global_target_logit,
                                            View<const std::int32_t, Memory> targets, std::int32_t ignore_index,
                                            View<float, Memory> losses, View<float, Memory> lse) {
    constexpr const char* op = "cross_entropy_combine";
    detail::expect_rank(op, "max", global_max.shape(), 1, "[N]");
    for (const auto& [name, s] : {std::pair{"sum_exp", global_sum_exp.shape()},
                                  std::pair{"target_logit", global_target_logit.shape()},
                                  std::pair{"targets", targets.shape()}, std::pair{"losses", losses.shape()},
                                  std::pair{"lse", lse.shape()}})
      detail::expect_shape(op, name, s, global_max.shape());
    std::int64_t valid = 0;
    for (std::int64_t r = 0; r < global_max.numel(); ++r) {
      const bool ignored = targets.data()[r] == ignore_index;
      const float l = global_max.data()[r] + std::log(global_sum_exp.data()[r]);
      lse.data()[r] = l;
      losses.data()[r] = ignored ? 0.f : l - global_target_logit.data()[r];
      valid += !ignored;
    }
    return valid;
  }
};

}  // namespace parallax::host
