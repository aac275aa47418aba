// Tests for parallax/backend/host/gemm.hpp: every transpose x operand type x output type against a
// double-precision reference, edge sizes (1x1x1, k = 0, m or n = 0), alpha/beta, and shape errors.
#include <parallax/backend/concept.hpp>
#include <parallax/backend/host/backend.hpp>
#include <parallax/core/allocator.hpp>
#include <parallax/core/tensor.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

using parallax::bf16;
using parallax::Error;
using parallax::fp16;
using parallax::Shape;
using parallax::Trans;
using parallax::View;
using parallax::host::Backend;
using HostMemory = parallax::host::Memory;
using Catch::Matchers::Contains;

static_assert(parallax::Backend<Backend>);

namespace {

// Which (operand, output) type pairs gemm accepts: output is the operand type or fp32.
template <class T, class TC>
concept GemmCallable = requires(const parallax::host::Context& ctx, View<const T, HostMemory> a,
                                View<TC, HostMemory> c) {
  Backend::gemm(ctx, Trans::N, Trans::N, 1.f, a, a, 0.f, c);
};
static_assert(GemmCallable<float, float> && GemmCallable<bf16, bf16> && GemmCallable<fp16, fp16>);
static_assert(GemmCallable<bf16, float> && GemmCallable<fp16, float>);
static_assert(!GemmCallable<float, bf16> && !GemmCallable<bf16, fp16> && !GemmCallable<fp16, bf16>);

// Relative half-ulp of rounding a float result to the output type (0 for fp32 outputs).
template <class TC>
constexpr double output_rounding() {
  if constexpr (std::is_same_v<TC, bf16>) return 0x1p-8;
  else if constexpr (std::is_same_v<TC, fp16>) return 0x1p-11;
  else return 0.0;
}

template <class T>
std::vector<T> random_values(std::int64_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  std::vector<T> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = T(dist(rng));
  return v;
}

// Runs C = alpha op(A) op(B) + beta C for one configuration and compares every element with a double
// reference computed from the (already rounded) operands and the initial C.
template <class T, class TC>
void check_gemm(Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, float beta,
                bool nan_in_c = false) {
  INFO("ta " << (ta == Trans::T ? 'T' : 'N') << " tb " << (tb == Trans::T ? 'T' : 'N') << " m " << m << " n " << n
             << " k " << k << " alpha " << alpha << " beta " << beta << (nan_in_c ? " (C holds NaN)" : ""));
  std::mt19937 rng(static_cast<unsigned>(m * 1000003 + n * 1009 + k * 7 + (ta == Trans::T) * 2 + (tb == Trans::T)));
  const Shape sa = ta == Trans::N ? Shape{m, k} : Shape{k, m};
  const Shape sb = tb == Trans::N ? Shape{k, n} : Shape{n, k};
  const auto a = random_values<T>(sa.numel(), rng);
  const auto b = random_values<T>(sb.numel(), rng);
  auto c = random_values<TC>(m * n, rng);
  if (nan_in_c)
    for (auto& x : c) x = TC(std::numeric_limits<float>::quiet_NaN());
  const auto c0 = c;

  // Operand element op(X)[i, j].
  auto at = [](const auto& x, const Shape& s, Trans t, std::int64_t i, std::int64_t j) {
    return static_cast<double>(float(x[static_cast<std::size_t>(t == Trans::N ? i * s[1] + j : j * s[1] + i)]));
  };

  const parallax::host::Context ctx(0);
  Backend::gemm(ctx, ta, tb, alpha, View<const T, HostMemory>(a.data(), sa), View<const T, HostMemory>(b.data(), sb),
                beta, View<TC, HostMemory>(c.data(), Shape{m, n}));

  int bad = 0;
  double worst = 0;
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      double dot = 0, mag = 0;
      for (std::int64_t p = 0; p < k; ++p) {
        const double x = at(a, sa, ta, i, p) * at(b, sb, tb, p, j);
        dot += x;
        mag += std::fabs(x);
      }
      const double cin = beta == 0.f ? 0.0 : static_cast<double>(float(c0[static_cast<std::size_t>(i * n + j)]));
      const double ref = double(alpha) * dot + double(beta) * cin;
      const double scale = std::fabs(double(alpha)) * mag + std::fabs(double(beta) * cin);
      const double tol = 1e-5 * scale + output_rounding<TC>() * std::fabs(ref) + 1e-30;
      const double got = float(c[static_cast<std::size_t>(i * n + j)]);
      const double err = std::fabs(got - ref);
      if (!(err <= tol)) ++bad;
      if (tol > 0) worst = std::max(worst, err / tol);
    }
  INFO("worst error / tolerance " << worst);
  CHECK(bad == 0);
}

