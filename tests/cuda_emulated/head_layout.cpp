// The CUDA head-layout kernel (detail/head_layout_kernels.cuh), run by the SIMT emulator with the launcher's
// geometry (cuda::detail::copy_layout), against host::Attention's layout copies: split_qkv / merge_qkv (three
// sections) and split_heads / merge_heads (one), in both directions, in both units the launcher picks (16-byte
// chunks where every row of Dh elements is whole aligned chunks, one to five chunks a row; single elements
// otherwise), with the 32-bit offsets it takes for these sizes and, on the same data, the 64-bit instantiation it
// takes for larger ones. One copy moves more units than the grid has threads (the grid-stride loop wraps).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <parallax/backend/cuda/detail/elementwise_kernels.cuh>
#include <parallax/backend/cuda/detail/head_layout_kernels.cuh>
#include <parallax/backend/host/attention.hpp>
#include <parallax/core/bf16.hpp>

#include "support.hpp"

namespace {

namespace px = parallax;
namespace cd = parallax::cuda::detail;
namespace simt = parallax::simt;
using px::Shape;
using px::test::bit_differences;
using px::test::cview;
using px::test::emulated::Buffer;
using px::test::emulated::sm_count;
using px::test::values;
using px::test::view;
using i64 = std::int64_t;

//! One layout copy as cuda::detail::copy_layout queues it, with offsets of type Index: the unit is a 16-byte chunk
//! when every row of Dh elements is whole chunks and every operand is 16-byte aligned, else one element.
//! Returns whether it copied chunks.
template <bool ToHeads, class Index, class T>
bool copy_layout(T* packed, T* q, T* k, T* v, cd::HeadDims d, i64 packed_elements) {
  const auto aligned = [](const T* p) { return p == nullptr || reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
  const bool chunks = (d.dh * static_cast<i64>(sizeof(T))) % 16 == 0 && aligned(packed) && aligned(q) &&
                      aligned(k) && aligned(v);
  const auto run = [&]<class Unit>(std::type_identity<Unit>) {
    const i64 units = d.dh * static_cast<i64>(sizeof(T)) / static_cast<i64>(sizeof(Unit));
    const i64 total = packed_elements / d.dh * units;
    simt::launch("head_layout", cd::head_layout_kernel<ToHeads, Unit, Index>,
                 dim3(cd::elementwise_blocks(total, sm_count)), dim3(cd::elementwise_threads), 0,
                 reinterpret_cast<Unit*>(packed), reinterpret_cast<Unit*>(q), reinterpret_cast<Unit*>(k),
                 reinterpret_cast<Unit*>(v), d, static_cast<Index>(units), static_cast<Index>(total));
  };
  if (chunks)
    run(std::type_identity<uint4>{});
  else
    run(std::type_identity<T>{});
  return chunks;
}

//! split_qkv then merge_qkv of a [T, B, 3 * H * Dh] projection, against the host's.
template <class T, class Index>
void check_qkv(i64 nb, i64 nh, i64 nt, i64 dh, bool want_chunks) {
  INFO("B " << nb << ", H " << nh << ", T " << nt << ", Dh " << dh << ", " << sizeof(Index) * 8 << "-bit offsets");
  const Shape heads{nb, nh, nt, dh}, packed{nt, nb, 3 * nh * dh};
  const auto qkv = values<T>(packed.numel(), 1);
  const px::host::Context ctx;
  std::vector<T> q(static_cast<std::size_t>(heads.numel())), k(q.size()), v(q.size());
  px::host::Attention::split_qkv<T>(ctx, cview(qkv, packed), view(q, heads), view(k, heads), view(v, heads));
  const cd::HeadDims d{nb, nh, nt, dh, 3};

  Buffer<T> bqkv(qkv), bq = Buffer<T>::output(q.size()), bk = Buffer<T>::output(q.size());
  Buffer<T> bv = Buffer<T>::output(q.size());
  CHECK(copy_layout<true, Index>(bqkv.data(), bq.data(), bk.data(), bv.data(), d, packed.numel()) == want_chunks);
  CHECK(bit_differences(bq.values(), q) == 0);
  CHECK(bit_differences(bk.values(), k) == 0);
  CHECK(bit_differences(bv.values(), v) == 0);
  CHECK((bq.guards_intact() && bk.guards_intact() && bv.guards_intact()));

  // merge_qkv of other values, so the result is not the split's input by accident.
  const auto dq = values<T>(heads.numel(), 2), dk = values<T>(heads.numel(), 3), dv = values<T>(heads.numel(), 4);
  std::vector<T> dqkv(qkv.size());
  px::host::Attention::merge_qkv<T>(ctx, cview(dq, heads), cview(dk, heads), cview(dv, heads), view(dqkv, packed));
  Buffer<T> bdq(dq), bdk(dk), bdv(dv), bdqkv = Buffer<T>::output(dqkv.size());
  CHECK(copy_layout<false, Index>(bdqkv.data(), bdq.data(), bdk.data(), bdv.data(), d, packed.numel()) ==
        want_chunks);
  CHECK(bit_differences(bdqkv.values(), dqkv) == 0);
  CHECK(bdqkv.guards_intact());
}

//! merge_heads then split_heads between [B, H, T, Dh] and [T, B, H * Dh], against the host's.
template <class T, class Index>
void check_heads(i64 nb, i64 nh, i64 nt, i64 dh, bool want_chunks) {
  INFO("B " << nb << ", H " << nh << ", T " << nt << ", Dh " << dh << ", " << sizeof(Index) * 8 << "-bit offsets");
  const Shape heads{nb, nh, nt, dh}, packed{nt, nb, nh * dh};
  const auto o = values<T>(heads.numel(), 5);
  const px::host::Context ctx;
  std::vector<T> out(o.size());
  px::host::Attention::merge_heads<T>(ctx, cview(o, heads), view(out, packed));
  const cd::HeadDims d{nb, nh, nt, dh, 1};

  Buffer<T> bo(o), bout = Buffer<T>::output(out.size());
  CHECK(copy_layout<false, Index>(bout.data(), bo.data(), static_cast<T*>(nullptr), static_cast<T*>(nullptr), d,
                                  packed.numel()) == want_chunks);
  CHECK(bit_differences(bout.values(), out) == 0);
  CHECK(bout.guards_intact());

  const auto dout = values<T>(packed.numel(), 6);
  std::vector<T> d_o(dout.size());
  px::host::Attention::split_heads<T>(ctx, cview(dout, packed), view(d_o, heads));
  Buffer<T> bdout(dout), bd_o = Buffer<T>::output(d_o.size());
  CHECK(copy_layout<true, Index>(bdout.data(), bd_o.data(), static_cast<T*>(nullptr), static_cast<T*>(nullptr), d,
                                 packed.numel()) == want_chunks);
  CHECK(bit_differences(bd_o.values(), d_o) == 0);
  CHECK(bd_o.guards_intact());
}

//! Head dims of one and several 16-byte chunks, and of single elements, for T.
template <class T>
std::vector<std::pair<i64, bool>> head_dims() {
  constexpr i64 per_chunk = 16 / static_cast<i64>(sizeof(T));
  return {{per_chunk, true}, {5 * per_chunk, true}, {per_chunk + 1, false}, {3, false}};
}

}  // namespace

TEMPLATE_TEST_CASE("emulated CUDA split_qkv / merge_qkv equal host::Attention's", "[simt][head_layout]", float,
                   px::bf16) {
  for (const auto& [dh, chunks] : head_dims<TestType>()) {
    check_qkv<TestType, std::uint32_t>(2, 3, 5, dh, chunks);
    check_qkv<TestType, std::uint64_t>(2, 3, 5, dh, chunks);
  }
  // 3 * 4 * 70 * 3 * 5 = 12600 elements: more than the grid's 32 blocks of 256 threads.
  check_qkv<TestType, std::uint32_t>(3, 4, 70, 5, false);
}

TEMPLATE_TEST_CASE("emulated CUDA merge_heads / split_heads equal host::Attention's", "[simt][head_layout]", float,
                   px::bf16) {
  for (const auto& [dh, chunks] : head_dims<TestType>()) {
    check_heads<TestType, std::uint32_t>(2, 3, 5, dh, chunks);
    check_heads<TestType, std::uint64_t>(2, 3, 5, dh, chunks);
  }
}
