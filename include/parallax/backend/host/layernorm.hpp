// parallax/backend/host/layernorm.hpp — host LayerNorm over the last dimension: forward and backward, fp32 statistics.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../core/dtype.hpp"
#include "../../core/view.hpp"
#include "context.hpp"
#include "detail/kernel_args.hpp"
#include "memory.hpp"

namespace parallax::host {

namespace detail {

//! The forward over the rows of x [n, d]; with `r` (else null), first sum = x + r stored as T, and the statistics and
//! y of the stored sum (what a separate add and layernorm_forward would give, bit for bit).
template <class T>
void layernorm_rows(const T* x, const T* r, T* sum, const T* gamma, const T* beta, float eps, T* y, float* mean,
                    float* rstd, std::int64_t n, std::int64_t d) {
  const float inv_d = d > 0 ? 1.f / static_cast<float>(d) : 0.f;
  for (std::int64_t row = 0; row < n; ++row) {
    const T* xr = x + row * d;
    if (r != nullptr) {
      T* sr = sum + row * d;
      for (std::int64_t j = 0; j < d; ++j) sr[j] = T(float(xr[j]) + float(r[row * d + j]));
      xr = sr;
    }
    T* yr = y + row * d;
    float s = 0.f, ss = 0.f;
    for (std::int64_t j = 0; j < d; ++j) s += float(xr[j]);
    const float mu = s * inv_d;
    for (std::int64_t j = 0; j < d; ++j) ss += (float(xr[j]) - mu) * (float(xr[j]) - mu);
    const float rs = 1.f / std::sqrt(ss * inv_d + eps);
    for (std::int64_t j = 0; j < d; ++j) yr[j] = T((float(xr[j]) - mu) * rs * float(gamma[j]) + float(beta[j]));
    mean[row] = mu;
    rstd[row] = rs;
  }
}

//! The backward over the rows of x [n, d]: dx (when not null; plus dres when that is not null), dgamma and dbeta
//! (accumulated, each when not null).
template <class T, class G>
void layernorm_backward_rows(const T* dy, const T* x, const T* gamma, const float* mean, const float* rstd,
                             const T* dres, T* dx, G* dgamma, G* dbeta, std::int64_t n, std::int64_t d) {
  const auto ud = static_cast<std::size_t>(d);
  std::vector<float> g(ud), dg(dgamma != nullptr ? ud : 0), db(dbeta != nullptr ? ud : 0);
  const float inv_d = d > 0 ? 1.f / static_cast<float>(d) : 0.f;
  for (std::int64_t r = 0; r < n; ++r) {
    const T* xr = x + r * d;
    const T* dyr = dy + r * d;
    const float mu = mean[r], rs = rstd[r];
    float sg = 0.f, sgx = 0.f;
    for (std::size_t j = 0; j < ud; ++j) {
      const float xhat = (float(xr[j]) - mu) * rs, dyj = float(dyr[j]);
      g[j] = dyj * float(gamma[j]);
      sg += g[j];
      sgx += g[j] * xhat;
      if (dgamma != nullptr) dg[j] += dyj * xhat;
      if (dbeta != nullptr) db[j] += dyj;
    }
    if (dx == nullptr) continue;
    T* dxr = dx + r * d;
    for (std::size_t j = 0; j < ud; ++j) {
      float v = rs * (g[j] - sg * inv_d - (float(xr[j]) - mu) * rs * sgx * inv_d);
      if (dres != nullptr) v += float(dres[r * d + static_cast<std::int64_t>(j)]);
      dxr[j] = T(v);
    }
  }
  for (std::size_t j = 0; j < dg.size(); ++j) dgamma[j] = G(float(dgamma[j]) + dg[j]);
  for (std::size_t j = 0; j < db.size(); ++j) dbeta[j] = G(float(dbeta[j]) + db[j]);
}

//! Checks the operands every forward takes: x, y [N, D]; gamma, beta [D]; mean, rstd [N]. Returns N, D.
inline std::pair<std::int64_t, std::int64_t> check_layernorm_forward(const char* op, const Shape& x,
                                                                     const Shape& gamma, const Shape& beta,
                                                                     const Shape& y, const Shape& mean,
                                                                     const Shape& rstd) {
  expect_rank(op, "x", x, 2, "[N, D]");
  const std::int64_t n = x[0], d = x[1];
  expect_shape(op, "gamma", gamma, Shape{d});
  expect_shape(op, "beta", beta, Shape{d});
  expect_shape(op, "y", y, x);
  expect_shape(op, "mean", mean, Shape{n});
  expect_shape(op, "rstd", rstd, Shape{n});
  return {n, d};
}

//! Checks the operands every backward takes: x, dy [N, D]; gamma [D]; mean, rstd [N]. Returns N, D.
inline std::pair<std::int64_t, std::int64_t> check_layernorm_backward(const char* op, const Shape& dy, const Shape& x,
                                                                      const Shape& gamma, const Shape& mean,
                                                                      const Shape& rstd) {
  expect_rank(op, "x", x, 2, "[N, D]");
  const std::int64_t n = x[0], d = x[1];
  expect_shape(op, "dy", dy, x);
  expect_shape(op, "gamma", gamma, Shape{d});
  expect_shape(op, "mean", mean, Shape{n});
  expect_shape(op, "rstd", rstd, Shape{n});
  return {n, d};
}

}  // namespace detail

//! LayerNorm kernels of the host backend: each row of `x[N, D]` is normalised over its D elements.
//!
//! Storage is `T` (fp32, bf16, fp16); statistics and arithmetic are fp32. The forward saves the row mean
//! and reciprocal standard deviation for the backward. `add_layernorm_forward` / `add_layernorm_backward` fuse the
//! residual add before a pre-LN sublayer's LayerNorm (and its gradient) into the same pass.
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
  static void layernorm_forward(const Context&, detail::In<T> x, detail::In<T> gamma, detail::In<T> beta, float eps,
                                View<T, Memory> y, View<float, Memory> mean, View<float, Memory> rstd) {
    const auto [n, d] = detail::check_layernorm_forward("layernorm_forward", x.shape(), gamma.shape(), beta.shape(),
                                                        y.shape(), mean.shape(), rstd.shape());
    detail::layernorm_rows<T>(x.data(), nullptr, nullptr, gamma.data(), beta.data(), eps, y.data(), mean.data(),
                              rstd.data(), n, d);
  }