template <class T, class TC>
void check_all_transposes() {
  for (Trans ta : {Trans::N, Trans::T})
    for (Trans tb : {Trans::N, Trans::T}) {
      check_gemm<T, TC>(ta, tb, 37, 19, 53, 1.f, 0.f);
      check_gemm<T, TC>(ta, tb, 37, 19, 53, 0.75f, -1.25f);
      check_gemm<T, TC>(ta, tb, 37, 19, 53, 1.f, 0.f, /*nan_in_c=*/true);  // beta == 0 ignores C
      check_gemm<T, TC>(ta, tb, 19, 37, 5, -2.f, 1.f);
      check_gemm<T, TC>(ta, tb, 64, 65, 130, 1.f, 0.5f);  // past one 64-wide k block
      check_gemm<T, TC>(ta, tb, 1, 1, 1, 3.f, 0.5f);
      check_gemm<T, TC>(ta, tb, 1, 23, 17, 1.f, 1.f);  // a row vector
      check_gemm<T, TC>(ta, tb, 23, 1, 17, 1.f, 1.f);  // a column vector
    }
}

}  // namespace

// Operand type, output type.
using GemmTypes = std::tuple<std::tuple<float, float>, std::tuple<bf16, bf16>, std::tuple<bf16, float>,
                             std::tuple<fp16, fp16>, std::tuple<fp16, float>>;

TEMPLATE_LIST_TEST_CASE("host gemm matches a double reference for all transposes", "[backend][host][gemm]", GemmTypes) {
  using T = std::tuple_element_t<0, TestType>;
  using TC = std::tuple_element_t<1, TestType>;
  check_all_transposes<T, TC>();
}

TEMPLATE_LIST_TEST_CASE("host gemm edge sizes: k = 0 scales C by beta and m or n = 0 is a no-op",
                        "[backend][host][gemm]", GemmTypes) {
  using T = std::tuple_element_t<0, TestType>;
  using TC = std::tuple_element_t<1, TestType>;
  const parallax::host::Context ctx(0);
  for (Trans ta : {Trans::N, Trans::T})
    for (Trans tb : {Trans::N, Trans::T}) {
      // k = 0: op(A) op(B) is all zeros.
      std::vector<TC> c{TC(1.f), TC(-2.f), TC(3.f), TC(0.5f), TC(8.f), TC(-0.25f)};
      const std::vector<TC> c0 = c;
      const Shape sa = ta == Trans::N ? Shape{2, 0} : Shape{0, 2};
      const Shape sb = tb == Trans::N ? Shape{0, 3} : Shape{3, 0};
      const View<const T, HostMemory> a(nullptr, sa), b(nullptr, sb);
      Backend::gemm(ctx, ta, tb, 5.f, a, b, 0.5f, View<TC, HostMemory>(c.data(), Shape{2, 3}));
      for (std::size_t i = 0; i < c.size(); ++i) CHECK(float(c[i]) == 0.5f * float(c0[i]));  // exact: powers of 2
      // k = 0 and beta = 0: zeros, even over NaN.
      for (auto& x : c) x = TC(std::numeric_limits<float>::quiet_NaN());
      Backend::gemm(ctx, ta, tb, 5.f, a, b, 0.f, View<TC, HostMemory>(c.data(), Shape{2, 3}));
      for (const auto& x : c) CHECK(float(x) == 0.f);

      // m = 0 and n = 0: nothing to compute, nothing to touch.
      std::vector<T> ops(4 * 7, T(1.f));
      Backend::gemm(ctx, ta, tb, 1.f, View<const T, HostMemory>(ops.data(), ta == Trans::N ? Shape{0, 7} : Shape{7, 0}),
                    View<const T, HostMemory>(ops.data(), tb == Trans::N ? Shape{7, 4} : Shape{4, 7}), 1.f,
                    View<TC, HostMemory>(nullptr, Shape{0, 4}));
      Backend::gemm(ctx, ta, tb, 1.f, View<const T, HostMemory>(ops.data(), ta == Trans::N ? Shape{4, 7} : Shape{7, 4}),
                    View<const T, HostMemory>(ops.data(), tb == Trans::N ? Shape{7, 0} : Shape{0, 7}), 1.f,
                    View<TC, HostMemory>(nullptr, Shape{4, 0}));
    }
  // The 1x1x1 product is exact for representable inputs.
  const T a1(1.5f), b1(-2.f);
  TC c1(0.25f);
  Backend::gemm(ctx, Trans::N, Trans::T, 2.f, View<const T, HostMemory>(&a1, Shape{1, 1}),
                View<const T, HostMemory>(&b1, Shape{1, 1}), 4.f, View<TC, HostMemory>(&c1, Shape{1, 1}));
  CHECK(float(c1) == 2.f * 1.5f * -2.f + 4.f * 0.25f);
}

