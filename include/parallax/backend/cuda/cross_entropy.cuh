// parallax/backend/cuda/cross_entropy.cuh — fused softmax cross-entropy on the GPU, whole or over a vocabulary
// shard (nvcc).
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include <cuda_runtime.h>
#include <fmt/format.h>

#include "../../core/dtype.hpp"
#include "../../core/view.hpp"
#include "../../error.hpp"
#include "../host/cross_entropy.hpp"
#include "check.hpp"
#include "context.hpp"
#include "detail/cross_entropy_kernels.cuh"
#include "detail/kernel_args.hpp"
#include "detail/status.cuh"
#include "elementwise.cuh"
#include "memory.hpp"

namespace parallax::cuda {

namespace detail {

// The shape checks are the host kernels' (same messages).
using host::detail::ce_rows;

//! Throws the host kernels' error for the first invalid target, which the device found at `row`: the targets up
//! to it are copied to the host and checked there, so the message is the host's.
[[noreturn]] inline void throw_bad_target(const char* op, View<const std::int32_t, Memory> targets,
                                          std::int32_t ignore, std::int64_t vocab, unsigned long long row) {
  const Shape head{static_cast<std::int64_t>(row) + 1};
  std::vector<std::int32_t> host(static_cast<std::size_t>(head.numel()));
  Memory::download(host.data(), targets.data(), host.size() * sizeof(std::int32_t));
  host::detail::check_ce_targets(op, View<const std::int32_t, host::Memory>(host.data(), head), ignore, vocab);
  throw Error(fmt::format("{}: the target at row {} is invalid", op, row));  // not reached: the check above throws
}

//! Waits for the status of the kernels just queued; throws the host's error if one reported an invalid target.
inline KernelStatus finish_checked(const Context& ctx, const KernelStatus* status, const char* op,
                                   View<const std::int32_t, Memory> targets, std::int32_t ignore, std::int64_t vocab) {
  const KernelStatus s = read_status(ctx, status, op);
  if (!s.ok()) throw_bad_target(op, targets, ignore, vocab, s.first_bad);
  return s;
}

}  // namespace detail

//! Softmax cross-entropy kernels of the CUDA backend. For logits z[N, V] (storage T, fp32 math) and targets y[N]:
//!   lse[n] = m[n] + log sum_j exp(z[n, j] - m[n]),  m[n] = max_j z[n, j],  loss[n] = lse[n] - z[n, y[n]],
//! and rows whose target is `ignore_index` have loss 0 and gradient 0. Same functions, arguments, checks and
//! errors as `host::CrossEntropy`; one block per row, queued on the context's compute stream.
//!
//! The calls that validate targets or count rows (`cross_entropy_forward`, `cross_entropy_backward`,
//! `target_logit`, `cross_entropy_combine`) wait for the compute stream: the kernels report the first invalid
//! row and the count through the context's reduction scratch, copied back to the host. When they throw, the
//! outputs may have been written.
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
  //! Throws if a target is neither ignore_index nor in [0, V), naming the row and the target. Waits for the
  //! compute stream (the count is read back).
  template <FloatElement T>
  static std::int64_t cross_entropy_forward(const Context& ctx, View<const T, Memory> logits,
                                            View<const std::int32_t, Memory> targets, std::int32_t ignore_index,
                                            View<float, Memory> losses, View<float, Memory> lse) {
    constexpr const char* op = "cross_entropy_forward";
    const std::int64_t n = detail::ce_rows(op, logits.shape(), std::pair{"targets", targets.shape()},
                                           std::pair{"losses", losses.shape()}, std::pair{"lse", lse.shape()});
    const std::int64_t v = logits.shape()[1];
    if (n == 0) return 0;
    detail::KernelStatus* status = detail::reset_status(ctx, op);
    detail::ce_forward_kernel<<<static_cast<unsigned>(n), detail::ce_threads, 0, ctx.stream()>>>(
        logits.data(), targets.data(), ignore_index, losses.data(), lse.data(), v, status);
    check_launch("cuda::CrossEntropy::cross_entropy_forward");
    return static_cast<std::int64_t>(detail::finish_checked(ctx, status, op, targets, ignore_index, v).count);
  }

