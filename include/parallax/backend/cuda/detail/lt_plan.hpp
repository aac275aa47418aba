// parallax/backend/cuda/detail/lt_plan.hpp — a cuBLASLt matmul plan (descriptor, layouts, chosen algorithm), its
// cache key, and the plan cache type a cuda::Context owns; cublaslt.hpp builds and looks the plans up.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <tuple>
#include <type_traits>

#include <cublasLt.h>

namespace parallax::cuda::detail {

//! What a cached plan depends on: the problem, the device, the workspace it may use and the operands' alignments.
struct LtKey {
  int device;
  std::size_t workspace;
  std::uint32_t epilogue;
  bool ta, tb;
  std::int64_t m, n, k;
  int type, compute;
  std::uint32_t align_a, align_b, align_c, align_bias, align_aux;

  [[nodiscard]] auto tie() const {
    return std::tie(device, workspace, epilogue, ta, tb, m, n, k, type, compute, align_a, align_b, align_c, align_bias,
                    align_aux);
  }
  friend bool operator<(const LtKey& x, const LtKey& y) { return x.tie() < y.tie(); }
};

struct LtDescDestroy {
  void operator()(cublasLtMatmulDesc_t d) const noexcept { (void)cublasLtMatmulDescDestroy(d); }
};
struct LtLayoutDestroy {
  void operator()(cublasLtMatrixLayout_t l) const noexcept { (void)cublasLtMatrixLayoutDestroy(l); }
};
struct LtPreferenceDestroy {
  void operator()(cublasLtMatmulPreference_t p) const noexcept { (void)cublasLtMatmulPreferenceDestroy(p); }
};
using LtDesc = std::unique_ptr<std::remove_pointer_t<cublasLtMatmulDesc_t>, LtDescDestroy>;
using LtLayout = std::unique_ptr<std::remove_pointer_t<cublasLtMatrixLayout_t>, LtLayoutDestroy>;
using LtPreference = std::unique_ptr<std::remove_pointer_t<cublasLtMatmulPreference_t>, LtPreferenceDestroy>;

//! A matmul descriptor, cuBLASLt's A, B and C/D layouts, and the algorithm its heuristics chose (`found` false:
//! none supports the problem, and the caller falls back to unfused kernels without asking again).
struct LtPlan {
  LtDesc desc;
  LtLayout a, b, c;
  cublasLtMatmulAlgo_t algo{};
  bool found = false;
};

//! The plans of one context, by key (`cuda::Context::lt_plans()`).
using LtPlans = std::map<LtKey, LtPlan>;

}  // namespace parallax::cuda::detail
