// parallax/backend/cuda/cublaslt.hpp — cuBLASLt matmuls with a fused epilogue in parallax's row-major terms, their
// descriptors and chosen algorithm cached per shape in the context so that repeated steps do not query the
// heuristics again.
#pragma once

#include <cstdint>
#include <source_location>
#include <string>

#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include "../trans.hpp"
#include "check.hpp"
#include "context.hpp"
#include "detail/lt_plan.hpp"
#include "gemm.hpp"

namespace parallax::cuda::detail {

//! One matmul, row-major like `Gemm::gemm`: C[m, n] = epilogue(alpha op(A) op(B) + beta C), with A, B, C and the
//! epilogue's bias and auxiliary matrix of one element type. cuBLASLt is column-major, so it computes
//! C^T = op(B)^T op(A)^T: our B is its A and our A its B, and our C [m, n] its D [n, m] (leading dimension n). Its
//! bias runs along D's rows (our columns: a bias [n]), BGRADB reduces its B (our A) over k into [m], and the GELU
//! input (aux) is laid out like D: our [m, n], row stride n.
struct LtMatmul {
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  Trans ta = Trans::N, tb = Trans::N;
  std::int64_t m = 0, n = 0, k = 0;
  cudaDataType_t type = CUDA_R_32F;
  float alpha = 1.f, beta = 0.f;
  const void* a = nullptr;
  const void* b = nullptr;
  void* c = nullptr;
  const void* bias = nullptr;  // the epilogue's bias [n] (read), or the bias gradient [m] (written)
  const void* aux = nullptr;   // the GELU input [m, n]: written by GELU_AUX*, read by DGELU
};

//! The largest power of two (at most 256) that divides the address: what cuBLASLt's heuristics assume of it.
[[nodiscard]] inline std::uint32_t lt_alignment(const void* p) noexcept {
  const auto v = reinterpret_cast<std::uintptr_t>(p);
  if (v == 0) return 256;
  const std::uintptr_t low = v & (~v + 1);
  return static_cast<std::uint32_t>(low < 256 ? low : 256);
}

[[nodiscard]] inline const char* lt_epilogue_name(cublasLtEpilogue_t e) noexcept {
  switch (e) {
    case CUBLASLT_EPILOGUE_DEFAULT: return "DEFAULT";
    case CUBLASLT_EPILOGUE_BIAS: return "BIAS";
    case CUBLASLT_EPILOGUE_GELU: return "GELU";
    case CUBLASLT_EPILOGUE_GELU_AUX: return "GELU_AUX";
    case CUBLASLT_EPILOGUE_GELU_BIAS: return "GELU_BIAS";
    case CUBLASLT_EPILOGUE_GELU_AUX_BIAS: return "GELU_AUX_BIAS";
    case CUBLASLT_EPILOGUE_DGELU: return "DGELU";
    case CUBLASLT_EPILOGUE_BGRADB: return "BGRADB";
    default: return "other";
  }
}

[[nodiscard]] inline const char* lt_type_name(cudaDataType_t t) noexcept {
  return t == CUDA_R_32F ? "fp32" : t == CUDA_R_16BF ? "bf16" : t == CUDA_R_16F ? "fp16" : "other";
}

//! Throws unless `status` is success, naming the operation, the cuBLASLt call and the problem:
//! `cuda::GemmEpilogue::gemm_bias_act: cublasLtMatmul (C [8, 32] = op(A) op(B), A N, B T, k 16, bf16, epilogue
//! GELU_AUX_BIAS): ... (CUBLAS_STATUS_...)`.
inline void lt_check(cublasStatus_t status, const char* call, const LtMatmul& mm, const char* op,
                     std::source_location loc = std::source_location::current()) {
  if (status == CUBLAS_STATUS_SUCCESS) [[likely]]
    return;
  const std::string what = fmt::format("{}: {} (C [{}, {}] = op(A) op(B), A {}, B {}, k {}, {}, epilogue {})", op, call,
                                       mm.m, mm.n, mm.ta == Trans::T ? "T" : "N", mm.tb == Trans::T ? "T" : "N", mm.k,
                                       lt_type_name(mm.type), lt_epilogue_name(mm.epilogue));
  check(status, what.c_str(), loc);
}

template <class V>
void lt_set(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr, const V& v, const LtMatmul& mm,
            const char* op) {
  lt_check(cublasLtMatmulDescSetAttribute(d, attr, &v, sizeof v), "cublasLtMatmulDescSetAttribute", mm, op);
}

//! Points the descriptor at this call's bias and auxiliary matrix (the other operands are arguments of the matmul).
inline void lt_set_pointers(cublasLtMatmulDesc_t d, const LtMatmul& mm, const char* op) {
  if (mm.bias != nullptr) lt_set(d, CUBLASLT_MATMUL_DESC_BIAS_POINTER, mm.bias, mm, op);
  if (mm.aux != nullptr) lt_set(d, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, mm.aux, mm, op);
}

//! Builds the descriptor and layouts of `mm` and asks the heuristics for the best algorithm within the
//! context's workspace, for operands with `mm`'s alignments.
[[nodiscard]] inline LtPlan lt_plan(const Context& ctx, const LtMatmul& mm, cublasComputeType_t compute,
                                    const char* op) {
  LtPlan plan;
  cublasLtMatmulDesc_t desc = nullptr;
  lt_check(cublasLtMatmulDescCreate(&desc, compute, CUDA_R_32F), "cublasLtMatmulDescCreate", mm, op);
  plan.desc.reset(desc);
  const cublasOperation_t op_a = cublas_op(mm.tb), op_b = cublas_op(mm.ta);  // cuBLASLt's A is our B
  lt_set(desc, CUBLASLT_MATMUL_DESC_TRANSA, op_a, mm, op);
  lt_set(desc, CUBLASLT_MATMUL_DESC_TRANSB, op_b, mm, op);
  lt_set(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, mm.epilogue, mm, op);
  if (mm.aux != nullptr) lt_set(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, mm.n, mm, op);
  lt_set_pointers(desc, mm, op);

  // Stored column-major (rows, cols, leading dimension = rows): our B is [k, n] (N) or [n, k] (T), our A [m, k]
  // (N) or [k, m] (T), our C [m, n].
  const auto layout = [&](std::int64_t rows, std::int64_t cols) {
    cublasLtMatrixLayout_t l = nullptr;
    lt_check(cublasLtMatrixLayoutCreate(&l, mm.type, static_cast<std::uint64_t>(rows), static_cast<std::uint64_t>(cols),
                                        rows),
             "cublasLtMatrixLayoutCreate", mm, op);
    return LtLayout(l);
  };
  plan.a = mm.tb == Trans::N ? layout(mm.n, mm.k) : layout(mm.k, mm.n);
  plan.b = mm.ta == Trans::N ? layout(mm.k, mm.m) : layout(mm.m, mm.k);
  plan.c = layout(mm.n, mm.m);

  cublasLtMatmulPreference_t p = nullptr;
  lt_check(cublasLtMatmulPreferenceCreate(&p), "cublasLtMatmulPreferenceCreate", mm, op);
  const LtPreference pref(p);
  const auto set_pref = [&](cublasLtMatmulPreferenceAttributes_t attr, const auto& v) {
    lt_check(cublasLtMatmulPreferenceSetAttribute(p, attr, &v, sizeof v), "cublasLtMatmulPreferenceSetAttribute", mm,
             op);
  };
  set_pref(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, static_cast<std::uint64_t>(ctx.workspace_bytes()));
  // fp32 accumulation all the way, as the context asks of cuBLAS: split-K parts are added in fp32, never in T.
  set_pref(CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
           static_cast<std::uint32_t>(CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE));
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, lt_alignment(mm.b));
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, lt_alignment(mm.a));
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, lt_alignment(mm.c));
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, lt_alignment(mm.c));

  cublasLtMatmulHeuristicResult_t result{};
  int count = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(ctx.cublaslt(), desc, plan.a.get(), plan.b.get(),
                                                               plan.c.get(), plan.c.get(), p, 1, &result, &count);
  // No kernel for this combination: cuBLASLt says NOT_SUPPORTED, or INVALID_VALUE for some epilogue / type /
  // transpose combinations it does not take at all; either way the caller's unfused kernels run instead.
  if (status == CUBLAS_STATUS_NOT_SUPPORTED || status == CUBLAS_STATUS_INVALID_VALUE ||
      (status == CUBLAS_STATUS_SUCCESS && count == 0))
    return plan;
  lt_check(status, "cublasLtMatmulAlgoGetHeuristic", mm, op);
  plan.algo = result.algo;
  plan.found = true;
  return plan;
}

