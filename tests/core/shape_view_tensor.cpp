// Tests for parallax/core/{shape,view,tensor}.hpp: checked shapes and views, owning tensors and their accounting.
#include <parallax/backend/host/memory.hpp>
#include <parallax/core/allocator.hpp>
#include <parallax/core/memory_stats.hpp>
#include <parallax/core/shape.hpp>
#include <parallax/core/tensor.hpp>
#include <parallax/core/view.hpp>

#include <catch2/catch.hpp>

#include "../support/support.hpp"

#include <cstdint>
#include <cstring>
#include <numeric>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>

using parallax::Allocator;
using parallax::bf16;
using parallax::Error;
using parallax::MemoryCategory;
using parallax::MemoryStats;
using parallax::Shape;
using parallax::Tensor;
using parallax::View;
using HostMemory = parallax::host::Memory;
using Catch::Matchers::Contains;

// A const view does not give write access, and const does not convert back to non-const.
static_assert(std::is_convertible_v<View<float, HostMemory>, View<const float, HostMemory>>);
static_assert(!std::is_convertible_v<View<const float, HostMemory>, View<float, HostMemory>>);
static_assert(std::is_same_v<decltype(std::declval<View<const float, HostMemory>>()(0, 0)), const float&>);
static_assert(std::is_same_v<View<const float, HostMemory>::value_type, float>);
// Tensors are move-only.
static_assert(!std::is_copy_constructible_v<Tensor<float, HostMemory>>);
static_assert(!std::is_copy_assignable_v<Tensor<float, HostMemory>>);
static_assert(std::is_nothrow_move_constructible_v<Tensor<float, HostMemory>>);
static_assert(std::is_nothrow_move_assignable_v<Tensor<float, HostMemory>>);

using parallax::test::error_of;

namespace {

}  // namespace

// ---------------------------------------------------------------------------------------------------------------------
// Shape

TEST_CASE("Shape: rank, dims, numel and row-major strides", "[core][shape]") {
  const Shape s{4, 5, 6};
  CHECK(s.rank() == 3);
  CHECK(s[0] == 4);
  CHECK(s[2] == 6);
  CHECK(s.dim(1) == 5);
  CHECK(s.numel() == 120);
  CHECK(s.stride(0) == 30);
  CHECK(s.stride(1) == 6);
  CHECK(s.stride(2) == 1);

  const Shape scalar{};
  CHECK(scalar.rank() == 0);
  CHECK(scalar.numel() == 1);
  CHECK(Shape().numel() == 1);
  CHECK(Shape{} == Shape());

  CHECK(Shape{3, 0, 2}.numel() == 0);
  CHECK(Shape{3, 0, 2}.stride(0) == 0);
  CHECK(Shape{1, 2, 3, 4}.rank() == Shape::max_rank);
  CHECK(Shape{1, 2, 3, 4}.numel() == 24);
}

TEST_CASE("Shape: rank above 4 and negative dimensions throw", "[core][shape]") {
  CHECK_THAT(error_of([] { Shape s{1, 2, 3, 4, 5}; }), Contains("rank 5") && Contains("maximum of 4"));
  CHECK_THAT(error_of([] { Shape s{2, -3}; }), Contains("dimension 1 is -3") && Contains(">= 0"));
  CHECK_THAT(error_of([] { Shape s{-1}; }), Contains("dimension 0 is -1"));
}

TEST_CASE("Shape: dim() is checked, str() and fmt print it", "[core][shape]") {
  const Shape s{4, 1024};
  CHECK_THAT(error_of([&] { (void)s.dim(2); }), Contains("index 2") && Contains("rank 2") && Contains("[4, 1024]"));
  CHECK_THAT(error_of([&] { (void)s.dim(-1); }), Contains("index -1"));
  CHECK(s.str() == "[4, 1024]");
  CHECK(Shape{}.str() == "[]");
  CHECK(Shape{7}.str() == "[7]");
  CHECK(fmt::format("{}", Shape{2, 3, 4}) == "[2, 3, 4]");
}

TEST_CASE("Shape: with() replaces one dimension, checked", "[core][shape]") {
  const Shape s{4, 5, 6};
  CHECK(s.with(1, 9) == Shape{4, 9, 6});
  CHECK(s.with(0, 0) == Shape{0, 5, 6});
  CHECK(s == Shape{4, 5, 6});  // unchanged
  CHECK(s != Shape{4, 5});
  CHECK(s != Shape{4, 5, 7});
  CHECK_THAT(error_of([&] { (void)s.with(3, 1); }), Contains("index 3") && Contains("rank 3"));
  CHECK_THAT(error_of([&] { (void)s.with(1, -2); }), Contains("dimension 1 would be -2"));
}

// ---------------------------------------------------------------------------------------------------------------------
// View

