// parallax/backend/cuda/detail/flash_attention_kernels.cuh — the tensor-core flash-attention kernels: FlashAttention-2
// style forward and deterministic backward (dq; dk and dv) for bf16/fp16 at head dims 64 and 128 (device code only;
// nvcc, or the host SIMT emulator of tests/cuda_emulated, which carries out their PTX).
#pragma once

#include <cmath>
#include <cstdint>

#include <cuda_runtime.h>

#include "dynamic_shared.cuh"
#include "flash_tiling.hpp"
#include "mma.cuh"

namespace parallax::cuda::detail {

inline constexpr float flash_log2e = 1.4426950408889634f;
inline constexpr float flash_ln2 = 0.6931471805599453f;

//! Queues the copy of rows [r0, r0 + Rows) of the row-major [nt, Dh] operand `src` into the shared tile `dst`
//! (row stride Stride), zeros for rows past nt, by all `Threads` threads of the block, 16 bytes a copy.
template <int Rows, int Threads, int Dh, int Stride, class T>
__device__ void load_rows_async(T* dst, const T* src, std::int64_t r0, std::int64_t nt) {
  constexpr int pieces = Dh / 8;  // 16-byte pieces a row
  static_assert(Rows * pieces % Threads == 0, "load_rows_async: the threads must split the tile evenly");
#pragma unroll
  for (int it = 0; it < Rows * pieces / Threads; ++it) {
    const int e = it * Threads + static_cast<int>(threadIdx.x);
    const int r = e / pieces, c = e % pieces * 8;
    const bool valid = r0 + r < nt;
    cp_async_16(dst + r * Stride + c, valid ? src + (r0 + r) * Dh + c : src, valid);
  }
}

//! Queues the copy of N floats from `src` + r0 into `dst`, zeros past nt (threads [0, N) of the block).
template <int N, int Threads>
__device__ void load_floats_async(float* dst, const float* src, std::int64_t r0, std::int64_t nt) {
  static_assert(N <= Threads, "load_floats_async: one float a thread");
  const int e = static_cast<int>(threadIdx.x);
  if (e < N) cp_async_4(dst + e, r0 + e < nt ? src + r0 + e : src, r0 + e < nt);
}

//! Stores this warp's 16 x Dh fp32 accumulator tile, times `scale`, as T into rows r0 + 0..15 of the row-major
//! [nt, Dh] `dst` (rows past nt are dropped).
template <MmaElement T, int Dh>
__device__ void store_rows(T* dst, const float (&acc)[Dh / 8][4], std::int64_t r0, std::int64_t nt,
                           const float (&scale)[2]) {
  const int lane = static_cast<int>(threadIdx.x % 32);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const MmaCoord c = mma_acc(lane, 2 * h);
    if (r0 + c.row >= nt) continue;
    T* row = dst + (r0 + c.row) * Dh + c.col;
#pragma unroll
    for (int n = 0; n < Dh / 8; ++n)
      *reinterpret_cast<std::uint32_t*>(row + 8 * n) = pack2<T>(acc[n][2 * h] * scale[h], acc[n][2 * h + 1] * scale[h]);
  }
}

//! v summed over the 4 lanes of a quad (the lanes holding one accumulator row), the same bits in each.
__device__ inline float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
//! v maximised over the 4 lanes of a quad.
__device__ inline float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

