// Tests of the index math of the CUDA backend's tensor-core attention kernels (parallax/backend/cuda/detail/
// {mma_layout,flash_tiling}.hpp), on the host, so that they run without a GPU:
// - a warp emulated from the PTX ISA's definitions of ldmatrix and mma.sync m16n8k16 runs the kernels' fragment
//   addressing (the same loops as warp_mma_nt / warp_mma_pb in detail/mma.cuh) and must give plain matrix products;
// - the padded shared-memory rows keep every ldmatrix phase free of bank conflicts and cp.async aligned;
// - the causal tiling of the three kernels (blocks, steps, warp skips, masks, accumulator coordinates) counts every
//   (query, key) pair with key <= query exactly once and no other pair.

#include <parallax/backend/cuda/detail/flash_tiling.hpp>
#include <parallax/backend/cuda/detail/mma_layout.hpp>

#include <catch2/catch.hpp>

#include <array>
#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace cd = parallax::cuda::detail;
using cd::FlashTiling;
using cd::MmaCoord;
using i64 = std::int64_t;

// ---- the hardware, from the PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point type", ldmatrix) ----

// Element a_i (i < 8) of A [16 x 16]: registers hold (a0, a1), (a2, a3), (a4, a5), (a6, a7), low half first.
MmaCoord ptx_a(int lane, int i) {
  const int group = lane >> 2, tig = lane % 4;
  const bool low_rows = i < 2 || (i >= 4 && i < 6);
  return {low_rows ? group : group + 8, tig * 2 + (i & 1) + (i >= 4 ? 8 : 0)};
}
// Element b_i (i < 4) of B [16 x 8] (row = k).
MmaCoord ptx_b(int lane, int i) {
  const int group = lane >> 2, tig = lane % 4;
  return {tig * 2 + (i & 1) + (i >= 2 ? 8 : 0), group};
}
// Element c_i (i < 4) of C [16 x 8].
MmaCoord ptx_c(int lane, int i) {
  const int group = lane >> 2, tig = lane % 4;
  return {i < 2 ? group : group + 8, tig * 2 + (i & 1)};
}

// A 32-bit register of two 16-bit elements, kept as floats (the tests use small integers: every sum is exact).
struct Reg {
  float lo = 0, hi = 0;
};
using Warp4 = std::array<std::array<Reg, 4>, 32>;  // 4 registers a lane
using Acc = std::array<std::array<float, 4>, 32>;  // one m16n8 accumulator tile: 4 floats a lane

// ldmatrix.x4 from `smem`: lane l hands the element offset offset(l) of row l % 8 of matrix l / 8. Plain, lane l
// receives row l / 4, columns 2 (l % 4) and + 1 of matrix j in register j; `.trans`, rows 2 (l % 4) and + 1 of
// column l / 4.
template <class Offset>
Warp4 ldmatrix_x4(const std::vector<float>& smem, Offset offset, bool trans) {
  std::array<int, 32> row{};
  for (int l = 0; l < 32; ++l) row[static_cast<std::size_t>(l)] = offset(l);
  auto at = [&](int lane_of_row, int col) { return smem.at(static_cast<std::size_t>(row[lane_of_row] + col)); };
  Warp4 r{};
  for (int l = 0; l < 32; ++l)
    for (int j = 0; j < 4; ++j) {
      Reg& x = r[static_cast<std::size_t>(l)][static_cast<std::size_t>(j)];
      if (!trans) {
        x = {at(8 * j + l / 4, 2 * (l % 4)), at(8 * j + l / 4, 2 * (l % 4) + 1)};
      } else {
        x = {at(8 * j + 2 * (l % 4), l / 4), at(8 * j + 2 * (l % 4) + 1, l / 4)};
      }
    }
  return r;
}