TEST_CASE("View: element access is row-major and bounds-checked", "[core][view]") {
  std::vector<float> data(6);
  std::iota(data.begin(), data.end(), 0.f);
  const View<float, HostMemory> v(data.data(), Shape{2, 3});
  CHECK(v.numel() == 6);
  CHECK(v.bytes() == 6 * sizeof(float));
  CHECK_FALSE(v.empty());
  CHECK(v(0, 0) == 0.f);
  CHECK(v(1, 2) == 5.f);
  CHECK(v(1, 0) == 3.f);
  v(1, 1) = 42.f;
  CHECK(data[4] == 42.f);
  CHECK(v.flat(4) == 42.f);

  SECTION("wrong number of indices") {
    CHECK_THAT(error_of([&] { (void)v(1); }), Contains("1 indices") && Contains("rank 2") && Contains("[2, 3]"));
    CHECK_THAT(error_of([&] { (void)v(0, 0, 0); }), Contains("3 indices") && Contains("rank 2"));
    CHECK_THAT(error_of([&] { (void)v(); }), Contains("0 indices"));
  }
  SECTION("out of range") {
    CHECK_THAT(error_of([&] { (void)v(2, 0); }),
               Contains("index 2 is out of range [0, 2)") && Contains("dimension 0") && Contains("[2, 3]"));
    CHECK_THAT(error_of([&] { (void)v(0, 3); }), Contains("index 3 is out of range [0, 3)") && Contains("dimension 1"));
    CHECK_THAT(error_of([&] { (void)v(-1, 0); }), Contains("index -1 is out of range [0, 2)"));
    CHECK_THAT(error_of([&] { (void)v(std::int64_t{1} << 40, 0); }), Contains("1099511627776"));
  }
  SECTION("flat out of range") {
    CHECK_THAT(error_of([&] { (void)v.flat(6); }), Contains("flat index 6") && Contains("[0, 6)"));
    CHECK_THAT(error_of([&] { (void)v.flat(-1); }), Contains("flat index -1"));
  }
}

TEST_CASE("View: rank 0, 1 and 4 access", "[core][view]") {
  float x = 3.f;
  const View<float, HostMemory> s(&x, Shape{});
  CHECK(s() == 3.f);
  CHECK(s.numel() == 1);

  std::vector<int> d(2 * 3 * 4 * 5);
  std::iota(d.begin(), d.end(), 0);
  const View<int, HostMemory> v4(d.data(), Shape{2, 3, 4, 5});
  CHECK(v4(1, 2, 3, 4) == 119);
  CHECK(v4(1, 0, 2, 1) == 60 + 10 + 1);
  CHECK_THAT(error_of([&] { (void)v4(1, 2, 4, 0); }),
             Contains("index 4 is out of range [0, 4)") && Contains("dimension 2"));
}

TEST_CASE("View: null data is only allowed for empty shapes", "[core][view]") {
  CHECK_NOTHROW(View<float, HostMemory>(nullptr, Shape{0, 5}));
  CHECK(View<float, HostMemory>(nullptr, Shape{0, 5}).empty());
  // A default view is empty (shape [0]), not a one-element scalar over a null pointer.
  CHECK(View<float, HostMemory>().empty());
  CHECK(View<float, HostMemory>().shape() == Shape{0});
  CHECK_THROWS_AS((View<float, HostMemory>().flat(0)), Error);
  CHECK_THAT(error_of([] { View<float, HostMemory> v(nullptr, Shape{2, 3}); }),
             Contains("null data") && Contains("[2, 3]") && Contains("6 elements"));
}

TEST_CASE("View: rows, reshape and flatten", "[core][view]") {
  std::vector<float> data(12);
  std::iota(data.begin(), data.end(), 0.f);
  const View<float, HostMemory> v(data.data(), Shape{4, 3});

  const auto r = v.rows(1, 3);
  CHECK(r.shape() == Shape{2, 3});
  CHECK(r.data() == data.data() + 3);
  CHECK(r(0, 0) == 3.f);
  CHECK(r(1, 2) == 8.f);
  CHECK(v.rows(4, 4).empty());
  CHECK(v.rows(0, 4).shape() == v.shape());

  CHECK_THAT(error_of([&] { (void)v.rows(2, 5); }), Contains("[2, 5)") && Contains("[4, 3]"));
  CHECK_THAT(error_of([&] { (void)v.rows(3, 2); }), Contains("[3, 2)"));
  CHECK_THAT(error_of([&] { (void)v.rows(-1, 2); }), Contains("[-1, 2)"));
  float x = 0;
  CHECK_THAT(error_of([&] { (void)View<float, HostMemory>(&x, Shape{}).rows(0, 1); }),
             Contains("does not fit shape []"));

  const auto t = v.reshape(Shape{2, 2, 3});
  CHECK(t.shape() == Shape{2, 2, 3});
  CHECK(t.data() == v.data());
  CHECK(t(1, 1, 2) == 11.f);
  CHECK_THAT(error_of([&] { (void)v.reshape(Shape{5, 2}); }),
             Contains("[5, 2] has 10 elements") && Contains("[4, 3] has 12"));

  const auto f = v.flatten();
  CHECK(f.shape() == Shape{12});
  CHECK(f(7) == 7.f);
  CHECK(View<float, HostMemory>(&x, Shape{}).flatten().shape() == Shape{1});
}

