// parallax/backend/cuda/device.hpp — how many GPUs there are, which one a thread uses, and a guard that switches.
#pragma once

#include <string>

#include <cuda_runtime_api.h>

#include "check.hpp"

namespace parallax::cuda {

//! Number of visible CUDA devices; 0 when there is none or no usable driver. Never throws.
[[nodiscard]] inline int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

namespace detail {
//! Why `device_count()` is 0: the runtime's explanation ("no CUDA-capable device is detected"), or "0 devices".
[[nodiscard]] inline std::string no_device_reason() {
  int n = 0;
  const cudaError_t status = cudaGetDeviceCount(&n);
  if (status == cudaSuccess) return fmt::format("{} devices", n);
  (void)cudaGetLastError();
  return fmt::format("{} ({})", cudaGetErrorString(status), cudaGetErrorName(status));
}
}  // namespace detail

//! The calling thread's current device.
[[nodiscard]] inline int current_device() {
  int device = -1;
  check(cudaGetDevice(&device), "cudaGetDevice");
  return device;
}

//! Makes `device` current for the guard's lifetime and restores the previous device after.
//! @code
//! { cuda::DeviceGuard on(ctx.device()); /* runtime calls act on ctx's GPU */ }
//! @endcode
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) : previous_(current_device()) {
    if (device != previous_) {
      check(cudaSetDevice(device), "cudaSetDevice");
      switched_ = true;
    }
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  ~DeviceGuard() {
    if (switched_ && cudaSetDevice(previous_) != cudaSuccess) (void)cudaGetLastError();
  }

 private:
  int previous_;
  bool switched_ = false;
};

}  // namespace parallax::cuda
