// parallax/optim/offload.hpp — ZeRO-Offload: a sharded optimizer's fp32 state in host memory, updated on the CPU.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <future>
#include <span>
#include <utility>
#include <vector>

#include "../backend/concept.hpp"
#include "../backend/host/backend.hpp"
#include "../core/allocator.hpp"
#include "../core/memory_stats.hpp"
#include "../core/tensor.hpp"
#include "rule.hpp"

namespace parallax::cuda {
struct Memory;
struct PinnedMemory;
}  // namespace parallax::cuda

namespace parallax::optim {

//! The host memory space offloaded optimizer state lives in, for a device memory space: page-locked
//! memory for CUDA (`cuda::PinnedMemory`: the gradient and parameter copies are DMA transfers),
//! ordinary host memory otherwise.
template <class DeviceSpace>
struct OffloadMemory {
  using type = host::Memory;
};
template <>
struct OffloadMemory<cuda::Memory> {
  using type = cuda::PinnedMemory;
};

//! Whether offloading moves the optimizer state anywhere for backend `B`: only when its memory is not host
//! memory. On the host backend the state is in host memory and updated by the CPU already: offload is a no-op.
template <Backend B>
inline constexpr bool offload_moves_state = !B::Memory::host_accessible;

namespace detail {

//! One rank's optimizer state (fp32 master and the rule's state) for a list of update ranges, in host
//! memory, updated by the CPU with `host::Backend`'s kernels (ZeRO-Offload). The device keeps the
//! parameters and the gradients; each step moves the reduced gradient ranges to the host and the updated
//! parameter ranges back, pipelined over the ranges: the CPU update of range b overlaps the download of
//! range b + 1. The bytes are counted in its own `MemoryStats` (host memory, not the rank's device figures).
//! @tparam R the rule.  @tparam B the device backend.  @tparam T the parameters' and gradients' storage type.
template <class R, Backend B, FloatElement T>
class HostOffload {
 public:
  using Device = typename B::Memory;
  using Host = typename OffloadMemory<Device>::type;
  using HostView = View<float, host::Memory>;

  //! State for ranges of `lengths` elements and `state_count` fp32 state tensors per element.
  HostOffload(int rank, int state_count, std::vector<std::int64_t> lengths)
      : allocator_(stats_, rank), context_(rank), lengths_(std::move(lengths)) {
    std::int64_t total = 0, longest = 0;
    for (const std::int64_t n : lengths_) {
      offsets_.push_back(total);
      total += n;
      longest = std::max(longest, n);
    }
    master_ = Tensor<float, Host>(allocator_, Shape{total}, MemoryCategory::optimizer);
    for (int s = 0; s < state_count; ++s) state_.emplace_back(allocator_, Shape{total}, MemoryCategory::optimizer);
    for (auto* stage : {&grad_stage_, &param_stage_})
      for (auto& t : *stage) t = Tensor<T, Host>(allocator_, Shape{longest}, MemoryCategory::communication);
  }

  //! The host bytes it holds, by category.
  [[nodiscard]] const MemoryStats& memory() const noexcept { return stats_; }

  //! Sets range b's fp32 master weights from the device parameters `param`.
  void load(std::size_t b, View<const T, Device> param) {
    const auto stage = staged(param_stage_[0], b);
    Device::download(stage.data(), param.data(), param.bytes());
    host::Backend::cast(context_, View<const T, host::Memory>(stage), master(b));
  }

  //! One update of every range: `grads[b]` is range b's reduced gradient on the device, `params[b]` the
  //! device parameters it updates.
  void update(const typename R::Hyper& hyper, const StepInfo& info, std::span<const View<const T, Device>> grads,
              std::span<const View<T, Device>> params) {
    const std::size_t n = lengths_.size();
    if (n == 0) return;
    download(grads[0], 0);
    for (std::size_t b = 0; b < n; ++b) {
      auto cpu = std::async(std::launch::async, [&, b] { update_range(hyper, info, b); });
      if (b + 1 < n) download(grads[b + 1], b + 1);
      cpu.get();
      const auto stage = staged(param_stage_[b % 2], b);
      Device::upload(params[b].data(), stage.data(), params[b].bytes());
    }
  }

 private:
  //! Range b's part of a staging buffer, as a host view.
  [[nodiscard]] View<T, host::Memory> staged(const Tensor<T, Host>& t, std::size_t b) const {
    return View<T, host::Memory>(t.data(), Shape{lengths_[b]});
  }
  [[nodiscard]] HostView slice(const Tensor<float, Host>& t, std::size_t b) const {
    return HostView(t.data() + offsets_[b], Shape{lengths_[b]});
  }
  [[nodiscard]] HostView master(std::size_t b) const { return slice(master_, b); }
  void download(View<const T, Device> grad, std::size_t b) {
    Device::download(grad_stage_[b % 2].data(), grad.data(), grad.bytes());
  }
  void update_range(const typename R::Hyper& hyper, const StepInfo& info, std::size_t b) {
    std::vector<HostView> state;
    for (const auto& s : state_) state.push_back(slice(s, b));
    R::template step<host::Backend, T>(context_, hyper, info, master(b),
                                       View<const T, host::Memory>(staged(grad_stage_[b % 2], b)), state);
    host::Backend::cast(context_, View<const float, host::Memory>(master(b)), staged(param_stage_[b % 2], b));
  }

  MemoryStats stats_;
  Allocator<Host> allocator_;
  host::Context context_;
  std::vector<std::int64_t> lengths_, offsets_;
  Tensor<float, Host> master_;
  std::vector<Tensor<float, Host>> state_;
  Tensor<T, Host> grad_stage_[2], param_stage_[2];  // double-buffered transfers
};

}  // namespace detail
}  // namespace parallax::optim
