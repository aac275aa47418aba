// parallax/backend/cuda/detail/mma.cuh — the two warp tile products the flash-attention kernels are made of, on the
// tensor cores through the PTX primitives of ptx.cuh (device code only; nvcc, or the host SIMT emulator of
// tests/cuda_emulated).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include <parallax/backend/cuda/detail/ptx.cuh>  // by path: the SIMT emulator substitutes its own

#include "mma_layout.hpp"

namespace parallax::cuda::detail {

//! acc[16 x 8 N8] += A[16 x 16 K16] B[8 N8 x 16 K16]^T by one warp: A (this warp's 16 rows) and B are row-major
//! T tiles in shared memory with row stride `stride` elements (the product of two row sets: S = Q K^T and kin).
template <MmaElement T, int K16, int N8>
__device__ void warp_mma_nt(float (&acc)[N8][4], const T* a, const T* b, int stride) {
  static_assert(N8 % 2 == 0, "warp_mma_nt: N8 must be even (ldmatrix.x4 loads two n-tiles)");
  const int lane = static_cast<int>(threadIdx.x % 32);
#pragma unroll
  for (int kk = 0; kk < K16; ++kk) {
    std::uint32_t af[4];
    ldmatrix_x4(af, a + ldmatrix_offset(lane, 0, 16 * kk, stride));
#pragma unroll
    for (int np = 0; np < N8 / 2; ++np) {
      std::uint32_t bf[4];
      ldmatrix_x4(bf, b + ldmatrix_nt_offset(lane, 16 * np, 16 * kk, stride));
      mma_16816<T>(acc[2 * np], af, bf[0], bf[1]);
      mma_16816<T>(acc[2 * np + 1], af, bf[2], bf[3]);
    }
  }
}

//! acc[16 x 8 N8] += P[16 x 16 K16] B[16 K16 x 8 N8] by one warp: P is this warp's fp32 accumulator tile of a
//! previous product (rounded to T on the way), B a row-major T tile in shared memory with row stride `stride`
//! (O += P V and kin).
template <MmaElement T, int K16, int N8>
__device__ void warp_mma_pb(float (&acc)[N8][4], const float (&p)[2 * K16][4], const T* b, int stride) {
  static_assert(N8 % 2 == 0, "warp_mma_pb: N8 must be even (ldmatrix.x4 loads two n-tiles)");
  const int lane = static_cast<int>(threadIdx.x % 32);
#pragma unroll
  for (int kk = 0; kk < K16; ++kk) {
    std::uint32_t af[4];
#pragma unroll
    for (int r = 0; r < 4; ++r)
      af[r] = pack2<T>(p[mma_a_tile(kk, r)][mma_a_elem(r, 0)], p[mma_a_tile(kk, r)][mma_a_elem(r, 1)]);
#pragma unroll
    for (int np = 0; np < N8 / 2; ++np) {
      std::uint32_t bf[4];
      ldmatrix_x4_trans(bf, b + ldmatrix_offset(lane, 16 * kk, 16 * np, stride));
      mma_16816<T>(acc[2 * np], af, bf[0], bf[1]);
      mma_16816<T>(acc[2 * np + 1], af, bf[2], bf[3]);
    }
  }
}

}  // namespace parallax::cuda::detail
