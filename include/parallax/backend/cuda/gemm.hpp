// parallax/backend/cuda/gemm.hpp — GEMM on the CUDA backend: cuBLAS with fp32 accumulation, row-major like the host.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <library_types.h>

#include "../../core/dtype.hpp"
#include "../../core/view.hpp"
#include "../trans.hpp"
#include "check.hpp"
#include "context.hpp"
#include "memory.hpp"

namespace parallax::cuda {

namespace detail {

//! cuBLAS's tag of an element type.
template <FloatElement T>
inline constexpr cudaDataType_t cuda_type = std::is_same_v<T, float>  ? CUDA_R_32F
                                            : std::is_same_v<T, bf16> ? CUDA_R_16BF
                                                                      : CUDA_R_16F;

[[nodiscard]] constexpr cublasOperation_t cublas_op(Trans t) noexcept {
  return t == Trans::T ? CUBLAS_OP_T : CUBLAS_OP_N;
}

}  // namespace detail

//! GEMM on the CUDA backend, asynchronous on the context's compute stream.
struct Gemm {
  //! C[m, n] = alpha * op(A) op(B) + beta * C, row-major, fp32 accumulation; `beta == 0` ignores C's
  //! contents (NaN included). Same contract as `host::Gemm::gemm`.
  //!
  //! fp32 operands are multiplied in full fp32 unless the context was built with `allow_tf32`.
  //! @tparam T operand type (fp32, bf16, fp16).  @tparam TC output type (T or fp32).
  template <FloatElement T, FloatElement TC>
    requires(std::is_same_v<TC, T> || std::is_same_v<TC, float>)
  static void gemm(const Context& ctx, Trans ta, Trans tb, float alpha, View<const T, Memory> a,
                   View<const T, Memory> b, float beta, View<TC, Memory> c) {
    const auto [m, n, k] = gemm_dims(ta, tb, a.shape(), b.shape(), c.shape());
    if (m == 0 || n == 0) return;
    cublasHandle_t h = ctx.cublas();
    if (k == 0) {  // op(A) op(B) is all zeros: C = beta * C
      if (beta == 0.f) {
        check(cudaMemsetAsync(c.data(), 0, c.bytes(), ctx.stream()), "cuda::Gemm (cudaMemsetAsync)");
      } else if (beta != 1.f) {
        check(cublasScalEx_64(h, m * n, &beta, CUDA_R_32F, c.data(), detail::cuda_type<TC>, 1, CUDA_R_32F),
              "cuda::Gemm (cublasScalEx)");
      }
      return;
    }
    // Row-major C[m, n] is column-major C^T[n, m], and C^T = op(B)^T op(A)^T: swap the operands, keep
    // each one's transposition flag, and use the row strides as leading dimensions.
    const cublasComputeType_t compute =
        std::is_same_v<T, float> && ctx.allow_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    check(cublasGemmEx_64(h, detail::cublas_op(tb), detail::cublas_op(ta), n, m, k, &alpha, b.data(),
                          detail::cuda_type<T>, b.shape()[1], a.data(), detail::cuda_type<T>, a.shape()[1], &beta,
                          c.data(), detail::cuda_type<TC>, n, compute, CUBLAS_GEMM_DEFAULT),
          "cublasGemmEx");
  }
};

}  // namespace parallax::cuda
