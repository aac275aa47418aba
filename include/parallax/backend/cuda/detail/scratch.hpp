// parallax/backend/cuda/detail/scratch.hpp — stream-ordered temporary device memory for one kernel call.
#pragma once

#include <cstddef>

#include <cuda_runtime_api.h>

#include "../check.hpp"
#include "../context.hpp"

namespace parallax::cuda::detail {

//! `count` elements of `T` of device memory from the device's stream-ordered pool (`cudaMallocAsync`), usable
//! by the work queued on the context's compute stream from now on and returned to the pool, in stream order,
//! when it goes out of scope (the kernels queued before may still be running then). For the temporaries of a
//! kernel call (partial sums, sort buffers); they are not counted in any `MemoryStats`. Move-less.
//! @code
//! detail::Scratch<float> partial(ctx, chunks * d, "cuda::LayerNorm::layernorm_backward");
//! kernel<<<grid, block, 0, ctx.stream()>>>(partial.get());
//! @endcode
template <class T>
class Scratch {
 public:
  Scratch(const Context& ctx, std::size_t count, const char* what) : stream_(ctx.stream()) {
    if (count == 0) return;
    void* p = nullptr;
    check(cudaMallocAsync(&p, count * sizeof(T), stream_), what);
    data_ = static_cast<T*>(p);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() {
    if (data_ != nullptr && cudaFreeAsync(data_, stream_) != cudaSuccess) (void)cudaGetLastError();
  }

  [[nodiscard]] T* get() const noexcept { return data_; }

 private:
  cudaStream_t stream_;
  T* data_ = nullptr;
};

}  // namespace parallax::cuda::detail
