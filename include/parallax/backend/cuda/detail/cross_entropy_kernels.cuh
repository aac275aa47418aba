// parallax/backend/cuda/detail/cross_entropy_kernels.cuh — the fused softmax cross-entropy kernels, whole or over a
// vocabulary shard (device code only; nvcc, or the host SIMT emulator of tests/cuda_emulated).
#pragma once

#include <cmath>
#include <cstdint>

#include <cuda_runtime.h>

#include "block_reduce.cuh"
#include "grid.cuh"
#include "status_kernels.cuh"

namespace parallax::cuda::detail {

inline constexpr int ce_threads = 256;  // one block per row of logits

//! max_j z[j] over a row of v logits, returned to every thread of the block (-inf for an empty row).
template <class T>
__device__ float block_row_max(const T* z, std::int64_t v) {
  float m = -INFINITY;
  for (std::int64_t j = threadIdx.x; j < v; j += ce_threads) m = fmaxf(m, float(z[j]));
  return block_all_reduce<ce_threads>(m, MaxOp{});
}

//! sum_j exp(z[j] - shift) over a row of v logits, returned to every thread of the block.
template <class T>
__device__ float block_row_sum_exp(const T* z, std::int64_t v, float shift) {
  float s = 0.f;
  for (std::int64_t j = threadIdx.x; j < v; j += ce_threads) s += expf(float(z[j]) - shift);
  return block_all_reduce<ce_threads>(s, SumOp{});
}

//! Whether target y is invalid: neither `ignore` nor >= 0 (nor < `vocab` when `vocab` >= 0), as the host checks.
__device__ inline bool bad_target(std::int32_t y, std::int32_t ignore, std::int64_t vocab) {
  return y != ignore && (y < 0 || (vocab >= 0 && y >= vocab));
}

template <class T>
__global__ void __launch_bounds__(ce_threads)
    ce_forward_kernel(const T* logits, const std::int32_t* targets, std::int32_t ignore, float* losses, float* lse,
                      std::int64_t v, KernelStatus* status) {
  const std::int64_t r = blockIdx.x;
  const T* z = logits + r * v;
  const float m = block_row_max(z, v);
  const float l = m + logf(block_row_sum_exp(z, v, m));
  if (threadIdx.x != 0) return;
  const std::int32_t y = targets[r];
  const bool bad = bad_target(y, ignore, v);
  if (bad) report_bad(status, r);
  if (y != ignore) atomicAdd(&status->count, 1ull);
  lse[r] = l;
  losses[r] = y == ignore || bad ? 0.f : l - float(z[y]);
}

template <class T>
__global__ void __launch_bounds__(ce_threads)
    ce_backward_kernel(const T* logits, const std::int32_t* targets, const float* lse, std::int32_t ignore,
                       float scale, T* dlogits, std::int64_t v, std::int64_t vocab_begin, KernelStatus* status) {
  const std::int64_t r = blockIdx.x;
  const std::int32_t y = targets[r];
  if (threadIdx.x == 0 && bad_target(y, ignore, -1)) report_bad(status, r);
  const float l = lse[r];
  const T* z = logits + r * v;
  T* dz = dlogits + r * v;
  for (std::int64_t j = threadIdx.x; j < v; j += ce_threads)  // reads z[j] before writing dz[j]: they may alias
    dz[j] = y == ignore ? T(0.f) : T(scale * (expf(float(z[j]) - l) - (vocab_begin + j == y ? 1.f : 0.f)));
}

template <class T>
__global__ void __launch_bounds__(ce_threads) ce_row_max_kernel(const T* logits, float* out, std::int64_t v) {
  const float m = block_row_max(logits + std::int64_t{blockIdx.x} * v, v);
  if (threadIdx.x == 0) out[blockIdx.x] = m;
}

template <class T>
__global__ void __launch_bounds__(ce_threads)
    ce_sum_exp_kernel(const T* logits, const float* shift, float* out, std::int64_t v) {
  const float s = block_row_sum_exp(logits + std::int64_t{blockIdx.x} * v, v, shift[blockIdx.x]);
  if (threadIdx.x == 0) out[blockIdx.x] = s;
}

template <class T>
__global__ void ce_target_logit_kernel(const T* logits, const std::int32_t* targets, std::int64_t n, std::int64_t v,
                                       std::int64_t vocab_begin, std::int32_t ignore, float* out,
                                       KernelStatus* status) {
  for (std::int64_t r = grid_index(); r < n; r += grid_stride()) {
    const std::int32_t y = targets[r];
    if (bad_target(y, ignore, -1)) report_bad(status, r);
    const std::int64_t j = std::int64_t{y} - vocab_begin;
    out[r] = y != ignore && j >= 0 && j < v ? float(logits[r * v + j]) : 0.f;
  }
}

//! The combine step; the count of rows not ignored is summed per block, then added once per block.
//! Blocks of ce_combine_kernel over `n` rows (a thread per row) on a GPU with `sm_count` multiprocessors.
[[nodiscard]] inline unsigned ce_combine_blocks(std::int64_t n, int sm_count) {
  return capped_blocks(n, ce_threads, sm_count, 4);
}

template <class Index>
__global__ void __launch_bounds__(ce_threads)
    ce_combine_kernel(const float* row_max, const float* sum_exp, const float* target_logit, const Index* targets,
                      Index ignore, float* losses, float* lse, std::int64_t n, KernelStatus* status) {
  unsigned long long valid = 0;
  for (std::int64_t r = grid_index(); r < n; r += grid_stride()) {
    const bool ignored = targets[r] == ignore;
    const float l = row_max[r] + logf(sum_exp[r]);
    lse[r] = l;
    losses[r] = ignored ? 0.f : l - target_logit[r];
    valid += !ignored;
  }
  valid = block_all_reduce<ce_threads>(valid, SumOp{});
  if (threadIdx.x == 0) atomicAdd(&status->count, valid);
}

}  // namespace parallax::cuda::detail