// mma.sync m16n8k16: d += a b, with b the lanes' registers b0 = regs[j0], b1 = regs[j0 + 1] of `b`.
void mma(Acc& d, const Warp4& a, const Warp4& b, int j0) {
  float am[16][16] = {}, bm[16][8] = {};
  for (int l = 0; l < 32; ++l) {
    for (int i = 0; i < 8; ++i) {
      const Reg& x = a[static_cast<std::size_t>(l)][static_cast<std::size_t>(i / 2)];
      const MmaCoord c = ptx_a(l, i);
      am[c.row][c.col] = i % 2 == 0 ? x.lo : x.hi;
    }
    for (int i = 0; i < 4; ++i) {
      const Reg& x = b[static_cast<std::size_t>(l)][static_cast<std::size_t>(j0 + i / 2)];
      const MmaCoord c = ptx_b(l, i);
      bm[c.row][c.col] = i % 2 == 0 ? x.lo : x.hi;
    }
  }
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 4; ++i) {
      const MmaCoord c = ptx_c(l, i);
      float s = 0;
      for (int k = 0; k < 16; ++k) s += am[c.row][k] * bm[k][c.col];
      d[static_cast<std::size_t>(l)][static_cast<std::size_t>(i)] += s;
    }
}

// ---- data ------------------------------------------------------------------------------------------------------

// Small integers in [-3, 3] from a fixed LCG: products and their sums are exact in float.
std::vector<float> ints(std::size_t n, std::uint32_t seed) {
  std::vector<float> v(n);
  for (auto& x : v) {
    seed = seed * 1664525u + 1013904223u;
    x = static_cast<float>(static_cast<int>(seed >> 29) - 3);
  }
  return v;
}

// A rows x cols row-major matrix stored with row stride `stride` (the padding filled with a poison value).
std::vector<float> padded(const std::vector<float>& m, int rows, int cols, int stride) {
  std::vector<float> s(static_cast<std::size_t>(rows * stride), 1e9f);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c)
      s[static_cast<std::size_t>(r * stride + c)] = m[static_cast<std::size_t>(r * cols + c)];
  return s;
}

// The 16 x (8 n8) matrix held by a warp's accumulator tiles, read through the kernels' `mma_acc`.
std::vector<float> gather(const std::vector<Acc>& acc) {
  const int n8 = static_cast<int>(acc.size());
  std::vector<float> m(static_cast<std::size_t>(16 * 8 * n8), -1e9f);
  for (int n = 0; n < n8; ++n)
    for (int l = 0; l < 32; ++l)
      for (int i = 0; i < 4; ++i) {
        const MmaCoord c = cd::mma_acc(l, i);
        m[static_cast<std::size_t>(c.row * 8 * n8 + 8 * n + c.col)] =
            acc[static_cast<std::size_t>(n)][static_cast<std::size_t>(l)][static_cast<std::size_t>(i)];
      }
  return m;
}

// acc = A [16 x 16 k16] B [8 n8 x 16 k16]^T the way warp_mma_nt forms it, A and B padded to `stride`.
std::vector<Acc> warp_mma_nt(const std::vector<float>& a, const std::vector<float>& b, int k16, int n8, int stride) {
  std::vector<Acc> acc(static_cast<std::size_t>(n8), Acc{});
  for (int kk = 0; kk < k16; ++kk) {
    const Warp4 af = ldmatrix_x4(
        a, [&](int l) { return cd::ldmatrix_offset(l, 0, 16 * kk, stride); }, false);
    for (int np = 0; np < n8 / 2; ++np) {
      const Warp4 bf = ldmatrix_x4(
          b, [&](int l) { return cd::ldmatrix_nt_offset(l, 16 * np, 16 * kk, stride); }, false);
      mma(acc[static_cast<std::size_t>(2 * np)], af, bf, 0);
      mma(acc[static_cast<std::size_t>(2 * np + 1)], af, bf, 2);
    }
  }
  return acc;
}