//! Forward. Block = (head, 128 query rows), warp = 16 of them; the keys and values stream through shared memory
//! 64 rows a step (cp.async, two stages), up to the diagonal. Per step a warp forms S = Q K^T on the tensor cores,
//! scales it to log2 units, masks it on the diagonal, folds it into the running row max m and sum l (rescaling
//! its output accumulator by 2^(m_old - m_new)), and adds P V with P straight from the S registers. At the end
//! out = acc / l and lse = (m + log2 l) ln 2.
template <MmaElement T, int Dh>
__global__ void __launch_bounds__(flash_forward_tiling<Dh>.threads(), flash_forward_tiling<Dh>.min_blocks)
    flash_forward_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ out,
                         float* __restrict__ lse, std::int64_t heads, std::int64_t nt, float scale_log2) {
  constexpr FlashTiling tl = flash_forward_tiling<Dh>;
  constexpr int rows = tl.rows(), cols = tl.cols, stride = tl.stride(), threads = tl.threads();
  T* qs = dynamic_shared<T>();     // [rows][stride]
  T* ks = qs + rows * stride;      // [2][cols][stride]
  T* vs = ks + 2 * cols * stride;  // [2][cols][stride]
  const FlashBlock blk = flash_block(blockIdx.x, heads, flash_tiles(nt, rows), true);
  const std::int64_t base = blk.head * nt * Dh, q0 = blk.tile * rows;
  const std::int64_t steps = flash_key_steps(q0, rows, cols, nt);
  load_rows_async<rows, threads, Dh, stride>(qs, q + base, q0, nt);
  load_rows_async<cols, threads, Dh, stride>(ks, k + base, 0, nt);
  load_rows_async<cols, threads, Dh, stride>(vs, v + base, 0, nt);
  cp_async_commit();

  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const std::int64_t r0 = q0 + 16 * warp;
  const T* qw = qs + 16 * warp * stride;
  float o[Dh / 8][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // l: this lane's part of the row sums
  for (std::int64_t s = 0; s < steps; ++s) {
    const int buf = static_cast<int>(s % 2);
    if (s + 1 < steps) {
      load_rows_async<cols, threads, Dh, stride>(ks + (1 - buf) * cols * stride, k + base, (s + 1) * cols, nt);
      load_rows_async<cols, threads, Dh, stride>(vs + (1 - buf) * cols * stride, v + base, (s + 1) * cols, nt);
    }
    cp_async_commit();
    cp_async_wait<1>();  // step s's tiles have landed
    __syncthreads();
    const ScoreBlock sb{r0, 16, s * cols, cols};
    if (sb.any_visible()) {
      float sc[cols / 8][4] = {};
      warp_mma_nt<T, Dh / 16, cols / 8>(sc, qw, ks + buf * cols * stride, stride);
      const bool full = sb.all_visible(nt);
      float mx[2] = {m[0], m[1]};
#pragma unroll
      for (int n = 0; n < cols / 8; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float x = full || flash_element_visible<false>(sb, lane, n, i, nt) ? sc[n][i] * scale_log2 : -INFINITY;
          sc[n][i] = x;
          mx[i / 2] = fmaxf(mx[i / 2], x);
        }
      float alpha[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        mx[h] = quad_max(mx[h]);  // finite: key 0 is in every row's first step
        alpha[h] = exp2_approx(m[h] - mx[h]);
        m[h] = mx[h];
        l[h] *= alpha[h];
      }
#pragma unroll
      for (int n = 0; n < cols / 8; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          sc[n][i] = exp2_approx(sc[n][i] - m[i / 2]);
          l[i / 2] += sc[n][i];
        }
#pragma unroll
      for (int n = 0; n < Dh / 8; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) o[n][i] *= alpha[i / 2];
      warp_mma_pb<T, cols / 16, Dh / 8>(o, sc, vs + buf * cols * stride, stride);
    }
    __syncthreads();  // every warp is done with buffer `buf` before step s + 2 refills it
  }

  float inv[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] = quad_sum(l[h]);
    inv[h] = 1.f / l[h];
    const std::int64_t t = r0 + mma_acc(lane, 2 * h).row;
    if (lane % 4 == 0 && t < nt) lse[blk.head * nt + t] = m[h] * flash_ln2 + logf(l[h]);
  }
  store_rows<T, Dh>(out + base, o, r0, nt, inv);
}

