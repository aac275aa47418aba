// parallax/backend/cuda/detail/flash_tiling.hpp — the tiles of the tensor-core flash-attention kernels and their
// causal bounds: which blocks a grid index names, which steps a block takes, which a warp skips or masks (host and
// device, so that host tests check the same bounds the kernels use).
#pragma once

#include <cstdint>

#include "../../../config.hpp"
#include "mma_layout.hpp"

namespace parallax::cuda::detail {

//! The tiling of one flash-attention kernel over head dimension `dh`: a block of `warps` warps owns `rows()` rows
//! of its own operand (16 a warp: one m16 tile of the MMA) and streams `cols` rows of the other operand through
//! shared memory a step at a time. `min_blocks` is the kernel's `__launch_bounds__` occupancy: blocks a
//! multiprocessor must hold at once, which caps the registers a thread gets (set where that costs no spills).
struct FlashTiling {
  int warps, cols, dh, min_blocks;

  [[nodiscard]] PARALLAX_HOST_DEVICE constexpr int threads() const { return 32 * warps; }
  [[nodiscard]] PARALLAX_HOST_DEVICE constexpr int rows() const { return 16 * warps; }
  //! Row stride of a shared-memory tile in (2-byte) elements: 16 bytes of padding a row, so that the eight
  //! 16-byte rows of an ldmatrix phase start in distinct groups of four banks.
  [[nodiscard]] PARALLAX_HOST_DEVICE constexpr int stride() const { return dh + 8; }
  //! Bytes of one shared-memory tile of n rows.
  [[nodiscard]] PARALLAX_HOST_DEVICE constexpr int tile_bytes(int n) const { return n * stride() * 2; }
};

//! Forward: a block takes 128 query rows, keys stream 64 at a time (double-buffered with the values).
template <int Dh>
inline constexpr FlashTiling flash_forward_tiling{8, 64, Dh, Dh <= 64 ? 2 : 1};
//! dq: a block takes 64 query rows (with their dout), keys and values stream 64 at a time.
template <int Dh>
inline constexpr FlashTiling flash_dq_tiling{4, 64, Dh, Dh <= 64 ? 3 : 1};
//! dk, dv: a block takes 64 key rows (with their values), queries and dout stream 64 (Dh 128: 32) at a time, so
//! that both fp32 gradient accumulators and the two score tiles fit a thread's registers.
template <int Dh>
inline constexpr FlashTiling flash_dkdv_tiling{4, Dh <= 64 ? 64 : 32, Dh, Dh <= 64 ? 3 : 1};

//! Shared memory of the forward: the query tile and two stages of key and value tiles.
template <int Dh>
inline constexpr int flash_forward_smem = flash_forward_tiling<Dh>.tile_bytes(flash_forward_tiling<Dh>.rows() +
                                                                              4 * flash_forward_tiling<Dh>.cols);
//! Shared memory of the dq kernel: the query and dout tiles and two stages of key and value tiles.
template <int Dh>
inline constexpr int flash_dq_smem = flash_dq_tiling<Dh>.tile_bytes(2 * flash_dq_tiling<Dh>.rows() +
                                                                    4 * flash_dq_tiling<Dh>.cols);
//! Shared memory of the dk, dv kernel: the key and value tiles and two stages of query, dout, lse and D chunks.
template <int Dh>
inline constexpr int flash_dkdv_smem = flash_dkdv_tiling<Dh>.tile_bytes(2 * flash_dkdv_tiling<Dh>.rows() +
                                                                        4 * flash_dkdv_tiling<Dh>.cols) +
                                       4 * flash_dkdv_tiling<Dh>.cols * static_cast<int>(sizeof(float));

//! The most dynamic shared memory a block may opt into on sm_80 (sm_90 allows more).
inline constexpr int flash_max_smem = 163 * 1024;
static_assert(flash_forward_smem<128> <= flash_max_smem && flash_dq_smem<128> <= flash_max_smem &&
                  flash_dkdv_smem<128> <= flash_max_smem,
              "flash attention: a tile configuration exceeds sm_80's shared memory");

//! The block of grid index `index` over `heads` (B * H) heads of `tiles` row tiles each: heads vary fastest, so that
//! the blocks of one tile index start together; `heavy_last` reverses the tile order, so that the blocks with the
//! most causal work (the last query tiles, or the first key tiles without it) start first and the tail is short.
struct FlashBlock {
  std::int64_t head, tile;
};
[[nodiscard]] PARALLAX_HOST_DEVICE constexpr FlashBlock flash_block(std::int64_t index, std::int64_t heads,
                                                                    std::int64_t tiles, bool heavy_last) {
  const std::int64_t t = index / heads;
  return {index % heads, heavy_last ? tiles - 1 - t : t};
}

//! Row tiles of `rows` rows over a sequence of `nt`.
[[nodiscard]] PARALLAX_HOST_DEVICE constexpr std::int64_t flash_tiles(std::int64_t nt, int rows) {
  return (nt + rows - 1) / rows;
}

//! Key steps of `cols` keys of the query tile [q0, q0 + rows): keys 0 .. min(q0 + rows, nt) - 1 (causal).
[[nodiscard]] PARALLAX_HOST_DEVICE constexpr std::int64_t flash_key_steps(std::int64_t q0, int rows, int cols,
                                                                          std::int64_t nt) {
  const std::int64_t end = q0 + rows < nt ? q0 + rows : nt;
  return (end + cols - 1) / cols;
}

//! The first query chunk of `cols` queries a key tile from k0 needs (earlier queries see none of its keys).
[[nodiscard]] PARALLAX_HOST_DEVICE constexpr std::int64_t flash_first_query(std::int64_t k0, int cols) {
  return k0 / cols * cols;
}

//! Query chunks of `cols` queries of the key tile from k0: from `flash_first_query` to the end of the sequence.
[[nodiscard]] PARALLAX_HOST_DEVICE constexpr std::int64_t flash_query_steps(std::int64_t k0, int cols,
                                                                            std::int64_t nt) {
  return (nt - flash_first_query(k0, cols) + cols - 1) / cols;
}

//! Whether query t sees key j of a sequence of nt: causal (j <= t) and j a real key.
[[nodiscard]] PARALLAX_HOST_DEVICE constexpr bool flash_visible(std::int64_t t, std::int64_t j, std::int64_t nt) {
  return j <= t && j < nt;
}

//! A rectangle of the causal score matrix: queries [t0, t0 + nq) by keys [k0, k0 + nk).
struct ScoreBlock {
  std::int64_t t0, nq, k0, nk;

