// parallax/comm/nccl_bootstrap.hpp — a multi-process NCCL world: rank 0's unique id shared over MPI, another
// host group, or a TCP rendezvous on MASTER_ADDR:MASTER_PORT, from torchrun / SLURM / OpenMPI variables.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <utility>

#include <fmt/format.h>

#include "../backend/cuda/backend.hpp"
#include "../backend/host/memory.hpp"
#include "../error.hpp"
#include "communicator.hpp"
#include "launch_env.hpp"
#include "nccl_communicator.hpp"
#include "rank.hpp"
#include "settings.hpp"
#include "tcp_rendezvous.hpp"

namespace parallax {

//! The NCCL world of the processes in `host_world` (e.g. `Communicator(MpiCommunicator::world())`): rank 0
//! makes the unique id and broadcasts it over `host_world`; every rank then joins on `ctx`'s device.
[[nodiscard]] inline std::shared_ptr<NcclCommunicator> nccl_world(Communicator& host_world, const cuda::Context& ctx,
                                                                  NcclOptions options = {}) {
  static_assert(sizeof(ncclUniqueId) % sizeof(std::int32_t) == 0);
  std::array<std::int32_t, sizeof(ncclUniqueId) / sizeof(std::int32_t)> words{};
  ncclUniqueId id{};
  if (host_world.rank() == 0) {
    id = NcclCommunicator::make_unique_id();
    std::memcpy(words.data(), &id, sizeof id);
  }
  host_world.broadcast(View<std::int32_t, host::Memory>(words.data(), Shape{static_cast<std::int64_t>(words.size())}), 0);
  std::memcpy(&id, words.data(), sizeof id);
  return NcclCommunicator::create_world(host_world.rank(), host_world.size(), id, ctx, std::move(options));
}

//! The NCCL world of processes started by torchrun, SLURM or mpirun: rank and size come from the launcher's
//! variables, and the unique id goes through a TCP rendezvous on MASTER_ADDR:MASTER_PORT (rank 0 listens).
//! Throws naming the missing variables when the process was not started by a launcher.
[[nodiscard]] inline std::shared_ptr<NcclCommunicator> nccl_world_from_env(const cuda::Context& ctx,
                                                                           NcclOptions options = {}) {
  const auto env = detect_launch_env();
  if (!env)
    throw Error("nccl_world_from_env: no launcher variables found (torchrun RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/"
                "MASTER_PORT, SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID or OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK)");
  if (env->world_size > 1 && (env->master_addr.empty() || env->master_port == 0))
    throw Error(fmt::format("nccl_world_from_env: {} started {} ranks but MASTER_ADDR/MASTER_PORT are not set; set them "
                            "or share the id over MPI with nccl_world(host_world, ctx)",
                            env->source, env->world_size),
                env->rank);
  ncclUniqueId id{};
  if (env->rank == 0) id = NcclCommunicator::make_unique_id();
  if (env->world_size > 1) {
    TcpRendezvous rendezvous(env->master_addr, env->master_port, env->rank, env->world_size,
                             options.timeout.value_or(comm_timeout_from_env()));
    const auto bytes = rendezvous.broadcast(std::as_bytes(std::span(&id, 1)));
    if (bytes.size() != sizeof id)
      throw Error(fmt::format("nccl_world_from_env: received {} bytes of NCCL id, expected {}", bytes.size(), sizeof id),
                  env->rank);
    std::memcpy(&id, bytes.data(), sizeof id);
  }
  return NcclCommunicator::create_world(env->rank, env->world_size, id, ctx, std::move(options));
}

//! Runs `fn(Rank<cuda::Backend>&)` once in this process, as one rank of a multi-process job started by
//! torchrun, SLURM or mpirun (one process per GPU, the GPU chosen by LOCAL_RANK); the world is NCCL.
template <class Fn>
void run_from_env(Fn&& fn, NcclOptions options = {}) {
  const auto env = detect_launch_env();
  if (!env) throw Error("run_from_env: this process was not started by torchrun, SLURM or mpirun");
  cuda::Context ctx(env->local_rank);
  auto world = nccl_world_from_env(ctx, std::move(options));
  Rank<cuda::Backend> rank(env->rank, env->world_size, Communicator(std::move(world)), std::move(ctx));
  fn(rank);
}

}  // namespace parallax
