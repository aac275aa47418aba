// parallax/backend/cuda/detail/column_sum.cuh — deterministic column sums of [N, D] terms into [D] outputs: the
// launcher of the kernels in column_sum_kernels.cuh (nvcc).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "../check.hpp"
#include "../context.hpp"
#include "column_sum_kernels.cuh"
#include "scratch.hpp"

namespace parallax::cuda::detail {

//! out[k][c] += sum_r term_k(r, c) over the rows of an [n, d] operand, for k < K, with fp32 sums formed in an
//! order that depends on n only (per-block partials, then a second kernel; no atomics). Queued on the compute
//! stream. Null outputs are skipped.
template <int K, class G, class Term>
void column_sums(const Context& ctx, Term term, std::int64_t n, std::int64_t d, ColumnOutputs<G, K> out,
                 const char* what) {
  if (n == 0 || d == 0) return;
  const ColumnChunks chunks = column_chunks(n);
  Scratch<float> partial(ctx, static_cast<std::size_t>(K * chunks.count * d), what);
  const dim3 grid(static_cast<unsigned>((d + colsum_cols - 1) / colsum_cols), static_cast<unsigned>(chunks.count));
  column_partial_kernel<K><<<grid, dim3(colsum_cols, colsum_rows), 0, ctx.stream()>>>(term, n, d, chunks.rows,
                                                                                       partial.get());
  check_launch(what);
  column_final_kernel<K>
      <<<column_final_blocks(d, ctx.sm_count()), 256, 0, ctx.stream()>>>(partial.get(), chunks.count, d, out);
  check_launch(what);
}

}  // namespace parallax::cuda::detail
