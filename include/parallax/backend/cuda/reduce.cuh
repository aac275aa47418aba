// parallax/backend/cuda/reduce.cuh — reduces rank buffers in GPU memory for ThreadCommunicator<cuda::Memory> (nvcc).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
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
#include "detail/grid.cuh"
#include "device.hpp"
#include "memory.hpp"

namespace parallax::cuda::detail {

//! Most rank buffers one reduction kernel takes (its pointers travel by value as a kernel argument).
inline constexpr int max_reduce_ranks = 64;

//! The input and output pointers of one reduction, passed by value (1 KiB of kernel parameters).
struct RankPointers {
  const void* in[max_reduce_ranks];
  void* out[max_reduce_ranks];
};

//! out[k][i] = op(in[0][i], ..., in[n-1][i]) for every output k, in rank order, 16-bit floats accumulating
//! in fp32: the arithmetic of `parallax::detail::reduce_buffers`, so results equal the host transport's
//! bitwise. An output may alias an input: each element is read in full before it is written.
template <class T>
__global__ void reduce_ranks_kernel(RankPointers p, int n_out, int n, std::int64_t count, ReduceOp op) {
  using Acc = std::conditional_t<std::is_same_v<T, bf16> || std::is_same_v<T, fp16>, float, T>;
  for (std::int64_t i = grid_index(); i < count; i += grid_stride()) {
    Acc acc = static_cast<Acc>(static_cast<const T*>(p.in[0])[i]);
    for (int r = 1; r < n; ++r) {
      const Acc v = static_cast<Acc>(static_cast<const T*>(p.in[r])[i]);
      switch (op) {
        case ReduceOp::sum:
        case ReduceOp::avg: acc = static_cast<Acc>(acc + v); break;
        case ReduceOp::max: acc = acc < v ? v : acc; break;  // std::max's choice, NaN included
        case ReduceOp::min: acc = v < acc ? v : acc; break;  // std::min's choice
      }
    }
    if (op == ReduceOp::avg) acc = static_cast<Acc>(acc / static_cast<Acc>(n));
    const T result(acc);
    for (int k = 0; k < n_out; ++k) static_cast<T*>(p.out[k])[i] = result;
  }
}

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

//! Reduces on the current device with one kernel, after all work queued on it (the ranks' compute
//! streams produced the inputs); returns when the outputs are written.
inline void reduce_on_device(DType t, void* const* outs, int n_out, const void* const* in, int n, std::int64_t count,
                             ReduceOp op) {
  check(cudaDeviceSynchronize(), "ThreadCommunicator<cuda::Memory> reduction (cudaDeviceSynchronize)");
  RankPointers p{};
  for (int r = 0; r < n; ++r) p.in[r] = in[r];
  for (int k = 0; k < n_out; ++k) p.out[k] = outs[k];
  int sms = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, current_device()), "cudaDeviceGetAttribute");
  constexpr int threads = 256;
  const std::int64_t wanted = (count + threads - 1) / threads;
  const auto blocks = static_cast<unsigned>(std::min<std::int64_t>(wanted, std::int64_t{sms} * 16));
  dispatch(t, [&]<class T>(std::type_identity<T>) {
    reduce_ranks_kernel<T><<<blocks, threads, 0, cudaStreamPerThread>>>(p, n_out, n, count, op);
  });
  check_launch("ThreadCommunicator<cuda::Memory> reduction");
  check(cudaStreamSynchronize(cudaStreamPerThread), "ThreadCommunicator<cuda::Memory> reduction (sync)");
}

//! Reduces through host memory: for rank buffers spread over several GPUs (no peer access needed).
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

//! The reduction of `in[0..n)` written into each of `outs[0..n_out)`.
inline void reduce_ranks(DType t, void* const* outs, int n_out, const void* const* in, int n, std::int64_t count,
                         ReduceOp op) {
  check_rank_count(n, n_out);
  if (count <= 0 || n <= 0 || n_out <= 0) return;
  if (on_current_device(outs, n_out, in, n))
    reduce_on_device(t, outs, n_out, in, n, count, op);
  else
    reduce_through_host(t, outs, n_out, in, n, count, op);
}

}  // namespace parallax::cuda::detail

namespace parallax::detail {

//! The thread transport over GPU memory. Rank threads sharing one GPU reduce with a kernel (in rank order,
//! bitwise equal to the host transport), after waiting for all work queued on the device; buffers on
//! different GPUs are reduced through host memory. Both return when the result is written.
template <>
struct SpaceReduce<cuda::Memory> {
  static void run(DType t, void* out, const void* const* in, int n, std::int64_t count, ReduceOp op) {
    cuda::detail::reduce_ranks(t, &out, 1, in, n, count, op);
  }
  //! One pass writing the reduction into each of `outs[0..n_out)` (all_reduce pushes its slice to every rank).
  static void run_to(DType t, void* const* outs, int n_out, const void* const* in, int n, std::int64_t count,
                     ReduceOp op) {
    cuda::detail::reduce_ranks(t, outs, n_out, in, n, count, op);
  }
};

}  // namespace parallax::detail