//! Queues `mm` on the context's compute stream through cuBLASLt with the context's workspace, planning it on first
//! use (the plan stays in `ctx.lt_plans()`). Returns false, having queued nothing, when no cuBLASLt kernel supports
//! it (the heuristics find none or refuse the combination, or the matmul answers CUBLAS_STATUS_NOT_SUPPORTED; or k
//! is 0): the caller then runs
//! the unfused kernels. Any other failure throws, naming `op` and the problem.
//!
//! fp32 runs with full fp32 products unless the context allows TF32, like `Gemm::gemm`.
[[nodiscard]] inline bool lt_matmul(const Context& ctx, const LtMatmul& mm, const char* op) {
  if (mm.m == 0 || mm.n == 0 || mm.k == 0) return false;
  const cublasComputeType_t compute =
      mm.type == CUDA_R_32F && ctx.allow_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  const LtKey key{ctx.device(),
                  ctx.workspace_bytes(),
                  static_cast<std::uint32_t>(mm.epilogue),
                  mm.ta == Trans::T,
                  mm.tb == Trans::T,
                  mm.m,
                  mm.n,
                  mm.k,
                  static_cast<int>(mm.type),
                  static_cast<int>(compute),
                  lt_alignment(mm.a),
                  lt_alignment(mm.b),
                  lt_alignment(mm.c),
                  lt_alignment(mm.bias),
                  lt_alignment(mm.aux)};
  LtPlans& plans = ctx.lt_plans();
  auto it = plans.find(key);
  if (it == plans.end()) it = plans.emplace(key, lt_plan(ctx, mm, compute, op)).first;
  LtPlan& plan = it->second;
  if (!plan.found) return false;
  lt_set_pointers(plan.desc.get(), mm, op);
  const cublasStatus_t status = cublasLtMatmul(ctx.cublaslt(), plan.desc.get(), &mm.alpha, mm.b, plan.a.get(), mm.a,
                                               plan.b.get(), &mm.beta, mm.c, plan.c.get(), mm.c, plan.c.get(),
                                               &plan.algo, ctx.workspace(), ctx.workspace_bytes(), ctx.stream());
  if (status == CUBLAS_STATUS_NOT_SUPPORTED) {  // refused at launch after all: the unfused kernels, from now on
    plan.found = false;
    return false;
  }
  lt_check(status, "cublasLtMatmul", mm, op);
  return true;
}

}  // namespace parallax::cuda::detail