// acc = P [16 x 16 k16] B [16 k16 x 8 n8] the way warp_mma_pb forms it: P as a warp's accumulator tiles, B padded.
std::vector<Acc> warp_mma_pb(const std::vector<Acc>& p, const std::vector<float>& b, int k16, int n8, int stride) {
  std::vector<Acc> acc(static_cast<std::size_t>(n8), Acc{});
  for (int kk = 0; kk < k16; ++kk) {
    Warp4 af{};
    for (int l = 0; l < 32; ++l)
      for (int r = 0; r < 4; ++r) {
        const Acc& tile = p[static_cast<std::size_t>(cd::mma_a_tile(kk, r))];
        const auto& lane = tile[static_cast<std::size_t>(l)];
        af[static_cast<std::size_t>(l)][static_cast<std::size_t>(r)] = {
            lane[static_cast<std::size_t>(cd::mma_a_elem(r, 0))], lane[static_cast<std::size_t>(cd::mma_a_elem(r, 1))]};
      }
    for (int np = 0; np < n8 / 2; ++np) {
      const Warp4 bf = ldmatrix_x4(
          b, [&](int l) { return cd::ldmatrix_offset(l, 16 * kk, 16 * np, stride); }, true);
      mma(acc[static_cast<std::size_t>(2 * np)], af, bf, 0);
      mma(acc[static_cast<std::size_t>(2 * np + 1)], af, bf, 2);
    }
  }
  return acc;
}

// Row-major products, exact for the small integers.
std::vector<float> matmul_nt(const std::vector<float>& a, const std::vector<float>& b, int m, int n, int k) {
  std::vector<float> c(static_cast<std::size_t>(m * n));
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      float s = 0;
      for (int x = 0; x < k; ++x) s += a[static_cast<std::size_t>(i * k + x)] * b[static_cast<std::size_t>(j * k + x)];
      c[static_cast<std::size_t>(i * n + j)] = s;
    }
  return c;
}
std::vector<float> matmul_nn(const std::vector<float>& a, const std::vector<float>& b, int m, int n, int k) {
  std::vector<float> c(static_cast<std::size_t>(m * n));
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      float s = 0;
      for (int x = 0; x < k; ++x) s += a[static_cast<std::size_t>(i * k + x)] * b[static_cast<std::size_t>(x * n + j)];
      c[static_cast<std::size_t>(i * n + j)] = s;
    }
  return c;
}

// ---- causal coverage -------------------------------------------------------------------------------------------

// Counts, for a sequence of nt, how often each (query t, key j) pair (t, j < nt) enters a softmax sum or a gradient
// in the kernel with tiling `tl`: `by_query` for the forward and dq kernels (blocks of query rows, key steps),
// else the dk, dv kernel (blocks of key rows, query chunks). Records a failure for any counted element that reads
// a key or query past the end, and (by_query) for any row whose first step has no visible key (the forward's
// running max would stay -inf there).
struct Coverage {
  std::vector<int> count;
  std::vector<std::string> failures;
};
Coverage cover(const FlashTiling& tl, i64 nt, bool by_query) {
  Coverage cv{std::vector<int>(static_cast<std::size_t>(nt * nt), 0), {}};
  const int rows = tl.rows(), cols = tl.cols;
  const i64 tiles = cd::flash_tiles(nt, rows);
  for (i64 tile = 0; tile < tiles; ++tile) {
    const i64 r00 = tile * rows;
    const i64 steps = by_query ? cd::flash_key_steps(r00, rows, cols, nt) : cd::flash_query_steps(r00, cols, nt);
    const i64 first = by_query ? 0 : cd::flash_first_query(r00, cols);
    for (int w = 0; w < tl.warps; ++w) {
      const i64 r0 = r00 + 16 * w;
      std::vector<bool> seen_row(16, false);
      for (i64 s = 0; s < steps; ++s) {
        const i64 c0 = first + s * cols;
        const cd::ScoreBlock sb = by_query ? cd::ScoreBlock{r0, 16, c0, cols} : cd::ScoreBlock{c0, cols, r0, 16};
        if (!sb.any_visible()) continue;
        const bool full = sb.all_visible(nt);
        for (int l = 0; l < 32; ++l)
          for (int n = 0; n < cols / 8; ++n)
            for (int i = 0; i < 4; ++i) {
              const bool vis = full || (by_query ? cd::flash_element_visible<false>(sb, l, n, i, nt)
                                                 : cd::flash_element_visible<true>(sb, l, n, i, nt));
              if (!vis) continue;
              const MmaCoord c = cd::mma_acc(l, i);
              const i64 row = r0 + c.row, col = c0 + 8 * n + c.col;
              const i64 t = by_query ? row : col, j = by_query ? col : row;
              if (by_query && s == 0) seen_row[static_cast<std::size_t>(c.row)] = true;
              if (j >= nt || (!by_query && t >= nt)) {
                cv.failures.push_back("reads past the end: t " + std::to_string(t) + " j " + std::to_string(j));
                continue;
              }
              if (t < nt) ++cv.count[static_cast<std::size_t>(t * nt + j)];
            }
      }
      if (by_query && steps > 0)
        for (int r = 0; r < 16; ++r)
          if (!seen_row[static_cast<std::size_t>(r)])
            cv.failures.push_back("row " + std::to_string(r0 + r) + " has no key in its first step");
    }
  }
  return cv;
}

