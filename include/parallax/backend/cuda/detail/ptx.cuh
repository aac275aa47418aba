// parallax/backend/cuda/detail/ptx.cuh — the inline-PTX primitives of the tensor-core kernels (sm_80 and later):
// cp.async copies into shared memory, ldmatrix, mma.sync m16n8k16 (bf16/fp16 in, fp32 accumulate), packed
// conversions and the fast exp2 (device code only; nvcc).
//
// Included as <parallax/backend/cuda/detail/ptx.cuh>, not by a relative path: the host SIMT emulator
// (tests/cuda_emulated) puts its own header of the same name and functions first on the include path, which
// carries out each instruction's documented semantics, so the kernels built on these run on the CPU too.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_runtime.h>

#include "mma_layout.hpp"

namespace parallax::cuda::detail {

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

}  // namespace parallax::cuda::detail
