// parallax/backend/cuda/gemm_epilogue.cuh — GEMMs with a fused epilogue on the GPU through cuBLASLt: bias + GELU
// (saving the pre-activation), the GELU gradient, and the bias gradient of a weight-gradient GEMM (nvcc).
#pragma once

#include <cstdint>
#include <type_traits>

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "../../core/dtype.hpp"
#include "../../core/view.hpp"
#include "../epilogue.hpp"
#include "../trans.hpp"
#include "activation.cuh"
#include "check.hpp"
#include "context.hpp"
#include "cublaslt.hpp"
#include "detail/gemm_epilogue_kernels.cuh"
#include "detail/kernel_args.hpp"
#include "detail/scratch.hpp"
#include "elementwise.cuh"
#include "gemm.hpp"
#include "memory.hpp"

namespace parallax::cuda {

namespace detail {

//! Whether cuBLASLt may run a GELU epilogue on T: its GELU and GELU gradient are made for 16-bit training, so fp32
//! (the reference precision, held to 1e-5 of the host backend) takes them only when the context allows TF32.
template <class T>
[[nodiscard]] bool lt_gelu_ok(const Context& ctx) noexcept {
  return !std::is_same_v<T, float> || ctx.allow_tf32();
}

//! Whether cuBLASLt can take an auxiliary GELU-input matrix [m, n] at `p`: a leading dimension n that is a multiple
//! of 8 and a 16-byte aligned start (its documented constraints).
[[nodiscard]] inline bool lt_aux_ok(const void* p, std::int64_t n) noexcept {
  return n % 8 == 0 && lt_alignment(p) >= 16;
}

//! The bias (or bias gradient) vector cuBLASLt reads or writes must start 16-byte aligned.
[[nodiscard]] inline bool lt_vector_ok(const void* p) noexcept { return lt_alignment(p) >= 16; }

}  // namespace detail

//! GEMMs with a fused epilogue on the CUDA backend: one `cublasLtMatmul` each (plans cached per shape, the
//! context's workspace), queued on the compute stream. Same functions, arguments, checks and fp32 math as
//! `host::GemmEpilogue`: the epilogue applies to the fp32 product, rounded to T once.
//!
//! Where cuBLASLt cannot take the problem (an auxiliary matrix whose row length is not a multiple of 8 or is
//! misaligned, a misaligned vector, fp32 GELU without TF32, or no kernel found for the shape), the same result
//! comes from the unfused kernels: `Gemm::gemm` (into fp32 scratch for a 16-bit C, so that C is still rounded once),
//! then one elementwise pass (or `bias_grad`).
//! @code
//! GemmEpilogue::gemm_bias_act(ctx, Trans::N, Trans::T, x, w, b, Activation::gelu, y, pre);  // gelu(x W^T + b)
//! @endcode
struct GemmEpilogue {
  //! C = act(op(A) op(B) + bias) [m, n]: one GEMM with the bias and the activation in its epilogue. `bias` [n] may
  //! be `{}` (none). `pre` [m, n], when given, receives op(A) op(B) + bias: the activation's input, which its
  //! backward needs (`gemm_dgelu`). cuBLASLt: BIAS, GELU(_AUX)(_BIAS) epilogues.
  template <FloatElement T>
  static void gemm_bias_act(const Context& ctx, Trans ta, Trans tb, detail::In<T> a, detail::In<T> b,
                            detail::In<T> bias, parallax::Activation act, View<T, Memory> c, detail::Out<T> pre = {}) {
    constexpr const char* op = "cuda::GemmEpilogue::gemm_bias_act";
    const bool has_bias = !detail::absent(bias), has_pre = !detail::absent(pre);
    const bool gelu = act == parallax::Activation::gelu;
    const Shape bias_shape = bias.shape(), pre_shape = pre.shape();
    const auto [m, n, k] = parallax::detail::check_gemm_bias_act(ta, tb, a.shape(), b.shape(), c.shape(),
                                                                 has_bias ? &bias_shape : nullptr,
                                                                 has_pre ? &pre_shape : nullptr);
    if (m == 0 || n == 0) return;
    const bool fusable = (!has_bias || detail::lt_vector_ok(bias.data())) &&
                         (gelu ? detail::lt_gelu_ok<T>(ctx) && (!has_pre || detail::lt_aux_ok(pre.data(), n))
                               : !has_pre);
    if (fusable) {
      const cublasLtEpilogue_t e = !gelu     ? (has_bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT)
                                   : has_pre ? (has_bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX)
                                             : (has_bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU);
      const detail::LtMatmul mm{.epilogue = e, .ta = ta, .tb = tb, .m = m, .n = n, .k = k,
                                .type = detail::cuda_type<T>, .alpha = 1.f, .beta = 0.f, .a = a.data(),
                                .b = b.data(), .c = c.data(), .bias = has_bias ? bias.data() : nullptr,
                                .aux = has_pre ? pre.data() : nullptr};
      if (detail::lt_matmul(ctx, mm, op)) return;
    }
    if (!has_bias && !gelu && !has_pre) return Gemm::gemm(ctx, ta, tb, 1.f, a, b, 0.f, c);
    // A 16-bit C takes the product in fp32 scratch: the epilogue then rounds it to T once, as the fused path does.
    detail::Scratch<float> scratch(ctx, std::is_same_v<T, float> ? 0 : static_cast<std::size_t>(c.numel()), op);
    float* product = scratch.get();
    if constexpr (std::is_same_v<T, float>) product = c.data();
    Gemm::gemm(ctx, ta, tb, 1.f, a, b, 0.f, View<float, Memory>(product, c.shape()));
    detail::bias_act_kernel<<<detail::elementwise_blocks(ctx, c.numel()), detail::elementwise_threads, 0,
                              ctx.stream()>>>(product, c.data(), has_bias ? bias.data() : nullptr,
                                              has_pre ? pre.data() : nullptr, gelu, c.numel(), n);
    check_launch(op);
  }

