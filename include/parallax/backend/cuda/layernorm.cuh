// parallax/backend/cuda/layernorm.cuh — LayerNorm over the last dimension on the GPU: forward and backward (nvcc).
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_runtime.h>

#include "../../core/dtype.hpp"
#include "../../core/view.hpp"
#include "../host/layernorm.hpp"
#include "check.hpp"
#include "context.hpp"
#include "detail/column_sum.cuh"
#include "detail/kernel_args.hpp"
#include "detail/layernorm_kernels.cuh"
#include "memory.hpp"

namespace parallax::cuda {

//! LayerNorm kernels of the CUDA backend: each row of `x[N, D]` is normalised over its D elements, one warp per
//! row. Same functions, arguments, checks and fp32 math as `host::LayerNorm`; queued on the context's compute
//! stream (asynchronous).
//!
//! Storage is `T` (fp32, bf16, fp16); statistics and arithmetic are fp32. The forward saves the row mean and
//! reciprocal standard deviation for the backward. The dgamma/dbeta column sums are deterministic: per-block
//! partial sums over chunks of rows, then a second kernel adding the chunks in order (no atomics).
//! `add_layernorm_forward` / `add_layernorm_backward` fuse the residual add before a pre-LN sublayer's LayerNorm
//! (and its gradient) into the same kernel.
//! @code
//! LayerNorm::layernorm_forward(ctx, x, gamma, beta, 1e-5f, y, mean, rstd);
//! LayerNorm::layernorm_backward(ctx, dy, x, gamma, mean, rstd, dx, dgamma, dbeta);
//! LayerNorm::add_layernorm_forward(ctx, x, r, gamma, beta, 1e-5f, sum, y, mean, rstd);  // sum = x + r, y = LN(sum)
//! LayerNorm::add_layernorm_backward(ctx, dy, sum, gamma, mean, rstd, dres, dsum);       // dsum = dres + LN'(dy)
//! @endcode
struct LayerNorm {
  //! y[n, j] = (x[n, j] - mean[n]) * rstd[n] * gamma[j] + beta[j], where
  //!   mean[n] = (1/D) sum_j x[n, j],  rstd[n] = 1 / sqrt((1/D) sum_j (x[n, j] - mean[n])^2 + eps)  (biased variance).
  //! Shapes: x, y [N, D]; gamma, beta [D]; mean, rstd [N]. `y` may alias `x`.
  template <FloatElement T>
  static void layernorm_forward(const Context& ctx, detail::In<T> x, detail::In<T> gamma, detail::In<T> beta,
                                float eps, View<T, Memory> y, View<float, Memory> mean, View<float, Memory> rstd) {
    const auto [n, d] = host::detail::check_layernorm_forward("layernorm_forward", x.shape(), gamma.shape(),
                                                              beta.shape(), y.shape(), mean.shape(), rstd.shape());
    launch_forward<T>(ctx, x.data(), nullptr, nullptr, gamma.data(), beta.data(), eps, y.data(), mean.data(),
                      rstd.data(), n, d, "cuda::LayerNorm::layernorm_forward");
  }

  //! sum = x + r (stored as T), then y = layernorm_forward(sum) (same statistics, from the stored sum): the residual
  //! add of a pre-LN block and the LayerNorm after it in one kernel. Shapes: x, r, sum, y [N, D]; gamma, beta [D];
  //! mean, rstd [N]. `sum` may alias `x` or `r`; `y` must not alias `sum`.
  template <FloatElement T>
  static void add_layernorm_forward(const Context& ctx, detail::In<T> x, detail::In<T> r, detail::In<T> gamma,
                                    detail::In<T> beta, float eps, detail::Out<T> sum, View<T, Memory> y,
                                    View<float, Memory> mean, View<float, Memory> rstd) {
    constexpr const char* op = "add_layernorm_forward";
    const auto [n, d] = host::detail::check_layernorm_forward(op, x.shape(), gamma.shape(), beta.shape(), y.shape(),
                                                              mean.shape(), rstd.shape());
    detail::expect_shape(op, "r", r.shape(), x.shape());
    detail::expect_shape(op, "sum", sum.shape(), x.shape());
    launch_forward<T>(ctx, x.data(), r.data(), sum.data(), gamma.data(), beta.data(), eps, y.data(), mean.data(),
                      rstd.data(), n, d, "cuda::LayerNorm::add_layernorm_forward");
  }