  //! sum = x + r (stored as T), then y = layernorm_forward(sum) (same statistics, from the stored sum): the residual
  //! add of a pre-LN block and the LayerNorm after it in one pass. Shapes: x, r, sum, y [N, D]; gamma, beta [D];
  //! mean, rstd [N]. `sum` may alias `x` or `r`; `y` must not alias `sum`.
  template <FloatElement T>
  static void add_layernorm_forward(const Context&, detail::In<T> x, detail::In<T> r, detail::In<T> gamma,
                                    detail::In<T> beta, float eps, detail::Out<T> sum, View<T, Memory> y,
                                    View<float, Memory> mean, View<float, Memory> rstd) {
    constexpr const char* op = "add_layernorm_forward";
    const auto [n, d] = detail::check_layernorm_forward(op, x.shape(), gamma.shape(), beta.shape(), y.shape(),
                                                        mean.shape(), rstd.shape());
    detail::expect_shape(op, "r", r.shape(), x.shape());
    detail::expect_shape(op, "sum", sum.shape(), x.shape());
    detail::layernorm_rows<T>(x.data(), r.data(), sum.data(), gamma.data(), beta.data(), eps, y.data(), mean.data(),
                              rstd.data(), n, d);
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
  static void layernorm_backward(const Context&, detail::In<T> dy, detail::In<T> x, detail::In<T> gamma,
                                 View<const float, Memory> mean, View<const float, Memory> rstd, View<T, Memory> dx,
                                 View<G, Memory> dgamma, detail::Out<G> dbeta) {
    constexpr const char* op = "layernorm_backward";
    const auto [n, d] = detail::check_layernorm_backward(op, dy.shape(), x.shape(), gamma.shape(), mean.shape(),
                                                         rstd.shape());
    const bool want_dx = !detail::absent(dx), want_dg = !detail::absent(dgamma), want_db = !detail::absent(dbeta);
    if (want_dx) detail::expect_shape(op, "dx", dx.shape(), x.shape());
    if (want_dg) detail::expect_shape(op, "dgamma", dgamma.shape(), Shape{d});
    if (want_db) detail::expect_shape(op, "dbeta", dbeta.shape(), Shape{d});
    detail::layernorm_backward_rows<T, G>(dy.data(), x.data(), gamma.data(), mean.data(), rstd.data(), nullptr,
                                          want_dx ? dx.data() : nullptr, want_dg ? dgamma.data() : nullptr,
                                          want_db ? dbeta.data() : nullptr, n, d);
  }

  //! dx = dres + (layernorm_backward's dx of dy): the input gradient of `add_layernorm_forward`'s sum, i.e. the
  //! gradient arriving through the residual path (`dres`) plus the one through the LayerNorm, in one pass and one
  //! rounding. `x`, `mean`, `rstd` are the forward's (x: the stored sum). dgamma and dbeta come from
  //! `layernorm_backward` (backward_weight). Shapes: dy, x, dres, dx [N, D]. `dx` may alias `dy` or `dres`.
  template <FloatElement T>
  static void add_layernorm_backward(const Context&, detail::In<T> dy, detail::In<T> x, detail::In<T> gamma,
                                     View<const float, Memory> mean, View<const float, Memory> rstd,
                                     detail::In<T> dres, View<T, Memory> dx) {
    constexpr const char* op = "add_layernorm_backward";
    const auto [n, d] = detail::check_layernorm_backward(op, dy.shape(), x.shape(), gamma.shape(), mean.shape(),
                                                         rstd.shape());
    detail::expect_shape(op, "dres", dres.shape(), x.shape());
    detail::expect_shape(op, "dx", dx.shape(), x.shape());
    detail::layernorm_backward_rows<T, T>(dy.data(), x.data(), gamma.data(), mean.data(), rstd.data(), dres.data(),
                                          dx.data(), nullptr, nullptr, n, d);
  }
};

}  // namespace parallax::host
