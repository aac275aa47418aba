// Tests for parallax::fp16: exhaustive round trips, GCC's _Float16 as the oracle, and special values.
#include <parallax/core/fp16.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <type_traits>

using parallax::fp16;
using parallax::detail::bits_to_float;
using parallax::detail::float_to_bits;

static_assert(sizeof(fp16) == 2);
static_assert(std::is_trivially_copyable_v<fp16>);
static_assert(std::is_standard_layout_v<fp16>);
static_assert(fp16(1.0f).bits == 0x3c00);  // constexpr conversion
static_assert(float(fp16::from_bits(0x0001)) == 0x1p-24f);

TEST_CASE("fp16: every bit pattern round-trips through float", "[core][fp16]") {
  for (std::uint32_t b = 0; b <= 0xffff; ++b) {
    const auto h = fp16::from_bits(static_cast<std::uint16_t>(b));
    const float f = h;
    if ((b & 0x7fff) > 0x7c00) {
      REQUIRE(std::isnan(f));
      REQUIRE(std::isnan(float(fp16(f))));
    } else {
      INFO("half bits 0x" << std::hex << b);
      REQUIRE(fp16(f).bits == b);
    }
  }
}

#if defined(__FLT16_MANT_DIG__)
TEST_CASE("fp16: random floats match _Float16", "[core][fp16]") {
  auto check_oracle = [](std::uint32_t u) {
    const float x = bits_to_float(u);
    const fp16 h(x);
    const _Float16 ref = static_cast<_Float16>(x);
    std::uint16_t want = 0;
    std::memcpy(&want, &ref, sizeof want);
    INFO("float bits 0x" << std::hex << u << " got 0x" << h.bits << " want 0x" << want);
    if (std::isnan(x)) {
      REQUIRE(std::isnan(float(h)));
      REQUIRE((h.bits & 0x8200) == (((u >> 16) & 0x8000) | 0x0200));  // quiet, sign kept
    } else {
      REQUIRE(h.bits == want);
      REQUIRE(float(h) == static_cast<float>(ref));
    }
  };
  std::mt19937 engine(20240611);
  auto rng = [&engine] { return static_cast<std::uint32_t>(engine()); };
  for (int i = 0; i < 1'000'000; ++i) check_oracle(rng());
  // Uniform patterns rarely land in half range; also draw exponents around it (2^-30 .. 2^17) and ties.
  for (int i = 0; i < 1'000'000; ++i) {
    const std::uint32_t exp = 97 + rng() % 48;
    const std::uint32_t u = (rng() & 0x807fffffu) | (exp << 23);
    check_oracle(u);
    // Force a tie at the rounding position for normal halfs (13 dropped bits) and next to it.
    check_oracle((u & ~0x1fffu) | 0x1000u);
    check_oracle((u & ~0x1fffu) | 0x0fffu);
  }
  for (std::uint32_t exp = 97; exp < 113; ++exp) {  // ties in the subnormal range: drop (126 - exp) bits
    const std::uint32_t shift = 126 - exp;
    for (std::uint32_t m = 0; m < 4096; ++m) {
      const std::uint32_t man = (m << shift | 1u << (shift - 1)) & 0x7fffffu;
      check_oracle((exp << 23) | man);
      check_oracle(0x80000000u | (exp << 23) | man);
    }
  }
}
#endif

TEST_CASE("fp16: special values", "[core][fp16]") {
  constexpr float inf = std::numeric_limits<float>::infinity();
  CHECK(fp16(0.0f).bits == 0x0000);
  CHECK(fp16(-0.0f).bits == 0x8000);
  CHECK(fp16(inf).bits == 0x7c00);
  CHECK(fp16(-inf).bits == 0xfc00);
  CHECK(float(fp16::from_bits(0x7c00)) == inf);
  CHECK(float(fp16::from_bits(0xfc00)) == -inf);
  CHECK(fp16(1.0f).bits == 0x3c00);
  CHECK(fp16(-2.0f).bits == 0xc000);

  // NaN stays NaN, becomes quiet, keeps its sign, even when the payload sits only in the dropped bits.
  for (std::uint32_t n : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fa00000u, 0xffffffffu}) {
    const fp16 h(bits_to_float(n));
    INFO("NaN bits 0x" << std::hex << n);
    CHECK(std::isnan(float(h)));
    CHECK((h.bits & 0x0200) != 0);
    CHECK((h.bits & 0x8000) == ((n >> 16) & 0x8000));
  }
  CHECK(std::isnan(float(fp16::from_bits(0x7c01))));
  CHECK(std::isnan(float(fp16::from_bits(0xfe00))));

  // Max finite and the overflow boundary 65520 (a tie between 65504 and 65536; 65536 is even, so Inf).
  CHECK(fp16(65504.0f).bits == 0x7bff);
  CHECK(float(fp16::from_bits(0x7bff)) == 65504.0f);
  CHECK(fp16(std::nextafter(65520.0f, 0.0f)).bits == 0x7bff);
  CHECK(fp16(65520.0f).bits == 0x7c00);
  CHECK(fp16(-65520.0f).bits == 0xfc00);
  CHECK(fp16(1e6f).bits == 0x7c00);
  CHECK(fp16(std::numeric_limits<float>::max()).bits == 0x7c00);

  // Ties to even among normals: 1 + 2^-11 lies between 1 and 1 + 2^-10.
  CHECK(fp16(1.0f + 0x1p-11f).bits == 0x3c00);
  CHECK(fp16(1.0f + 3 * 0x1p-11f).bits == 0x3c02);
  CHECK(fp16(std::nextafter(1.0f + 0x1p-11f, 2.0f)).bits == 0x3c01);

  // Subnormal halfs: smallest 2^-24, largest (1023) * 2^-24, smallest normal 2^-14.
  CHECK(float(fp16::from_bits(0x0001)) == 0x1p-24f);
  CHECK(float(fp16::from_bits(0x83ff)) == -1023 * 0x1p-24f);
  CHECK(fp16(0x1p-24f).bits == 0x0001);
  CHECK(fp16(0x1p-14f).bits == 0x0400);
  CHECK(fp16(1023 * 0x1p-24f).bits == 0x03ff);
  CHECK(fp16(1023.5f * 0x1p-24f).bits == 0x0400);  // tie, rounds up to even = smallest normal
  CHECK(fp16(0x1p-25f).bits == 0x0000);            // tie between 0 and 2^-24: zero is even
  CHECK(fp16(-0x1p-25f).bits == 0x8000);
  CHECK(fp16(std::nextafter(0x1p-25f, 1.0f)).bits == 0x0001);
  CHECK(fp16(3 * 0x1p-25f).bits == 0x0002);         // tie between 1 and 2 units: 2 is even
  CHECK(fp16(5 * 0x1p-25f).bits == 0x0002);         // tie between 2 and 3 units
  CHECK(fp16(std::numeric_limits<float>::denorm_min()).bits == 0x0000);

  CHECK(parallax::to_float(fp16(0.5f)) == 0.5f);
  CHECK(fp16{}.bits == 0);
}
