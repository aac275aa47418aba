// The CUDA elementwise kernels (detail/elementwise_kernels.cuh), run by the SIMT emulator with the launchers'
// geometry, against host::Elementwise: fill, cast between fp32 / bf16 / fp16 (special values included), scale,
// axpby (b == 0 ignoring y's NaNs), add_bias, the bias gradient through the deterministic column sums, and the
// two-pass reductions (sum, sum of squares, non-finite count), the final pass over more partial sums than threads,
// and the batched sum of squares, whose per-piece sums one thread adds in order. Sizes of one element, below a block,
// not a multiple of it, and above the grid's threads (the grid-stride loops wrap).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include <parallax/backend/cuda/detail/elementwise_kernels.cuh>
#include <parallax/backend/host/elementwise.hpp>
#include <parallax/core/bf16.hpp>
#include <parallax/core/fp16.hpp>

#include "support.hpp"

namespace {

namespace px = parallax;
namespace cd = parallax::cuda::detail;
namespace simt = parallax::simt;
using px::test::bit_differences;
using px::test::cview;
using px::test::emulated::Buffer;
using px::test::emulated::sm_count;
using px::test::quarters;
using px::test::values;
using px::test::view;
using i64 = std::int64_t;

//! Element counts: one, below a block, a block, not a multiple of it, and more than the 32 blocks' threads of the
//! emulated GPU's elementwise grid (the grid-stride loops wrap).
constexpr i64 sizes[] = {1, 37, 256, 1000, 9000};

//! `values` with non-finite and signed-zero elements every few positions.
template <class T>
std::vector<T> with_specials(i64 n, std::uint64_t seed) {
  std::vector<T> x = values<T>(n, seed, 3.f);
  const float specials[] = {NAN, INFINITY, -INFINITY, -0.f, 1e5f, 1e-6f, 3e-39f};
  for (i64 i = 0; i < n; i += 5) x[static_cast<std::size_t>(i)] = T(specials[i / 5 % 7]);
  return x;
}

template <class T>
void check_fill(i64 n) {
  INFO("n " << n);
  const px::host::Context ctx;
  std::vector<T> want(static_cast<std::size_t>(n));
  px::host::Elementwise::fill(ctx, view(want), -0.3f);
  Buffer<T> x = Buffer<T>::output(want.size());
  simt::launch("fill", cd::fill_kernel<T>, dim3(cd::elementwise_blocks(n, sm_count)), dim3(cd::elementwise_threads), 0,
               x.data(), n, T(-0.3f));
  CHECK(bit_differences(x.values(), want) == 0);
  CHECK(x.guards_intact());
}

template <class S, class D>
void check_cast(i64 n) {
  const std::vector<S> src = with_specials<S>(n, 1);
  const px::host::Context ctx;
  std::vector<D> want(src.size());
  px::host::Elementwise::cast(ctx, cview(src), view(want));
  Buffer<S> bsrc(src);
  Buffer<D> dst = Buffer<D>::output(want.size());
  simt::launch("cast", cd::cast_kernel<S, D>, dim3(cd::elementwise_blocks(n, sm_count)), dim3(cd::elementwise_threads),
               0, bsrc.data(), dst.data(), n);
  CHECK(bit_differences(dst.values(), want) == 0);  // one conversion, rounded to nearest even
  CHECK(dst.guards_intact());
}

template <class T>
void check_scale(i64 n) {
  INFO("n " << n);
  std::vector<T> want = values<T>(n, 2, 2.f);
  Buffer<T> x(want);
  const px::host::Context ctx;
  px::host::Elementwise::scale(ctx, view(want), -1.7f);
  simt::launch("scale", cd::scale_kernel<T>, dim3(cd::elementwise_blocks(n, sm_count)), dim3(cd::elementwise_threads),
               0, x.data(), n, -1.7f);
  CHECK(bit_differences(x.values(), want) == 0);
  CHECK(x.guards_intact());
}

//! y = a x + b y with y of T and x of S; with b == 0, y starts as NaN, which must not show.
template <class T, class S>
void check_axpby(i64 n, float b) {
  INFO("n " << n << ", b " << b);
  const std::vector<S> x = values<S>(n, 3, 2.f);
  std::vector<T> want = b == 0.f ? std::vector<T>(x.size(), T(NAN)) : values<T>(n, 4, 2.f);
  Buffer<S> bx(x);
  Buffer<T> y(want);
  const px::host::Context ctx;
  px::host::Elementwise::axpby(ctx, 0.7f, cview(x), b, view(want));
  simt::launch("axpby", cd::axpby_kernel<T, S>, dim3(cd::elementwise_blocks(n, sm_count)),
               dim3(cd::elementwise_threads), 0, 0.7f, bx.data(), b, y.data(), n);
  CHECK(bit_differences(y.values(), want) == 0);  // separate multiplies and adds, as the host's
  CHECK(y.guards_intact());
}

template <class T>
void check_add_bias(i64 n, i64 d) {
  INFO("n " << n << ", d " << d);
  const std::vector<T> bias = values<T>(d, 5);
  std::vector<T> want = values<T>(n * d, 6, 2.f);
  Buffer<T> bb(bias), y(want);
  const px::host::Context ctx;
  px::host::Elementwise::add_bias(ctx, cview(bias), view(want, {n, d}));
  simt::launch("add_bias", cd::add_bias_kernel<T>, dim3(cd::elementwise_blocks(n * d, sm_count)),
               dim3(cd::elementwise_threads), 0, bb.data(), y.data(), n * d, d);
  CHECK(bit_differences(y.values(), want) == 0);
  CHECK(y.guards_intact());
}

//! db += the column sums of dy, db of dy's type or fp32. Multiples of 1/4 add exactly in any order, so the kernels'
//! order of additions gives the host's bits.
template <class T, class G>
void check_bias_grad(i64 n, i64 d) {
  INFO("n " << n << ", d " << d);
  const std::vector<T> dy = quarters<T>(n * d, 7);
  const std::vector<G> db0 = quarters<G>(d, 8);
  std::vector<G> want = db0;
  const px::host::Context ctx;
  px::host::Elementwise::bias_grad(ctx, cview(dy, {n, d}), view(want));
  Buffer<T> bdy(dy);
  Buffer<G> db(db0);
  px::test::emulated::column_sums<1>(cd::BiasGradTerm<T>{bdy.data(), d}, n, d, cd::ColumnOutputs<G, 1>{{db.data()}});
  CHECK(bit_differences(db.values(), want) == 0);
  CHECK(db.guards_intact());
}

//! The two passes of cuda::detail::reduce_to over x into *out, the partial sums in `partial` (the context's
//! reduction scratch).
template <class Acc, class T, class Term>
void reduce_to(const Buffer<T>& x, i64 n, Term term, Buffer<Acc>& partial, Acc* out) {
  const unsigned blocks = cd::reduce_blocks(n);
  simt::launch("reduce_partial", cd::reduce_partial_kernel<Acc, T, Term>, dim3(blocks), dim3(cd::reduce_threads), 0,
               x.data(), n, partial.data(), term);
  simt::launch("reduce_final", cd::reduce_final_kernel<Acc>, dim3(1), dim3(cd::reduce_threads), 0, partial.data(),
               static_cast<int>(blocks), out);
}

//! A scratch array of `n` accumulators, every one a value no reduction here yields, so reading one no kernel
//! wrote shows.
template <class Acc>
Buffer<Acc> scratch(std::size_t n) {
  return Buffer<Acc>(std::vector<Acc>(n, std::numeric_limits<Acc>::max()));
}

//! cuda::detail::reduce: the partial sums at the start of the scratch, the total after the largest grid's.
template <class Acc, class T, class Term>
Acc reduce(const std::vector<T>& x, Term term) {
  Buffer<T> bx(x);
  Buffer<Acc> s = scratch<Acc>(cd::reduce_max_blocks + 1);
  reduce_to(bx, static_cast<i64>(x.size()), term, s, s.data() + cd::reduce_max_blocks);
  CHECK(s.guards_intact());
  return s.values()[cd::reduce_max_blocks];
}

template <class T>
void check_reductions(i64 n) {
  INFO("n " << n);
  const px::host::Context ctx;
  // Quarters: every fp64 sum (of squares) is exact, so the kernels' order gives the host's bits.
  const std::vector<T> q = quarters<T>(n, 9);
  CHECK(reduce<double>(q, cd::SumTerm{}) == px::host::Elementwise::sum(ctx, cview(q)));
  CHECK(reduce<double>(q, cd::SquareTerm{}) == px::host::Elementwise::sum_squares(ctx, cview(q)));
  const std::vector<T> x = values<T>(n, 10);
  CHECK(reduce<double>(x, cd::SumTerm{}) == Approx(px::host::Elementwise::sum(ctx, cview(x))).epsilon(1e-12));
  CHECK(reduce<double>(x, cd::SquareTerm{}) ==
        Approx(px::host::Elementwise::sum_squares(ctx, cview(x))).epsilon(1e-12));
  const std::vector<T> s = with_specials<T>(n, 11);
  CHECK(static_cast<i64>(reduce<unsigned long long>(s, cd::NonfiniteTerm{})) ==
        px::host::Elementwise::count_nonfinite(ctx, cview(s)));
}

//! The batched sum of squares as cuda::Elementwise::sum_squares(pieces) runs it: each non-empty piece's two passes
//! into its slot, then one thread adds the slots in order.
template <class T>
void check_sum_squares_pieces(const std::vector<i64>& lengths) {
  std::vector<std::vector<T>> pieces;
  for (const i64 n : lengths) pieces.push_back(quarters<T>(n, static_cast<std::uint64_t>(20 + pieces.size())));
  std::vector<px::View<const T, px::host::Memory>> views;
  for (const auto& p : pieces) views.push_back(cview(p));
  const px::host::Context ctx;
  const double want =
      px::host::Elementwise::sum_squares(ctx, std::span<const px::View<const T, px::host::Memory>>(views));

  const auto count = static_cast<int>(std::count_if(lengths.begin(), lengths.end(), [](i64 n) { return n > 0; }));
  Buffer<double> partial = scratch<double>(cd::reduce_max_blocks), sums = scratch<double>(std::size_t(count) + 1);
  int i = 0;
  for (const auto& p : pieces)
    if (!p.empty()) reduce_to(Buffer<T>(p), static_cast<i64>(p.size()), cd::SquareTerm{}, partial, sums.data() + i++);
  simt::launch("sum_in_order", cd::sum_in_order_kernel<double>, dim3(1), dim3(1), 0, sums.data(), count,
               sums.data() + count);
  CHECK(sums.values()[static_cast<std::size_t>(count)] == want);
  CHECK((partial.guards_intact() && sums.guards_intact()));
}

//! The final pass alone over `count` partial sums: more than its 256 threads make its loop wrap.
template <class Acc>
void check_reduce_final(int count) {
  INFO("count " << count);
  std::vector<Acc> partial;
  for (const float v : quarters<float>(count, 30)) partial.push_back(static_cast<Acc>(v * 4.f + 8.f));  // >= 0
  Acc want{0};
  for (const Acc v : partial) want += v;
  Buffer<Acc> bp(partial), out = scratch<Acc>(1);
  simt::launch("reduce_final", cd::reduce_final_kernel<Acc>, dim3(1), dim3(cd::reduce_threads), 0, bp.data(), count,
               out.data());
  CHECK(out.values()[0] == want);  // integers (in fp64 too): exact in any order
  CHECK(out.guards_intact());
}

}  // namespace

