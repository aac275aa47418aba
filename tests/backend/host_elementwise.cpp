// Tests for parallax/backend/host/elementwise.hpp: fill, cast, scale, axpby, reductions (single and batched) and size
// checks.
#include <parallax/backend/host/backend.hpp>

#include <catch2/catch.hpp>

#include "../support/support.hpp"

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

using parallax::bf16;
using parallax::Error;
using parallax::fp16;
using parallax::Shape;
using parallax::View;
using parallax::host::Backend;
using HostMemory = parallax::host::Memory;
using Catch::Matchers::Contains;

using parallax::test::bits_of;
using parallax::test::cview;
using parallax::test::view;

namespace {

const parallax::host::Context ctx(0);
constexpr float nan_f = std::numeric_limits<float>::quiet_NaN();
constexpr float inf_f = std::numeric_limits<float>::infinity();

template <class T>
std::vector<T> from_floats(const std::vector<float>& f) {
  std::vector<T> v;
  for (float x : f) v.push_back(T(x));
  return v;
}

// Floats that exercise rounding: random magnitudes over the whole range, exact ties, specials.
std::vector<float> tricky_floats() {
  std::vector<float> f{0.f, -0.f, 1.f, -1.f, 0.1f, 1.00390625f /* bf16 tie */, 1.01171875f,
                       1.00048828125f /* fp16 tie */, 65504.f, 65520.f, 70000.f, -1e-8f, 6e-8f, 3e-5f, 1e38f, -3.4e38f,
                       1e-40f /* float subnormal */, inf_f, -inf_f, nan_f, -nan_f};
  std::mt19937 rng(7);
  std::uniform_int_distribution<std::uint32_t> bits;
  for (int i = 0; i < 5000; ++i) {
    std::uint32_t b = bits(rng);
    float x;
    std::memcpy(&x, &b, sizeof x);
    f.push_back(x);
  }
  std::uniform_real_distribution<float> d(-100.f, 100.f);
  for (int i = 0; i < 5000; ++i) f.push_back(d(rng));
  return f;
}

}  // namespace

TEMPLATE_TEST_CASE("host fill sets every element to the rounded value", "[backend][host][elementwise]", float, bf16,
                   fp16) {
  std::vector<TestType> x(37, TestType(5.f));
  Backend::fill(ctx, view(x), 0.1f);
  for (const auto& v : x) CHECK(bits_of(v) == bits_of(TestType(0.1f)));
  Backend::fill(ctx, view(x), -inf_f);
  for (const auto& v : x) CHECK(float(v) == -inf_f);
  std::vector<TestType> empty;
  Backend::fill(ctx, view(empty), 1.f);  // no elements, no error
}

TEST_CASE("host cast rounds exactly like the scalar constructors", "[backend][host][elementwise]") {
  const auto f = tricky_floats();
  SECTION("float -> bf16 / fp16 -> float") {
    std::vector<bf16> b(f.size());
    std::vector<fp16> h(f.size());
    Backend::cast(ctx, cview(f), view(b));
    Backend::cast(ctx, cview(f), view(h));
    int bad_b = 0, bad_h = 0;
    for (std::size_t i = 0; i < f.size(); ++i) {
      bad_b += b[i].bits != bf16(f[i]).bits;
      bad_h += h[i].bits != fp16(f[i]).bits;
    }
    CHECK(bad_b == 0);
    CHECK(bad_h == 0);
    CHECK(float(h[9]) == inf_f);  // 65520 overflows fp16
    CHECK(std::isnan(float(b[19])));

    // Back to float is exact.
    std::vector<float> fb(f.size()), fh(f.size());
    Backend::cast(ctx, cview(b), view(fb));
    Backend::cast(ctx, cview(h), view(fh));
    int bad = 0;
    for (std::size_t i = 0; i < f.size(); ++i)
      bad += bits_of(fb[i]) != bits_of(float(b[i])) || bits_of(fh[i]) != bits_of(float(h[i]));
    CHECK(bad == 0);
  }
  SECTION("bf16 <-> fp16 go through float") {
    const auto b = from_floats<bf16>(f);
    const auto h = from_floats<fp16>(f);
    std::vector<fp16> bh(f.size());
    std::vector<bf16> hb(f.size());
    Backend::cast(ctx, cview(b), view(bh));
    Backend::cast(ctx, cview(h), view(hb));
    int bad = 0;
    for (std::size_t i = 0; i < f.size(); ++i)
      bad += bh[i].bits != fp16(float(b[i])).bits || hb[i].bits != bf16(float(h[i])).bits;
    CHECK(bad == 0);
  }
  SECTION("same type is a copy") {
    std::vector<float> g(f.size());
    Backend::cast(ctx, cview(f), view(g));
    CHECK(std::memcmp(f.data(), g.data(), f.size() * sizeof(float)) == 0);
  }
  SECTION("sizes must match") {
    std::vector<bf16> small(3);
    CHECK_THROWS_WITH(Backend::cast(ctx, cview(f), view(small)),
                      Contains("cast") && Contains(std::to_string(f.size())) && Contains(" 3 "));
  }
}

