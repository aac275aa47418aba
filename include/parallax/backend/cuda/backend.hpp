// parallax/backend/cuda/backend.hpp — cuda::Backend: the GPU backend type that modules are templated on (nvcc only).
#pragma once

#include "activation.cuh"
#include "attention.cuh"
#include "check.hpp"
#include "context.hpp"
#include "cross_entropy.cuh"
#include "device.hpp"
#include "elementwise.cuh"
#include "embedding.cuh"
#include "gemm.hpp"
#include "head_layout.cuh"
#include "layernorm.cuh"
#include "memory.hpp"
#include "optimizer.cuh"
#include "reduce.cuh"
#include "stream.hpp"

namespace parallax::cuda {

//! The GPU backend: one rank per GPU (or several ranks sharing one), memory is GPU global memory,
//! GEMM is cuBLAS, and the kernels (elementwise, layernorm, GELU, attention and its head layouts,
//! cross-entropy, embedding) run on the rank's compute stream with fp32 math: the same functions as
//! `host::Backend`'s, so every module runs on either. Models `parallax::Backend`.
//!
//! Including it also makes `ThreadCommunicator<cuda::Memory>` usable (ranks as threads sharing a GPU).
//! @code
//! parallax::launch<parallax::cuda::Backend>(4, [](parallax::Rank<parallax::cuda::Backend>& rank) { ... });
//! @endcode
struct Backend : Gemm, Elementwise, LayerNorm, Activation, Attention, HeadLayout, CrossEntropy, Embedding, Optimizer {
  static constexpr const char* name = "cuda";
  using Memory = cuda::Memory;
  using Context = cuda::Context;
  //! Number of visible GPUs; 0 when there is none or no driver (never throws).
  static int device_count() noexcept { return cuda::device_count(); }
};

}  // namespace parallax::cuda
