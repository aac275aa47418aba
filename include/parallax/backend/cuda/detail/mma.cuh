// parallax/backend/cuda/detail/mma.cuh — warp-level tensor-core building blocks through inline PTX (sm_80 and
// later): cp.async copies into shared memory, ldmatrix, mma.sync m16n8k16 (bf16/fp16 in, fp32 accumulate), and
// the two warp tile products the flash-attention kernels are made of (nvcc).
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_runtime.h>

#include "../../../core/bf16.hpp"
#include "../../../core/fp16.hpp"
#include "mma_layout.hpp"

namespace parallax::cuda::detail {

//! The storage types the tensor cores multiply here: bf16 and fp16 (fp32 accumulators).
template <class T>
concept MmaElement = std::is_same_v<T, bf16> || std::is_same_v<T, fp16>;

//! The shared-memory address of a generic pointer into shared memory.
__device__ inline std::uint32_t shared_address(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

//! Queues a copy of 16 bytes from global `src` to shared `dst` (both 16-byte aligned); when `valid` is false it
//! writes 16 zero bytes and reads nothing (`src` must still be a global address).
__device__ inline void cp_async_16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}

//! Queues a copy of 4 bytes from global `src` to shared `dst`, or writes 4 zero bytes when `valid` is false.
__device__ inline void cp_async_4(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(shared_address(dst)), "l"(src), "r"(valid ? 4 : 0)
               : "memory");
}

//! Closes the group of the copies this thread queued since the last commit.
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

//! Waits until at most `Pending` of this thread's committed groups are still in flight.
template <int Pending>
__device__ inline void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
}

//! Four 8 x 8 matrices of 16-bit elements from shared memory: lane l hands the address of row l % 8 of matrix
//! l / 8; register j receives row lane / 4, columns 2 (lane % 4) and + 1 of matrix j.
__device__ inline void ldmatrix_x4(std::uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row)));
}

//! `ldmatrix_x4` of the transposed matrices: register j receives rows 2 (lane % 4) and + 1, column lane / 4.
__device__ inline void ldmatrix_x4_trans(std::uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row)));
}

//! d[16 x 8] += a[16 x 16] b[16 x 8] on the tensor cores, fragments in the PTX ISA's m16n8k16 layouts.
template <MmaElement T>
__device__ inline void mma_16816(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
  if constexpr (std::is_same_v<T, bf16>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

//! Two floats rounded to nearest-even T and packed, `lo` in the low half (the lower column of a fragment).
template <MmaElement T>
__device__ inline std::uint32_t pack2(float lo, float hi) {
  std::uint32_t r;
  if constexpr (std::is_same_v<T, bf16>)
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  else
    asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

//! 2^x by the special-function unit (relative error about 2^-22; 2^-inf = 0).
__device__ inline float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

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
