// parallax/backend/epilogue.hpp — the activation a fused GEMM applies in its epilogue, and the argument checks every
// backend's fused GEMMs share.
#pragma once

#include <fmt/format.h>

#include "../core/shape.hpp"
#include "../error.hpp"
#include "host/detail/kernel_args.hpp"
#include "trans.hpp"

namespace parallax {

//! The activation a GEMM with a fused epilogue applies after the bias (`B::gemm_bias_act`), and the activation
//! option of the linear layers.
enum class Activation {
  none,  //!< the identity
  gelu,  //!< GPT-2's tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
};

namespace detail {

//! m, n, k of `gemm_bias_act`, after checking A, B, C, the bias [n] (when given) and the pre-activation
//! output [m, n] (when given).
[[nodiscard]] inline GemmDims check_gemm_bias_act(Trans ta, Trans tb, const Shape& a, const Shape& b, const Shape& c,
                                                  const Shape* bias, const Shape* pre) {
  const GemmDims d = gemm_dims(ta, tb, a, b, c);
  if (bias != nullptr) host::detail::expect_shape("gemm_bias_act", "bias", *bias, Shape{d.n});
  if (pre != nullptr) host::detail::expect_shape("gemm_bias_act", "pre", *pre, c);
  return d;
}

//! m, n, k of `gemm_dgelu`, after checking A, B, C and the GELU input [m, n].
[[nodiscard]] inline GemmDims check_gemm_dgelu(Trans ta, Trans tb, const Shape& a, const Shape& b, const Shape& c,
                                               const Shape& pre) {
  const GemmDims d = gemm_dims(ta, tb, a, b, c);
  host::detail::expect_shape("gemm_dgelu", "pre", pre, c);
  return d;
}

//! m, n, k of `gemm_bias_grad`, after checking A, B, C, that A is transposed (A [k, m] is the output gradient
//! whose column sums are the bias gradient) and the bias gradient [m].
[[nodiscard]] inline GemmDims check_gemm_bias_grad(Trans ta, Trans tb, const Shape& a, const Shape& b, const Shape& c,
                                                   const Shape& db) {
  const GemmDims d = gemm_dims(ta, tb, a, b, c);
  if (ta != Trans::T)
    throw Error(
        fmt::format("gemm_bias_grad: A {} must be transposed (A [k, m] is the output gradient dY, C = dY^T X)", a));
  host::detail::expect_shape("gemm_bias_grad", "db", db, Shape{d.m});
  return d;
}

}  // namespace detail

}  // namespace parallax