  //! dlogits[n, j] = dloss_scale * (exp(z[n, j] - lse[n]) - [vb + j == y[n]]) for rows not ignored, 0 for ignored
  //! rows (overwritten); lse is the forward's (global) lse. On the whole logits (vb = 0) this is the gradient of
  //! dloss_scale * sum_n loss[n]; on a shard, with vocab_begin = vb, it is that gradient's column slice.
  //! Throws for negative targets other than ignore_index (the forward checks the upper bound), after waiting for
  //! the compute stream. `dlogits` may alias `logits`.
  template <FloatElement T>
  static void cross_entropy_backward(const Context& ctx, detail::In<T> logits,
                                     View<const std::int32_t, Memory> targets, View<const float, Memory> lse,
                                     std::int32_t ignore_index, float dloss_scale, View<T, Memory> dlogits,
                                     std::int64_t vocab_begin = 0) {
    constexpr const char* op = "cross_entropy_backward";
    const std::int64_t n = detail::ce_rows(op, logits.shape(), std::pair{"targets", targets.shape()},
                                           std::pair{"lse", lse.shape()});
    detail::expect_shape(op, "dlogits", dlogits.shape(), logits.shape());
    if (n == 0) return;
    detail::KernelStatus* status = detail::reset_status(ctx, op);
    detail::ce_backward_kernel<<<static_cast<unsigned>(n), detail::ce_threads, 0, ctx.stream()>>>(
        logits.data(), targets.data(), lse.data(), ignore_index, dloss_scale, dlogits.data(), logits.shape()[1],
        vocab_begin, status);
    check_launch("cuda::CrossEntropy::cross_entropy_backward");
    (void)detail::finish_checked(ctx, status, op, targets, ignore_index, -1);
  }

  //! out[n] = max_j z[n, j] over this slice's columns (-inf for an empty slice).
  template <FloatElement T>
  static void row_max(const Context& ctx, View<const T, Memory> logits, View<float, Memory> out) {
    const std::int64_t n = detail::ce_rows("row_max", logits.shape(), std::pair{"out", out.shape()});
    if (n == 0) return;
    detail::ce_row_max_kernel<<<static_cast<unsigned>(n), detail::ce_threads, 0, ctx.stream()>>>(
        logits.data(), out.data(), logits.shape()[1]);
    check_launch("cuda::CrossEntropy::row_max");
  }

  //! out[n] = sum_j exp(z[n, j] - shift[n]) over this slice's columns; shift is the global row max.
  template <FloatElement T>
  static void sum_exp_shifted(const Context& ctx, View<const T, Memory> logits, View<const float, Memory> shift,
                              View<float, Memory> out) {
    const std::int64_t n = detail::ce_rows("sum_exp_shifted", logits.shape(), std::pair{"shift", shift.shape()},
                                           std::pair{"out", out.shape()});
    if (n == 0) return;
    detail::ce_sum_exp_kernel<<<static_cast<unsigned>(n), detail::ce_threads, 0, ctx.stream()>>>(
        logits.data(), shift.data(), out.data(), logits.shape()[1]);
    check_launch("cuda::CrossEntropy::sum_exp_shifted");
  }

  //! out[n] = z[n, y[n] - vocab_begin] when the (global) target y[n] lies in this slice [vocab_begin, vocab_begin + V)
  //! and is not ignore_index, else 0 (so the sum over slices is the target logit). Throws for negative targets,
  //! after waiting for the compute stream.
  template <FloatElement T>
  static void target_logit(const Context& ctx, View<const T, Memory> logits, View<const std::int32_t, Memory> targets,
                           std::int64_t vocab_begin, std::int32_t ignore_index, View<float, Memory> out) {
    constexpr const char* op = "target_logit";
    const std::int64_t n = detail::ce_rows(op, logits.shape(), std::pair{"targets", targets.shape()},
                                           std::pair{"out", out.shape()});
    if (n == 0) return;
    detail::KernelStatus* status = detail::reset_status(ctx, op);
    detail::ce_target_logit_kernel<<<detail::elementwise_blocks(ctx, n), detail::elementwise_threads, 0,
                                     ctx.stream()>>>(logits.data(), targets.data(), n, logits.shape()[1],
                                                     vocab_begin, ignore_index, out.data(), status);
    check_launch("cuda::CrossEntropy::target_logit");
    (void)detail::finish_checked(ctx, status, op, targets, ignore_index, -1);
  }

  //! From the pieces reduced over the slices: lse[n] = max[n] + log sum_exp[n], loss[n] = lse[n] - target_logit[n]
  //! (0 for ignored rows). Returns the number of rows not ignored (waits for the compute stream).
  static std::int64_t cross_entropy_combine(const Context& ctx, View<const float, Memory> global_max,
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
    const std::int64_t n = global_max.numel();
    if (n == 0) return 0;
    detail::KernelStatus* status = detail::reset_status(ctx, op);
    detail::ce_combine_kernel<<<detail::ce_combine_blocks(n, ctx.sm_count()), detail::ce_threads, 0, ctx.stream()>>>(
        global_max.data(), global_sum_exp.data(), global_target_logit.data(), targets.data(), ignore_index,
        losses.data(), lse.data(), n, status);
    check_launch("cuda::CrossEntropy::cross_entropy_combine");
    return static_cast<std::int64_t>(detail::read_status(ctx, status, op).count);
  }
};

}  // namespace parallax::cuda