// (t, j) pairs whose count is not 1 for j <= t and 0 otherwise: at most a few, for the message.
std::vector<std::pair<i64, i64>> wrong_pairs(const Coverage& cv, i64 nt) {
  std::vector<std::pair<i64, i64>> bad;
  for (i64 t = 0; t < nt && bad.size() < 5; ++t)
    for (i64 j = 0; j < nt && bad.size() < 5; ++j)
      if (cv.count[static_cast<std::size_t>(t * nt + j)] != (j <= t ? 1 : 0)) bad.emplace_back(t, j);
  return bad;
}

template <int Dh>
std::vector<std::pair<const char*, FlashTiling>> tilings() {
  return {
      {"forward", cd::flash_forward_tiling<Dh>}, {"dq", cd::flash_dq_tiling<Dh>}, {"dkdv", cd::flash_dkdv_tiling<Dh>}};
}

}  // namespace

TEST_CASE("mma_acc is the PTX m16n8k16 accumulator layout", "[cuda_layout][mma]") {
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 4; ++i) {
      INFO("lane " << l << " c" << i);
      CHECK(cd::mma_acc(l, i).row == ptx_c(l, i).row);
      CHECK(cd::mma_acc(l, i).col == ptx_c(l, i).col);
    }
}

TEST_CASE("an emulated warp forms A B^T with the kernels' ldmatrix addressing", "[cuda_layout][mma]") {
  for (auto [k16, n8] : {std::pair{4, 8}, std::pair{8, 8}, std::pair{4, 4}, std::pair{8, 2}}) {
    INFO("K " << 16 * k16 << " N " << 8 * n8);
    const int k = 16 * k16, n = 8 * n8, stride = k + 8;
    const auto a = ints(static_cast<std::size_t>(16 * k), 1), b = ints(static_cast<std::size_t>(n * k), 2);
    const auto got = gather(warp_mma_nt(padded(a, 16, k, stride), padded(b, n, k, stride), k16, n8, stride));
    CHECK(got == matmul_nt(a, b, 16, n, k));
  }
}

TEST_CASE("an emulated warp forms P B from its accumulators with the kernels' ldmatrix.trans addressing",
          "[cuda_layout][mma]") {
  for (auto [k16, n8] : {std::pair{4, 8}, std::pair{4, 16}, std::pair{2, 16}, std::pair{2, 8}}) {
    INFO("K " << 16 * k16 << " N " << 8 * n8);
    const int k = 16 * k16, n = 8 * n8, stride = n + 8;
    const auto p = ints(static_cast<std::size_t>(16 * k), 3), b = ints(static_cast<std::size_t>(k * n), 4);
    // P as the accumulator tiles of a previous product: P = I [16 x 16] P through the same mma, so the layout is
    // the hardware's, not the kernels' reading of it.
    std::vector<float> eye(16 * 16, 0.f);
    for (int r = 0; r < 16; ++r) eye[static_cast<std::size_t>(r * 16 + r)] = 1.f;
    std::vector<float> pt(static_cast<std::size_t>(k * 16));  // P^T, the B^T operand of I P
    for (int r = 0; r < 16; ++r)
      for (int c = 0; c < k; ++c) pt[static_cast<std::size_t>(c * 16 + r)] = p[static_cast<std::size_t>(r * k + c)];
    const auto p_acc = warp_mma_nt(padded(eye, 16, 16, 24), padded(pt, k, 16, 24), 1, 2 * k16, 24);
    REQUIRE(gather(p_acc) == p);
    const auto got = gather(warp_mma_pb(p_acc, padded(b, k, n, stride), k16, n8, stride));
    CHECK(got == matmul_nn(p, b, 16, n, k));
  }
}

