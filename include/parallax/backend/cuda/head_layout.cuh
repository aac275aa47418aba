// parallax/backend/cuda/head_layout.cuh — copies between sequence-first activations and head-major attention
// operands on the GPU: split_qkv / merge_qkv, merge_heads / split_heads (nvcc).
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

#include <cuda_runtime.h>

#include "../../core/dtype.hpp"
#include "../../core/view.hpp"
#include "../host/attention.hpp"
#include "check.hpp"
#include "context.hpp"
#include "detail/head_layout_kernels.cuh"
#include "detail/kernel_args.hpp"
#include "elementwise.cuh"
#include "memory.hpp"

namespace parallax::cuda {

namespace detail {

// The shape checks are the host kernels' (same messages).
using host::detail::expect_head_layout;

//! One layout copy between the packed operand ([T, B, sections * H * Dh], `packed_elements` elements) and the
//! head-major operands (q; k and v for three sections), on the compute stream: 16 bytes a thread where the rows
//! allow it, 32-bit offsets where they fit.
template <bool ToHeads, class T>
void copy_layout(const Context& ctx, const T* packed, const T* q, const T* k, const T* v, HeadDims d,
                 std::int64_t packed_elements, const char* what) {
  if (packed_elements == 0) return;
  const auto aligned = [](const T* p) { return p == nullptr || reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
  const bool chunks = (d.dh * static_cast<std::int64_t>(sizeof(T))) % 16 == 0 && aligned(packed) && aligned(q) &&
                      aligned(k) && aligned(v);
  // The kernel takes every operand as writable; `ToHeads` decides which side it writes (inputs are only read).
  const auto run = [&]<class Unit>(std::type_identity<Unit>) {
    const std::int64_t units = d.dh * static_cast<std::int64_t>(sizeof(T)) / static_cast<std::int64_t>(sizeof(Unit));
    const std::int64_t total = packed_elements / d.dh * units;
    const unsigned blocks = elementwise_blocks(ctx, total);
    auto* p = reinterpret_cast<Unit*>(const_cast<T*>(packed));
    auto* uq = reinterpret_cast<Unit*>(const_cast<T*>(q));
    auto* uk = reinterpret_cast<Unit*>(const_cast<T*>(k));
    auto* uv = reinterpret_cast<Unit*>(const_cast<T*>(v));
    if (total <= std::int64_t{UINT32_MAX})
      head_layout_kernel<ToHeads, Unit, std::uint32_t><<<blocks, elementwise_threads, 0, ctx.stream()>>>(
          p, uq, uk, uv, d, static_cast<std::uint32_t>(units), static_cast<std::uint32_t>(total));
    else
      head_layout_kernel<ToHeads, Unit, std::uint64_t><<<blocks, elementwise_threads, 0, ctx.stream()>>>(
          p, uq, uk, uv, d, static_cast<std::uint64_t>(units), static_cast<std::uint64_t>(total));
  };
  if (chunks)
    run(std::type_identity<uint4>{});
  else
    run(std::type_identity<T>{});
  check_launch(what);
}

[[nodiscard]] inline HeadDims head_dims(const Shape& heads, std::int64_t sections) {
  return {heads[0], heads[1], heads[2], heads[3], sections};
}

}  // namespace detail

//! The layout kernels of the CUDA backend around its attention core: between the sequence-first activations
//! of a transformer ([T, B, ...]) and the head-major [B, H, T, Dh] operands of `cuda::Attention`. Same functions,
//! arguments, checks and layouts as the host backend's (`host::Attention`); queued on the compute stream.
//! @code
//! HeadLayout::split_qkv(ctx, qkv, q, k, v);       // [T, B, 3 * H * Dh] -> 3 x [B, H, T, Dh]
//! HeadLayout::merge_heads(ctx, o, y);            // [B, H, T, Dh] -> [T, B, H * Dh]
//! @endcode
struct HeadLayout {
  //! Splits the fused projection qkv [T, B, 3 * H * Dh] (per token: q of every head | k | v, each head-major)
  //! into q, k, v [B, H, T, Dh]: q[b, h, t, i] = qkv[t, b, h * Dh + i], k from offset H * Dh, v from 2 * H * Dh.
  //! H and Dh are q's. Outputs must not alias qkv.
  template <FloatElement T>
  static void split_qkv(const Context& ctx, detail::In<T> qkv, View<T, Memory> q, detail::Out<T> k,
                        detail::Out<T> v) {
    detail::expect_head_layout("split_qkv", "qkv", qkv.shape(), 3, "q", q.shape(), std::pair{"k", k.shape()},
                               std::pair{"v", v.shape()});
    detail::copy_layout<true>(ctx, qkv.data(), q.data(), k.data(), v.data(), detail::head_dims(q.shape(), 3),
                              qkv.numel(), "cuda::HeadLayout::split_qkv");
  }

  //! The inverse of `split_qkv`: gathers dq, dk, dv [B, H, T, Dh] into dqkv [T, B, 3 * H * Dh] (overwritten).
  template <FloatElement T>
  static void merge_qkv(const Context& ctx, detail::In<T> dq, detail::In<T> dk, detail::In<T> dv,
                        View<T, Memory> dqkv) {
    detail::expect_head_layout("merge_qkv", "dqkv", dqkv.shape(), 3, "dq", dq.shape(), std::pair{"dk", dk.shape()},
                               std::pair{"dv", dv.shape()});
    detail::copy_layout<false>(ctx, dqkv.data(), dq.data(), dk.data(), dv.data(), detail::head_dims(dq.shape(), 3),
                               dqkv.numel(), "cuda::HeadLayout::merge_qkv");
  }

  //! Joins the heads of o [B, H, T, Dh] into out [T, B, H * Dh]: out[t, b, h * Dh + i] = o[b, h, t, i].
  //! `out` must not alias `o`.
  template <FloatElement T>
  static void merge_heads(const Context& ctx, detail::In<T> o, View<T, Memory> out) {
    detail::expect_head_layout("merge_heads", "out", out.shape(), 1, "o", o.shape());
    constexpr const T* none = nullptr;
    detail::copy_layout<false>(ctx, out.data(), o.data(), none, none, detail::head_dims(o.shape(), 1), out.numel(),
                               "cuda::HeadLayout::merge_heads");
  }

  //! The inverse of `merge_heads`: dout [T, B, H * Dh] to d_o [B, H, T, Dh]. `d_o` must not alias `dout`.
  template <FloatElement T>
  static void split_heads(const Context& ctx, detail::In<T> dout, View<T, Memory> d_o) {
    detail::expect_head_layout("split_heads", "dout", dout.shape(), 1, "d_o", d_o.shape());
    constexpr const T* none = nullptr;
    detail::copy_layout<true>(ctx, dout.data(), d_o.data(), none, none, detail::head_dims(d_o.shape(), 1), dout.numel(),
                              "cuda::HeadLayout::split_heads");
  }
};

}  // namespace parallax::cuda
