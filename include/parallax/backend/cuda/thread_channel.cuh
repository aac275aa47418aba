// parallax/backend/cuda/thread_channel.cuh — ThreadCommunicator<cuda::Memory>'s channel: ranks sharing a GPU reduce
// and copy each other's buffers on a stream ordered after their compute streams by events (nvcc).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include <cuda_runtime.h>
#include <fmt/format.h>

#include "../../comm/collective.hpp"
#include "../../comm/detail/host_reduce.hpp"
#include "../../comm/thread_communicator.hpp"
#include "../../core/dtype.hpp"
#include "../../error.hpp"
#include "check.hpp"
#include "detail/reduce_ranks_kernels.cuh"
#include "device.hpp"
#include "memory.hpp"
#include "stream.hpp"

namespace parallax::cuda::detail {

inline void check_rank_count(int n, int n_out) {
  if (n > max_reduce_ranks || n_out > max_reduce_ranks)
    throw Error(fmt::format("ThreadCommunicator<cuda::Memory>: {} ranks, at most {} can reduce on one GPU; use "
                            "NcclCommunicator",
                            std::max(n, n_out), max_reduce_ranks));
}

//! Whether every buffer lives on the current device (a kernel can then read and write them all).
[[nodiscard]] inline bool on_current_device(void* const* outs, int n_out, const void* const* in, int n) {
  const int current = current_device();
  for (int k = 0; k < n_out; ++k)
    if (device_of(outs[k]) != current) return false;
  for (int r = 0; r < n; ++r)
    if (device_of(in[r]) != current) return false;
  return true;
}

//! Reduces through host memory: for rank buffers spread over several GPUs (no peer access needed). Synchronous;
//! the caller first waits for the work that produces the buffers (the copies may be ordered after the calling
//! thread's compute stream only: `HostOrder`).
inline void reduce_through_host(DType t, void* const* outs, int n_out, const void* const* in, int n,
                                std::int64_t count, ReduceOp op) {
  const std::size_t bytes = static_cast<std::size_t>(count) * size_of(t);
  std::vector<std::vector<std::byte>> host(static_cast<std::size_t>(n), std::vector<std::byte>(bytes));
  std::vector<const void*> ptrs(static_cast<std::size_t>(n));
  for (int r = 0; r < n; ++r) {
    Memory::download(host[static_cast<std::size_t>(r)].data(), in[r], bytes);
    ptrs[static_cast<std::size_t>(r)] = host[static_cast<std::size_t>(r)].data();
  }
  std::vector<std::byte> result(bytes);
  parallax::detail::reduce_buffers(t, result.data(), ptrs.data(), n, count, op);
  for (int k = 0; k < n_out; ++k) Memory::upload(outs[k], result.data(), bytes);
}

}  // namespace parallax::cuda::detail

namespace parallax::detail {

//! The thread transport over GPU memory (ranks are threads; several may share a GPU, which NCCL refuses).
//!
//! When a rank issues a call, `mark()` records an event on its compute stream. The rank's channel has a stream of
//! its own on the rank's device: it waits for the events of the ranks whose buffers the call touches (not for the
//! whole device: other work of theirs, and of other ranks, goes on), then runs the reduction kernel (in rank order,
//! bitwise equal to the host transport's but for NaN payloads) or the copies, and `finish()` waits for them before
//! the barrier that lets the other ranks read the results. Buffers on different GPUs are reduced through host memory.
//! An endpoint made without a stream (`ThreadCommunicator<cuda::Memory>(group, r)`) waits for the whole device
//! instead.
template <>
class SpaceChannel<cuda::Memory> {
 public:
  using stream_type = cudaStream_t;
  //! An event recorded on the issuing rank's compute stream; null when the rank gave no stream.
  using marker = std::shared_ptr<const cuda::Event>;

  //! `compute`: the stream the rank queues its work on (null: none known). Makes the channel's stream on the
  //! current device, which must be the rank's.
  explicit SpaceChannel(cudaStream_t compute = nullptr)
      : compute_(compute), device_(cuda::current_device()), stream_(-1) {
    cuda::check(cudaDeviceGetAttribute(&sms_, cudaDevAttrMultiProcessorCount, device_), "cudaDeviceGetAttribute");
  }

  [[nodiscard]] marker mark() const {
    if (compute_ == nullptr) return nullptr;
    auto event = std::make_shared<cuda::Event>(cuda::Timing::off);
    event->record(compute_);
    return event;
  }
  void after(const marker& m) {
    if (!m) {
      drain_ = true;  // a rank without a stream: wait for all work on the device before the next operation
      return;
    }
    cuda::DeviceGuard on(device_);
    m->wait(stream_.get());
  }
  void reduce(DType t, void* out, const void* const* in, int n, std::int64_t count, ReduceOp op) {
    reduce_to(t, &out, 1, in, n, count, op);
  }
  void reduce_to(DType t, void* const* outs, int n_out, const void* const* in, int n, std::int64_t count,
                 ReduceOp op) {
    cuda::detail::check_rank_count(n, n_out);
    if (count <= 0 || n <= 0 || n_out <= 0) return;
    cuda::DeviceGuard on(device_);
    if (!cuda::detail::on_current_device(outs, n_out, in, n)) {
      begin();
      stream_.synchronize();  // it waited for every participant's mark: their buffers are ready
      cuda::detail::reduce_through_host(t, outs, n_out, in, n, count, op);
      return;
    }
    begin();
    cuda::detail::RankPointers p{};
    for (int r = 0; r < n; ++r) p.in[r] = in[r];
    for (int k = 0; k < n_out; ++k) p.out[k] = outs[k];
    const unsigned blocks = cuda::detail::reduce_ranks_blocks(count, sms_);
    dispatch(t, [&]<class T>(std::type_identity<T>) {
      cuda::detail::reduce_ranks_kernel<T><<<blocks, cuda::detail::reduce_ranks_threads, 0, stream_.get()>>>(
          p, n_out, n, count, op);
    });
    cuda::check_launch("ThreadCommunicator<cuda::Memory> reduction");
  }
  void copy(void* dst, const void* src, std::size_t bytes) {
    if (bytes == 0) return;
    cuda::DeviceGuard on(device_);
    begin();
    cuda::check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_.get()),
                "ThreadCommunicator<cuda::Memory> copy (cudaMemcpyAsync)");
  }
  //! Returns once the operations queued since the last `finish` are done.
  void finish() {
    cuda::DeviceGuard on(device_);
    begin();  // after() for a rank without a stream, and nothing queued since
    stream_.synchronize();
  }

 private:
  void begin() {
    if (!drain_) return;
    cuda::check(cudaDeviceSynchronize(), "ThreadCommunicator<cuda::Memory> (cudaDeviceSynchronize)");
    drain_ = false;
  }

  cudaStream_t compute_;
  int device_;
  cuda::Stream stream_;  // high priority: collectives are on the ranks' critical path
  bool drain_ = false;
  int sms_ = 0;  // multiprocessors of the device (set once: send/recv may use the channel beside the worker)
};

}  // namespace parallax::detail
