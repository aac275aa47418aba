// parallax/backend/cuda/detail/status.cuh — resetting and reading back the status kernels report (KernelStatus).
#pragma once

#include <cstring>

#include <cuda_runtime.h>

#include "../check.hpp"
#include "../context.hpp"
#include "status_kernels.cuh"

namespace parallax::cuda::detail {

static_assert(sizeof(KernelStatus) <= reduce_scratch_bytes && sizeof(KernelStatus) <= reduce_result_bytes,
              "cuda::detail::KernelStatus must fit the context's reduction scratch and result slot");

//! Resets the status on the compute stream (first_bad = none, count = 0) and returns its device address.
[[nodiscard]] inline KernelStatus* reset_status(const Context& ctx, const char* what) {
  auto* s = static_cast<KernelStatus*>(ctx.reduce_scratch());
  check(cudaMemsetAsync(&s->first_bad, 0xff, sizeof s->first_bad, ctx.stream()), what);
  check(cudaMemsetAsync(&s->count, 0, sizeof s->count, ctx.stream()), what);
  return s;
}

//! Waits for the compute stream and returns the status its kernels reported (through the pinned result slot).
[[nodiscard]] inline KernelStatus read_status(const Context& ctx, const KernelStatus* s, const char* what) {
  check(cudaMemcpyAsync(ctx.reduce_result(), s, sizeof(KernelStatus), cudaMemcpyDeviceToHost, ctx.stream()), what);
  check(cudaStreamSynchronize(ctx.stream()), what);
  KernelStatus result;
  std::memcpy(&result, ctx.reduce_result(), sizeof result);
  return result;
}

}  // namespace parallax::cuda::detail
