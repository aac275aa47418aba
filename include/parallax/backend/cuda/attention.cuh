// parallax/backend/cuda/attention.cuh — causal multi-head attention core (softmax(q k^T) v) on the GPU: tiled,
// online softmax, no T x T matrix in memory; forward and a deterministic backward, on the tensor cores for bf16/fp16
// with head dim 64 or 128 (flash_attention.cuh), SIMT kernels otherwise (nvcc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

#include <cuda_runtime.h>
#include <fmt/format.h>

#include "../../core/dtype.hpp"
#include "../../core/view.hpp"
#include "../../error.hpp"
#include "../host/attention.hpp"
#include "check.hpp"
#include "context.hpp"
#include "detail/attention_kernels.cuh"
#include "detail/kernel_args.hpp"
#include "detail/scratch.hpp"
#include "elementwise.cuh"
#include "flash_attention.cuh"
#include "memory.hpp"

namespace parallax::cuda {

namespace detail {

// The shape checks are the host kernels' (same messages).
using host::detail::attention_dims;

//! Throws unless the head dimension fits the kernels' per-lane accumulators.
inline void expect_head_dim(const char* op, std::int64_t dh) {
  if (dh > attn_max_head_dim)
    throw Error(fmt::format("{}: head dim {} exceeds {}, the most the CUDA attention kernels take", op, dh,
                            attn_max_head_dim));
}

//! Launches a SIMT attention kernel over (B * H) x (row tiles of attn_warps) blocks with `floats` of dynamic shared
//! memory; the kernel takes `args..., nt, tiles, dh, scale`.
template <class Kernel, class... A>
void launch_attention(const Context& ctx, Kernel kernel, std::int64_t heads, std::int64_t nt, int dh, float scale,
                      std::size_t floats, const char* what, A... args) {
  const std::int64_t tiles = attention_row_tiles(nt);
  launch_with_smem(ctx, kernel, heads * tiles, attn_warps * 32, floats * sizeof(float), what, args..., nt, tiles, dh,
                   scale);
}

}  // namespace detail

//! Causal self-attention core of the CUDA backend: per batch b and head h, query t attends keys 0..t,
//!   out[t] = sum_{j <= t} P[t, j] v[j],  P[t, j] = exp(S[t, j] - lse[t]),  S[t, j] = scale * q[t] . k[j],
//!   lse[t] = log sum_{j <= t} exp(S[t, j]).
//! q, k, v, out are [B, H, T, Dh] (storage T, fp32 math); lse is [B, H, T] fp32. Same functions, arguments, checks
//! and results as `host::Attention` (up to fp32 rounding); queued on the context's compute stream.
//!
//! Flash attention, without a T x T matrix anywhere. bf16 and fp16 with head dim 64 or 128 (16-byte aligned
//! operands, an sm_80 or later device with room for the tiles) run on the tensor cores (FlashAttention-2 style,
//! `flash_attention.cuh`): a block takes 128 query rows, 16 a warp, and streams keys and values through shared
//! memory 64 at a time (cp.async, two stages), mma.sync for Q K^T and P V, P rounded to the storage type for the
//! second product; key tiles above the diagonal are skipped.
//! Everything else runs SIMT kernels: a block takes 8 query rows of one (b, h), a warp per row, and streams the
//! keys and values through shared memory 32 at a time with an online softmax (head dims up to 256, `Dh` per lane
//! in registers; larger ones throw).
//! Either backward recomputes P from lse in two kernels: dq per query tile looping over key tiles, dk and dv per
//! key tile looping over query tiles, each output row summed in a fixed order by one warp (deterministic, no
//! atomics: the same bits run to run).
//! @code
//! Attention::attention_forward(ctx, q, k, v, out, lse, 1.f / std::sqrt(float(dh)));
//! Attention::attention_backward(ctx, q, k, v, out, dout, lse, scale, dq, dk, dv);
//! @endcode
struct Attention {
  //! Writes out and lse (above). `scale` is typically 1 / sqrt(Dh). `out` must not alias q, k or v.
  template <FloatElement T>
  static void attention_forward(const Context& ctx, detail::In<T> q, detail::In<T> k, detail::In<T> v,
                                View<T, Memory> out, View<float, Memory> lse, float scale) {
    constexpr const char* op = "attention_forward";
    const auto [heads, tt, dh] = detail::attention_dims(op, q.shape(), lse.shape(), std::pair{"k", k.shape()},
                                                        std::pair{"v", v.shape()}, std::pair{"out", out.shape()});
    detail::expect_head_dim(op, dh);
    if (heads == 0 || tt == 0) return;
    if constexpr (detail::MmaElement<T>) {
      if (detail::flash_eligible(dh, q.data(), k.data(), v.data(), out.data()) &&
          detail::flash_device_fits(ctx, dh)) {
        detail::flash_attention_forward(ctx, q.data(), k.data(), v.data(), out.data(), lse.data(), heads, tt, dh,
                                        scale, "cuda::Attention::attention_forward");
        return;
      }
    }
    const int d = static_cast<int>(dh);
    detail::launch_attention(ctx, detail::attention_forward_kernel<T>, heads, tt, d, scale,
                             detail::attention_forward_floats(d),
                             "cuda::Attention::attention_forward", q.data(), k.data(), v.data(), out.data(),
                             lse.data());
  }

