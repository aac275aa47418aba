// parallax/backend/trans.hpp — GEMM operand transposition and the shape rules every backend's GEMM checks.
#pragma once

#include <cstdint>

#include <fmt/format.h>

#include "../core/shape.hpp"
#include "../error.hpp"

namespace parallax {

//! Whether a GEMM operand is used as stored (`N`) or transposed (`T`).
enum class Trans : bool { N = false, T = true };

//! m, n, k of C[m, n] = op(A)[m, k] * op(B)[k, n], row-major.
struct GemmDims {
  std::int64_t m, n, k;
};

//! Checks that A, B, C are 2-D and agree; returns the problem size or throws naming all three shapes.
[[nodiscard]] inline GemmDims gemm_dims(Trans ta, Trans tb, const Shape& a, const Shape& b, const Shape& c) {
  if (a.rank() != 2 || b.rank() != 2 || c.rank() != 2)
    throw Error(fmt::format("gemm: operands must be 2-D, got A {} B {} C {}", a, b, c));
  const std::int64_t m = ta == Trans::N ? a[0] : a[1], ka = ta == Trans::N ? a[1] : a[0];
  const std::int64_t kb = tb == Trans::N ? b[0] : b[1], n = tb == Trans::N ? b[1] : b[0];
  if (ka != kb || c[0] != m || c[1] != n)
    throw Error(fmt::format("gemm: op(A) is [{}, {}], op(B) is [{}, {}], C is {}: inner sizes or C's shape disagree", m,
                            ka, kb, n, c));
  return {m, n, ka};
}

}  // namespace parallax