  //! C = (op(A) op(B)) * gelu'(pre) [m, n], elementwise: the backward of a GELU whose input was `pre`, fused into
  //! the GEMM that forms the gradient of its output (dy W of the layer after it). cuBLASLt: DGELU epilogue.
  template <FloatElement T>
  static void gemm_dgelu(const Context& ctx, Trans ta, Trans tb, detail::In<T> a, detail::In<T> b, detail::In<T> pre,
                         View<T, Memory> c) {
    constexpr const char* op = "cuda::GemmEpilogue::gemm_dgelu";
    const auto [m, n, k] = parallax::detail::check_gemm_dgelu(ta, tb, a.shape(), b.shape(), c.shape(), pre.shape());
    if (m == 0 || n == 0) return;
    if (detail::lt_gelu_ok<T>(ctx) && detail::lt_aux_ok(pre.data(), n)) {
      const detail::LtMatmul mm{.epilogue = CUBLASLT_EPILOGUE_DGELU, .ta = ta, .tb = tb, .m = m, .n = n, .k = k,
                                .type = detail::cuda_type<T>, .alpha = 1.f, .beta = 0.f, .a = a.data(),
                                .b = b.data(), .c = c.data(), .aux = pre.data()};
      if (detail::lt_matmul(ctx, mm, op)) return;
    }
    Gemm::gemm(ctx, ta, tb, 1.f, a, b, 0.f, c);
    Activation::gelu_backward(ctx, pre, c, c);  // dx may alias dy
  }

  //! C = alpha op(A) op(B) + beta C with A transposed, and db[i] += sum_r A[r, i]: a linear layer's weight gradient
  //! dW = dY^T X (+= with beta 1) and its bias gradient, the column sums of dY [k, m], in one call. db [m] has T's
  //! type or fp32. `beta == 0` ignores C's contents. cuBLASLt: BGRADB epilogue (cuBLASLt's B is our A), which
  //! writes the column sums (rounded to T) into scratch; they are then added to db. An fp32 db of 16-bit operands
  //! takes the unfused kernels instead (GEMM, then column sums in fp32).
  template <FloatElement T, FloatElement G>
    requires(std::is_same_v<G, T> || std::is_same_v<G, float>)
  static void gemm_bias_grad(const Context& ctx, Trans ta, Trans tb, float alpha, detail::In<T> a, detail::In<T> b,
                             float beta, View<T, Memory> c, View<G, Memory> db) {
    constexpr const char* op = "cuda::GemmEpilogue::gemm_bias_grad";
    const auto [m, n, k] = parallax::detail::check_gemm_bias_grad(ta, tb, a.shape(), b.shape(), c.shape(), db.shape());
    // BGRADB writes the sums in T (cuBLASLt: bias gradient elements have the output's type), so an fp32 db of
    // 16-bit operands takes the unfused path, which sums in fp32 and rounds once.
    if (std::is_same_v<G, T> && m > 0 && n > 0 && k > 0) {
      detail::Scratch<T> sums(ctx, static_cast<std::size_t>(m), op);
      const detail::LtMatmul mm{.epilogue = CUBLASLT_EPILOGUE_BGRADB, .ta = ta, .tb = tb, .m = m, .n = n, .k = k,
                                .type = detail::cuda_type<T>, .alpha = alpha, .beta = beta, .a = a.data(),
                                .b = b.data(), .c = c.data(), .bias = sums.get()};
      if (detail::lt_vector_ok(sums.get()) && detail::lt_matmul(ctx, mm, op)) {
        Elementwise::axpby(ctx, 1.f, View<const T, Memory>(sums.get(), Shape{m}), 1.f, db);
        return;
      }
    }
    Gemm::gemm(ctx, ta, tb, alpha, a, b, beta, c);
    Elementwise::bias_grad(ctx, a, db);
  }
};

}  // namespace parallax::cuda
