// parallax/backend/host/gemm.hpp — host GEMM: CBLAS (OpenBLAS, one thread per rank) when found, else a blocked loop.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#if __has_include(<cblas.h>) && defined(PARALLAX_HAS_CBLAS)
#include <cblas.h>
#define PARALLAX_HOST_GEMM_CBLAS 1
#else
#define PARALLAX_HOST_GEMM_CBLAS 0
#endif

#include "../../core/dtype.hpp"
#include "../../core/view.hpp"
#include "../trans.hpp"
#include "context.hpp"
#include "memory.hpp"

namespace parallax::host {

namespace detail {

//! fp32 copy of a 16-bit operand (fp32 operands are used in place).
template <class T>
const float* as_float(const T* p, std::int64_t n, std::vector<float>& scratch) {
  if constexpr (std::is_same_v<T, float>) {
    return p;
  } else {
    scratch.resize(static_cast<std::size_t>(n));
    std::transform(p, p + n, scratch.begin(), [](T v) { return float(v); });
    return scratch.data();
  }
}

//! C = alpha * op(A) op(B) + beta * C on fp32 row-major data (lda/ldb/ldc are row strides).
inline void sgemm(Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
                  std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
#if PARALLAX_HOST_GEMM_CBLAS
#if defined(OPENBLAS_VERSION)
  // Ranks are the parallelism: one BLAS thread per calling thread.
  static const bool one_thread = (openblas_set_num_threads(1), true);
  (void)one_thread;
#endif
  cblas_sgemm(CblasRowMajor, ta == Trans::T ? CblasTrans : CblasNoTrans, tb == Trans::T ? CblasTrans : CblasNoTrans,
              static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a, static_cast<int>(lda), b,
              static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
#else
  // i-p-j loop order over 64-wide blocks of k, accumulating a row of C in fp32.
  std::vector<float> row(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < m; ++i) {
    std::fill(row.begin(), row.end(), 0.f);
    for (std::int64_t p = 0; p < k; ++p) {
      const float av = ta == Trans::N ? a[i * lda + p] : a[p * lda + i];
      if (tb == Trans::N) {
        const float* brow = b + p * ldb;
        for (std::int64_t j = 0; j < n; ++j) row[static_cast<std::size_t>(j)] += av * brow[j];
      } else {
        for (std::int64_t j = 0; j < n; ++j) row[static_cast<std::size_t>(j)] += av * b[j * ldb + p];
      }
    }
    float* crow = c + i * ldc;
    for (std::int64_t j = 0; j < n; ++j)
      crow[j] = alpha * row[static_cast<std::size_t>(j)] + (beta == 0.f ? 0.f : beta * crow[j]);
  }
#endif
}

//! alpha op(A) op(B) + beta C [m, n] (dims `d`, from `gemm_dims`) in fp32, before rounding to C's type: computed
//! in C itself when C is fp32, else in a thread-local buffer the caller rounds into C. Returns where it is.
//! `beta == 0` ignores C's contents.
template <FloatElement T, FloatElement TC>
[[nodiscard]] float* gemm_fp32(Trans ta, Trans tb, GemmDims d, float alpha, View<const T, Memory> a,
                               View<const T, Memory> b, float beta, View<TC, Memory> c) {
  const auto [m, n, k] = d;
  thread_local std::vector<float> sa, sb, sc;
  const float* fa = as_float(a.data(), a.numel(), sa);
  const float* fb = as_float(b.data(), b.numel(), sb);
  float* fc = nullptr;
  if constexpr (std::is_same_v<TC, float>) {
    fc = c.data();
  } else {
    sc.resize(static_cast<std::size_t>(m * n));
    for (std::int64_t i = 0; i < m * n; ++i) sc[static_cast<std::size_t>(i)] = beta == 0.f ? 0.f : float(c.data()[i]);
    fc = sc.data();
  }
  if (k == 0) {
    for (std::int64_t i = 0; i < m * n; ++i) fc[i] = beta == 0.f ? 0.f : beta * fc[i];
  } else {
    sgemm(ta, tb, m, n, k, alpha, fa, a.shape()[1], fb, b.shape()[1], beta, fc, n);
  }
  return fc;
}

}  // namespace detail

//! GEMM on the host backend.
struct Gemm {
  //! C[m, n] = alpha * op(A) op(B) + beta * C, row-major, fp32 accumulation; `beta == 0` ignores C's contents.
  //! @tparam T operand type (fp32, bf16, fp16).  @tparam TC output type (T or fp32).
  template <FloatElement T, FloatElement TC>
    requires(std::is_same_v<TC, T> || std::is_same_v<TC, float>)
  static void gemm(const Context&, Trans ta, Trans tb, float alpha, View<const T, Memory> a, View<const T, Memory> b, float beta,
                   View<TC, Memory> c) {
    const GemmDims d = gemm_dims(ta, tb, a.shape(), b.shape(), c.shape());
    if (d.m == 0 || d.n == 0) return;
    const float* fc = detail::gemm_fp32(ta, tb, d, alpha, a, b, beta, c);
    if constexpr (!std::is_same_v<TC, float>)
      for (std::int64_t i = 0; i < d.m * d.n; ++i) c.data()[i] = TC(fc[i]);
  }
};

}  // namespace parallax::host
