// parallax/comm/nccl_launch.hpp — launch<cuda::Backend>: rank threads joined by NCCL when each has a GPU of its own.
#pragma once

#include <concepts>
#include <memory>
#include <optional>

#include <nccl.h>

#include "../backend/cuda/context.hpp"
#include "../backend/cuda/device.hpp"
#include "launch.hpp"
#include "nccl_communicator.hpp"

namespace parallax::cuda {
struct Backend;
}

namespace parallax::detail {

//! The ranks of `launch<cuda::Backend>(n, fn, options)`. With a GPU for every rank, and several ranks under
//! `LaunchTransport::automatic` or any number under `nccl`, rank r drives GPU r and the world is an NCCL communicator
//! made in this process (rank 0's unique id shared by memory); the groups split from it each queue on a
//! stream of their own, after the rank's compute stream. Otherwise (more ranks than GPUs, or
//! `LaunchTransport::threads`) the ranks share GPUs and the world is the thread transport over device
//! memory. Either way a rank that fails releases the others at once.
template <class B>
  requires std::same_as<B, cuda::Backend>
class LaunchWorld<B> {
 public:
  LaunchWorld(int n, const std::shared_ptr<ThreadWorld>& world, const LaunchOptions& options)
      : n_(n), world_(world) {
    if (launch_uses_nccl(options.transport, n, cuda::device_count(), "cuda::Backend"))
      id_ = NcclCommunicator::make_unique_id();
    else
      group_ = thread_world_group<cuda::Memory>(n, world);
  }
  //! Rank r of the world; called on rank r's thread (the NCCL world forms once every rank called it).
  [[nodiscard]] Rank<B> rank(int r) const {
    if (!id_) return thread_rank<B>(group_, r, n_);
    cuda::Context ctx(r);
    auto comm = NcclCommunicator::create_world(r, n_, *id_, ctx, {.timeout = world_->timeout(), .peers = world_});
    return Rank<B>(r, n_, Communicator(std::move(comm)), std::move(ctx));  // the world goes before the context
  }

 private:
  int n_;
  std::shared_ptr<const ThreadWorld> world_;  // the launch's timeout and abort
  std::optional<ncclUniqueId> id_;     // NCCL: the world's id
  std::shared_ptr<ThreadGroup> group_;  // threads: the world group
};

}  // namespace parallax::detail