TEST_CASE("host gemm: shape mismatches throw naming the shapes", "[backend][host][gemm]") {
  const parallax::host::Context ctx(0);
  std::vector<float> buf(64, 0.f);
  auto cv = [&](Shape s) { return View<const float, HostMemory>(buf.data(), s); };
  auto mv = [&](Shape s) { return View<float, HostMemory>(buf.data(), s); };
  auto error_of = [&](Trans ta, Trans tb, Shape a, Shape b, Shape c) -> std::string {
    try {
      Backend::gemm(ctx, ta, tb, 1.f, cv(a), cv(b), 0.f, mv(c));
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  // Inner sizes disagree.
  CHECK_THAT(error_of(Trans::N, Trans::N, Shape{3, 4}, Shape{5, 6}, Shape{3, 6}),
             Contains("gemm") && Contains("op(A) is [3, 4]") && Contains("op(B) is [5, 6]") && Contains("C is [3, 6]"));
  // Transposes are applied before comparing.
  CHECK_THAT(error_of(Trans::T, Trans::N, Shape{3, 4}, Shape{4, 6}, Shape{4, 6}),
             Contains("op(A) is [4, 3]") && Contains("op(B) is [4, 6]"));
  CHECK_THAT(error_of(Trans::N, Trans::T, Shape{3, 4}, Shape{4, 6}, Shape{3, 4}),
             Contains("op(A) is [3, 4]") && Contains("op(B) is [6, 4]") && Contains("C is [3, 4]"));
  CHECK(error_of(Trans::T, Trans::T, Shape{4, 3}, Shape{6, 4}, Shape{3, 6}) == "no error");
  // C's shape is wrong.
  CHECK_THAT(error_of(Trans::N, Trans::N, Shape{3, 4}, Shape{4, 6}, Shape{6, 3}), Contains("C is [6, 3]"));
  CHECK_THAT(error_of(Trans::N, Trans::N, Shape{3, 4}, Shape{4, 6}, Shape{3, 5}), Contains("C is [3, 5]"));
  // Not 2-D.
  CHECK_THAT(error_of(Trans::N, Trans::N, Shape{12}, Shape{4, 6}, Shape{3, 6}),
             Contains("2-D") && Contains("A [12]") && Contains("B [4, 6]") && Contains("C [3, 6]"));
  CHECK_THAT(error_of(Trans::N, Trans::N, Shape{3, 4}, Shape{4, 6}, Shape{1, 3, 6}), Contains("C [1, 3, 6]"));
  // The 16-bit paths check too.
  std::vector<bf16> h(64, bf16(0.f));
  CHECK_THROWS_WITH(Backend::gemm(ctx, Trans::N, Trans::N, 1.f, View<const bf16, HostMemory>(h.data(), Shape{2, 3}),
                                  View<const bf16, HostMemory>(h.data(), Shape{2, 3}), 0.f,
                                  View<float, HostMemory>(buf.data(), Shape{2, 3})),
                    Contains("op(B) is [2, 3]"));
}
