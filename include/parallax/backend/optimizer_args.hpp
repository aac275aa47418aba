// parallax/backend/optimizer_args.hpp — arguments of the optimizer kernels (sgd_step, adam_step) and their
// per-element update, shared by the host and CUDA backends.
#pragma once

#include <cmath>
#include <cstdint>

#include <fmt/format.h>

#include "../config.hpp"
#include "../core/view.hpp"
#include "../error.hpp"

namespace parallax {

//! Arguments of `B::sgd_step`. Per element, in fp32, with w the master weight and buf the momentum buffer:
//! @code
//! g = grad_scale * grad + weight_decay * w           // L2 decay
//! buf = momentum * buf + (1 - dampening) * g         // only with momentum != 0
//! g = nesterov ? g + momentum * buf : buf
//! w = w - lr * g
//! @endcode
//! PyTorch's first step sets buf = g: `optim::SGD` passes dampening 0 on step 1 to get that from a zero buffer.
struct SgdArgs {
  float lr = 0;
  float momentum = 0;
  float dampening = 0;
  float weight_decay = 0;
  bool nesterov = false;
  float grad_scale = 1.f;
};

//! Arguments of `B::adam_step`. Per element, in fp32, with w the master weight and m, v the moments:
//! @code
//! g = grad_scale * grad
//! decoupled ? w = w * (1 - lr * weight_decay)  :  g = g + weight_decay * w     // AdamW : Adam (L2)
//! m = beta1 * m + (1 - beta1) * g
//! v = beta2 * v + (1 - beta2) * g * g
//! w = w - (lr / bias_correction1) * (m / (sqrt(v) / sqrt(bias_correction2) + eps))
//! @endcode
//! with bias_correction1 = 1 - beta1^t and bias_correction2 = 1 - beta2^t at 1-based step t (eps outside the
//! square root, as PyTorch).
struct AdamArgs {
  float lr = 0;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0;
  bool decoupled = false;
  float bias_correction1 = 1.f;
  float bias_correction2 = 1.f;
  float grad_scale = 1.f;
};

namespace detail {

// fp32 operations rounded once each: no contraction into fused multiply-adds on the device, so the CUDA
// kernels compute what the host loops compute.
PARALLAX_HOST_DEVICE inline float mul_rn(float a, float b) {
#if PARALLAX_IN_DEVICE_CODE
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
PARALLAX_HOST_DEVICE inline float add_rn(float a, float b) {
#if PARALLAX_IN_DEVICE_CODE
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
PARALLAX_HOST_DEVICE inline float div_rn(float a, float b) {
#if PARALLAX_IN_DEVICE_CODE
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
PARALLAX_HOST_DEVICE inline float sqrt_rn(float a) {
#if PARALLAX_IN_DEVICE_CODE
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

//! One element of `SgdArgs`' update; `buf` is null without momentum.
PARALLAX_HOST_DEVICE inline void sgd_update(const SgdArgs& a, float& w, float grad, float* buf) {
  float g = mul_rn(a.grad_scale, grad);
  if (a.weight_decay != 0.f) g = add_rn(g, mul_rn(a.weight_decay, w));
  if (buf != nullptr) {
    const float b = add_rn(mul_rn(a.momentum, *buf), mul_rn(1.f - a.dampening, g));
    *buf = b;
    g = a.nesterov ? add_rn(g, mul_rn(a.momentum, b)) : b;
  }
  w = add_rn(w, -mul_rn(a.lr, g));
}

//! One element of `AdamArgs`' update.
PARALLAX_HOST_DEVICE inline void adam_update(const AdamArgs& a, float& w, float grad, float& m, float& v) {
  float g = mul_rn(a.grad_scale, grad);
  if (a.weight_decay != 0.f) {
    if (a.decoupled)
      w = mul_rn(w, 1.f - mul_rn(a.lr, a.weight_decay));
    else
      g = add_rn(g, mul_rn(a.weight_decay, w));
  }
  m = add_rn(mul_rn(a.beta1, m), mul_rn(1.f - a.beta1, g));
  v = add_rn(mul_rn(a.beta2, v), mul_rn(mul_rn(1.f - a.beta2, g), g));
  const float denom = add_rn(div_rn(sqrt_rn(v), sqrt_rn(a.bias_correction2)), a.eps);
  w = add_rn(w, -mul_rn(div_rn(a.lr, a.bias_correction1), div_rn(m, denom)));
}

template <class G, class M>
void expect_same_size(const char* op, const char* name, const View<G, M>& x, std::int64_t n) {
  if (x.numel() != n) throw Error(fmt::format("{}: {} has {} elements, master has {}", op, name, x.numel(), n));
}

//! Checks `sgd_step`'s operands (the same on every backend); returns whether the momentum buffer is used.
//! `momentum` is `{}` (or empty) exactly when `a.momentum` is 0.
template <class G, class M>
[[nodiscard]] bool check_sgd_operands(const SgdArgs& a, const View<float, M>& master, const View<const G, M>& grad,
                                      const View<float, M>& momentum) {
  expect_same_size("sgd_step", "grad", grad, master.numel());
  const bool with_buffer = a.momentum != 0.f;
  if (with_buffer)
    expect_same_size("sgd_step", "momentum buffer", momentum, master.numel());
  else if (!momentum.empty())
    throw Error(fmt::format("sgd_step: a momentum buffer of {} elements is given but momentum is 0", momentum.numel()));
  return with_buffer;
}

//! Checks `adam_step`'s operands (the same on every backend).
template <class G, class M>
void check_adam_operands(const AdamArgs& a, const View<float, M>& master, const View<const G, M>& grad,
                         const View<float, M>& m, const View<float, M>& v) {
  expect_same_size("adam_step", "grad", grad, master.numel());
  expect_same_size("adam_step", "m", m, master.numel());
  expect_same_size("adam_step", "v", v, master.numel());
  if (!(a.bias_correction1 > 0.f && a.bias_correction2 > 0.f))
    throw Error(
        fmt::format("adam_step: bias corrections {} and {} must be > 0", a.bias_correction1, a.bias_correction2));
}

}  // namespace detail
}  // namespace parallax
