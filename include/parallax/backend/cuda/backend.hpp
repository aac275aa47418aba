// parallax/backend/cuda/backend.hpp — cuda::Backend: the GPU backend type that modules are templated on (nvcc only).
#pragma once

#include "activation.cuh"
#include "attention.cuh"
#include "check.hpp"
#include "context.hpp"
#include "cross_entropy.cuh"
#include "cublaslt.hpp"
#include "device.hpp"
#include "elementwise.cuh"
#include "embedding.cuh"
#include "gemm.hpp"
#include "gemm_epilogue.cuh"
#include "head_layout.cuh"
#include "layernorm.cuh"
#include "memory.hpp"
#include "optimizer.cuh"
#include "thread_channel.cuh"
#include "stream.hpp"

namespace parallax::cuda {

//! The GPU backend: one rank per GPU (or several ranks sharing one), memory is GPU global memory,
//! GEMM is cuBLAS (cuBLASLt for the GEMMs with a fused bias, GELU or bias-gradient epilogue), and the kernels
//! (elementwise, layernorm and its fused residual add, GELU, attention and its head layouts, cross-entropy,
//! embedding) run on the rank's compute stream with fp32 math: the same functions as `host::Backend`'s, so every
//! module runs on either. Models `parallax::Backend`.
//!
//! Including it also makes `ThreadCommunicator<cuda::Memory>` usable (ranks as threads sharing a GPU).
//! @code
//! parallax::launch<parallax::cuda::Backend>(4, [](parallax::Rank<parallax::cuda::Backend>& rank) { ... });
//! @endcode
struct Backend : Gemm, GemmEpilogue, Elementwise, LayerNorm, Activation, Attention, HeadLayout, CrossEntropy, Embedding,
                 Optimizer {
  static constexpr const char* name = "cuda";
  using Memory = cuda::Memory;
  using Context = cuda::Context;
  //! Number of visible GPUs; 0 when there is none or no driver (never throws).
  static int device_count() noexcept { return cuda::device_count(); }
};

}  // namespace parallax::cuda
