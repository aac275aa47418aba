// parallax/backend/cuda/layernorm.cuh — LayerNorm over the last dimension on the GPU: forward and backward (nvcc).
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_runtime.h>

#include "../../core/dtype.hpp"
#include "../../core/view.hpp"
#include "check.hpp"
#include "context.hpp"
#include "detail/block_reduce.cuh"
#include "detail/column_sum.cuh"
#include "detail/kernel_args.hpp"
#include "memory.hpp"

namespace parallax::cuda {

namespace detail {

inline constexpr int layernorm_warps = 8;  // rows per block: one warp per row

[[nodiscard]] inline unsigned layernorm_blocks(std::int64_t n) {
  return static_cast<unsigned>((n + layernorm_warps - 1) / layernorm_warps);
}

template <class T>
__global__ void __launch_bounds__(layernorm_warps * 32)
    layernorm_forward_kernel(const T* x, const T* gamma, const T* beta, float eps, T* y, float* mean, float* rstd,
                             std::int64_t n, std::int64_t d) {
  const std::int64_t r = std::int64_t{blockIdx.x} * layernorm_warps + threadIdx.x / 32;
  if (r >= n) return;
  const int lane = static_cast<int>(threadIdx.x % 32);
  const T* xr = x + r * d;
  T* yr = y + r * d;
  const float inv_d = d > 0 ? 1.f / static_cast<float>(d) : 0.f;
  float s = 0.f, ss = 0.f;
  for (std::int64_t j = lane; j < d; j += 32) s += float(xr[j]);
  const float mu = warp_all_reduce(s, SumOp{}) * inv_d;
  for (std::int64_t j = lane; j < d; j += 32) ss += (float(xr[j]) - mu) * (float(xr[j]) - mu);
  const float rs = 1.f / sqrtf(warp_all_reduce(ss, SumOp{}) * inv_d + eps);
  for (std::int64_t j = lane; j < d; j += 32) yr[j] = T((float(xr[j]) - mu) * rs * float(gamma[j]) + float(beta[j]));
  if (lane == 0) {
    mean[r] = mu;
    rstd[r] = rs;
  }
}

template <class T>
__global__ void __launch_bounds__(layernorm_warps * 32)
    layernorm_backward_dx_kernel(const T* dy, const T* x, const T* gamma, const float* mean, const float* rstd, T* dx,
                                 std::int64_t n, std::int64_t d) {
  const std::int64_t r = std::int64_t{blockIdx.x} * layernorm_warps + threadIdx.x / 32;
  if (r >= n) return;
  const int lane = static_cast<int>(threadIdx.x % 32);
  const T* xr = x + r * d;
  const T* dyr = dy + r * d;
  T* dxr = dx + r * d;
  const float inv_d = d > 0 ? 1.f / static_cast<float>(d) : 0.f;
  const float mu = mean[r], rs = rstd[r];
  float sg = 0.f, sgx = 0.f;
  for (std::int64_t j = lane; j < d; j += 32) {
    const float g = float(dyr[j]) * float(gamma[j]);
    sg += g;
    sgx += g * ((float(xr[j]) - mu) * rs);
  }
  sg = warp_all_reduce(sg, SumOp{});
  sgx = warp_all_reduce(sgx, SumOp{});
  for (std::int64_t j = lane; j < d; j += 32) {  // reads dy[j] before writing dx[j]: dx may alias dy
    const float g = float(dyr[j]) * float(gamma[j]);
    dxr[j] = T(rs * (g - sg * inv_d - (float(xr[j]) - mu) * rs * sgx * inv_d));
  }
}

//! The terms of dgamma and dbeta: dy[r, c] xhat[r, c] and dy[r, c].
template <class T>
struct LayerNormGradTerm {
  const T* dy;
  const T* x;
  const float* mean;
  const float* rstd;
  std::int64_t d;
  __device__ void operator()(std::int64_t r, std::int64_t c, float* acc) const {
    const float dyv = float(dy[r * d + c]);
    acc[0] += dyv * ((float(x[r * d + c]) - mean[r]) * rstd[r]);
    acc[1] += dyv;
  }
};

}  // namespace detail

//! LayerNorm kernels of the CUDA backend: each row of `x[N, D]` is normalised over its D elements, one warp per
//! row. Same functions, arguments, checks and fp32 math as `host::LayerNorm`; queued on the context's compute
//! stream (asynchronous).
//!
//! Storage is `T` (fp32, bf16, fp16); statistics and arithmetic are fp32. The forward saves the row mean and
//! reciprocal standard deviation for the backward. The dgamma/dbeta column sums are deterministic: per-block
//! partial sums over chunks of rows, then a second kernel adding the chunks in order (no atomics).
//! @code
//! LayerNorm::layernorm_forward(ctx, x, gamma, beta, 1e-5f, y, mean, rstd);
//! LayerNorm::layernorm_backward(ctx, dy, x, gamma, mean, rstd, dx, dgamma, dbeta);
//! @endcode
struct LayerNorm {
  //! y[n, j] = (x[n, j] - mean[n]) * rstd[n] * gamma[j] + beta[j], where
  //!   mean[n] = (1/D) sum_j x[n, j],  rstd[n] = 1 / sqrt((1/D) sum_j (x[n, j] - mean[n])^2 + eps)  (biased variance).
  //! Shapes: x, y [N, D]; gamma, beta [D]; mean, rstd [N]. `y` may alias `x`.
  template <FloatElement T>
  static void layernorm_forward(const Context& ctx, detail::In<T> x, detail::In<T> gamma, detail::In<T> beta,
                                float eps, View<T, Memory> y, View<float, Memory> mean, View<float, Memory> rstd) {
    constexpr const char* op = "layernorm_forward";
    detail::expect_rank(op, "x", x.shape(), 2, "[N, D]");
    const std::int64_t n = x.shape()[0], d = x.shape()[1];
    detail::expect_shape(op, "gamma", gamma.shape(), Shape{d});
    detail::expect_shape(op, "beta", beta.shape(), Shape{d});
    detail::expect_shape(op, "y", y.shape(), x.shape());
    detail::expect_shape(op, "mean", mean.shape(), Shape{n});
    detail::expect_shape(op, "rstd", rstd.shape(), Shape{n});
    if (n == 0) return;
    detail::layernorm_forward_kernel<<<detail::layernorm_blocks(n), detail::layernorm_warps * 32, 0, ctx.stream()>>>(
        x.data(), gamma.data(), beta.data(), eps, y.data(), mean.data(), rstd.data(), n, d);
    check_launch("cuda::LayerNorm::layernorm_forward");
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
    detail::expect_rank(op, "x", x.shape(), 2, "[N, D]");
    const std::int64_t n = x.shape()[0], d = x.shape()[1];
    detail::expect_shape(op, "dy", dy.shape(), x.shape());
    detail::expect_shape(op, "gamma", gamma.shape(), Shape{d});
    detail::expect_shape(op, "mean", mean.shape(), Shape{n});
    detail::expect_shape(op, "rstd", rstd.shape(), Shape{n});
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
    detail::layernorm_backward_dx_kernel<<<detail::layernorm_blocks(n), detail::layernorm_warps * 32, 0,
                                           ctx.stream()>>>(dy.data(), x.data(), gamma.data(), mean.data(), rstd.data(),
                                                           dx.data(), n, d);
    check_launch("cuda::LayerNorm::layernorm_backward");
  }
};

}  // namespace parallax::cuda