//! dq. Block = (head, 64 query rows with their dout, lse and D), warp = 16 of them; the keys and values stream
//! through shared memory 64 rows a step up to the diagonal. Per step a warp recomputes P = 2^(S log2e scale -
//! lse log2e) (masked), dP = dout V^T, dS = P (dP - D), and adds dS K; dq = scale sum, in key order.
template <MmaElement T, int Dh>
__global__ void __launch_bounds__(flash_dq_tiling<Dh>.threads(), flash_dq_tiling<Dh>.min_blocks)
    flash_dq_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                    const T* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
                    T* __restrict__ dq, std::int64_t heads, std::int64_t nt, float scale, float scale_log2) {
  constexpr FlashTiling tl = flash_dq_tiling<Dh>;
  constexpr int rows = tl.rows(), cols = tl.cols, stride = tl.stride(), threads = tl.threads();
  T* qs = dynamic_shared<T>();     // [rows][stride]
  T* dos = qs + rows * stride;     // [rows][stride]
  T* ks = dos + rows * stride;     // [2][cols][stride]
  T* vs = ks + 2 * cols * stride;  // [2][cols][stride]
  const FlashBlock blk = flash_block(blockIdx.x, heads, flash_tiles(nt, rows), true);
  const std::int64_t base = blk.head * nt * Dh, q0 = blk.tile * rows;
  const std::int64_t steps = flash_key_steps(q0, rows, cols, nt);
  load_rows_async<rows, threads, Dh, stride>(qs, q + base, q0, nt);
  load_rows_async<rows, threads, Dh, stride>(dos, dout + base, q0, nt);
  load_rows_async<cols, threads, Dh, stride>(ks, k + base, 0, nt);
  load_rows_async<cols, threads, Dh, stride>(vs, v + base, 0, nt);
  cp_async_commit();

  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const std::int64_t r0 = q0 + 16 * warp;
  float lse2[2], dlt[2];  // this lane's two rows: lse in log2 units, D
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const std::int64_t t = r0 + mma_acc(lane, 2 * h).row;
    lse2[h] = t < nt ? lse[blk.head * nt + t] * flash_log2e : 0.f;
    dlt[h] = t < nt ? delta[blk.head * nt + t] : 0.f;
  }
  float acc[Dh / 8][4] = {};
  for (std::int64_t s = 0; s < steps; ++s) {
    const int buf = static_cast<int>(s % 2);
    if (s + 1 < steps) {
      load_rows_async<cols, threads, Dh, stride>(ks + (1 - buf) * cols * stride, k + base, (s + 1) * cols, nt);
      load_rows_async<cols, threads, Dh, stride>(vs + (1 - buf) * cols * stride, v + base, (s + 1) * cols, nt);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const ScoreBlock sb{r0, 16, s * cols, cols};
    if (sb.any_visible()) {
      const T* kt = ks + buf * cols * stride;
      float p[cols / 8][4] = {};
      warp_mma_nt<T, Dh / 16, cols / 8>(p, qs + 16 * warp * stride, kt, stride);
      const bool full = sb.all_visible(nt);
#pragma unroll
      for (int n = 0; n < cols / 8; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i)
          p[n][i] = full || flash_element_visible<false>(sb, lane, n, i, nt)
                        ? exp2_approx(p[n][i] * scale_log2 - lse2[i / 2])
                        : 0.f;
      float ds[cols / 8][4] = {};
      warp_mma_nt<T, Dh / 16, cols / 8>(ds, dos + 16 * warp * stride, vs + buf * cols * stride, stride);
#pragma unroll
      for (int n = 0; n < cols / 8; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) ds[n][i] = p[n][i] * (ds[n][i] - dlt[i / 2]);
      warp_mma_pb<T, cols / 16, Dh / 8>(acc, ds, kt, stride);
    }
    __syncthreads();
  }
  const float out_scale[2] = {scale, scale};
  store_rows<T, Dh>(dq + base, acc, r0, nt, out_scale);
}