  //! Gradients of the forward (all overwritten), with P recomputed from lse and D[t] = dout[t] . out[t]:
  //!   dS[t, j] = P[t, j] (dout[t] . v[j] - D[t]),
  //!   dq[t] = scale sum_{j <= t} dS[t, j] k[j],  dk[j] = scale sum_{t >= j} dS[t, j] q[t],
  //!   dv[j] = sum_{t >= j} P[t, j] dout[t].
  //! `out` and `lse` are the forward's. dq, dk, dv must not alias the inputs.
  template <FloatElement T>
  static void attention_backward(const Context& ctx, detail::In<T> q, detail::In<T> k, detail::In<T> v,
                                 detail::In<T> out, detail::In<T> dout, View<const float, Memory> lse, float scale,
                                 View<T, Memory> dq, detail::Out<T> dk, detail::Out<T> dv) {
    constexpr const char* op = "attention_backward";
    const auto [heads, tt, dh] = detail::attention_dims(
        op, q.shape(), lse.shape(), std::pair{"k", k.shape()}, std::pair{"v", v.shape()},
        std::pair{"out", out.shape()}, std::pair{"dout", dout.shape()}, std::pair{"dq", dq.shape()},
        std::pair{"dk", dk.shape()}, std::pair{"dv", dv.shape()});
    detail::expect_head_dim(op, dh);
    if (heads == 0 || tt == 0 || dh == 0) return;
    constexpr const char* what = "cuda::Attention::attention_backward";
    const int d = static_cast<int>(dh);
    detail::Scratch<float> delta(ctx, static_cast<std::size_t>(heads * tt), what);
    detail::attention_delta_kernel<<<detail::elementwise_blocks(ctx, heads * tt), detail::elementwise_threads, 0,
                                     ctx.stream()>>>(out.data(), dout.data(), delta.get(), heads * tt, d);
    check_launch(what);
    if constexpr (detail::MmaElement<T>) {
      if (detail::flash_eligible(dh, q.data(), k.data(), v.data(), dout.data(), dq.data(), dk.data(), dv.data()) &&
          detail::flash_device_fits(ctx, dh)) {
        detail::flash_attention_backward(ctx, q.data(), k.data(), v.data(), dout.data(), lse.data(), delta.get(),
                                         dq.data(), dk.data(), dv.data(), heads, tt, dh, scale, what);
        return;
      }
    }
    const std::size_t floats = detail::attention_backward_floats(d);
    detail::launch_attention(ctx, detail::attention_dq_kernel<T>, heads, tt, d, scale, floats, what, q.data(),
                             k.data(), v.data(), dout.data(), lse.data(), delta.get(), dq.data());
    detail::launch_attention(ctx, detail::attention_dkdv_kernel<T>, heads, tt, d, scale, floats, what, q.data(),
                             k.data(), v.data(), dout.data(), lse.data(), delta.get(), dk.data(), dv.data());
  }
};

}  // namespace parallax::cuda
