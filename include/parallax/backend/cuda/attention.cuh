// parallax/backend/cuda/attention.cuh — causal multi-head attention core (softmax(q k^T) v) on the GPU: tiled,
// online softmax, no T x T matrix in memory; forward and a deterministic backward, on the tensor cores for bf16/fp16
// with head dim 64 or 128 (flash_attention.cuh), SIMT kernels otherwise (nvcc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

#include <cuda_runtime.h>
#include <fmt/format.h>

#include "../../config.hpp"
#include "../../core/dtype.hpp"
#include "../../core/view.hpp"
#include "../../error.hpp"
#include "../host/attention.hpp"
#include "check.hpp"
#include "context.hpp"
#include "detail/block_reduce.cuh"
#include "detail/grid.cuh"
#include "detail/kernel_args.hpp"
#include "detail/scratch.hpp"
#include "elementwise.cuh"
#include "flash_attention.cuh"
#include "memory.hpp"

namespace parallax::cuda {

namespace detail {

// The shape checks are the host kernels' (same messages).
using host::detail::attention_dims;

inline constexpr int attn_warps = 8;       // rows of a block's own tile: one warp per query (or key) row
inline constexpr int attn_tile = 32;       // rows of a tile streamed through shared memory: one lane per row
inline constexpr int attn_max_chunks = 8;  // features per lane of a row accumulator
inline constexpr std::int64_t attn_max_head_dim = 32 * attn_max_chunks;

//! Throws unless the head dimension fits the kernels' per-lane accumulators.
inline void expect_head_dim(const char* op, std::int64_t dh) {
  if (dh > attn_max_head_dim)
    throw Error(fmt::format("{}: head dim {} exceeds {}, the most the CUDA attention kernels take", op, dh,
                            attn_max_head_dim));
}

//! Row stride of a tile read row-wise by the lanes (lane r reads row r): odd, so the lanes hit distinct banks.
PARALLAX_HOST_DEVICE constexpr int padded(int dh) { return dh | 1; }

//! dst[r * stride + i] = src[(row0 + r) * dh + i] in fp32 for r < rows, i < dh, by all threads of the block.
template <class T>
__device__ void load_tile(const T* src, std::int64_t row0, int rows, int dh, float* dst, int stride) {
  for (int e = static_cast<int>(threadIdx.x); e < rows * dh; e += static_cast<int>(blockDim.x)) {
    const int r = e / dh, i = e % dh;
    dst[r * stride + i] = float(src[(row0 + r) * dh + i]);
  }
}

__device__ inline std::int64_t min64(std::int64_t a, std::int64_t b) { return a < b ? a : b; }

//! a . b over dh features, in order (the host kernel's order).
__device__ inline float dot(const float* a, const float* b, int dh) {
  float s = 0.f;
  for (int i = 0; i < dh; ++i) s += a[i] * b[i];
  return s;
}

//! Forward: block = (b, h, a tile of attn_warps query rows), warp = query row t. Keys stream through shared
//! memory in tiles of attn_tile (lane j scores key k0 + j); the row keeps a running max m, a running sum l of
//! exp(S - m) and its output accumulator (lane owns features lane + 32 c), rescaled when m grows.
template <class T>
__global__ void __launch_bounds__(attn_warps * 32)
    attention_forward_kernel(const T* q, const T* k, const T* v, T* out, float* lse, std::int64_t nt,
                             std::int64_t tiles, int dh, float scale) {
  extern __shared__ float smem[];
  const int stride = padded(dh);
  float* ks = smem;                    // [attn_tile][stride]
  float* vs = ks + attn_tile * stride;  // [attn_tile][dh]
  float* qs = vs + attn_tile * dh;      // [attn_warps][dh]
  const std::int64_t bh = blockIdx.x / tiles, q0 = (blockIdx.x % tiles) * attn_warps;
  const std::int64_t base = bh * nt * dh;
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const std::int64_t t = q0 + warp, last = min64(q0 + attn_warps, nt) - 1;
  const bool active = t < nt;
  float* qrow = qs + warp * dh;
  if (active)
    for (int i = lane; i < dh; i += 32) qrow[i] = float(q[base + t * dh + i]);

  float m = -INFINITY, l = 0.f, acc[attn_max_chunks] = {};
  for (std::int64_t k0 = 0; k0 <= last; k0 += attn_tile) {
    const int rows = static_cast<int>(min64(attn_tile, nt - k0));
    __syncthreads();  // the previous tile is consumed
    load_tile(k + base, k0, rows, dh, ks, stride);
    load_tile(v + base, k0, rows, dh, vs, dh);
    __syncthreads();
    if (!active || k0 > t) continue;
    const int valid = static_cast<int>(min64(rows, t - k0 + 1));  // keys <= t
    const float s = lane < valid ? scale * dot(qrow, ks + lane * stride, dh) : -INFINITY;
    const float m_new = fmaxf(m, warp_all_reduce(s, MaxOp{}));
    const float p = lane < valid ? expf(s - m_new) : 0.f;
    const float alpha = expf(m - m_new);  // 0 on the first tile (m = -inf)
    l = l * alpha + warp_all_reduce(p, SumOp{});
#pragma unroll
    for (int c = 0; c < attn_max_chunks; ++c) acc[c] *= alpha;
    for (int j = 0; j < valid; ++j) {
      const float pj = __shfl_sync(0xffffffffu, p, j);
      const float* vr = vs + j * dh;
#pragma unroll
      for (int c = 0; c < attn_max_chunks; ++c)
        if (lane + 32 * c < dh) acc[c] += pj * vr[lane + 32 * c];
    }
    m = m_new;
  }
  if (!active) return;
#pragma unroll
  for (int c = 0; c < attn_max_chunks; ++c)
    if (lane + 32 * c < dh) out[base + t * dh + lane + 32 * c] = T(acc[c] / l);
  if (lane == 0) lse[bh * nt + t] = m + logf(l);
}

//! delta[r] = dout[r] . out[r] for each of the `rows` rows (one thread per row, features in order).
template <class T>
__global__ void attention_delta_kernel(const T* out, const T* dout, float* delta, std::int64_t rows, int dh) {
  for (std::int64_t r = grid_index(); r < rows; r += grid_stride()) {
    float d = 0.f;
    for (int i = 0; i < dh; ++i) d += float(dout[r * dh + i]) * float(out[r * dh + i]);
    delta[r] = d;
  }
}

//! dq: block = (b, h, a tile of attn_warps query rows), warp = query row t, looping over the key tiles up to t:
//! lane j recomputes P[t, j] from lse and dS[t, j] = P (dout[t] . v[j] - delta[t]); dq[t] = scale sum_j dS k[j],
//! summed in key order.
template <class T>
__global__ void __launch_bounds__(attn_warps * 32)
    attention_dq_kernel(const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta,
                        T* dq, std::int64_t nt, std::int64_t tiles, int dh, float scale) {
  extern __shared__ float smem[];
  const int stride = padded(dh);
  float* ks = smem;                     // [attn_tile][stride]
  float* vs = ks + attn_tile * stride;  // [attn_tile][stride]
  float* qs = vs + attn_tile * stride;  // [attn_warps][dh]
  float* dos = qs + attn_warps * dh;    // [attn_warps][dh]
  const std::int64_t bh = blockIdx.x / tiles, q0 = (blockIdx.x % tiles) * attn_warps;
  const std::int64_t base = bh * nt * dh;
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const std::int64_t t = q0 + warp, last = min64(q0 + attn_warps, nt) - 1;
  const bool active = t < nt;
  float* qrow = qs + warp * dh;
  float* dorow = dos + warp * dh;
  float lse_t = 0.f, delta_t = 0.f;
  if (active) {
    for (int i = lane; i < dh; i += 32) {
      qrow[i] = float(q[base + t * dh + i]);
      dorow[i] = float(dout[base + t * dh + i]);
    }
    lse_t = lse[bh * nt + t];
    delta_t = delta[bh * nt + t];
  }

  float acc[attn_max_chunks] = {};
  for (std::int64_t k0 = 0; k0 <= last; k0 += attn_tile) {
    const int rows = static_cast<int>(min64(attn_tile, nt - k0));
    __syncthreads();
    load_tile(k + base, k0, rows, dh, ks, stride);
    load_tile(v + base, k0, rows, dh, vs, stride);
    __syncthreads();
    if (!active || k0 > t) continue;
    const int valid = static_cast<int>(min64(rows, t - k0 + 1));
    float ds = 0.f;
    if (lane < valid) {
      const float p = expf(scale * dot(qrow, ks + lane * stride, dh) - lse_t);
      ds = p * (dot(dorow, vs + lane * stride, dh) - delta_t);
    }
    for (int j = 0; j < valid; ++j) {
      const float dsj = __shfl_sync(0xffffffffu, ds, j);
      const float* kr = ks + j * stride;
#pragma unroll
      for (int c = 0; c < attn_max_chunks; ++c)
        if (lane + 32 * c < dh) acc[c] += dsj * kr[lane + 32 * c];
    }
  }
  if (!active) return;
#pragma unroll
  for (int c = 0; c < attn_max_chunks; ++c)
    if (lane + 32 * c < dh) dq[base + t * dh + lane + 32 * c] = T(scale * acc[c]);
}

//! dk, dv: block = (b, h, a tile of attn_warps key rows), warp = key row j, looping over the query tiles from j's
//! on: lane t recomputes P[t, j] and dS[t, j]; dk[j] = scale sum_t dS q[t] and dv[j] = sum_t P dout[t], summed in
//! query order. Each key row is written by one warp: no atomics.
template <class T>
__global__ void __launch_bounds__(attn_warps * 32)
    attention_dkdv_kernel(const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta,
                          T* dk, T* dv, std::int64_t nt, std::int64_t tiles, int dh, float scale) {
  extern __shared__ float smem[];
  const int stride = padded(dh);
  float* qs = smem;                      // [attn_tile][stride]
  float* dos = qs + attn_tile * stride;  // [attn_tile][stride]
  float* ks = dos + attn_tile * stride;  // [attn_warps][dh]
  float* vs = ks + attn_warps * dh;      // [attn_warps][dh]
  float* lses = vs + attn_warps * dh;    // [attn_tile]
  float* deltas = lses + attn_tile;      // [attn_tile]
  const std::int64_t bh = blockIdx.x / tiles, k0 = (blockIdx.x % tiles) * attn_warps;
  const std::int64_t base = bh * nt * dh;
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const std::int64_t j = k0 + warp;
  const bool active = j < nt;
  float* krow = ks + warp * dh;
  float* vrow = vs + warp * dh;
  if (active)
    for (int i = lane; i < dh; i += 32) {
      krow[i] = float(k[base + j * dh + i]);
      vrow[i] = float(v[base + j * dh + i]);
    }

  float dk_acc[attn_max_chunks] = {}, dv_acc[attn_max_chunks] = {};
  for (std::int64_t t0 = k0 / attn_tile * attn_tile; t0 < nt; t0 += attn_tile) {
    const int rows = static_cast<int>(min64(attn_tile, nt - t0));
    __syncthreads();
    load_tile(q + base, t0, rows, dh, qs, stride);
    load_tile(dout + base, t0, rows, dh, dos, stride);
    if (threadIdx.x < static_cast<unsigned>(rows)) {
      lses[threadIdx.x] = lse[bh * nt + t0 + threadIdx.x];
      deltas[threadIdx.x] = delta[bh * nt + t0 + threadIdx.x];
    }
    __syncthreads();
    if (!active) continue;
    const int first = static_cast<int>(min64(j - t0 > 0 ? j - t0 : 0, rows));  // queries t >= j
    float p = 0.f, ds = 0.f;
    if (lane >= first && lane < rows) {
      p = expf(scale * dot(qs + lane * stride, krow, dh) - lses[lane]);
      ds = p * (dot(dos + lane * stride, vrow, dh) - deltas[lane]);
    }
    for (int tt = first; tt < rows; ++tt) {
      const float pt = __shfl_sync(0xffffffffu, p, tt);
      const float dst = scale * __shfl_sync(0xffffffffu, ds, tt);
      const float* qr = qs + tt * stride;
      const float* dor = dos + tt * stride;
#pragma unroll
      for (int c = 0; c < attn_max_chunks; ++c)
        if (lane + 32 * c < dh) {
          dk_acc[c] += dst * qr[lane + 32 * c];
          dv_acc[c] += pt * dor[lane + 32 * c];
        }
    }
  }
  if (!active) return;
#pragma unroll
  for (int c = 0; c < attn_max_chunks; ++c)
    if (lane + 32 * c < dh) {
      dk[base + j * dh + lane + 32 * c] = T(dk_acc[c]);
      dv[base + j * dh + lane + 32 * c] = T(dv_acc[c]);
    }
}

//! Launches a SIMT attention kernel over (B * H) x (row tiles of attn_warps) blocks with `floats` of dynamic shared
//! memory; the kernel takes `args..., nt, tiles, dh, scale`.
template <class Kernel, class... A>
void launch_attention(const Context& ctx, Kernel kernel, std::int64_t heads, std::int64_t nt, int dh, float scale,
                      std::size_t floats, const char* what, A... args) {
  const std::int64_t tiles = (nt + attn_warps - 1) / attn_warps;
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
    const auto floats = static_cast<std::size_t>(detail::attn_tile * detail::padded(d) + detail::attn_tile * d +
                                                 detail::attn_warps * d);
    detail::launch_attention(ctx, detail::attention_forward_kernel<T>, heads, tt, d, scale, floats,
                             "cuda::Attention::attention_forward", q.data(), k.data(), v.data(), out.data(),
                             lse.data());
  }

  //! Gradients of the forward (all overwritten), with P recomputed from lse and D[t] = dout[t] . out[t]:
  //!   dS[t, j] = P[t, j] (dout[t] . v[j] - D[t]),
  //!   dq[t] = scale sum_{j <= t} dS[t, j] k[j],  dk[j] = scale sum_{t >= j} dS[t, j] q[t],  dv[j] = sum_{t >= j} P[t, j] dout[t].
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
    const auto floats = static_cast<std::size_t>(2 * detail::attn_tile * detail::padded(d) +
                                                 2 * detail::attn_warps * d + 2 * detail::attn_tile);
    detail::launch_attention(ctx, detail::attention_dq_kernel<T>, heads, tt, d, scale, floats, what, q.data(),
                             k.data(), v.data(), dout.data(), lse.data(), delta.get(), dq.data());
    detail::launch_attention(ctx, detail::attention_dkdv_kernel<T>, heads, tt, d, scale, floats, what, q.data(),
                             k.data(), v.data(), dout.data(), lse.data(), delta.get(), dk.data(), dv.data());
  }
};

}  // namespace parallax::cuda
