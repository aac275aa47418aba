// The CUDA embedding kernels (detail/embedding_kernels.cuh), run by the SIMT emulator with the launchers' geometry,
// against host::Embedding: the forward (whole table and a vocabulary shard), the backward's sort keys and its
// accumulation over the sorted runs (into a gradient of the table's type or fp32; the sort between them is CUB's,
// done here on the host), and the position ids. Widths below, at and above a warp's 32 lanes and above the
// backward's 128 threads, ids counts that leave a forward block's warps idle, grid-stride loops that wrap. Ids
// outside the vocabulary are reported through the KernelStatus: the smallest bad position.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include <parallax/backend/cuda/detail/elementwise_kernels.cuh>
#include <parallax/backend/cuda/detail/embedding_kernels.cuh>
#include <parallax/backend/host/embedding.hpp>
#include <parallax/core/bf16.hpp>

#include "support.hpp"

namespace {

namespace px = parallax;
namespace cd = parallax::cuda::detail;
namespace simt = parallax::simt;
using px::host::Embedding;
using px::test::bit_differences;
using px::test::cview;
using px::test::emulated::Buffer;
using px::test::emulated::fresh_status;
using px::test::emulated::sm_count;
using px::test::values;
using px::test::view;
using i64 = std::int64_t;

//! The status as cuda::detail::reset_status leaves it: no bad index, a count of 0.
//! n ids in [0, vocab), with repeats.
std::vector<std::int32_t> ids(i64 n, i64 vocab) {
  std::vector<std::int32_t> out(static_cast<std::size_t>(n));
  for (i64 i = 0; i < n; ++i) out[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((i * 7919 + 5) % vocab);
  return out;
}

//! The forward on the rows [vb, vb + v) of a vocabulary of vocab_size rows.
template <class T>
void check_forward(i64 n, i64 v, i64 d, i64 vb, i64 vocab_size) {
  INFO("n " << n << ", table [" << v << ", " << d << "] from row " << vb << " of " << vocab_size);
  const auto x = ids(n, vocab_size);
  const auto table = values<T>(v * d, 1);
  const px::host::Context ctx;
  std::vector<T> out(static_cast<std::size_t>(n * d));
  Embedding::embedding_forward<T>(ctx, cview(x, {n}), cview(table, {v, d}), view(out, {n, d}), vb, vocab_size);

  Buffer<std::int32_t> bids(x);
  Buffer<T> btable(table), bout = Buffer<T>::output(out.size());
  Buffer<cd::KernelStatus> status = fresh_status();
  simt::launch("embedding_forward", cd::embedding_forward_kernel<T>,
               dim3(static_cast<unsigned>((n + cd::embedding_warps - 1) / cd::embedding_warps)),
               dim3(cd::embedding_warps * 32), 0, bids.data(), btable.data(), bout.data(), n, v, d, vb, vocab_size,
               status.data());
  CHECK(status.values()[0].ok());
  CHECK(bit_differences(bout.values(), out) == 0);  // rows copied, or zeros
  CHECK((bout.guards_intact() && status.guards_intact()));
}

//! The backward as cuda::Embedding::embedding_backward runs it: the keys kernel, the sort, the accumulation
//! kernel; dtable [v, d] (the shard from row vb) starts from values already there.
template <class T, class G>
void check_backward(i64 n, i64 v, i64 d, i64 vb, i64 vocab) {
  INFO("n " << n << ", dtable [" << v << ", " << d << "] from row " << vb << " of " << vocab);
  const auto x = ids(n, vocab);
  const auto dout = values<T>(n * d, 2);
  const std::vector<G> dtable0 = values<G>(v * d, 3);
  const px::host::Context ctx;
  std::vector<G> dtable = dtable0;
  Embedding::embedding_backward<T, G>(ctx, cview(x, {n}), cview(dout, {n, d}), view(dtable, {v, d}), vb);

  const auto skip = static_cast<std::uint32_t>(std::min<i64>(v, i64{1} << 31));
  Buffer<std::int32_t> bids(x), bpositions = Buffer<std::int32_t>::output(x.size());
  Buffer<std::uint32_t> bkeys = Buffer<std::uint32_t>::output(x.size());
  simt::launch("embedding_keys", cd::embedding_keys_kernel<std::int32_t>, dim3(cd::elementwise_blocks(n, sm_count)),
               dim3(cd::elementwise_threads), 0, bids.data(), n, v, vb, skip, bkeys.data(), bpositions.data());
  std::vector<std::uint32_t> want_keys;
  for (const std::int32_t id : x) {
    const i64 row = id - vb;
    want_keys.push_back(row >= 0 && row < v ? static_cast<std::uint32_t>(row) : skip);
  }
  std::vector<std::int32_t> want_positions(x.size());
  std::iota(want_positions.begin(), want_positions.end(), 0);
  const std::vector<std::uint32_t> keys = bkeys.values();
  std::vector<std::int32_t> positions = bpositions.values();
  CHECK(keys == want_keys);
  CHECK(positions == want_positions);
  CHECK((bkeys.guards_intact() && bpositions.guards_intact()));

  // cub::DeviceRadixSort::SortPairs over the key bits [0, bit_width(skip)), which hold every key (<= skip): a radix
  // sort is stable, so std::stable_sort of the positions by key gives the same sorted keys and positions.
  std::stable_sort(positions.begin(), positions.end(), [&](std::int32_t a, std::int32_t b) {
    return keys[static_cast<std::size_t>(a)] < keys[static_cast<std::size_t>(b)];
  });
  std::vector<std::uint32_t> sorted_keys;
  for (const std::int32_t p : positions) sorted_keys.push_back(keys[static_cast<std::size_t>(p)]);

  Buffer<std::uint32_t> bsorted_keys(sorted_keys);
  Buffer<std::int32_t> bsorted_positions(positions);
  Buffer<T> bdout(dout);
  Buffer<G> bdtable(dtable0);
  simt::launch("embedding_backward", cd::embedding_backward_kernel<T, G>,
               dim3(cd::embedding_backward_blocks(n, sm_count)), dim3(cd::embedding_threads), 0, bsorted_keys.data(),
               bsorted_positions.data(), bdout.data(), bdtable.data(), n, d, skip);
  CHECK(bit_differences(bdtable.values(), dtable) == 0);  // each run summed in fp32 in position order, as the host
  CHECK(bdtable.guards_intact());
}

void check_position_ids(i64 n, i64 first, i64 batch) {
  INFO("n " << n << ", first " << first << ", batch " << batch);
  const px::host::Context ctx;
  std::vector<std::int32_t> want(static_cast<std::size_t>(n));
  Embedding::position_ids(ctx, view(want), first, batch);
  Buffer<std::int32_t> out = Buffer<std::int32_t>::output(want.size());
  simt::launch("position_ids", cd::position_ids_kernel<std::int32_t>, dim3(cd::elementwise_blocks(n, sm_count)),
               dim3(cd::elementwise_threads), 0, out.data(), n, first, batch);
  CHECK(out.values() == want);
  CHECK(out.guards_intact());
}

}  // namespace

TEMPLATE_TEST_CASE("emulated CUDA embedding forward equals host::Embedding", "[simt][embedding]", float, px::bf16) {
  // 13 ids: the second block's warps 5..7 have no id. Widths below, at and above 32 lanes.
  for (const i64 d : {7, 32, 77}) {
    check_forward<TestType>(13, 20, d, 0, 20);  // whole table
    check_forward<TestType>(13, 8, d, 5, 20);   // a shard: ids below, in and above its rows give zeros outside
  }
}

TEMPLATE_TEST_CASE("emulated CUDA embedding backward equals host::Embedding", "[simt][embedding]", float, px::bf16) {
  // 50 ids: more than the accumulation kernel's 32 blocks (its loop over sorted entries wraps); widths above its 128
  // threads; a shard with ids on both sides of it.
  for (const i64 d : {7, 32, 150}) {
    check_backward<TestType, TestType>(50, 20, d, 0, 20);
    check_backward<TestType, float>(50, 8, d, 5, 20);
  }
  // 9000 ids: more than the keys kernel's grid has threads (its grid-stride loop wraps); long runs of one row.
  check_backward<TestType, float>(9000, 30, 3, 10, 50);
}

TEST_CASE("emulated CUDA position ids equal host::Embedding", "[simt][embedding]") {
  check_position_ids(1, 0, 1);
  check_position_ids(12, 5, 4);
  check_position_ids(9000, 3, 3);  // the grid-stride loop wraps
}

TEST_CASE("emulated CUDA embedding forward reports the first id outside the vocabulary", "[simt][embedding]") {
  // A shard of rows [4, 12) of 20: ids outside the shard are valid (zeros); -1 and 20 are not, the smaller position
  // wins, across blocks. The launcher reads ids[first_bad] back for the host's message.
  const i64 n = 30, v = 8, d = 5, vb = 4, vocab_size = 20;
  auto x = ids(n, vocab_size);
  x[27] = -1;
  x[11] = static_cast<std::int32_t>(vocab_size);
  x[19] = -4;
  Buffer<std::int32_t> bids(x);
  Buffer<float> table(values<float>(v * d, 4)), out = Buffer<float>::output(static_cast<std::size_t>(n * d));
  Buffer<cd::KernelStatus> status = fresh_status();
  simt::launch("embedding_forward", cd::embedding_forward_kernel<float>,
               dim3(static_cast<unsigned>((n + cd::embedding_warps - 1) / cd::embedding_warps)),
               dim3(cd::embedding_warps * 32), 0, bids.data(), table.data(), out.data(), n, v, d, vb, vocab_size,
               status.data());
  const cd::KernelStatus s = status.values()[0];
  REQUIRE(s.first_bad == 11);
  const px::host::Context ctx;
  std::vector<float> host_out(static_cast<std::size_t>(n * d));
  CHECK(px::test::error_of([&] {
          Embedding::embedding_forward<float>(ctx, cview(x, {n}), cview(table.values(), {v, d}),
                                              view(host_out, {n, d}), vb, vocab_size);
        }) == "embedding_forward: id " + std::to_string(x[s.first_bad]) + " at position 11 is outside [0, 20)");
}
