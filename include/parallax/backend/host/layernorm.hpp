// parallax/backend/host/layernorm.hpp — host LayerNorm over the last dimension: forward and backward, fp32 statistics.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../../core/dtype.hpp"
#include "../../core/view.hpp"
#include "context.hpp"
#include "detail/kernel_args.hpp"
#include "memory.hpp"

namespace parallax::host {

//! LayerNorm kernels of the host backend: each row of `x[N, D]` is normalised over its D elements.
//!
//! Storage is `T` (fp32, bf16, fp16); statistics and arithmetic are fp32. The forward saves the row mean
//! and reciprocal standard deviation for the backward.
//! @code
//! LayerNorm::layernorm_forward(ctx, x, gamma, beta, 1e-5f, y, mean, rstd);
//! LayerNorm::layernorm_backward(ctx, dy, x, gamma, mean, rstd, dx, dgamma, dbeta);
//! @endcode
struct LayerNorm {
  //! y[n, j] = (x[n, j] - mean[n]) * rstd[n] * gamma[j] + beta[j], where
  //!   mean[n] = (1/D) sum_j x[n, j],  rstd[n] = 1 / sqrt((1/D) sum_j (x[n, j] - mean[n])^2 + eps)  (biased variance).
  //! Shapes: x, y [N, D]; gamma, beta [D]; mean, rstd [N]. `y` may alias `x`.
  template <FloatElement T>
  static void layernorm_forward(const Context&, detail::In<T> x, detail::In<T> gamma, detail::In<T> beta, float eps,
                                View<T, Memory> y, View<float, Memory> mean, View<float, Memory> rstd) {
    constexpr const char* op = "layernorm_forward";
    detail::expect_rank(op, "x", x.shape(), 2, "[N, D]");
    const std::int64_t n = x.shape()[0], d = x.shape()[1];
    detail::expect_shape(op, "gamma", gamma.shape(), Shape{d});
    detail::expect_shape(op, "beta", beta.shape(), Shape{d});
    detail::expect_shape(op, "y", y.shape(), x.shape());
    detail::expect_shape(op, "mean", mean.shape(), Shape{n});
    detail::expect_shape(op, "rstd", rstd.shape(), Shape{n});
    const float inv_d = d > 0 ? 1.f / static_cast<float>(d) : 0.f;
    for (std::int64_t r = 0; r < n; ++r) {
      const T* xr = x.data() + r * d;
      T* yr = y.data() + r * d;
      float s = 0.f, ss = 0.f;
      for (std::int64_t j = 0; j < d; ++j) s += float(xr[j]);
      const float mu = s * inv_d;
      for (std::int64_t j = 0; j < d; ++j) ss += (float(xr[j]) - mu) * (float(xr[j]) - mu);
      const float rs = 1.f / std::sqrt(ss * inv_d + eps);
      for (std::int64_t j = 0; j < d; ++j) yr[j] = T((float(xr[j]) - mu) * rs * float(gamma.data()[j]) + float(beta.data()[j]));
      mean.data()[r] = mu;
      rstd.data()[r] = rs;
    }
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
    const auto ud = static_cast<std::size_t>(d);
    std::vector<float> g(ud), dg(want_dg ? ud : 0), db(want_db ? ud : 0);
    const float inv_d = d > 0 ? 1.f / static_cast<float>(d) : 0.f;
    for (std::int64_t r = 0; r < n; ++r) {
      const T* xr = x.data() + r * d;
      const T* dyr = dy.data() + r * d;
      const float mu = mean.data()[r], rs = rstd.data()[r];
      float sg = 0.f, sgx = 0.f;
      for (std::size_t j = 0; j < ud; ++j) {
        const float xhat = (float(xr[j]) - mu) * rs, dyj = float(dyr[j]);
        g[j] = dyj * float(gamma.data()[j]);
        sg += g[j];
        sgx += g[j] * xhat;
        if (want_dg) dg[j] += dyj * xhat;
        if (want_db) db[j] += dyj;
      }
      if (!want_dx) continue;
      T* dxr = dx.data() + r * d;
      for (std::size_t j = 0; j < ud; ++j)
        dxr[j] = T(rs * (g[j] - sg * inv_d - (float(xr[j]) - mu) * rs * sgx * inv_d));
    }
    for (std::size_t j = 0; j < dg.size(); ++j) dgamma.data()[j] = G(float(dgamma.data()[j]) + dg[j]);
    for (std::size_t j = 0; j < db.size(); ++j) dbeta.data()[j] = G(float(dbeta.data()[j]) + db[j]);
  }
};

}  // namespace parallax::host