TEMPLATE_TEST_CASE("emulated CUDA fill, scale and add_bias equal host::Elementwise", "[simt][elementwise]", float,
                   px::bf16) {
  for (const i64 n : sizes) {
    check_fill<TestType>(n);
    check_scale<TestType>(n);
  }
  for (const auto& [n, d] : {std::pair<i64, i64>{1, 7}, {13, 32}, {37, 45}, {300, 33}}) check_add_bias<TestType>(n, d);
}

TEMPLATE_TEST_CASE("emulated CUDA cast equals host::Elementwise::cast", "[simt][elementwise]", float, px::bf16,
                   px::fp16) {
  for (const i64 n : sizes) {
    INFO("n " << n);
    check_cast<TestType, float>(n);
    check_cast<TestType, px::bf16>(n);
    check_cast<TestType, px::fp16>(n);
  }
}

TEMPLATE_TEST_CASE("emulated CUDA axpby equals host::Elementwise::axpby", "[simt][elementwise]", float, px::bf16) {
  for (const i64 n : sizes)
    for (const float b : {0.f, -0.45f}) {
      check_axpby<TestType, TestType>(n, b);
      check_axpby<TestType, float>(n, b);
    }
}

TEMPLATE_TEST_CASE("emulated CUDA bias gradient equals host::Elementwise::bias_grad", "[simt][elementwise]", float,
                   px::bf16) {
  // 150 rows: three chunks of the column sums' 64 rows, the last one short.
  for (const auto& [n, d] : {std::pair<i64, i64>{1, 7}, {13, 32}, {150, 45}, {64, 70}}) {
    check_bias_grad<TestType, TestType>(n, d);
    check_bias_grad<TestType, float>(n, d);
  }
}

