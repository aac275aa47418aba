// parallax/backend/cuda/detail/dynamic_shared.cuh — a block's dynamic shared memory (device code only; nvcc, or the
// host SIMT emulator of tests/cuda_emulated).
#pragma once

#include <cuda_runtime.h>

#if defined(PARALLAX_SIMT_EMULATION)
// tests/cuda_emulated (the host SIMT emulator) defines it: the running block's dynamic shared memory.
void* parallax_simt_dynamic_shared();
#endif

namespace parallax::cuda::detail {

//! This block's dynamic shared memory (the launch's third <<<>>> argument) as T*, 16-byte aligned. One extern
//! array for every kernel, since extern __shared__ arrays of different types may not share a translation unit.
template <class T>
__device__ T* dynamic_shared() {
#if defined(PARALLAX_SIMT_EMULATION)
  return static_cast<T*>(parallax_simt_dynamic_shared());
#else
  extern __shared__ __align__(16) unsigned char parallax_dynamic_shared[];
  return reinterpret_cast<T*>(parallax_dynamic_shared);
#endif
}

}  // namespace parallax::cuda::detail
