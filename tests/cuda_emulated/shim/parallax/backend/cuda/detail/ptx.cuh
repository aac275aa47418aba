// tests/cuda_emulated/shim/parallax/backend/cuda/detail/ptx.cuh — the SIMT emulator's stand-in for the backend's
// inline-PTX primitives (include/parallax/backend/cuda/detail/ptx.cuh): the same functions, each carrying out its
// instruction as the PTX ISA documents it, so the tensor-core kernels built on them run on the CPU.
//
// cp.async copies land when a wait retires their group (not at issue), so a kernel reading a tile before waiting
// reads stale bytes here too. ldmatrix and mma.sync are warp-collective: every lane offers its address or fragments
// and reads the others'. mma.sync adds the 16 products of each output in k order in fp32 (the tensor cores' order
// and internal precision differ: results agree to rounding). ex2.approx is exact here.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include <parallax/backend/cuda/detail/mma_layout.hpp>

#include "../../../../../simt.hpp"

namespace parallax::cuda::detail {

//! cp.async.cg.shared.global of 16 bytes, zeros when `valid` is false.
inline void cp_async_16(void* dst, const void* src, bool valid) { simt::async_copy(dst, valid ? src : nullptr, 16); }

//! cp.async.ca.shared.global of 4 bytes, zeros when `valid` is false.
inline void cp_async_4(void* dst, const void* src, bool valid) { simt::async_copy(dst, valid ? src : nullptr, 4); }

//! cp.async.commit_group.
inline void cp_async_commit() { simt::async_commit(); }

//! cp.async.wait_group Pending.
template <int Pending>
void cp_async_wait() {
  simt::async_wait(Pending);
}

namespace simt_ptx {

//! The 16-bit element at `p` + i (elements) as the low or high half of a register.
inline std::uint32_t half_at(const void* p, int i) {
  std::uint16_t h;
  std::memcpy(&h, static_cast<const unsigned char*>(p) + 2 * i, 2);
  return h;
}

//! Element `half` (0: low, 1: high) of a register packing two T.
template <class T>
float element(std::uint32_t reg, int half) {
  return float(T::from_bits(static_cast<std::uint16_t>(half != 0 ? reg >> 16 : reg & 0xffffu)));
}

}  // namespace simt_ptx

//! ldmatrix.sync.aligned.m8n8.x4.shared.b16: lane l hands the address of row l % 8 of matrix l / 8; register j
//! receives row lane / 4, columns 2 (lane % 4) and + 1 of matrix j.
inline void ldmatrix_x4(std::uint32_t (&r)[4], const void* row) {
  const auto rows = simt::warp_exchange(row, "ldmatrix.x4");
  const int lane = simt::lane_id();
  for (int j = 0; j < 4; ++j) {
    const void* p = rows[static_cast<std::size_t>(8 * j + lane / 4)];
    r[j] = simt_ptx::half_at(p, 2 * (lane % 4)) | simt_ptx::half_at(p, 2 * (lane % 4) + 1) << 16;
  }
}

//! ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16: register j receives rows 2 (lane % 4) and + 1, column lane / 4.
inline void ldmatrix_x4_trans(std::uint32_t (&r)[4], const void* row) {
  const auto rows = simt::warp_exchange(row, "ldmatrix.x4.trans");
  const int lane = simt::lane_id();
  for (int j = 0; j < 4; ++j) {
    const void* lo = rows[static_cast<std::size_t>(8 * j + 2 * (lane % 4))];
    const void* hi = rows[static_cast<std::size_t>(8 * j + 2 * (lane % 4) + 1)];
    r[j] = simt_ptx::half_at(lo, lane / 4) | simt_ptx::half_at(hi, lane / 4) << 16;
  }
}

//! mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}: d[16 x 8] += a[16 x 16] b[16 x 8], fragments in the PTX ISA's
//! layouts (A register r of lane L: row L / 4 (+ 8 for odd r), columns 2 (L % 4) (+ 8 for r >= 2) and + 1; B register
//! j: rows 2 (L % 4) + 8 j and + 1, column L / 4; d[i]: `mma_acc(L, i)`).
template <MmaElement T>
void mma_16816(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
  struct Fragments {
    std::uint32_t a[4], b[2];
  };
  const auto all = simt::warp_exchange(Fragments{{a[0], a[1], a[2], a[3]}, {b0, b1}}, "mma.sync.m16n8k16");
  const auto a_at = [&](int row, int k) {
    const auto& f = all[static_cast<std::size_t>(row % 8 * 4 + k % 8 / 2)];
    return simt_ptx::element<T>(f.a[row / 8 + 2 * (k / 8)], k % 2);
  };
  const auto b_at = [&](int k, int col) {
    const auto& f = all[static_cast<std::size_t>(col * 4 + k % 8 / 2)];
    return simt_ptx::element<T>(f.b[k / 8], k % 2);
  };
  const int lane = simt::lane_id();
  for (int i = 0; i < 4; ++i) {
    const MmaCoord c = mma_acc(lane, i);
    float acc = d[i];
    for (int k = 0; k < 16; ++k) acc += a_at(c.row, k) * b_at(k, c.col);
    d[i] = acc;
  }
}

//! cvt.rn.{bf16,f16}x2.f32: two floats rounded to nearest-even T and packed, `lo` in the low half.
template <MmaElement T>
std::uint32_t pack2(float lo, float hi) {
  return std::uint32_t{T(lo).bits} | std::uint32_t{T(hi).bits} << 16;
}

//! ex2.approx.ftz.f32 (exact here).
inline float exp2_approx(float x) { return std::exp2(x); }

}  // namespace parallax::cuda::detail
