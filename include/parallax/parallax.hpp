// parallax/parallax.hpp — the umbrella header: everything a trainer uses on the host backend, and the
// CUDA backend and NCCL transport too when compiled by nvcc. MPI users add <parallax/comm/mpi_communicator.hpp>.
#pragma once

#include "config.hpp"
#include "error.hpp"
#include "version.hpp"

#include "core/allocator.hpp"
#include "core/bf16.hpp"
#include "core/dtype.hpp"
#include "core/extent.hpp"
#include "core/fp16.hpp"
#include "core/init.hpp"
#include "core/memory_space.hpp"
#include "core/memory_stats.hpp"
#include "core/rng.hpp"
#include "core/shape.hpp"
#include "core/tensor.hpp"
#include "core/view.hpp"

#include "backend/concept.hpp"
#include "backend/host/backend.hpp"
#include "backend/trans.hpp"

#include "comm/collective.hpp"
#include "comm/communicator.hpp"
#include "comm/launch.hpp"
#include "comm/launch_env.hpp"
#include "comm/rank.hpp"
#include "comm/settings.hpp"
#include "comm/tcp_rendezvous.hpp"
#include "comm/thread_communicator.hpp"
#include "comm/transport.hpp"
#include "comm/work.hpp"

#include "mesh/device_mesh.hpp"

#if defined(__CUDACC__)
#include "backend/cuda/backend.hpp"
#include "backend/cuda/reduce.cuh"
#include "comm/nccl_bootstrap.hpp"
#include "comm/nccl_communicator.hpp"
#endif
