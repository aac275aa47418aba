// parallax/backend/cuda/flash_attention.cuh — the tensor-core path of the causal attention core: FlashAttention-2
// style forward and deterministic backward for bf16/fp16 storage and head dims 64 and 128 (mma.sync, sm_80+): the
// launchers of the kernels in detail/flash_attention_kernels.cuh (nvcc).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <cuda_runtime.h>

#include "check.hpp"
#include "context.hpp"
#include "detail/flash_attention_kernels.cuh"
#include "detail/flash_tiling.hpp"

namespace parallax::cuda::detail {

//! Launches `kernel` over `blocks` blocks of `threads` threads with `bytes` of dynamic shared memory (opting in
//! above the 48 KiB default) on the context's compute stream, and checks the launch.
template <class Kernel, class... A>
void launch_with_smem(const Context& ctx, Kernel kernel, std::int64_t blocks, int threads, std::size_t bytes,
                      const char* what, A... args) {
  if (bytes > 48 * 1024)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)), what);
  kernel<<<static_cast<unsigned>(blocks), static_cast<unsigned>(threads), bytes, ctx.stream()>>>(args...);
  check_launch(what);
}

//! Whether the tensor-core kernels take a problem: head dim 64 or 128 and every operand 16-byte aligned (cp.async).
template <class... P>
[[nodiscard]] bool flash_eligible(std::int64_t dh, const P*... operands) {
  return (dh == 64 || dh == 128) && ((reinterpret_cast<std::uintptr_t>(operands) % 16 == 0) && ...);
}

//! Whether the context's device runs the tensor-core kernels at head dim dh (64 or 128): compute capability 8.0 or
//! later (mma.sync with bf16, cp.async) and room for their shared memory (sm_86 and sm_89 give a block 99 KiB).
[[nodiscard]] inline bool flash_device_fits(const Context& ctx, std::int64_t dh) {
  int major = 0, smem = 0;
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, ctx.device()), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, ctx.device()), "cudaDeviceGetAttribute");
  const int need = dh == 64 ? std::max({flash_forward_smem<64>, flash_dq_smem<64>, flash_dkdv_smem<64>})
                            : std::max({flash_forward_smem<128>, flash_dq_smem<128>, flash_dkdv_smem<128>});
  return major >= 8 && smem >= need;
}

//! f(std::integral_constant<int, Dh>{}) for the head dim dh (64 or 128) of a `flash_eligible` problem.
template <class F>
void with_flash_head_dim(std::int64_t dh, F&& f) {
  if (dh == 64)
    f(std::integral_constant<int, 64>{});
  else
    f(std::integral_constant<int, 128>{});
}

//! The tensor-core forward over `heads` (B * H) heads of [nt, dh] operands; see `flash_forward_kernel`.
template <MmaElement T>
void flash_attention_forward(const Context& ctx, const T* q, const T* k, const T* v, T* out, float* lse,
                             std::int64_t heads, std::int64_t nt, std::int64_t dh, float scale, const char* what) {
  with_flash_head_dim(dh, [&]<int Dh>(std::integral_constant<int, Dh>) {
    constexpr FlashTiling tl = flash_forward_tiling<Dh>;
    launch_with_smem(ctx, flash_forward_kernel<T, Dh>, heads * flash_tiles(nt, tl.rows()), tl.threads(),
                     flash_forward_smem<Dh>, what, q, k, v, out, lse, heads, nt, scale * flash_log2e);
  });
}

//! The tensor-core backward (dq, then dk and dv) from the forward's lse and D = rowsum(dout o out) (`delta`).
template <MmaElement T>
void flash_attention_backward(const Context& ctx, const T* q, const T* k, const T* v, const T* dout, const float* lse,
                              const float* delta, T* dq, T* dk, T* dv, std::int64_t heads, std::int64_t nt,
                              std::int64_t dh, float scale, const char* what) {
  with_flash_head_dim(dh, [&]<int Dh>(std::integral_constant<int, Dh>) {
    const float scale_log2 = scale * flash_log2e;
    constexpr FlashTiling tq = flash_dq_tiling<Dh>, tk = flash_dkdv_tiling<Dh>;
    launch_with_smem(ctx, flash_dq_kernel<T, Dh>, heads * flash_tiles(nt, tq.rows()), tq.threads(), flash_dq_smem<Dh>,
                     what, q, k, v, dout, lse, delta, dq, heads, nt, scale, scale_log2);
    launch_with_smem(ctx, flash_dkdv_kernel<T, Dh>, heads * flash_tiles(nt, tk.rows()), tk.threads(),
                     flash_dkdv_smem<Dh>, what, q, k, v, dout, lse, delta, dk, dv, heads, nt, scale, scale_log2);
  });
}

}  // namespace parallax::cuda::detail
