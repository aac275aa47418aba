// parallax/backend/host/backend.hpp — host::Backend: the CPU backend type that modules are templated on.
#pragma once

#include "activation.hpp"
#include "attention.hpp"
#include "context.hpp"
#include "cross_entropy.hpp"
#include "elementwise.hpp"
#include "embedding.hpp"
#include "gemm.hpp"
#include "gemm_epilogue.hpp"
#include "layernorm.hpp"
#include "memory.hpp"
#include "optimizer.hpp"

namespace parallax::host {

//! The CPU backend: ranks are threads, memory is host memory, GEMM is CBLAS or a portable loop (with fused
//! epilogues applied to its fp32 result), and the transformer kernels (layernorm and its fused residual add, GELU,
//! attention, cross-entropy, embedding) and the optimizer updates (SGD, Adam) are fp32-math loops.
//! Models `parallax::Backend`.
struct Backend : Gemm, GemmEpilogue, Elementwise, LayerNorm, Activation, Attention, CrossEntropy, Embedding, Optimizer {
  static constexpr const char* name = "host";
  using Memory = host::Memory;
  using Context = host::Context;
  //! Number of devices ranks can be placed on (0: the host backend needs none).
  static int device_count() noexcept { return 0; }
};

}  // namespace parallax::host