//! dk, dv. Block = (head, 64 key rows with their values), warp = 16 of them; the queries, dout, lse and D stream
//! through shared memory a chunk at a time from the chunk holding the block's first key to the end. Per chunk a
//! warp forms the transposed scores S^T = K Q^T, P^T (masked), adds P^T dout to dv, forms dP^T = V dout^T and
//! dS^T = P^T (dP^T - D), and adds dS^T Q to dk; dk = scale sum, both in query order.
template <MmaElement T, int Dh>
__global__ void __launch_bounds__(flash_dkdv_tiling<Dh>.threads(), flash_dkdv_tiling<Dh>.min_blocks)
    flash_dkdv_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                      const T* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
                      T* __restrict__ dk, T* __restrict__ dv, std::int64_t heads, std::int64_t nt, float scale,
                      float scale_log2) {
  constexpr FlashTiling tl = flash_dkdv_tiling<Dh>;
  constexpr int rows = tl.rows(), cols = tl.cols, stride = tl.stride(), threads = tl.threads();
  T* ks = dynamic_shared<T>();                                      // [rows][stride]
  T* vs = ks + rows * stride;                                       // [rows][stride]
  T* qs = vs + rows * stride;                                       // [2][cols][stride]
  T* dos = qs + 2 * cols * stride;                                  // [2][cols][stride]
  float* lses = reinterpret_cast<float*>(dos + 2 * cols * stride);  // [2][cols]
  float* dls = lses + 2 * cols;                                     // [2][cols]
  const FlashBlock blk = flash_block(blockIdx.x, heads, flash_tiles(nt, rows), false);
  const std::int64_t base = blk.head * nt * Dh, k0 = blk.tile * rows;
  const float* lse_h = lse + blk.head * nt;
  const float* delta_h = delta + blk.head * nt;
  const std::int64_t first = flash_first_query(k0, cols);
  const std::int64_t steps = flash_query_steps(k0, cols, nt);
  auto load_chunk = [&](int buf, std::int64_t t0) {
    load_rows_async<cols, threads, Dh, stride>(qs + buf * cols * stride, q + base, t0, nt);
    load_rows_async<cols, threads, Dh, stride>(dos + buf * cols * stride, dout + base, t0, nt);
    load_floats_async<cols, threads>(lses + buf * cols, lse_h, t0, nt);
    load_floats_async<cols, threads>(dls + buf * cols, delta_h, t0, nt);
  };
  load_rows_async<rows, threads, Dh, stride>(ks, k + base, k0, nt);
  load_rows_async<rows, threads, Dh, stride>(vs, v + base, k0, nt);
  load_chunk(0, first);
  cp_async_commit();

  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const std::int64_t j0 = k0 + 16 * warp;
  float dka[Dh / 8][4] = {}, dva[Dh / 8][4] = {};
  for (std::int64_t s = 0; s < steps; ++s) {
    const int buf = static_cast<int>(s % 2);
    const std::int64_t t0 = first + s * cols;
    if (s + 1 < steps) load_chunk(1 - buf, t0 + cols);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const ScoreBlock sb{t0, cols, j0, 16};
    if (sb.any_visible()) {
      const T* qt = qs + buf * cols * stride;
      const T* dot = dos + buf * cols * stride;
      const float* lt = lses + buf * cols;
      const float* dt = dls + buf * cols;
      float p[cols / 8][4] = {};
      warp_mma_nt<T, Dh / 16, cols / 8>(p, ks + 16 * warp * stride, qt, stride);
      const bool full = sb.all_visible(nt);
#pragma unroll
      for (int n = 0; n < cols / 8; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int c = 8 * n + mma_acc(lane, i).col;
          p[n][i] = full || flash_element_visible<true>(sb, lane, n, i, nt)
                        ? exp2_approx(p[n][i] * scale_log2 - lt[c] * flash_log2e)
                        : 0.f;
        }
      warp_mma_pb<T, cols / 16, Dh / 8>(dva, p, dot, stride);
      float ds[cols / 8][4] = {};
      warp_mma_nt<T, Dh / 16, cols / 8>(ds, vs + 16 * warp * stride, dot, stride);
#pragma unroll
      for (int n = 0; n < cols / 8; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) ds[n][i] = p[n][i] * (ds[n][i] - dt[8 * n + mma_acc(lane, i).col]);
      warp_mma_pb<T, cols / 16, Dh / 8>(dka, ds, qt, stride);
    }
    __syncthreads();
  }
  const float dk_scale[2] = {scale, scale}, dv_scale[2] = {1.f, 1.f};
  store_rows<T, Dh>(dk + base, dka, j0, nt, dk_scale);
  store_rows<T, Dh>(dv + base, dva, j0, nt, dv_scale);
}

}  // namespace parallax::cuda::detail
