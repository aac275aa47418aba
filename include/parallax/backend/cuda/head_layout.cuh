// parallax/backend/cuda/head_layout.cuh — copies between sequence-first activations and head-major attention
// operands on the GPU: split_qkv / merge_qkv, merge_heads / split_heads (nvcc).
#pragma once

#include <cstdint>
#include <utility>

#include <cuda_runtime.h>

#include "../../core/dtype.hpp"
#include "../../core/view.hpp"
#include "../host/attention.hpp"
#include "check.hpp"
#include "context.hpp"
#include "detail/grid.cuh"
#include "detail/kernel_args.hpp"
#include "elementwise.cuh"
#include "memory.hpp"

namespace parallax::cuda {

namespace detail {

// The shape checks are the host kernels' (same messages).
using host::detail::expect_head_layout;

//! The sizes of a layout copy: heads [B, H, T, Dh] per section, packed [T, B, sections * H * Dh].
struct HeadDims {
  std::int64_t nb, nh, nt, dh, sections;
};

//! The section of element p of the packed operand, and its offset in that section's head-major operand:
//! p = (((t * B + b) * S + s) * H + h) * Dh + i  ->  ((b * H + h) * T + t) * Dh + i.
__device__ inline std::int64_t head_offset(std::int64_t p, const HeadDims& d, int& section) {
  const std::int64_t i = p % d.dh;
  std::int64_t q = p / d.dh;
  const std::int64_t h = q % d.nh;
  q /= d.nh;
  section = static_cast<int>(q % d.sections);
  q /= d.sections;
  const std::int64_t b = q % d.nb, t = q / d.nb;
  return ((b * d.nh + h) * d.nt + t) * d.dh + i;
}

//! The head-major operands of a copy, one per section (q, k, v; or one).
template <class T>
struct HeadPointers {
  T* p[3];
};

template <class T>
__global__ void packed_to_heads_kernel(const T* packed, HeadPointers<T> heads, HeadDims d, std::int64_t total) {
  for (std::int64_t p = grid_index(); p < total; p += grid_stride()) {
    int s = 0;
    const std::int64_t o = head_offset(p, d, s);
    heads.p[s][o] = packed[p];
  }
}

template <class T>
__global__ void heads_to_packed_kernel(HeadPointers<const T> heads, T* packed, HeadDims d, std::int64_t total) {
  for (std::int64_t p = grid_index(); p < total; p += grid_stride()) {
    int s = 0;
    const std::int64_t o = head_offset(p, d, s);
    packed[p] = heads.p[s][o];
  }
}

//! Launches one layout copy over the `total` elements of the packed operand.
template <class Kernel, class... A>
void launch_layout(const Context& ctx, Kernel kernel, std::int64_t total, const char* what, A... args) {
  if (total == 0) return;
  kernel<<<elementwise_blocks(ctx, total), elementwise_threads, 0, ctx.stream()>>>(args..., total);
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
    detail::launch_layout(ctx, detail::packed_to_heads_kernel<T>, qkv.numel(), "cuda::HeadLayout::split_qkv",
                          qkv.data(), detail::HeadPointers<T>{{q.data(), k.data(), v.data()}},
                          detail::head_dims(q.shape(), 3));
  }

  //! The inverse of `split_qkv`: gathers dq, dk, dv [B, H, T, Dh] into dqkv [T, B, 3 * H * Dh] (overwritten).
  template <FloatElement T>
  static void merge_qkv(const Context& ctx, detail::In<T> dq, detail::In<T> dk, detail::In<T> dv,
                        View<T, Memory> dqkv) {
    detail::expect_head_layout("merge_qkv", "dqkv", dqkv.shape(), 3, "dq", dq.shape(), std::pair{"dk", dk.shape()},
                               std::pair{"dv", dv.shape()});
    detail::launch_layout(ctx, detail::heads_to_packed_kernel<T>, dqkv.numel(), "cuda::HeadLayout::merge_qkv",
                          detail::HeadPointers<const T>{{dq.data(), dk.data(), dv.data()}}, dqkv.data(),
                          detail::head_dims(dq.shape(), 3));
  }

  //! Joins the heads of o [B, H, T, Dh] into out [T, B, H * Dh]: out[t, b, h * Dh + i] = o[b, h, t, i].
  //! `out` must not alias `o`.
  template <FloatElement T>
  static void merge_heads(const Context& ctx, detail::In<T> o, View<T, Memory> out) {
    detail::expect_head_layout("merge_heads", "out", out.shape(), 1, "o", o.shape());
    detail::launch_layout(ctx, detail::heads_to_packed_kernel<T>, out.numel(), "cuda::HeadLayout::merge_heads",
                          detail::HeadPointers<const T>{{o.data(), nullptr, nullptr}}, out.data(),
                          detail::head_dims(o.shape(), 1));
  }

  //! The inverse of `merge_heads`: dout [T, B, H * Dh] to d_o [B, H, T, Dh]. `d_o` must not alias `dout`.
  template <FloatElement T>
  static void split_heads(const Context& ctx, detail::In<T> dout, View<T, Memory> d_o) {
    detail::expect_head_layout("split_heads", "dout", dout.shape(), 1, "d_o", d_o.shape());
    detail::launch_layout(ctx, detail::packed_to_heads_kernel<T>, dout.numel(), "cuda::HeadLayout::split_heads",
                          dout.data(), detail::HeadPointers<T>{{d_o.data(), nullptr, nullptr}},
                          detail::head_dims(d_o.shape(), 1));
  }
};

}  // namespace parallax::cuda