  //! With xhat = (x - mean) * rstd and g = dy * gamma, per row:
  //!   dx[j]      = rstd * (g[j] - mean_k(g[k]) - xhat[j] * mean_k(g[k] xhat[k]))   (overwritten)
  //!   dgamma[j] += sum_n dy[n, j] xhat[n, j],   dbeta[j] += sum_n dy[n, j]          (accumulated)
  //! `mean`, `rstd` are the forward's. dgamma and dbeta have the type of gamma or fp32; their column sums are
  //! formed in fp32 and added once. Pass `{}` for dx, or for dgamma and/or dbeta, to skip that output
  //! (backward_input / backward_weight), naming the types then: `layernorm_backward<bf16, float>(..., {}, dg, db)`.
  //! `dx` may alias `dy`.
  template <FloatElement T, FloatElement G = T>
    requires(std::is_same_v<G, T> || std::is_same_v<G, float>)
  static void layernorm_backward(const Context& ctx, detail::In<T> dy, detail::In<T> x, detail::In<T> gamma,
                                 View<const float, Memory> mean, View<const float, Memory> rstd, View<T, Memory> dx,
                                 View<G, Memory> dgamma, detail::Out<G> dbeta) {
    constexpr const char* op = "layernorm_backward";
    const auto [n, d] = host::detail::check_layernorm_backward(op, dy.shape(), x.shape(), gamma.shape(), mean.shape(),
                                                               rstd.shape());
    const bool want_dx = !detail::absent(dx), want_dg = !detail::absent(dgamma), want_db = !detail::absent(dbeta);
    if (want_dx) detail::expect_shape(op, "dx", dx.shape(), x.shape());
    if (want_dg) detail::expect_shape(op, "dgamma", dgamma.shape(), Shape{d});
    if (want_db) detail::expect_shape(op, "dbeta", dbeta.shape(), Shape{d});
    if (n == 0) return;
    // The column sums first: they read dy, which the dx kernel may overwrite.
    if (want_dg || want_db) {
      const detail::ColumnOutputs<G, 2> out{{want_dg ? dgamma.data() : nullptr, want_db ? dbeta.data() : nullptr}};
      detail::column_sums<2>(ctx, detail::LayerNormGradTerm<T>{dy.data(), x.data(), mean.data(), rstd.data(), d}, n,
                             d, out, "cuda::LayerNorm::layernorm_backward");
    }
    if (!want_dx) return;
    launch_backward_dx<T>(ctx, dy.data(), x.data(), gamma.data(), mean.data(), rstd.data(), nullptr, dx.data(), n, d,
                          "cuda::LayerNorm::layernorm_backward");
  }

  //! dx = dres + (layernorm_backward's dx of dy): the input gradient of `add_layernorm_forward`'s sum, i.e. the
  //! gradient arriving through the residual path (`dres`) plus the one through the LayerNorm, in one kernel and
  //! one rounding. `x`, `mean`, `rstd` are the forward's (x: the stored sum). dgamma and dbeta come from
  //! `layernorm_backward` (backward_weight). Shapes: dy, x, dres, dx [N, D]. `dx` may alias `dy` or `dres`.
  template <FloatElement T>
  static void add_layernorm_backward(const Context& ctx, detail::In<T> dy, detail::In<T> x, detail::In<T> gamma,
                                     View<const float, Memory> mean, View<const float, Memory> rstd,
                                     detail::In<T> dres, View<T, Memory> dx) {
    constexpr const char* op = "add_layernorm_backward";
    const auto [n, d] = host::detail::check_layernorm_backward(op, dy.shape(), x.shape(), gamma.shape(), mean.shape(),
                                                               rstd.shape());
    detail::expect_shape(op, "dres", dres.shape(), x.shape());
    detail::expect_shape(op, "dx", dx.shape(), x.shape());
    launch_backward_dx<T>(ctx, dy.data(), x.data(), gamma.data(), mean.data(), rstd.data(), dres.data(), dx.data(), n,
                          d, "cuda::LayerNorm::add_layernorm_backward");
  }

 private:
  template <class T>
  static void launch_forward(const Context& ctx, const T* x, const T* r, T* sum, const T* gamma, const T* beta,
                             float eps, T* y, float* mean, float* rstd, std::int64_t n, std::int64_t d,
                             const char* what) {
    if (n == 0) return;
    detail::layernorm_forward_kernel<<<detail::layernorm_blocks(n), detail::layernorm_warps * 32, 0, ctx.stream()>>>(
        x, r, sum, gamma, beta, eps, y, mean, rstd, n, d);
    check_launch(what);
  }
  template <class T>
  static void launch_backward_dx(const Context& ctx, const T* dy, const T* x, const T* gamma, const float* mean,
                                 const float* rstd, const T* dres, T* dx, std::int64_t n, std::int64_t d,
                                 const char* what) {
    if (n == 0) return;
    detail::layernorm_backward_dx_kernel<<<detail::layernorm_blocks(n), detail::layernorm_warps * 32, 0,
                                           ctx.stream()>>>(dy, x, gamma, mean, rstd, dres, dx, n, d);
    check_launch(what);
  }
};

}  // namespace parallax::cuda