TEST_CASE("View: non-const converts to const", "[core][view]") {
  std::vector<float> data{1.f, 2.f, 3.f, 4.f};
  const View<float, HostMemory> v(data.data(), Shape{2, 2});
  const View<const float, HostMemory> c = v;
  CHECK(c.data() == v.data());
  CHECK(c.shape() == v.shape());
  CHECK(c(1, 0) == 3.f);
  const View<const float, HostMemory> rows = c.rows(1, 2);
  CHECK(rows(0, 1) == 4.f);
}

// ---------------------------------------------------------------------------------------------------------------------
// Tensor

TEST_CASE("Tensor: zero-initialised, even over reused dirty memory", "[core][tensor]") {
  MemoryStats stats;
  Allocator<HostMemory> alloc(stats, 0);
  for (int round = 0; round < 3; ++round) {
    Tensor<float, HostMemory> t(alloc, Shape{17, 33}, MemoryCategory::workspace);
    for (std::int64_t i = 0; i < t.numel(); ++i) CHECK(t.data()[i] == 0.f);
    std::memset(t.data(), 0xab, t.bytes());  // dirty it for the next round's allocation
  }
  Tensor<bf16, HostMemory> b(alloc, Shape{5, 7}, MemoryCategory::parameters);
  for (std::int64_t i = 0; i < b.numel(); ++i) CHECK(b.data()[i].bits == 0);
  CHECK(b.bytes() == 70);
  CHECK(b.shape() == Shape{5, 7});
  CHECK(b.category() == MemoryCategory::parameters);
}

TEST_CASE("Tensor: its bytes are live in its category while it lives", "[core][tensor]") {
  MemoryStats stats;
  Allocator<HostMemory> alloc(stats, 3);
  CHECK(alloc.rank() == 3);
  CHECK(&alloc.stats() == &stats);
  {
    Tensor<float, HostMemory> p(alloc, Shape{10, 10}, MemoryCategory::parameters);
    CHECK(stats.live(MemoryCategory::parameters) == 400);
    CHECK(stats.live_total() == 400);
    {
      Tensor<double, HostMemory> g(alloc, Shape{4}, MemoryCategory::gradients);
      CHECK(stats.live(MemoryCategory::gradients) == 32);
      CHECK(stats.live_total() == 432);
    }
    CHECK(stats.live(MemoryCategory::gradients) == 0);
    CHECK(stats.peak(MemoryCategory::gradients) == 32);
    CHECK(stats.live_total() == 400);
    CHECK(stats.peak_total() == 432);

    p.reset();
    CHECK(p.empty());
    CHECK(p.data() == nullptr);
    CHECK(p.shape() == Shape{0});
    CHECK(p.view().empty());
    CHECK(stats.live(MemoryCategory::parameters) == 0);
    p.reset();  // idempotent
  }
  CHECK(stats.live_total() == 0);
  CHECK(stats.peak(MemoryCategory::parameters) == 400);
}

TEST_CASE("Tensor: empty tensors allocate nothing", "[core][tensor]") {
  MemoryStats stats;
  Allocator<HostMemory> alloc(stats, 0);
  Tensor<float, HostMemory> t(alloc, Shape{0, 8}, MemoryCategory::activations);
  CHECK(t.empty());
  CHECK(t.data() == nullptr);
  CHECK(t.shape() == Shape{0, 8});
  CHECK(t.view().empty());
  CHECK(stats.live_total() == 0);
  CHECK(to_vector(t.cview()).empty());
  Tensor<float, HostMemory> d;
  CHECK(d.empty());
  CHECK(d.numel() == 0);
  CHECK(d.bytes() == 0);
  CHECK(d.view().empty());
  // A scalar (rank 0) tensor is one element.
  Tensor<float, HostMemory> s(alloc, Shape{}, MemoryCategory::activations);
  CHECK_FALSE(s.empty());
  CHECK(stats.live_total() == sizeof(float));
  s() = 2.f;
  CHECK(s() == 2.f);
}

