// The CUDA cross-entropy kernels (detail/cross_entropy_kernels.cuh), run by the SIMT emulator with the launchers'
// geometry, against host::CrossEntropy: the fused forward and backward (whole logits, a vocabulary shard, in place),
// and the vocabulary-parallel pieces (row max, shifted sum of exp, target logit, combine) chained over shards of
// one row of logits, an empty shard included. Rows with ignore_index; vocabularies below a warp and wider than a
// block; grid-stride loops that wrap. Invalid targets are reported through the KernelStatus: the smallest bad row,
// which the launcher then checks on the host for the host's message.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <parallax/backend/cuda/detail/cross_entropy_kernels.cuh>
#include <parallax/backend/cuda/detail/elementwise_kernels.cuh>
#include <parallax/backend/host/cross_entropy.hpp>
#include <parallax/core/bf16.hpp>

#include "support.hpp"

namespace {

namespace px = parallax;
namespace cd = parallax::cuda::detail;
namespace simt = parallax::simt;
using px::host::CrossEntropy;
using px::test::bit_differences;
using px::test::check_close;
using px::test::cview;
using px::test::emulated::Buffer;
using px::test::emulated::fresh_status;
using px::test::emulated::sm_count;
using px::test::values;
using px::test::view;
using i64 = std::int64_t;

constexpr std::int32_t ignore = -100;

//! The status as cuda::detail::reset_status leaves it: no bad index, a count of 0.
//! Targets in [0, vocab), every fifth row (and every row of an empty vocabulary) ignore_index.
std::vector<std::int32_t> targets(i64 n, i64 vocab) {
  std::vector<std::int32_t> y(static_cast<std::size_t>(n));
  for (i64 r = 0; r < n; ++r)
    y[static_cast<std::size_t>(r)] =
        r % 5 == 2 || vocab == 0 ? ignore : static_cast<std::int32_t>((r * 7919 + 3) % vocab);
  return y;
}

template <class T>
void check_forward(i64 n, i64 v) {
  INFO("n " << n << ", v " << v);
  const auto z = values<T>(n * v, 1, 4.f);
  const auto y = targets(n, v);
  const px::host::Context ctx;
  std::vector<float> losses(static_cast<std::size_t>(n)), lse(losses.size());
  const i64 valid = CrossEntropy::cross_entropy_forward<T>(ctx, cview(z, {n, v}), cview(y, {n}), ignore,
                                                           view(losses, {n}), view(lse, {n}));

  Buffer<T> bz(z);
  Buffer<std::int32_t> by(y);
  Buffer<float> blosses = Buffer<float>::output(losses.size()), blse = Buffer<float>::output(lse.size());
  Buffer<cd::KernelStatus> status = fresh_status();
  simt::launch("ce_forward", cd::ce_forward_kernel<T>, dim3(static_cast<unsigned>(n)), dim3(cd::ce_threads), 0,
               bz.data(), by.data(), ignore, blosses.data(), blse.data(), v, status.data());
  CHECK(status.values()[0].ok());
  CHECK(status.values()[0].count == static_cast<unsigned long long>(valid));
  check_close(blosses.values(), losses, "losses");
  check_close(blse.values(), lse, "lse");
  CHECK((blosses.guards_intact() && blse.guards_intact() && status.guards_intact()));
}

//! The backward on a shard of v columns starting at global column vb (targets are global, some outside the
//! shard), out of place or in place (dlogits aliasing logits).
template <class T>
void check_backward(i64 n, i64 v, i64 vb, bool in_place) {
  INFO("n " << n << ", v " << v << ", vocab_begin " << vb << (in_place ? ", in place" : ""));
  const auto z = values<T>(n * v, 2, 4.f);
  const auto y = targets(n, vb + v + 7);
  std::vector<float> lse = px::test::random_values(n, 3);
  for (float& l : lse) l += 3.f;
  constexpr float scale = 0.37f;
  const px::host::Context ctx;
  std::vector<T> dz(z.size());
  CrossEntropy::cross_entropy_backward<T>(ctx, cview(z, {n, v}), cview(y, {n}), cview(lse, {n}), ignore, scale,
                                          view(dz, {n, v}), vb);

  Buffer<T> bz(z), bdz = Buffer<T>::output(dz.size());
  Buffer<std::int32_t> by(y);
  Buffer<float> blse(lse);
  Buffer<cd::KernelStatus> status = fresh_status();
  Buffer<T>& out = in_place ? bz : bdz;
  simt::launch("ce_backward", cd::ce_backward_kernel<T>, dim3(static_cast<unsigned>(n)), dim3(cd::ce_threads), 0,
               bz.data(), by.data(), blse.data(), ignore, scale, out.data(), v, vb, status.data());
  CHECK(status.values()[0].ok());
  check_close(out.values(), dz, "dlogits");
  CHECK((out.guards_intact() && status.guards_intact()));
}

// The vocabulary-parallel pieces: each runs its kernel on one shard of v columns, checks it against the host's
// function on the same inputs and returns the kernel's result.

template <class T>
std::vector<float> emulated_row_max(const std::vector<T>& z, i64 n, i64 v) {
  const px::host::Context ctx;
  std::vector<float> want(static_cast<std::size_t>(n));
  CrossEntropy::row_max<T>(ctx, cview(z, {n, v}), view(want, {n}));
  Buffer<T> bz(z);
  Buffer<float> out = Buffer<float>::output(want.size());
  simt::launch("ce_row_max", cd::ce_row_max_kernel<T>, dim3(static_cast<unsigned>(n)), dim3(cd::ce_threads), 0,
               bz.data(), out.data(), v);
  CHECK(bit_differences(out.values(), want) == 0);  // a max is exact in any order (-inf for an empty shard)
  CHECK(out.guards_intact());
  return out.values();
}

template <class T>
std::vector<float> emulated_sum_exp(const std::vector<T>& z, const std::vector<float>& shift, i64 n, i64 v) {
  const px::host::Context ctx;
  std::vector<float> want(static_cast<std::size_t>(n));
  CrossEntropy::sum_exp_shifted<T>(ctx, cview(z, {n, v}), cview(shift, {n}), view(want, {n}));
  Buffer<T> bz(z);
  Buffer<float> bshift(shift), out = Buffer<float>::output(want.size());
  simt::launch("ce_sum_exp", cd::ce_sum_exp_kernel<T>, dim3(static_cast<unsigned>(n)), dim3(cd::ce_threads), 0,
               bz.data(), bshift.data(), out.data(), v);
  check_close(out.values(), want, "sum_exp");
  CHECK(out.guards_intact());
  return out.values();
}

template <class T>
std::vector<float> emulated_target_logit(const std::vector<T>& z, const std::vector<std::int32_t>& y, i64 n, i64 v,
                                         i64 vb) {
  INFO("target_logit: n " << n << ", v " << v << ", vocab_begin " << vb);
  const px::host::Context ctx;
  std::vector<float> want(static_cast<std::size_t>(n));
  CrossEntropy::target_logit<T>(ctx, cview(z, {n, v}), cview(y, {n}), vb, ignore, view(want, {n}));
  Buffer<T> bz(z);
  Buffer<std::int32_t> by(y);
  Buffer<float> out = Buffer<float>::output(want.size());
  Buffer<cd::KernelStatus> status = fresh_status();
  simt::launch("ce_target_logit", cd::ce_target_logit_kernel<T>, dim3(cd::elementwise_blocks(n, sm_count)),
               dim3(cd::elementwise_threads), 0, bz.data(), by.data(), n, v, vb, ignore, out.data(), status.data());
  CHECK(status.values()[0].ok());
  CHECK(bit_differences(out.values(), want) == 0);  // one logit, copied, or 0
  CHECK((out.guards_intact() && status.guards_intact()));
  return out.values();
}

void check_combine(const std::vector<float>& row_max, const std::vector<float>& sum_exp,
                   const std::vector<float>& target_logit, const std::vector<std::int32_t>& y) {
  const auto n = static_cast<i64>(y.size());
  INFO("combine: n " << n);
  const px::host::Context ctx;
  std::vector<float> losses(y.size()), lse(y.size());
  const i64 valid = CrossEntropy::cross_entropy_combine(ctx, cview(row_max), cview(sum_exp), cview(target_logit),
                                                        cview(y), ignore, view(losses), view(lse));
  Buffer<float> bmax(row_max), bsum(sum_exp), btl(target_logit);
  Buffer<std::int32_t> by(y);
  Buffer<float> blosses = Buffer<float>::output(y.size()), blse = Buffer<float>::output(y.size());
  Buffer<cd::KernelStatus> status = fresh_status();
  simt::launch("ce_combine", cd::ce_combine_kernel<std::int32_t>, dim3(cd::ce_combine_blocks(n, sm_count)),
               dim3(cd::ce_threads), 0, bmax.data(), bsum.data(), btl.data(), by.data(), ignore, blosses.data(),
               blse.data(), n, status.data());
  CHECK(status.values()[0].count == static_cast<unsigned long long>(valid));
  check_close(blosses.values(), losses, "losses");
  check_close(blse.values(), lse, "lse");
  CHECK((blosses.guards_intact() && blse.guards_intact() && status.guards_intact()));
}

//! Columns [begin, end) of the row-major [n, v] matrix z.
template <class T>
std::vector<T> columns(const std::vector<T>& z, i64 n, i64 v, i64 begin, i64 end) {
  std::vector<T> out;
  for (i64 r = 0; r < n; ++r) out.insert(out.end(), z.begin() + r * v + begin, z.begin() + r * v + end);
  return out;
}

//! The vocabulary-parallel loss over shards of the columns at `bounds`, the pieces reduced over the shards as the
//! all-reduces would (max, sum, sum), each piece checked against the host's on the same inputs.
template <class T>
void check_vocab_parallel(i64 n, const std::vector<i64>& bounds) {
  const i64 vocab = bounds.back();
  INFO("n " << n << ", vocabulary " << vocab << " in " << bounds.size() - 1 << " shards");
  const auto z = values<T>(n * vocab, 4, 4.f);
  const auto y = targets(n, vocab);
  std::vector<std::vector<T>> shards;
  for (std::size_t s = 0; s + 1 < bounds.size(); ++s) shards.push_back(columns(z, n, vocab, bounds[s], bounds[s + 1]));
  const auto width = [&](std::size_t s) { return bounds[s + 1] - bounds[s]; };

  std::vector<float> global_max(static_cast<std::size_t>(n), -INFINITY), sum_exp(global_max.size(), 0.f);
  std::vector<float> target_logit(global_max.size(), 0.f);
  for (std::size_t s = 0; s < shards.size(); ++s) {
    const auto m = emulated_row_max(shards[s], n, width(s));
    std::transform(m.begin(), m.end(), global_max.begin(), global_max.begin(),
                   [](float a, float b) { return std::max(a, b); });
  }
  for (std::size_t s = 0; s < shards.size(); ++s) {
    const auto e = emulated_sum_exp(shards[s], global_max, n, width(s));
    const auto t = emulated_target_logit(shards[s], y, n, width(s), bounds[s]);
    for (std::size_t r = 0; r < e.size(); ++r) {
      sum_exp[r] += e[r];
      target_logit[r] += t[r];
    }
  }
  check_combine(global_max, sum_exp, target_logit, y);
}

}  // namespace

