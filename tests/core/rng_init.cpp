// Tests for parallax/core/rng.hpp and init.hpp: Philox known answers, initialiser statistics, and the
// key property that a sharded fill equals the slice of the unsharded fill, for every shard layout.
#include <parallax/backend/host/memory.hpp>
#include <parallax/core/allocator.hpp>
#include <parallax/core/init.hpp>
#include <parallax/core/rng.hpp>
#include <parallax/core/tensor.hpp>

#include <catch2/catch.hpp>

#include "../support/support.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

using parallax::bf16;
using parallax::Error;
using parallax::fp16;
using parallax::Philox4x32;
using parallax::Shape;
using parallax::View;
using parallax::init::Slice;
using HostMemory = parallax::host::Memory;
using Catch::Matchers::Contains;

using parallax::test::bits_of;

namespace {

using Words = Philox4x32::counter_type;

template <class T>
std::string error_of_fill(View<T, HostMemory> v, const Slice& s) {
  try {
    parallax::init::fill(v, parallax::init::normal(1.f, 1), s);
  } catch (const Error& e) {
    return e.what();
  }
  FAIL("expected a parallax::Error");
  return {};
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------------
// Philox4x32-10 known answers (Random123 kat_vectors: philox4x32 10 ...).

TEST_CASE("Philox4x32-10 matches the Random123 known-answer vectors", "[core][rng]") {
  // Evaluated at compile time: the generator is usable in constant expressions.
  constexpr Words zero = Philox4x32::generate({0, 0, 0, 0}, {0, 0});
  constexpr Words ones = Philox4x32::generate({0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
                                              {0xffffffffu, 0xffffffffu});
  constexpr Words pi = Philox4x32::generate({0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
                                            {0xa4093822u, 0x299f31d0u});
  CHECK(zero == Words{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u});
  CHECK(ones == Words{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu});
  CHECK(pi == Words{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u});
  // The same at run time.
  volatile std::uint32_t z = 0;
  CHECK(Philox4x32::generate({z, z, z, z}, {z, z}) == zero);
}

TEST_CASE("random_words packs (seed, stream, index) into Philox's key and counter", "[core][rng]") {
  const std::uint64_t seed = 0x0123456789abcdefull, stream = 0xfedcba9876543210ull, index = 0x1122334455667788ull;
  CHECK(parallax::random_words(seed, stream, index) ==
        Philox4x32::generate({0x55667788u, 0x11223344u, 0x76543210u, 0xfedcba98u}, {0x89abcdefu, 0x01234567u}));
  CHECK(parallax::random_words(0, 0, 0) == Words{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u});
  // Every input matters.
  CHECK(parallax::random_words(1, 0, 0) != parallax::random_words(0, 0, 0));
  CHECK(parallax::random_words(0, 1, 0) != parallax::random_words(0, 0, 0));
  CHECK(parallax::random_words(0, 0, 1) != parallax::random_words(0, 0, 0));
  CHECK(parallax::random_words(0, 0, std::uint64_t{1} << 32) != parallax::random_words(0, 0, 0));
  CHECK(parallax::random_words(std::uint64_t{1} << 32, 0, 0) != parallax::random_words(0, 0, 0));
}

// ---------------------------------------------------------------------------------------------------------------------
// Initialiser statistics

TEST_CASE("init::normal has mean ~0 and std ~1 over 1e5 samples", "[core][init]") {
  constexpr int n = 100000;
  for (std::uint64_t seed : {0ull, 1ull, 12345ull}) {
    const auto g = parallax::init::normal(1.f, seed);
    double s = 0, s2 = 0;
    int within_1 = 0, within_2 = 0, nonfinite = 0;
    for (int i = 0; i < n; ++i) {
      const double x = g(static_cast<std::uint64_t>(i));
      nonfinite += !std::isfinite(x);
      s += x;
      s2 += x * x;
      within_1 += std::fabs(x) < 1.0;
      within_2 += std::fabs(x) < 2.0;
    }
    const double mean = s / n, sd = std::sqrt(s2 / n - mean * mean);
    INFO("seed " << seed << " mean " << mean << " std " << sd);
    CHECK(nonfinite == 0);
    CHECK(std::fabs(mean) < 0.015);  // ~4.7 standard errors (1/sqrt(n) = 0.0032)
    CHECK(std::fabs(sd - 1.0) < 0.01);  // ~4.5 standard errors (1/sqrt(2n) = 0.0022)
    CHECK(std::fabs(within_1 / double(n) - 0.6827) < 0.007);
    CHECK(std::fabs(within_2 / double(n) - 0.9545) < 0.004);
  }
}

TEST_CASE("init::normal honours mean and std and is a pure function of (seed, index)", "[core][init]") {
  constexpr int n = 100000;
  const auto g = parallax::init::normal(0.02f, 7, 3.f);
  double s = 0, s2 = 0;
  for (int i = 0; i < n; ++i) {
    const double x = g(static_cast<std::uint64_t>(i));
    s += x;
    s2 += x * x;
  }
  const double mean = s / n, sd = std::sqrt(s2 / n - mean * mean);
  CHECK(std::fabs(mean - 3.0) < 0.015 * 0.02);
  CHECK(std::fabs(sd - 0.02) < 0.01 * 0.02);

  const auto a = parallax::init::normal(1.f, 42), b = parallax::init::normal(1.f, 42);
  const auto c = parallax::init::normal(1.f, 43);
  int same_seed_equal = 0, other_seed_equal = 0;
  for (std::uint64_t i = 0; i < 1000; ++i) {
    same_seed_equal += a(i) == b(i);
    other_seed_equal += a(i) == c(i);
  }
  CHECK(same_seed_equal == 1000);
  CHECK(other_seed_equal == 0);
}

TEST_CASE("init::uniform stays in [lo, hi) and covers it", "[core][init]") {
  constexpr int n = 100000;
  // The last range is narrow at large magnitude: lo + (hi - lo) * u rounds up to hi unless guarded.
  const std::vector<std::pair<float, float>> ranges{{0.f, 1.f}, {-2.f, 3.f}, {-0.1f, 0.1f}, {1000.f, 1001.f}};
  for (auto [lo, hi] : ranges) {
    const auto u = parallax::init::uniform(lo, hi, 99);
    double s = 0, mn = hi, mx = lo;
    int outside = 0, lower_half = 0;
    for (int i = 0; i < n; ++i) {
      const float x = u(static_cast<std::uint64_t>(i));
      outside += !(x >= lo && x < hi);
      lower_half += x < lo + (hi - lo) / 2;
      s += x;
      mn = std::min<double>(mn, x);
      mx = std::max<double>(mx, x);
    }
    INFO("range [" << lo << ", " << hi << ")");
    CHECK(outside == 0);
    const double w = double(hi) - lo;
    CHECK(std::fabs(s / n - (double(lo) + hi) / 2) < 0.01 * w);
    CHECK(mn < lo + 0.001 * w);
    CHECK(mx > hi - 0.001 * w);
    CHECK(std::fabs(lower_half / double(n) - 0.5) < 0.01);
  }
  // Different streams: uniform and normal with the same seed are not the same numbers.
  CHECK(parallax::init::uniform(0.f, 1.f, 5)(0) != parallax::init::normal(1.f, 5)(0));
}

TEST_CASE("init::constant and the whole-tensor fill", "[core][init]") {
  std::vector<float> f(12, -1.f);
  parallax::init::fill(View<float, HostMemory>(f.data(), Shape{3, 4}), parallax::init::constant(0.5f));
  for (float x : f) CHECK(x == 0.5f);

  // Whole fill: element i is init(i), rounded to the element type.
  const auto g = parallax::init::normal(0.5f, 3);
  std::vector<bf16> b(2 * 3 * 5);
  parallax::init::fill(View<bf16, HostMemory>(b.data(), Shape{2, 3, 5}), g);
  for (std::size_t i = 0; i < b.size(); ++i) CHECK(b[i].bits == bf16(g(i)).bits);

  // A rank-0 tensor is one element, index 0.
  float scalar = 0.f;
  parallax::init::fill(View<float, HostMemory>(&scalar, Shape{}), g);
  CHECK(scalar == g(0));
}

// ---------------------------------------------------------------------------------------------------------------------
// Sharded fill == slice of the unsharded fill

namespace {

// Copies the slice [offset, offset + size) of dimension `dim` out of a row-major global array.
template <class T>
std::vector<T> slice_of(const std::vector<T>& global, const Shape& g, int dim, std::int64_t offset, std::int64_t size) {
  const std::int64_t outer = g.numel() / (g.stride(dim) * g[dim]);
  const std::int64_t inner = g.stride(dim);
  std::vector<T> out;
  for (std::int64_t o = 0; o < outer; ++o)
    for (std::int64_t i = offset; i < offset + size; ++i)
      for (std::int64_t j = 0; j < inner; ++j)
        out.push_back(global[static_cast<std::size_t>((o * g[dim] + i) * inner + j)]);
  return out;
}

// Shard sizes of `n` split into k pieces as evenly as possible, and a deliberately lopsided split.
std::vector<std::vector<std::int64_t>> splits_of(std::int64_t n) {
  std::vector<std::vector<std::int64_t>> splits;
  for (int k : {2, 3, 4}) {
    std::vector<std::int64_t> sizes;
    for (int i = 0; i < k; ++i) sizes.push_back(n * (i + 1) / k - n * i / k);
    splits.push_back(sizes);
  }
  if (n >= 2) splits.push_back({n - 1, 1});
  splits.push_back({0, n, 0});  // empty shards at both ends
  return splits;
}

template <class T, class Init>
void check_sharded_fill(const Shape& g, const Init& init) {
  parallax::MemoryStats stats;
  parallax::Allocator<HostMemory> alloc(stats, 0);
  parallax::Tensor<T, HostMemory> full(alloc, g, parallax::MemoryCategory::parameters);
  parallax::init::fill(full.view(), init);
  const auto global = parallax::to_vector(full.cview());

  for (int dim = 0; dim < g.rank(); ++dim) {
    for (const auto& sizes : splits_of(g[dim])) {
      std::int64_t offset = 0;
      for (std::int64_t size : sizes) {
        INFO("global " << g.str() << " dim " << dim << " shard of " << size << " at offset " << offset << " of "
                       << sizes.size() << " shards");
        parallax::Tensor<T, HostMemory> local(alloc, g.with(dim, size), parallax::MemoryCategory::parameters);
        parallax::init::fill(local.view(), init, Slice{g, dim, offset});
        const auto got = parallax::to_vector(local.cview());
        const auto want = slice_of(global, g, dim, offset, size);
        REQUIRE(got.size() == want.size());
        int mismatches = 0;
        for (std::size_t i = 0; i < got.size(); ++i) mismatches += bits_of(got[i]) != bits_of(want[i]);
        CHECK(mismatches == 0);
        offset += size;
      }
      REQUIRE(offset == g[dim]);
    }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("init::fill of a shard equals the slice of the unsharded fill", "[core][init]", float, bf16, fp16) {
  // The global fill must not be constant, or the comparison would prove nothing.
  {
    std::vector<TestType> v(70);
    parallax::init::fill(View<TestType, HostMemory>(v.data(), Shape{7, 10}), parallax::init::normal(1.f, 11));
    int equal_neighbours = 0;
    for (std::size_t i = 1; i < v.size(); ++i) equal_neighbours += bits_of(v[i]) == bits_of(v[i - 1]);
    REQUIRE(equal_neighbours == 0);
  }
  const std::vector<Shape> shapes{Shape{7, 10}, Shape{12, 5}, Shape{3, 5, 6}, Shape{4, 7, 9}, Shape{5, 1, 8}};
  for (const Shape& g : shapes) {
    check_sharded_fill<TestType>(g, parallax::init::normal(1.f, 11));
    check_sharded_fill<TestType>(g, parallax::init::uniform(-0.5f, 0.5f, 12));
    check_sharded_fill<TestType>(g, parallax::init::normal(0.02f, 0xdeadbeefcafef00dull, 1.f));
  }
  check_sharded_fill<TestType>(Shape{2, 3, 4, 5}, parallax::init::normal(1.f, 13));  // rank 4 too
}

TEST_CASE("init::fill rejects a slice that does not fit", "[core][init]") {
  std::vector<float> buf(64);
  const View<float, HostMemory> v34(buf.data(), Shape{3, 4});
  const Shape g{8, 4};

  CHECK_NOTHROW(parallax::init::fill(v34, parallax::init::constant(1.f), Slice{g, 0, 5}));  // rows 5..7: fits exactly
  // Past the end of the split dimension.
  CHECK_THAT(error_of_fill(v34, Slice{g, 0, 6}),
             Contains("[3, 4]") && Contains("offset 6") && Contains("dimension 0") && Contains("[8, 4]"));
  CHECK_THAT(error_of_fill(v34, Slice{g, 0, -1}), Contains("offset -1"));
  // Another dimension differs from the global one.
  CHECK_THAT(error_of_fill(v34, Slice{Shape{8, 5}, 0, 0}), Contains("[8, 5]"));
  CHECK_THAT(error_of_fill(v34, Slice{Shape{3, 8}, 0, 0}), Contains("[3, 8]"));
  // Split along dim 1: [3, 4] at column offset 4 of [3, 8] fits; offset 5 does not.
  CHECK_NOTHROW(parallax::init::fill(v34, parallax::init::constant(1.f), Slice{Shape{3, 8}, 1, 4}));
  CHECK_THAT(error_of_fill(v34, Slice{Shape{3, 8}, 1, 5}), Contains("offset 5") && Contains("dimension 1"));
  // Rank mismatch and a dimension outside the rank.
  CHECK_THAT(error_of_fill(v34, Slice{Shape{3, 4, 1}, 0, 0}), Contains("[3, 4, 1]"));
  CHECK_THAT(error_of_fill(v34, Slice{Shape{12}, 0, 0}), Contains("[12]"));
  CHECK_THAT(error_of_fill(v34, Slice{Shape{3, 4}, 2, 0}), Contains("dimension 2"));
  CHECK_THAT(error_of_fill(v34, Slice{Shape{3, 4}, -1, 0}), Contains("dimension -1"));
  // bf16 too.
  std::vector<bf16> b(12);
  CHECK_THAT(error_of_fill(View<bf16, HostMemory>(b.data(), Shape{3, 4}), Slice{g, 0, 7}), Contains("offset 7"));
}