TEST_CASE("Tensor: move construction and assignment transfer ownership once", "[core][tensor]") {
  MemoryStats stats;
  Allocator<HostMemory> alloc(stats, 0);
  constexpr auto act = MemoryCategory::activations;
  constexpr auto opt = MemoryCategory::optimizer;

  Tensor<float, HostMemory> a(alloc, Shape{2, 3}, act);
  a(1, 2) = 7.f;
  float* const pa = a.data();

  Tensor<float, HostMemory> b(std::move(a));
  CHECK(b.data() == pa);
  CHECK(b.shape() == Shape{2, 3});
  CHECK(b.category() == act);
  CHECK(b(1, 2) == 7.f);
  CHECK(a.data() == nullptr);  // NOLINT(bugprone-use-after-move): moved-from state is specified
  CHECK(a.empty());
  CHECK(a.bytes() == 0);
  CHECK(a.view().empty());
  CHECK(stats.live(act) == 24);

  Tensor<float, HostMemory> c(alloc, Shape{5}, opt);
  CHECK(stats.live(opt) == 20);
  c = std::move(b);  // c's own optimizer bytes are freed, b's activations move over
  CHECK(stats.live(opt) == 0);
  CHECK(stats.live(act) == 24);
  CHECK(c.data() == pa);
  CHECK(c.category() == act);
  CHECK(b.data() == nullptr);  // NOLINT(bugprone-use-after-move)

  auto& alias = c;
  c = std::move(alias);  // self-move keeps the tensor
  CHECK(c.data() == pa);
  CHECK(stats.live(act) == 24);

  a = Tensor<float, HostMemory>(alloc, Shape{3}, opt);  // a moved-from tensor is reusable
  CHECK(stats.live(opt) == 12);
  a = Tensor<float, HostMemory>();
  CHECK(stats.live(opt) == 0);

  {
    Tensor<float, HostMemory> sink(std::move(c));
  }
  CHECK(stats.live_total() == 0);
  CHECK(stats.peak(act) == 24);
}

TEST_CASE("Tensor: element access and view conversions", "[core][tensor]") {
  MemoryStats stats;
  Allocator<HostMemory> alloc(stats, 0);
  Tensor<float, HostMemory> t(alloc, Shape{3, 4}, MemoryCategory::workspace);
  t(2, 3) = 1.5f;
  const View<float, HostMemory> v = t;
  const View<const float, HostMemory> c = t;
  CHECK(v(2, 3) == 1.5f);
  CHECK(c(2, 3) == 1.5f);
  CHECK(v.data() == t.data());
  CHECK(t.cview().shape() == Shape{3, 4});
  CHECK_THAT(error_of([&] { (void)t(3, 0); }), Contains("index 3 is out of range [0, 3)"));
  CHECK_THAT(error_of([&] { (void)t(0); }), Contains("1 indices"));
}

// ---------------------------------------------------------------------------------------------------------------------
// to_vector, copy_from, copy

TEST_CASE("to_vector, copy_from and copy move elements and check sizes", "[core][tensor]") {
  MemoryStats stats;
  Allocator<HostMemory> alloc(stats, 0);
  Tensor<float, HostMemory> t(alloc, Shape{2, 2}, MemoryCategory::workspace);
  const std::vector<float> values{1.f, 2.f, 3.f, 4.f};
  parallax::copy_from(t.view(), std::span<const float>(values));
  CHECK(to_vector(t.cview()) == values);
  CHECK(to_vector(t.view()) == values);
  CHECK(t(1, 0) == 3.f);

  const std::vector<float> three{1.f, 2.f, 3.f};
  CHECK_THAT(error_of([&] { parallax::copy_from(t.view(), std::span<const float>(three)); }),
             Contains("3 values") && Contains("[2, 2]") && Contains("4 elements"));
  CHECK(to_vector(t.cview()) == values);  // untouched

  Tensor<float, HostMemory> flat(alloc, Shape{4}, MemoryCategory::workspace);
  parallax::copy(flat.view(), t.cview());  // same count, different shape
  CHECK(to_vector(flat.cview()) == values);

  Tensor<float, HostMemory> five(alloc, Shape{5}, MemoryCategory::workspace);
  CHECK_THAT(error_of([&] { parallax::copy(five.view(), t.cview()); }),
             Contains("destination [5] has 5 elements") && Contains("source [2, 2] has 4"));
  CHECK_THAT(error_of([&] { parallax::copy(t.view(), five.cview()); }),
             Contains("destination [2, 2] has 4 elements") && Contains("source [5] has 5"));

  // Empty copies are fine.
  Tensor<float, HostMemory> e(alloc, Shape{0}, MemoryCategory::workspace);
  CHECK_NOTHROW(parallax::copy_from(e.view(), std::span<const float>()));
  CHECK_NOTHROW(parallax::copy(e.view(), e.cview()));
}
