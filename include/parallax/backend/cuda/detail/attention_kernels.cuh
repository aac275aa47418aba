// parallax/backend/cuda/detail/attention_kernels.cuh — the SIMT kernels of the causal attention core: tiled, online
// softmax; forward and a deterministic backward (device code only; nvcc, or the host SIMT emulator of
// tests/cuda_emulated).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "../../../config.hpp"
#include "block_reduce.cuh"
#include "dynamic_shared.cuh"
#include "grid.cuh"

namespace parallax::cuda::detail {

inline constexpr int attn_warps = 8;       // rows of a block's own tile: one warp per query (or key) row
inline constexpr int attn_tile = 32;       // rows of a tile streamed through shared memory: one lane per row
inline constexpr int attn_max_chunks = 8;  // features per lane of a row accumulator
inline constexpr std::int64_t attn_max_head_dim = 32 * attn_max_chunks;

//! Row stride of a tile read row-wise by the lanes (lane r reads row r): odd, so the lanes hit distinct banks.
PARALLAX_HOST_DEVICE constexpr int padded(int dh) { return dh | 1; }

//! Row tiles of attn_warps rows over nt rows: a head's blocks in the grid.
[[nodiscard]] inline std::int64_t attention_row_tiles(std::int64_t nt) { return (nt + attn_warps - 1) / attn_warps; }
//! Dynamic shared memory, in floats, of the forward kernel: the key and value tiles and the block's query rows.
[[nodiscard]] inline std::size_t attention_forward_floats(int dh) {
  return static_cast<std::size_t>(attn_tile * padded(dh) + attn_tile * dh + attn_warps * dh);
}
//! Dynamic shared memory, in floats, of the dq and dk / dv kernels.
[[nodiscard]] inline std::size_t attention_backward_floats(int dh) {
  return static_cast<std::size_t>(2 * attn_tile * padded(dh) + 2 * attn_warps * dh + 2 * attn_tile);
}

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
  float* smem = dynamic_shared<float>();
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
  float* smem = dynamic_shared<float>();
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
  float* smem = dynamic_shared<float>();
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

}  // namespace parallax::cuda::detail
