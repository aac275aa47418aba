// parallax/backend/cuda/detail/layernorm_kernels.cuh — LayerNorm forward and backward kernels and the dgamma/dbeta
// column-sum terms (device code only; nvcc, or the host SIMT emulator of tests/cuda_emulated).
#pragma once

#include <cmath>
#include <cstdint>

#include <cuda_runtime.h>

#include "block_reduce.cuh"

namespace parallax::cuda::detail {

inline constexpr int layernorm_warps = 8;  // rows per block: one warp per row

[[nodiscard]] inline unsigned layernorm_blocks(std::int64_t n) {
  return static_cast<unsigned>((n + layernorm_warps - 1) / layernorm_warps);
}

//! One warp per row. With `res` (else null), first sum = x + res stored as T; the statistics and y are then those of
//! the stored sum, read back by the lane that wrote it (the same values a separate add would give).
template <class T>
__global__ void __launch_bounds__(layernorm_warps * 32)
    layernorm_forward_kernel(const T* x, const T* res, T* sum, const T* gamma, const T* beta, float eps, T* y,
                             float* mean, float* rstd, std::int64_t n, std::int64_t d) {
  const std::int64_t r = std::int64_t{blockIdx.x} * layernorm_warps + threadIdx.x / 32;
  if (r >= n) return;
  const int lane = static_cast<int>(threadIdx.x % 32);
  const T* xr = x + r * d;
  if (res != nullptr) {
    T* sr = sum + r * d;
    for (std::int64_t j = lane; j < d; j += 32) sr[j] = T(float(xr[j]) + float(res[r * d + j]));
    xr = sr;
  }
  T* yr = y + r * d;
  const float inv_d = d > 0 ? 1.f / static_cast<float>(d) : 0.f;
  float s = 0.f, ss = 0.f;
  for (std::int64_t j = lane; j < d; j += 32) s += float(xr[j]);
  const float mu = warp_all_reduce(s, SumOp{}) * inv_d;
  for (std::int64_t j = lane; j < d; j += 32) ss += (float(xr[j]) - mu) * (float(xr[j]) - mu);
  const float rs = 1.f / sqrtf(warp_all_reduce(ss, SumOp{}) * inv_d + eps);
  for (std::int64_t j = lane; j < d; j += 32) yr[j] = T((float(xr[j]) - mu) * rs * float(gamma[j]) + float(beta[j]));
  if (lane == 0) {
    mean[r] = mu;
    rstd[r] = rs;
  }
}

//! One warp per row; adds dres[r, j] to dx when `dres` is not null.
template <class T>
__global__ void __launch_bounds__(layernorm_warps * 32)
    layernorm_backward_dx_kernel(const T* dy, const T* x, const T* gamma, const float* mean, const float* rstd,
                                 const T* dres, T* dx, std::int64_t n, std::int64_t d) {
  const std::int64_t r = std::int64_t{blockIdx.x} * layernorm_warps + threadIdx.x / 32;
  if (r >= n) return;
  const int lane = static_cast<int>(threadIdx.x % 32);
  const T* xr = x + r * d;
  const T* dyr = dy + r * d;
  T* dxr = dx + r * d;
  const float inv_d = d > 0 ? 1.f / static_cast<float>(d) : 0.f;
  const float mu = mean[r], rs = rstd[r];
  float sg = 0.f, sgx = 0.f;
  for (std::int64_t j = lane; j < d; j += 32) {
    const float g = float(dyr[j]) * float(gamma[j]);
    sg += g;
    sgx += g * ((float(xr[j]) - mu) * rs);
  }
  sg = warp_all_reduce(sg, SumOp{});
  sgx = warp_all_reduce(sgx, SumOp{});
  for (std::int64_t j = lane; j < d; j += 32) {  // reads dy[j] and dres[j] before writing dx[j]: dx may alias either
    const float g = float(dyr[j]) * float(gamma[j]);
    float v = rs * (g - sg * inv_d - (float(xr[j]) - mu) * rs * sgx * inv_d);
    if (dres != nullptr) v += float(dres[r * d + j]);
    dxr[j] = T(v);
  }
}

//! The terms of dgamma and dbeta: dy[r, c] xhat[r, c] and dy[r, c].
template <class T>
struct LayerNormGradTerm {
  const T* dy;
  const T* x;
  const float* mean;
  const float* rstd;
  std::int64_t d;
  __device__ void operator()(std::int64_t r, std::int64_t c, float* acc) const {
    const float dyv = float(dy[r * d + c]);
    acc[0] += dyv * ((float(x[r * d + c]) - mean[r]) * rstd[r]);
    acc[1] += dyv;
  }
};

}  // namespace parallax::cuda::detail