TEMPLATE_TEST_CASE("emulated CUDA cross-entropy forward equals host::CrossEntropy", "[simt][cross_entropy]", float,
                   px::bf16) {
  // Vocabularies of one column, below a warp, above a block's 256 threads; rows with ignore_index.
  for (const auto& [n, v] : {std::pair<i64, i64>{3, 1}, {6, 31}, {7, 300}, {3, 1000}}) check_forward<TestType>(n, v);
}

TEMPLATE_TEST_CASE("emulated CUDA cross-entropy backward equals host::CrossEntropy", "[simt][cross_entropy]", float,
                   px::bf16) {
  for (const bool in_place : {false, true}) {
    check_backward<TestType>(6, 31, 0, in_place);
    check_backward<TestType>(5, 300, 0, in_place);
    check_backward<TestType>(7, 40, 25, in_place);  // a shard: targets below, in and above its columns
  }
}

TEMPLATE_TEST_CASE("emulated CUDA vocabulary-parallel cross-entropy pieces equal host::CrossEntropy",
                   "[simt][cross_entropy]", float, px::bf16) {
  check_vocab_parallel<TestType>(7, {0, 0, 120, 301});  // an empty shard first, then one wider than a block
  // target_logit over more rows than the grid has threads (its grid-stride loop wraps); a narrow shard.
  const i64 n = 8300, v = 3, vb = 2;
  (void)emulated_target_logit(values<TestType>(n * v, 5), targets(n, 9), n, v, vb);
}