TEMPLATE_TEST_CASE("emulated CUDA reductions equal host::Elementwise's", "[simt][elementwise]", float, px::bf16) {
  // The first pass's threads take 8 elements each: 2049 makes two blocks, the second with one element; 5000 three.
  for (const i64 n : {1, 300, 2049, 5000}) check_reductions<TestType>(n);
  check_sum_squares_pieces<TestType>({300, 0, 1, 2500});
  check_sum_squares_pieces<TestType>({0, 7});
}

TEST_CASE("emulated CUDA reduce_final adds more partial sums than its threads", "[simt][elementwise]") {
  for (const int count : {1, 31, 256, 700, cd::reduce_max_blocks}) {
    check_reduce_final<double>(count);
    check_reduce_final<unsigned long long>(count);
  }
}

TEST_CASE("emulated CUDA sum_in_order adds in index order", "[simt][elementwise]") {
  // Values of very different sizes: any other order rounds differently.
  std::vector<double> x;
  for (const float v : values<float>(100, 31)) x.push_back(double(v) * std::pow(10.0, double(x.size() % 17)));
  double want = 0;
  for (const double v : x) want += v;
  Buffer<double> bx(x), out = Buffer<double>::output(1);
  simt::launch("sum_in_order", cd::sum_in_order_kernel<double>, dim3(1), dim3(1), 0, bx.data(), 100, out.data());
  CHECK(out.values()[0] == want);
  CHECK(out.guards_intact());
}
