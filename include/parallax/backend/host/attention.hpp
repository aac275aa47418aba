// parallax/backend/host/attention.hpp — host causal multi-head attention core (softmax(q k^T) v), flash-attention
// style, and the head-layout copies around it.
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

//! Checks `heads` [B, H, T, Dh], the `named` operands (of its shape) and the sequence-first `packed`
//! [T, B, sections * H * Dh].
template <class... S>
void expect_head_layout(const char* op, const char* packed_name, const Shape& packed, std::int64_t sections,
                        const char* heads_name, const Shape& heads, const S&... named) {
  expect_rank(op, heads_name, heads, 4, "[B, H, T, Dh]");
  (expect_shape(op, named.first, named.second, heads), ...);
  expect_shape(op, packed_name, packed, Shape{heads[2], heads[0], sections * heads[1] * heads[3]});
}

//! Calls f(section, packed_offset, head_offset) for every row of Dh elements: row (t, b, section s, head h) of
//! the sequence-first [T, B, S * H * Dh] at packed_offset is row (b, h, t) of section s's [B, H, T, Dh] at head_offset.
template <class F>
void for_each_head_row(const Shape& heads, std::int64_t sections, F&& f) {
  const std::int64_t nb = heads[0], nh = heads[1], nt = heads[2], dh = heads[3];
  for (std::int64_t t = 0; t < nt; ++t)
    for (std::int64_t b = 0; b < nb; ++b)
      for (std::int64_t s = 0; s < sections; ++s)
        for (std::int64_t h = 0; h < nh; ++h)
          f(s, (((t * nb + b) * sections + s) * nh + h) * dh, ((b * nh + h) * nt + t) * dh);
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
//! The layout kernels move between the sequence-first activations of a transformer ([T, B, ...]) and the
//! head-major [B, H, T, Dh] operands: `split_qkv` / `merge_qkv` for the fused q|k|v projection, `merge_heads` /
//! `split_heads` for the attention output.
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

  //! Splits the fused projection qkv [T, B, 3 * H * Dh] (per token: q of every head | k | v, each head-major)
  //! into q, k, v [B, H, T, Dh]: q[b, h, t, i] = qkv[t, b, h * Dh + i], k from offset H * Dh, v from 2 * H * Dh.
  //! H and Dh are q's. Outputs must not alias qkv.
  template <FloatElement T>
  static void split_qkv(const Context&, detail::In<T> qkv, View<T, Memory> q, detail::Out<T> k, detail::Out<T> v) {
    detail::expect_head_layout("split_qkv", "qkv", qkv.shape(), 3, "q", q.shape(), std::pair{"k", k.shape()},
                               std::pair{"v", v.shape()});
    T* const out[] = {q.data(), k.data(), v.data()};
    const std::int64_t dh = q.shape()[3];
    detail::for_each_head_row(q.shape(), 3, [&](std::int64_t s, std::int64_t packed, std::int64_t head) {
      std::copy_n(qkv.data() + packed, dh, out[s] + head);
    });
  }

  //! The inverse of `split_qkv`: gathers dq, dk, dv [B, H, T, Dh] into dqkv [T, B, 3 * H * Dh] (overwritten).
  template <FloatElement T>
  static void merge_qkv(const Context&, detail::In<T> dq, detail::In<T> dk, detail::In<T> dv, View<T, Memory> dqkv) {
    detail::expect_head_layout("merge_qkv", "dqkv", dqkv.shape(), 3, "dq", dq.shape(), std::pair{"dk", dk.shape()},
                               std::pair{"dv", dv.shape()});
    const T* const in[] = {dq.data(), dk.data(), dv.data()};
    const std::int64_t dh = dq.shape()[3];
    detail::for_each_head_row(dq.shape(), 3, [&](std::int64_t s, std::int64_t packed, std::int64_t head) {
      std::copy_n(in[s] + head, dh, dqkv.data() + packed);
    });
  }

  //! Joins the heads of o [B, H, T, Dh] into out [T, B, H * Dh]: out[t, b, h * Dh + i] = o[b, h, t, i].
  //! `out` must not alias `o`.
  template <FloatElement T>
  static void merge_heads(const Context&, detail::In<T> o, View<T, Memory> out) {
    detail::expect_head_layout("merge_heads", "out", out.shape(), 1, "o", o.shape());
    const std::int64_t dh = o.shape()[3];
    detail::for_each_head_row(o.shape(), 1, [&](std::int64_t, std::int64_t packed, std::int64_t head) {
      std::copy_n(o.data() + head, dh, out.data() + packed);
    });
  }

  //! The inverse of `merge_heads`: dout [T, B, H * Dh] to d_o [B, H, T, Dh]. `d_o` must not alias `dout`.
  template <FloatElement T>
  static void split_heads(const Context&, detail::In<T> dout, View<T, Memory> d_o) {
    detail::expect_head_layout("split_heads", "dout", dout.shape(), 1, "d_o", d_o.shape());
    const std::int64_t dh = d_o.shape()[3];
    detail::for_each_head_row(d_o.shape(), 1, [&](std::int64_t, std::int64_t packed, std::int64_t head) {
      std::copy_n(dout.data() + packed, dh, d_o.data() + head);
    });
  }
};

}  // namespace parallax::host
