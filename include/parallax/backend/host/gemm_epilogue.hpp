// parallax/backend/host/gemm_epilogue.hpp — host GEMMs with a fused epilogue: bias + activation (saving the
// pre-activation), the GELU gradient, and the bias gradient of a weight-gradient GEMM.
#pragma once

#include <cstdint>
#include <type_traits>

#include "../../core/dtype.hpp"
#include "../../core/view.hpp"
#include "../epilogue.hpp"
#include "../trans.hpp"
#include "activation.hpp"
#include "context.hpp"
#include "detail/kernel_args.hpp"
#include "elementwise.hpp"
#include "gemm.hpp"
#include "memory.hpp"

namespace parallax::host {

//! GEMMs with a fused epilogue on the host backend: the epilogue is applied to the fp32 product before it is rounded
//! to T, as cuBLASLt does on the GPU (one rounding per output). Same functions, arguments and checks as
//! `cuda::GemmEpilogue`, so a module's fused path runs on either backend.
//! @code
//! GemmEpilogue::gemm_bias_act(ctx, Trans::N, Trans::T, x, w, b, Activation::gelu, y, pre);  // gelu(x W^T + b)
//! GemmEpilogue::gemm_dgelu(ctx, Trans::N, Trans::N, dy, w2, pre, dpre);                    // (dy W2) gelu'(pre)
//! GemmEpilogue::gemm_bias_grad(ctx, Trans::T, Trans::N, 1.f, dpre, x, 1.f, dw, db);        // dW, db +=
//! @endcode
struct GemmEpilogue {
  //! C = act(op(A) op(B) + bias) [m, n]: one GEMM with the bias and the activation in its epilogue. `bias` [n] may
  //! be `{}` (none). `pre` [m, n], when given, receives op(A) op(B) + bias: the activation's input, which its
  //! backward needs (`gemm_dgelu`).
  template <FloatElement T>
  static void gemm_bias_act(const Context&, Trans ta, Trans tb, detail::In<T> a, detail::In<T> b, detail::In<T> bias,
                            parallax::Activation act, View<T, Memory> c, detail::Out<T> pre = {}) {
    const bool has_bias = !detail::absent(bias), has_pre = !detail::absent(pre);
    const Shape bias_shape = bias.shape(), pre_shape = pre.shape();
    const GemmDims d = parallax::detail::check_gemm_bias_act(ta, tb, a.shape(), b.shape(), c.shape(),
                                                             has_bias ? &bias_shape : nullptr,
                                                             has_pre ? &pre_shape : nullptr);
    if (d.m == 0 || d.n == 0) return;
    const float* p = detail::gemm_fp32(ta, tb, d, 1.f, a, b, 0.f, c);
    for (std::int64_t i = 0; i < d.m; ++i)
      for (std::int64_t j = 0; j < d.n; ++j) {
        const std::int64_t e = i * d.n + j;
        const float v = has_bias ? p[e] + float(bias.data()[j]) : p[e];
        if (has_pre) pre.data()[e] = T(v);
        c.data()[e] = T(act == parallax::Activation::gelu ? detail::gelu(v) : v);
      }
  }

  //! C = (op(A) op(B)) * gelu'(pre) [m, n], elementwise: the backward of a GELU whose input was `pre`, fused into
  //! the GEMM that forms the gradient of its output (dy W of the layer after it).
  template <FloatElement T>
  static void gemm_dgelu(const Context&, Trans ta, Trans tb, detail::In<T> a, detail::In<T> b, detail::In<T> pre,
                         View<T, Memory> c) {
    const GemmDims d = parallax::detail::check_gemm_dgelu(ta, tb, a.shape(), b.shape(), c.shape(), pre.shape());
    if (d.m == 0 || d.n == 0) return;
    const float* p = detail::gemm_fp32(ta, tb, d, 1.f, a, b, 0.f, c);
    for (std::int64_t e = 0; e < d.m * d.n; ++e) c.data()[e] = T(p[e] * detail::gelu_grad(float(pre.data()[e])));
  }

  //! C = alpha op(A) op(B) + beta C with A transposed, and db[i] += sum_r A[r, i]: a linear layer's weight gradient
  //! dW = dY^T X (+= with beta 1) and its bias gradient, the column sums of dY [k, m], in one call. db [m] has T's
  //! type or fp32; its sums are `bias_grad`'s (fp32, added once). `beta == 0` ignores C's contents.
  template <FloatElement T, FloatElement G>
    requires(std::is_same_v<G, T> || std::is_same_v<G, float>)
  static void gemm_bias_grad(const Context& ctx, Trans ta, Trans tb, float alpha, detail::In<T> a, detail::In<T> b,
                             float beta, View<T, Memory> c, View<G, Memory> db) {
    (void)parallax::detail::check_gemm_bias_grad(ta, tb, a.shape(), b.shape(), c.shape(), db.shape());
    Gemm::gemm(ctx, ta, tb, alpha, a, b, beta, c);
    Elementwise::bias_grad(ctx, a, db);
  }
};

}  // namespace parallax::host