TEMPLATE_TEST_CASE("host copy copies any element type, and only between views of one size",
                   "[backend][host][elementwise]", float, bf16, std::int32_t) {
  std::vector<TestType> src(7), dst(7);
  for (std::size_t i = 0; i < src.size(); ++i) src[i] = TestType(static_cast<float>(3 * i) - 5.f);
  Backend::copy(ctx, cview(src), view(dst));
  CHECK(std::memcmp(dst.data(), src.data(), src.size() * sizeof(TestType)) == 0);
  std::vector<TestType> shorter(6);
  CHECK_THROWS_WITH(Backend::copy(ctx, cview(src), view(shorter)), "copy: operands have 7 and 6 elements");
}

TEMPLATE_TEST_CASE("host scale multiplies in fp32 and rounds once", "[backend][host][elementwise]", float, bf16, fp16) {
  const auto f = tricky_floats();
  std::vector<float> vals;
  for (float x : f)
    if (std::isfinite(x) && std::fabs(x) < 1e4f) vals.push_back(x);
  auto x = from_floats<TestType>(vals);
  const auto x0 = x;
  Backend::scale(ctx, view(x), -0.37f);
  int bad = 0;
  for (std::size_t i = 0; i < x.size(); ++i) bad += bits_of(x[i]) != bits_of(TestType(-0.37f * float(x0[i])));
  CHECK(bad == 0);

  std::vector<TestType> y{TestType(1.f), TestType(-3.f), TestType(0.5f)};
  Backend::scale(ctx, view(y), 2.f);
  CHECK(float(y[0]) == 2.f);
  CHECK(float(y[1]) == -6.f);
  CHECK(float(y[2]) == 1.f);
  Backend::scale(ctx, view(y), 0.f);
  for (const auto& v : y) CHECK(float(v) == 0.f);
}

TEMPLATE_TEST_CASE("host axpby is exact on small integers", "[backend][host][elementwise]", float, bf16,
                   fp16) {
  // Results stay within +-256, exact in every type, so this holds whether or not the compiler fuses.
  std::vector<float> xf, yf;
  for (int i = 0; i < 41; ++i) {
    xf.push_back(float(i % 13 - 6));
    yf.push_back(float(i % 7 - 3) * 0.5f);
  }
  const auto x = from_floats<TestType>(xf);
  auto y = from_floats<TestType>(yf);
  Backend::axpby(ctx, 2.f, cview(x), -3.f, view(y));
  for (std::size_t i = 0; i < y.size(); ++i) CHECK(float(y[i]) == 2.f * xf[i] - 3.f * yf[i]);

  SECTION("b == 0 ignores y, even NaN and Inf") {
    std::vector<TestType> z(x.size(), TestType(nan_f));
    z[3] = TestType(inf_f);
    Backend::axpby(ctx, 0.5f, cview(x), 0.f, view(z));
    for (std::size_t i = 0; i < z.size(); ++i) CHECK(float(z[i]) == 0.5f * xf[i]);
  }
  SECTION("a == 0 still reads x (0 * NaN is NaN)") {
    std::vector<TestType> nx(3, TestType(nan_f));
    std::vector<TestType> z(3, TestType(1.f));
    Backend::axpby(ctx, 0.f, cview(nx), 1.f, view(z));
    for (const auto& v : z) CHECK(std::isnan(float(v)));
  }
  SECTION("mixed: 16-bit x into fp32 y") {
    std::vector<float> acc(x.size(), 1.f);
    Backend::axpby(ctx, 1.f, cview(x), 1.f, view(acc));
    for (std::size_t i = 0; i < acc.size(); ++i) CHECK(acc[i] == xf[i] + 1.f);
  }
  SECTION("sizes must match") {
    std::vector<TestType> shorter(5);
    CHECK_THROWS_WITH(Backend::axpby(ctx, 1.f, cview(x), 1.f, view(shorter)),
                      Contains("axpby") && Contains("41") && Contains("5"));
  }
}

