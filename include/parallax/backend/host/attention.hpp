// parallax/backend/host/attention.hpp — host causal multi-head attention core (softmax(q k^T) v), flash-attention style.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "../../core/dtype.hpp"
#include "../../core/view.hpp"
#include "context.hpp"
#include "detail/kernel_args.hpp"
#include "memory.hpp"

namespace parallax::host {

namespace detail {

inline float dot_f32(const float* a, const float* b, std::size_t n) {
  float s = 0.f;
  for (std::size_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

//! dst[0, n) = src[0, n) in fp32.
template <class T>
void load_f32(const T* src, std::size_t n, float* dst) {
  for (std::size_t i = 0; i < n; ++i) dst[i] = float(src[i]);
}

//! Checks q, k, v, out (and the extra [B, H, T, Dh] operands) and lse [B, H, T]; returns {B * H, T, Dh}.
struct AttentionDims {
  std::int64_t heads, t, dh;
};
template <class... V>
AttentionDims attention_dims(const char* op, const Shape& q, const Shape& lse, const V&... named) {
  expect_rank(op, "q", q, 4, "[B, H, T, Dh]");
  (expect_shape(op, named.first, named.second, q), ...);
  expect_shape(op, "lse", lse, Shape{q[0], q[1], q[2]});
  return {q[0] * q[1], q[2], q[3]};
}

}  // namespace detail

//! Causal self-attention core of the host backend: per batch b and head h, query t attends keys 0..t,
//!   out[t] = sum_{j <= t} P[t, j] v[j],  P[t, j] = exp(S[t, j] - lse[t]),  S[t, j] = scale * q[t] . k[j],
//!   lse[t] = log sum_{j <= t} exp(S[t, j]).
//! q, k, v, out are [B, H, T, Dh] (storage T, fp32 math); lse is [B, H, T] fp32. Only one row of S and P
//! lives at a time; the backward recomputes P from lse.
//! @code
//! Attention::attention_forward(ctx, q, k, v, out, lse, 1.f / std::sqrt(float(dh)));
//! Attention::attention_backward(ctx, q, k, v, out, dout, lse, scale, dq, dk, dv);
//! @endcode
struct Attention {
  //! Writes out and lse (above). `scale` is typically 1 / sqrt(Dh). `out` must not alias q, k or v.
  template <FloatElement T>
  static void attention_forward(const Context&, detail::In<T> q, detail::In<T> k, detail::In<T> v,
                                View<T, Memory> out, View<float, Memory> lse, float scale) {
    const auto [heads, tt, dh] = detail::attention_dims("attention_forward", q.shape(), lse.shape(),
                                                        std::pair{"k", k.shape()}, std::pair{"v", v.shape()},
                                                        std::pair{"out", out.shape()});
    const auto ut = static_cast<std::size_t>(tt), ud = static_cast<std::size_t>(dh);
    std::vector<float> kf(ut * ud), vf(ut * ud), qf(ud), s(ut), acc(ud);
    for (std::int64_t h = 0; h < heads; ++h) {
      const std::int64_t base = h * tt * dh;
      detail::load_f32(k.data() + base, ut * ud, kf.data());
      detail::load_f32(v.data() + base, ut * ud, vf.data());
      for (std::size_t t = 0; t < ut; ++t) {
        detail::load_f32(q.data() + base + t * ud, ud, qf.data());
        float m = -std::numeric_limits<float>::infinity(), l = 0.f;
        for (std::size_t j = 0; j <= t; ++j) {
          s[j] = scale * detail::dot_f32(qf.data(), &kf[j * ud], ud);
          m = std::max(m, s[j]);
        }
        std::fill(acc.begin(), acc.end(), 0.f);
        for (std::size_t j = 0; j <= t; ++j) {
          const float p = std::exp(s[j] - m);
          l += p;
          for (std::size_t i = 0; i < ud; ++i) acc[i] += p * vf[j * ud + i];
        }
        T* o = out.data() + base + t * ud;
        for (std::size_t i = 0; i < ud; ++i) o[i] = T(acc[i] / l);
        lse.data()[h * tt + static_cast<std::int64_t>(t)] = m + std::log(l);
      }
    }
  }

  //! Gradients of the forward (all overwritten), with P recomputed from lse and D[t] = dout[t] . out[t]:
  //!   dS[t, j] = P[t, j] (dout[t] . v[j] - D[t]),
  //!   dq[t] = scale sum_{j <= t} dS[t, j] k[j],  dk[j] = scale sum_{t >= j} dS[t, j] q[t],  dv[j] = sum_{t >= j} P[t, j] dout[t].
  //! `out` and `lse` are the forward's. dq, dk, dv must not alias the inputs.
  template <FloatElement T>
  static void attention_backward(const Context&, detail::In<T> q, detail::In<T> k, detail::In<T> v, detail::In<T> out,
                                 detail::In<T> dout, View<const float, Memory> lse, float scale, View<T, Memory> dq,
                                 detail::Out<T> dk, detail::Out<T> dv) {
    const auto [heads, tt, dh] = detail::attention_dims(
        "attention_backward", q.shape(), lse.shape(), std::pair{"k", k.shape()}, std::pair{"v", v.shape()},
        std::pair{"out", out.shape()}, std::pair{"dout", dout.shape()}, std::pair{"dq", dq.shape()},
        std::pair{"dk", dk.shape()}, std::pair{"dv", dv.shape()});
    const auto ut = static_cast<std::size_t>(tt), ud = static_cast<std::size_t>(dh);
    std::vector<float> kf(ut * ud), vf(ut * ud), dkf(ut * ud), dvf(ut * ud), qf(ud), dof(ud), dqf(ud);
    for (std::int64_t h = 0; h < heads; ++h) {
      const std::int64_t base = h * tt * dh;
      detail::load_f32(k.data() + base, ut * ud, kf.data());
      detail::load_f32(v.data() + base, ut * ud, vf.data());
      std::fill(dkf.begin(), dkf.end(), 0.f);
      std::fill(dvf.begin(), dvf.end(), 0.f);
      for (std::size_t t = 0; t < ut; ++t) {
        const std::size_t row = static_cast<std::size_t>(base) + t * ud;
        detail::load_f32(q.data() + row, ud, qf.data());
        detail::load_f32(dout.data() + row, ud, dof.data());
        float d = 0.f;
        for (std::size_t i = 0; i < ud; ++i) d += dof[i] * float(out.data()[row + i]);
        const float lse_t = lse.data()[h * tt + static_cast<std::int64_t>(t)];
        std::fill(dqf.begin(), dqf.end(), 0.f);
        for (std::size_t j = 0; j <= t; ++j) {
          const float* kj = &kf[j * ud];
          const float p = std::exp(scale * detail::dot_f32(qf.data(), kj, ud) - lse_t);
          const float ds = p * (detail::dot_f32(dof.data(), &vf[j * ud], ud) - d);
          for (std::size_t i = 0; i < ud; ++i) {
            dqf[i] += ds * kj[i];
            dkf[j * ud + i] += scale * ds * qf[i];
            dvf[j * ud + i] += p * dof[i];
          }
        }
        for (std::size_t i = 0; i < ud; ++i) dq.data()[row + i] = T(scale * dqf[i]);
      }
      for (std::size_t i = 0; i < ut * ud; ++i) {
        dk.data()[static_cast<std::size_t>(base) + i] = T(dkf[i]);
        dv.data()[static_cast<std::size_t>(base) + i] = T(dvf[i]);
      }
    }
  }
};

}  // namespace parallax::host