  //! Some query sees some key: the warp computes this block (else it skips it).
  [[nodiscard]] PARALLAX_HOST_DEVICE constexpr bool any_visible() const { return k0 <= t0 + nq - 1; }
  //! Every query is real and sees every key: no per-element mask needed.
  [[nodiscard]] PARALLAX_HOST_DEVICE constexpr bool all_visible(std::int64_t nt) const {
    return k0 + nk - 1 <= t0 && t0 + nq <= nt;
  }
};

//! Whether element i (< 4) of n-tile n of lane `lane`'s m16n8 accumulators over the score block `b` counts: rows
//! are b's queries and columns its keys, or (`KeysByRow`, the S^T of the dk, dv kernel) rows are keys and columns
//! queries. By rows a query past the end may see keys (its row is computed, never stored: keeping a real key in
//! every row keeps the online softmax finite); by columns queries past the end count for nothing.
template <bool KeysByRow>
[[nodiscard]] PARALLAX_HOST_DEVICE constexpr bool flash_element_visible(const ScoreBlock& b, int lane, int n, int i,
                                                                        std::int64_t nt) {
  const MmaCoord c = mma_acc(lane, i);
  if constexpr (KeysByRow) {
    const std::int64_t t = b.t0 + 8 * n + c.col;
    return t < nt && flash_visible(t, b.k0 + c.row, nt);
  } else {
    return flash_visible(b.t0 + c.row, b.k0 + 8 * n + c.col, nt);
  }
}

}  // namespace parallax::cuda::detail