TEMPLATE_TEST_CASE("host sum and sum_squares are exact for small integers", "[backend][host][elementwise]", float, bf16,
                   fp16) {
  std::vector<float> f;
  double s = 0, s2 = 0;
  for (int i = 0; i < 1001; ++i) {
    const float v = float(i % 17 - 8);
    f.push_back(v);
    s += v;
    s2 += double(v) * v;
  }
  const auto x = from_floats<TestType>(f);
  CHECK(Backend::sum(ctx, cview(x)) == s);
  CHECK(Backend::sum_squares(ctx, cview(x)) == s2);
  CHECK(s2 > 0);

  const std::vector<TestType> empty;
  CHECK(Backend::sum(ctx, cview(empty)) == 0.0);
  CHECK(Backend::sum_squares(ctx, cview(empty)) == 0.0);

  // Accumulated in fp64: 2^24 + 1 ones do not stall at 2^24 as an fp32 sum would.
  if constexpr (std::is_same_v<TestType, float>) {
    std::vector<float> big{16777216.f};
    big.resize(1001, 1.f);
    CHECK(Backend::sum(ctx, cview(big)) == 16777216.0 + 1000.0);
  }
}

TEMPLATE_TEST_CASE("host batched sum_squares adds the per-piece sums in list order", "[backend][host][elementwise]",
                   float, bf16) {
  using V = View<const TestType, HostMemory>;
  // Pieces of very different magnitudes and sizes, two of them empty.
  std::vector<std::vector<TestType>> data;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (const auto& [n, scale] : {std::pair{1000, 1e3f}, std::pair{0, 1.f}, std::pair{37, 1e-3f}, std::pair{1, 3.f},
                                 std::pair{4097, 1.f}, std::pair{0, 1.f}, std::pair{250, 1e-6f}}) {
    std::vector<float> f;
    for (int i = 0; i < n; ++i) f.push_back(scale * u(rng));
    data.push_back(from_floats<TestType>(f));
  }
  std::vector<V> pieces;
  for (const auto& d : data) pieces.push_back(cview(d));

  double loop = 0;
  for (const V& p : pieces) loop += Backend::sum_squares(ctx, p);
  CHECK(loop > 0);
  CHECK(std::bit_cast<std::uint64_t>(Backend::sum_squares(ctx, std::span<const V>(pieces))) ==
        std::bit_cast<std::uint64_t>(loop));

  // Views into one buffer, as the optimizer passes its bucket slices.
  const auto& big = data[4];
  const std::vector<V> rows{cview(big).rows(0, 100), cview(big).rows(100, 100), cview(big).rows(100, 4097)};
  double rows_loop = 0;
  for (const V& p : rows) rows_loop += Backend::sum_squares(ctx, p);
  CHECK(std::bit_cast<std::uint64_t>(Backend::sum_squares(ctx, std::span<const V>(rows))) ==
        std::bit_cast<std::uint64_t>(rows_loop));

  CHECK(Backend::sum_squares(ctx, std::span<const V>()) == 0.0);
  const std::vector<V> empties{cview(data[1]), cview(data[5])};
  CHECK(Backend::sum_squares(ctx, std::span<const V>(empties)) == 0.0);

  // A NaN in any piece makes the total NaN.
  std::vector<TestType> bad{TestType(1.f), TestType(nan_f)};
  pieces.push_back(cview(bad));
  CHECK(std::isnan(Backend::sum_squares(ctx, std::span<const V>(pieces))));
}

TEMPLATE_TEST_CASE("host count_nonfinite counts NaN and Inf only", "[backend][host][elementwise]", float, bf16, fp16) {
  const std::vector<float> f{0.f, 1.f, nan_f, -inf_f, inf_f, -0.f, 3.f, -nan_f, 65504.f, -2.f};
  const auto x = from_floats<TestType>(f);
  CHECK(Backend::count_nonfinite(ctx, cview(x)) == 4);
  const std::vector<TestType> fine(100, TestType(1.f));
  CHECK(Backend::count_nonfinite(ctx, cview(fine)) == 0);
  if constexpr (std::is_same_v<TestType, fp16>) {
    // Overflow on conversion becomes Inf and is counted.
    const auto over = from_floats<fp16>({70000.f, -1e6f, 100.f});
    CHECK(Backend::count_nonfinite(ctx, cview(over)) == 2);
  }
  if constexpr (std::is_same_v<TestType, float>) {
    const std::vector<float> extreme{std::numeric_limits<float>::max(), std::numeric_limits<float>::denorm_min()};
    CHECK(Backend::count_nonfinite(ctx, cview(extreme)) == 0);
  }
}
