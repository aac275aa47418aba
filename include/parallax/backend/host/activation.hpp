// parallax/backend/host/activation.hpp — host GELU (GPT-2's tanh approximation): forward and backward, fp32 math.
#pragma once

#include <cmath>
#include <cstdint>

#include "../../config.hpp"
#include "../../core/dtype.hpp"
#include "../../core/view.hpp"
#include "context.hpp"
#include "detail/kernel_args.hpp"
#include "memory.hpp"

namespace parallax::host {

namespace detail {
inline constexpr float gelu_k = 0.7978845608028654f;  // sqrt(2 / pi)
inline constexpr float gelu_a = 0.044715f;

//! gelu(v) = 0.5 v (1 + tanh(u)),  u = sqrt(2/pi) (v + 0.044715 v^3): the one definition the host loops, the CUDA
//! kernels and the fused GEMM epilogues' fallbacks share.
PARALLAX_HOST_DEVICE inline float gelu(float v) { return 0.5f * v * (1.f + tanhf(gelu_k * (v + gelu_a * v * v * v))); }

//! gelu'(v) = 0.5 (1 + t) + 0.5 v (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 v^2),  t = tanh(u).
PARALLAX_HOST_DEVICE inline float gelu_grad(float v) {
  const float t = tanhf(gelu_k * (v + gelu_a * v * v * v));
  const float du = gelu_k * (1.f + 3.f * gelu_a * v * v);
  return 0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * du;
}
}  // namespace detail

//! Activation kernels of the host backend (elementwise; any shape, equal for all operands).
//! @code
//! Activation::gelu_forward(ctx, x, y);
//! Activation::gelu_backward(ctx, x, dy, dx);
//! @endcode
struct Activation {
  //! y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3). `y` may alias `x`.
  template <FloatElement T>
  static void gelu_forward(const Context&, detail::In<T> x, View<T, Memory> y) {
    detail::expect_shape("gelu_forward", "y", y.shape(), x.shape());
    for (std::int64_t i = 0; i < x.numel(); ++i) y.data()[i] = T(detail::gelu(float(x.data()[i])));
  }

  //! dx = dy * (0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)),  t = tanh(u)  (overwritten).
  //! `dx` may alias `x` or `dy`.
  template <FloatElement T>
  static void gelu_backward(const Context&, detail::In<T> x, detail::In<T> dy, View<T, Memory> dx) {
    detail::expect_shape("gelu_backward", "dy", dy.shape(), x.shape());
    detail::expect_shape("gelu_backward", "dx", dx.shape(), x.shape());
    for (std::int64_t i = 0; i < x.numel(); ++i)
      dx.data()[i] = T(float(dy.data()[i]) * detail::gelu_grad(float(x.data()[i])));
  }
};

}  // namespace parallax::host
