// parallax/backend/cuda/check.hpp — turns CUDA runtime and cuBLAS status codes into parallax::Error.
#pragma once

#include <source_location>
#include <string>
#include <string_view>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include "../../error.hpp"

namespace parallax::cuda {

namespace detail {

//! "memory.hpp:41" for a call site inside parallax (the file name without its directories).
[[nodiscard]] inline std::string where(const std::source_location& loc) {
  std::string_view file = loc.file_name();
  if (const auto slash = file.find_last_of("/\\"); slash != std::string_view::npos) file.remove_prefix(slash + 1);
  return fmt::format("{}:{}", file, loc.line());
}

//! "device 0", or "no current device" when even that query fails.
[[nodiscard]] inline std::string current_device_str() noexcept {
  int device = -1;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    return "no current device";
  }
  return fmt::format("device {}", device);
}

}  // namespace detail

//! Throws `Error` when a CUDA runtime call failed, naming the call, the error and the device:
//! `cudaMalloc: out of memory (cudaErrorMemoryAllocation) on device 0 [memory.hpp:41]`.
//!
//! A non-sticky error is cleared first, so the next `check_launch` reports only its own launch.
//! @code
//! cuda::check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
//! @endcode
inline void check(cudaError_t status, const char* what, std::source_location loc = std::source_location::current()) {
  if (status == cudaSuccess) [[likely]]
    return;
  (void)cudaGetLastError();
  throw Error(fmt::format("{}: {} ({}) on {} [{}]", what, cudaGetErrorString(status), cudaGetErrorName(status),
                          detail::current_device_str(), detail::where(loc)));
}

//! Throws `Error` when a cuBLAS or cuBLASLt call failed:
//! `cublasGemmEx: the requested functionality is not supported (CUBLAS_STATUS_NOT_SUPPORTED) on device 0 [...]`.
inline void check(cublasStatus_t status, const char* what, std::source_location loc = std::source_location::current()) {
  if (status == CUBLAS_STATUS_SUCCESS) [[likely]]
    return;
  throw Error(fmt::format("{}: {} ({}) on {} [{}]", what, cublasGetStatusString(status), cublasGetStatusName(status),
                          detail::current_device_str(), detail::where(loc)));
}

//! Checks the kernel launch just made (bad configuration, no kernel image for this GPU, an earlier
//! asynchronous fault): `launch of cuda::fill: invalid configuration argument (...) on device 0 [...]`.
//! Does not wait for the kernel.
inline void check_launch(const char* kernel, std::source_location loc = std::source_location::current()) {
  const cudaError_t status = cudaGetLastError();
  if (status == cudaSuccess) [[likely]]
    return;
  throw Error(fmt::format("launch of {}: {} ({}) on {} [{}]", kernel, cudaGetErrorString(status),
                          cudaGetErrorName(status), detail::current_device_str(), detail::where(loc)));
}

}  // namespace parallax::cuda