TEST_CASE("emulated CUDA cross-entropy combine equals host::CrossEntropy", "[simt][cross_entropy]") {
  // 2100 rows: more than the combine kernel's grid cap of 4 blocks per SM has threads.
  for (const i64 n : {1, 37, 2100}) {
    auto sum_exp = px::test::random_values(n, 6);
    for (float& s : sum_exp) s += 2.f;
    check_combine(px::test::random_values(n, 7, 5.f), sum_exp, px::test::random_values(n, 8, 5.f), targets(n, 50));
  }
}

TEST_CASE("emulated CUDA cross-entropy kernels report the first invalid target", "[simt][cross_entropy]") {
  const px::host::Context ctx;
  const i64 v = 10;
  // The launcher checks the targets up to the reported row on the host (throw_bad_target), for the host's message.
  const auto host_error = [&](const char* op, const std::vector<std::int32_t>& y, unsigned long long row,
                              i64 vocab) {
    const std::vector<std::int32_t> head(y.begin(), y.begin() + static_cast<i64>(row) + 1);
    return px::test::error_of([&] { px::host::detail::check_ce_targets(op, cview(head), ignore, vocab); });
  };

  SECTION("forward: a target >= V and a negative one") {
    auto y = targets(9, v);
    y[6] = -3;
    y[4] = static_cast<std::int32_t>(v);
    const auto z = values<float>(9 * v, 9);
    Buffer<float> bz(z), losses = Buffer<float>::output(9), lse = Buffer<float>::output(9);
    Buffer<std::int32_t> by(y);
    Buffer<cd::KernelStatus> status = fresh_status();
    simt::launch("ce_forward", cd::ce_forward_kernel<float>, dim3(9), dim3(cd::ce_threads), 0, bz.data(), by.data(),
                 ignore, losses.data(), lse.data(), v, status.data());
    const cd::KernelStatus s = status.values()[0];
    CHECK(s.first_bad == 4);
    CHECK(host_error("cross_entropy_forward", y, s.first_bad, v) ==
          "cross_entropy_forward: target 10 at row 4 is outside [0, 10) and is not ignore_index -100");
  }
  SECTION("backward: negative targets (targets >= V are the forward's to report)") {
    auto y = targets(8, v);
    y[1] = static_cast<std::int32_t>(v + 5);
    y[6] = -5;
    y[3] = -2;
    const auto z = values<float>(8 * v, 10);
    const std::vector<float> lse(8, 3.f);
    Buffer<float> bz(z), blse(lse), dz = Buffer<float>::output(z.size());
    Buffer<std::int32_t> by(y);
    Buffer<cd::KernelStatus> status = fresh_status();
    simt::launch("ce_backward", cd::ce_backward_kernel<float>, dim3(8), dim3(cd::ce_threads), 0, bz.data(),
                 by.data(), blse.data(), ignore, 1.f, dz.data(), v, i64{0}, status.data());
    const cd::KernelStatus s = status.values()[0];
    CHECK(s.first_bad == 3);
    CHECK(host_error("cross_entropy_backward", y, s.first_bad, -1) ==
          "cross_entropy_backward: target -2 at row 3 is negative and is not ignore_index -100");
  }
  SECTION("target_logit: negative targets in different blocks, the later one in a wrapped grid-stride pass") {
    const i64 n = 8300;
    auto y = targets(n, v);
    y[8250] = -1;
    y[700] = -7;
    const auto z = values<float>(n * v, 11);
    Buffer<float> bz(z), out = Buffer<float>::output(static_cast<std::size_t>(n));
    Buffer<std::int32_t> by(y);
    Buffer<cd::KernelStatus> status = fresh_status();
    simt::launch("ce_target_logit", cd::ce_target_logit_kernel<float>, dim3(cd::elementwise_blocks(n, sm_count)),
                 dim3(cd::elementwise_threads), 0, bz.data(), by.data(), n, v, i64{0}, ignore, out.data(),
                 status.data());
    const cd::KernelStatus s = status.values()[0];
    CHECK(s.first_bad == 700);
    CHECK(host_error("target_logit", y, s.first_bad, -1) ==
          "target_logit: target -7 at row 700 is negative and is not ignore_index -100");
  }
}
