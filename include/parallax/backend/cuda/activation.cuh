// parallax/backend/cuda/activation.cuh — GELU (GPT-2's tanh approximation) on the GPU: forward and backward (nvcc).
#pragma once

#include <cuda_runtime.h>

#include "../../core/dtype.hpp"
#include "../../core/view.hpp"
#include "check.hpp"
#include "context.hpp"
#include "detail/activation_kernels.cuh"
#include "detail/kernel_args.hpp"
#include "elementwise.cuh"
#include "memory.hpp"

namespace parallax::cuda {

//! Activation kernels of the CUDA backend (elementwise; any shape, equal for all operands). Same functions,
//! arguments, checks and fp32 math as `host::Activation`; queued on the context's compute stream.
//! @code
//! Activation::gelu_forward(ctx, x, y);
//! Activation::gelu_backward(ctx, x, dy, dx);
//! @endcode
struct Activation {
  //! y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3). `y` may alias `x`.
  template <FloatElement T>
  static void gelu_forward(const Context& ctx, detail::In<T> x, View<T, Memory> y) {
    detail::expect_shape("gelu_forward", "y", y.shape(), x.shape());
    if (x.empty()) return;
    detail::gelu_forward_kernel<<<detail::elementwise_blocks(ctx, x.numel()), detail::elementwise_threads, 0,
                                  ctx.stream()>>>(x.data(), y.data(), x.numel());
    check_launch("cuda::Activation::gelu_forward");
  }

  //! dx = dy * (0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)),  t = tanh(u)  (overwritten).
  //! `dx` may alias `x` or `dy`.
  template <FloatElement T>
  static void gelu_backward(const Context& ctx, detail::In<T> x, detail::In<T> dy, View<T, Memory> dx) {
    detail::expect_shape("gelu_backward", "dy", dy.shape(), x.shape());
    detail::expect_shape("gelu_backward", "dx", dx.shape(), x.shape());
    if (x.empty()) return;
    detail::gelu_backward_kernel<<<detail::elementwise_blocks(ctx, x.numel()), detail::elementwise_threads, 0,
                                   ctx.stream()>>>(x.data(), dy.data(), dx.data(), x.numel());
    check_launch("cuda::Activation::gelu_backward");
  }
};

}  // namespace parallax::cuda
