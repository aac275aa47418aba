// parallax/backend/cuda/optimizer.cuh — fused SGD and Adam(W) update kernels like host::Optimizer (nvcc).
#pragma once

#include <cuda_runtime.h>

#include "../../core/dtype.hpp"
#include "../../core/view.hpp"
#include "../optimizer_args.hpp"
#include "check.hpp"
#include "context.hpp"
#include "detail/optimizer_kernels.cuh"
#include "elementwise.cuh"
#include "memory.hpp"

namespace parallax::cuda {

//! Optimizer kernels of the CUDA backend, queued on the context's compute stream: one fused elementwise
//! kernel per tensor that reads the gradient (fp32, bf16 or fp16) and the fp32 state once and writes the
//! fp32 master weight and state once. Same functions and the same per-element fp32 update as
//! `host::Optimizer` (each operation rounded once, no fused multiply-adds), so the results agree bitwise with
//! a host build that does not contract them either (the default of `-std=c++20`, `-ffp-contract=off`).
//! One launch per tensor: a multi-tensor launch over a list of chunks (apex's `multi_tensor_apply`) for
//! models with many small parameters is a later performance step.
struct Optimizer {
  //! SGD with optional momentum (Nesterov), dampening and L2 weight decay. `momentum` is the fp32 buffer
  //! with as many elements as `master`, or `{}` when `args.momentum` is 0.
  template <FloatElement G>
  static void sgd_step(const Context& ctx, const SgdArgs& args, View<float, Memory> master, View<const G, Memory> grad,
                       View<float, Memory> momentum) {
    const bool with_buffer = parallax::detail::check_sgd_operands(args, master, grad, momentum);
    if (master.empty()) return;
    const unsigned blocks = detail::elementwise_blocks(ctx, master.numel());
    detail::sgd_step_kernel<<<blocks, detail::elementwise_threads, 0, ctx.stream()>>>(
        args, master.data(), grad.data(), with_buffer ? momentum.data() : nullptr, master.numel());
    check_launch("cuda::Optimizer::sgd_step");
  }

  //! Adam (L2 weight decay) or AdamW (`args.decoupled`: decoupled weight decay). `m` and `v` are the fp32
  //! first and second moments, with as many elements as `master`.
  template <FloatElement G>
  static void adam_step(const Context& ctx, const AdamArgs& args, View<float, Memory> master,
                        View<const G, Memory> grad, View<float, Memory> m, View<float, Memory> v) {
    parallax::detail::check_adam_operands(args, master, grad, m, v);
    if (master.empty()) return;
    const unsigned blocks = detail::elementwise_blocks(ctx, master.numel());
    detail::adam_step_kernel<<<blocks, detail::elementwise_threads, 0, ctx.stream()>>>(
        args, master.data(), grad.data(), m.data(), v.data(), master.numel());
    check_launch("cuda::Optimizer::adam_step");
  }
};

}  // namespace parallax::cuda
