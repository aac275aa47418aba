// parallax/backend/cuda/detail/mma_layout.hpp — where a warp's m16n8k16 tensor-core fragments live: the
// accumulator element -> tile position map, and which shared-memory row each lane hands to ldmatrix (host and
// device, so that host tests check the same index math the kernels use).
#pragma once

#include <type_traits>

#include "../../../config.hpp"
#include "../../../core/bf16.hpp"
#include "../../../core/fp16.hpp"

namespace parallax::cuda::detail {

//! The storage types the tensor cores multiply here: bf16 and fp16 (fp32 accumulators).
template <class T>
concept MmaElement = std::is_same_v<T, bf16> || std::is_same_v<T, fp16>;

//! A position in a tile: row, column.
struct MmaCoord {
  int row, col;
};

//! Where accumulator element c[i] (i < 4) of lane `lane` sits in the 16 x 8 fp32 tile of an
//! `mma.sync.aligned.m16n8k16` (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"):
//! row lane / 4 (+ 8 for c2, c3), column 2 (lane % 4) + (i % 2).
PARALLAX_HOST_DEVICE constexpr MmaCoord mma_acc(int lane, int i) {
  return {lane / 4 + 8 * (i / 2), 2 * (lane % 4) + i % 2};
}

//! A 16 x 16K product's accumulator tiles (16 x 8 each, K16 * 2 of them) reused as the A operand of the next
//! product, with no data movement: A register r (< 4) of k-step kk packs elements `mma_a_elem(r, 0..1)` of
//! accumulator tile `mma_a_tile(kk, r)`. (A register r holds row lane / 4 (+ 8 for odd r), columns
//! 16 kk + 2 (lane % 4) (+ 8 for r >= 2): exactly where those accumulator elements sit.)
PARALLAX_HOST_DEVICE constexpr int mma_a_tile(int kk, int r) { return 2 * kk + r / 2; }
PARALLAX_HOST_DEVICE constexpr int mma_a_elem(int r, int half) { return 2 * (r % 2) + half; }

//! Element offset of the row lane `lane` hands to an `ldmatrix.x4` of the 16 x 16 block at (row0, col0) of a
//! row-major tile with row stride `stride`, reading the four 8 x 8 matrices (row0, col0), (row0 + 8, col0),
//! (row0, col0 + 8), (row0 + 8, col0 + 8) into registers 0..3. Plain, that is the A operand of an m16n8k16;
//! with `.trans` from a [k][n] operand (k = row), registers 0, 1 and 2, 3 are the B operands of n-tiles col0 and
//! col0 + 8.
PARALLAX_HOST_DEVICE constexpr int ldmatrix_offset(int lane, int row0, int col0, int stride) {
  return (row0 + lane % 16) * stride + col0 + 8 * (lane / 16);
}

//! Element offset of the row lane `lane` hands to a plain `ldmatrix.x4` of the 16 x 16 block at (row0, col0)
//! of a row-major [n][k] operand (n = row): the matrices (row0, col0), (row0, col0 + 8), (row0 + 8, col0),
//! (row0 + 8, col0 + 8), so that registers 0, 1 and 2, 3 are the B operands (B = the operand transposed) of
//! n-tiles row0 and row0 + 8.
PARALLAX_HOST_DEVICE constexpr int ldmatrix_nt_offset(int lane, int row0, int col0, int stride) {
  return (row0 + lane % 8 + 8 * (lane / 16)) * stride + col0 + 8 * (lane / 8 % 2);
}

}  // namespace parallax::cuda::detail