TEST_CASE("padded shared-memory rows keep ldmatrix free of bank conflicts and cp.async aligned", "[cuda_layout][mma]") {
  for (const FlashTiling& tl : {cd::flash_forward_tiling<64>, cd::flash_forward_tiling<128>, cd::flash_dq_tiling<64>,
                                cd::flash_dkdv_tiling<64>, cd::flash_dkdv_tiling<128>}) {
    const int stride = tl.stride();
    INFO("Dh " << tl.dh << " stride " << stride);
    CHECK(stride * 2 % 16 == 0);
    CHECK(tl.tile_bytes(1) % 16 == 0);
    // Each ldmatrix phase reads 8 rows of 16 bytes (one 8 x 8 matrix: lanes 8j .. 8j + 7): their 16-byte bank
    // groups ((byte address / 16) % 8) must all differ, for every k-step and n-pair the kernels use.
    for (int row0 = 0; row0 < tl.rows(); row0 += 16)
      for (int col0 = 0; col0 < tl.dh; col0 += 16)
        for (bool nt : {false, true})
          for (int j = 0; j < 4; ++j) {
            std::set<int> groups;
            for (int l = 8 * j; l < 8 * j + 8; ++l) {
              const int off =
                  nt ? cd::ldmatrix_nt_offset(l, row0, col0, stride) : cd::ldmatrix_offset(l, row0, col0, stride);
              CHECK(off * 2 % 16 == 0);
              groups.insert(off * 2 / 16 % 8);
            }
            CHECK(groups.size() == 8);
          }
  }
}

TEST_CASE("flash_block names every (head, tile) block once", "[cuda_layout][tiling]") {
  for (bool heavy_last : {false, true})
    for (auto [heads, tiles] : {std::pair{i64{1}, i64{1}}, std::pair{i64{3}, i64{7}}, std::pair{i64{6}, i64{1}}}) {
      std::set<std::pair<i64, i64>> seen;
      for (i64 i = 0; i < heads * tiles; ++i) {
        const cd::FlashBlock b = cd::flash_block(i, heads, tiles, heavy_last);
        CHECK(b.head >= 0);
        CHECK(b.head < heads);
        CHECK(b.tile >= 0);
        CHECK(b.tile < tiles);
        seen.emplace(b.head, b.tile);
      }
      CHECK(static_cast<i64>(seen.size()) == heads * tiles);
      CHECK(cd::flash_block(0, heads, tiles, heavy_last).tile == (heavy_last ? tiles - 1 : 0));
    }
}

TEST_CASE("the causal tiling counts every visible (query, key) pair once and nothing else", "[cuda_layout][tiling]") {
  std::vector<i64> lengths;
  for (i64 nt = 1; nt <= 160; ++nt) lengths.push_back(nt);
  for (i64 nt : {200, 255, 256, 257, 1024}) lengths.push_back(nt);
  auto run = [&](const std::vector<std::pair<const char*, FlashTiling>>& ts) {
    for (const auto& [name, tl] : ts)
      for (i64 nt : lengths) {
        INFO(name << " Dh " << tl.dh << " T " << nt);
        const Coverage cv = cover(tl, nt, std::string(name) != "dkdv");
        INFO((cv.failures.empty() ? std::string("no failures") : cv.failures.front()));
        CHECK(cv.failures.empty());
        const auto bad = wrong_pairs(cv, nt);
        INFO((bad.empty() ? std::string("no wrong pairs")
                          : "first wrong pair: t " + std::to_string(bad.front().first) + " j " +
                                std::to_string(bad.front().second)));
        CHECK(bad.empty());
      }
  };
  run(tilings<64>());
  run(tilings<128>());
}
