// parallax/backend/host/optimizer.hpp — host optimizer kernels: fused SGD and Adam(W) updates of fp32 master weights.
#pragma once

#include <cstdint>

#include "../../core/dtype.hpp"
#include "../../core/view.hpp"
#include "../optimizer_args.hpp"
#include "context.hpp"
#include "memory.hpp"

namespace parallax::host {

//! Optimizer kernels of the host backend: one loop over the elements, fp32 math, the update that
//! `SgdArgs` / `AdamArgs` document. The master weight and the state are fp32; the gradient is stored as
//! `G` (fp32, bf16, fp16) and read once. The kernels do not look for non-finite gradients: the caller
//! skips the step when there are some.
//! @code
//! Optimizer::adam_step(ctx, AdamArgs{.lr = 1e-3f, .bias_correction1 = 0.1f, .bias_correction2 = 0.001f},
//!                      master, grad, m, v);
//! @endcode
struct Optimizer {
  //! SGD with optional momentum (Nesterov), dampening and L2 weight decay. `momentum` is the fp32 buffer
  //! with as many elements as `master`, or `{}` when `args.momentum` is 0.
  template <FloatElement G>
  static void sgd_step(const Context&, const SgdArgs& args, View<float, Memory> master, View<const G, Memory> grad,
                       View<float, Memory> momentum) {
    const bool with_buffer = parallax::detail::check_sgd_operands(args, master, grad, momentum);
    float* w = master.data();
    const G* g = grad.data();
    float* buf = momentum.data();
    for (std::int64_t i = 0; i < master.numel(); ++i)
      parallax::detail::sgd_update(args, w[i], float(g[i]), with_buffer ? buf + i : nullptr);
  }

  //! Adam (L2 weight decay) or AdamW (`args.decoupled`: decoupled weight decay). `m` and `v` are the fp32
  //! first and second moments, with as many elements as `master`.
  template <FloatElement G>
  static void adam_step(const Context&, const AdamArgs& args, View<float, Memory> master, View<const G, Memory> grad,
                        View<float, Memory> m, View<float, Memory> v) {
    parallax::detail::check_adam_operands(args, master, grad, m, v);
    float* w = master.data();
    const G* g = grad.data();
    for (std::int64_t i = 0; i < master.numel(); ++i)
      parallax::detail::adam_update(args, w[i], float(g[i]), m.data()[i], v.data()[i]);
  }
};

}  // namespace parallax::host
