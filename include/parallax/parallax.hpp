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

#include "mesh/axis.hpp"
#include "mesh/device_mesh.hpp"

#include "nn/causal_attention.hpp"
#include "nn/checkpoint.hpp"
#include "nn/cross_entropy.hpp"
#include "nn/embedding.hpp"
#include "nn/gelu.hpp"
#include "nn/layer_norm.hpp"
#include "nn/linear.hpp"
#include "nn/loss_value.hpp"
#include "nn/module.hpp"
#include "nn/parameter.hpp"
#include "nn/residual.hpp"
#include "nn/sequential.hpp"
#include "nn/shard_spec.hpp"

#include "tp/column_parallel_linear.hpp"
#include "tp/divisible.hpp"
#include "tp/gather.hpp"
#include "tp/parallel_attention.hpp"
#include "tp/parallel_mlp.hpp"
#include "tp/row_parallel_linear.hpp"
#include "tp/sequence_parallel.hpp"
#include "tp/transformer_block.hpp"
#include "tp/vocab_parallel_cross_entropy.hpp"
#include "tp/vocab_parallel_embedding.hpp"

#include "checkpoint/safetensors.hpp"

#if defined(__CUDACC__)
#include "backend/cuda/backend.hpp"
#include "backend/cuda/reduce.cuh"
#include "comm/nccl_bootstrap.hpp"
#include "comm/nccl_communicator.hpp"
#endif
