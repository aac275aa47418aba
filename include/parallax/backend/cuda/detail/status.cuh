// parallax/backend/cuda/detail/status.cuh — what a kernel reports back to the host: the first bad index and a count.
#pragma once

#include <cstdint>
#include <cstring>

#include <cuda_runtime.h>

#include "../check.hpp"
#include "../context.hpp"

namespace parallax::cuda::detail {

//! What a validating or counting kernel reports: the smallest index of an invalid input (`none` when all
//! are valid) and a count (e.g. of rows not ignored). Both are integers, so the atomics that form them give
//! the same result in any order. It lives in the context's reduction scratch.
struct KernelStatus {
  static constexpr unsigned long long none = ~0ull;
  unsigned long long first_bad;
  unsigned long long count;

  [[nodiscard]] bool ok() const noexcept { return first_bad == none; }
};
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

//! Records index `i` as invalid (the smallest one wins).
__device__ inline void report_bad(KernelStatus* s, std::int64_t i) {
  atomicMin(&s->first_bad, static_cast<unsigned long long>(i));
}

}  // namespace parallax::cuda::detail
