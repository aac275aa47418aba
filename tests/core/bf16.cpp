// Tests for parallax::bf16: exhaustive round trips, a double-arithmetic reference, and special values.
#include <parallax/core/bf16.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <type_traits>

using parallax::bf16;
using parallax::detail::bits_to_float;
using parallax::detail::float_to_bits;

static_assert(sizeof(bf16) == 2);
static_assert(std::is_trivially_copyable_v<bf16>);
static_assert(std::is_standard_layout_v<bf16>);
static_assert(bf16(1.0f).bits == 0x3f80);  // constexpr conversion
static_assert(float(bf16::from_bits(0xc000)) == -2.0f);

namespace {

// Reference: the two bf16 neighbours of |x| found with double arithmetic, nearer wins, ties to even.
std::uint16_t reference_bf16(float x) {
  const std::uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  if (std::isnan(x)) return static_cast<std::uint16_t>(sign | 0x7fc0);
  const double a = std::fabs(static_cast<double>(x));
  if (std::isinf(a)) return static_cast<std::uint16_t>(sign | 0x7f80);
  if (a == 0) return sign;
  int e = 0;
  std::frexp(a, &e);                                      // a = m * 2^e, m in [0.5, 1)
  const double q = std::ldexp(1.0, std::max(e, -125) - 8);  // spacing of bf16 values near a
  const double lo = std::floor(a / q), hi = lo + 1;
  const double d_lo = a - lo * q, d_hi = hi * q - a;
  const double n = d_lo < d_hi ? lo : d_hi < d_lo ? hi : (std::fmod(lo, 2.0) == 0 ? lo : hi);
  const double r = n * q;
  if (r >= std::ldexp(1.0, 128)) return static_cast<std::uint16_t>(sign | 0x7f80);
  return static_cast<std::uint16_t>(sign | (float_to_bits(static_cast<float>(r)) >> 16));
}

void check_against_reference(std::uint32_t u) {
  const float x = bits_to_float(u);
  const bf16 h(x);
  const std::uint16_t want = reference_bf16(x);
  INFO("float bits 0x" << std::hex << u << " got 0x" << h.bits << " want 0x" << want);
  if (std::isnan(x)) {
    REQUIRE(std::isnan(float(h)));
    REQUIRE((h.bits & 0x8040) == (want & 0x8040));  // quiet, sign kept
  } else {
    REQUIRE(h.bits == want);
  }
}

}  // namespace

TEST_CASE("bf16: every bit pattern round-trips through float", "[core][bf16]") {
  for (std::uint32_t b = 0; b <= 0xffff; ++b) {
    const auto h = bf16::from_bits(static_cast<std::uint16_t>(b));
    const float f = h;
    if ((b & 0x7fff) > 0x7f80) {
      REQUIRE(std::isnan(f));
      REQUIRE(std::isnan(float(bf16(f))));
    } else {
      REQUIRE(float_to_bits(f) == b << 16);  // exact widening
      REQUIRE(bf16(f).bits == b);
    }
  }
}

TEST_CASE("bf16: random floats match the double-arithmetic reference", "[core][bf16]") {
  std::mt19937 engine(20240611);
  auto rng = [&engine] { return static_cast<std::uint32_t>(engine()); };
  for (int i = 0; i < 1'000'000; ++i) check_against_reference(rng());
  // Patterns at and next to ties (low 16 bits 0x8000 +- 1), where rounding errors would show.
  for (int i = 0; i < 300'000; ++i) {
    const std::uint32_t hi = rng() & 0xffff0000u;
    check_against_reference(hi | 0x8000u);
    check_against_reference(hi | 0x7fffu);
    check_against_reference(hi | 0x8001u);
  }
}

TEST_CASE("bf16: special values", "[core][bf16]") {
  constexpr float inf = std::numeric_limits<float>::infinity();
  CHECK(bf16(0.0f).bits == 0x0000);
  CHECK(bf16(-0.0f).bits == 0x8000);
  CHECK(bf16(inf).bits == 0x7f80);
  CHECK(bf16(-inf).bits == 0xff80);
  CHECK(bf16(1.0f).bits == 0x3f80);
  CHECK(bf16(-2.0f).bits == 0xc000);

  // NaN stays NaN, becomes quiet, keeps its sign, even when the payload sits only in the dropped bits.
  for (std::uint32_t n : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fa00000u, 0xffffffffu}) {
    const bf16 h(bits_to_float(n));
    INFO("NaN bits 0x" << std::hex << n);
    CHECK(std::isnan(float(h)));
    CHECK((h.bits & 0x0040) != 0);
    CHECK((h.bits & 0x8000) == ((n >> 16) & 0x8000));
  }

  // Max finite, overflow boundary: halfway between 0x7f7f and "0x7f80" is a tie that goes to even = Inf.
  CHECK(bf16(bits_to_float(0x7f7f0000u)).bits == 0x7f7f);
  CHECK(float(bf16::from_bits(0x7f7f)) == 0x1.fep127f);
  CHECK(bf16(bits_to_float(0x7f7f7fffu)).bits == 0x7f7f);
  CHECK(bf16(bits_to_float(0x7f7f8000u)).bits == 0x7f80);
  CHECK(bf16(std::numeric_limits<float>::max()).bits == 0x7f80);
  CHECK(bf16(-std::numeric_limits<float>::max()).bits == 0xff80);

  // Ties to even: 1 + 2^-8 lies between 1 and 1 + 2^-7.
  CHECK(bf16(1.0f + 0x1p-8f).bits == 0x3f80);
  CHECK(bf16(1.0f + 3 * 0x1p-8f).bits == 0x3f82);
  CHECK(bf16(bits_to_float(0x3f808001u)).bits == 0x3f81);

  // Subnormals: the smallest bf16 subnormal is 2^-133; half of it is a tie to zero.
  CHECK(float(bf16::from_bits(0x0001)) == 0x1p-133f);
  CHECK(bf16(0x1p-133f).bits == 0x0001);
  CHECK(bf16(0x1p-134f).bits == 0x0000);
  CHECK(bf16(-0x1p-134f).bits == 0x8000);
  CHECK(bf16(3 * 0x1p-134f).bits == 0x0002);
  CHECK(bf16(std::numeric_limits<float>::denorm_min()).bits == 0x0000);
  CHECK(bf16(bits_to_float(0x007fffffu)).bits == 0x0080);  // largest float subnormal rounds up to min normal

  CHECK(parallax::to_float(bf16(0.5f)) == 0.5f);
  CHECK(bf16{}.bits == 0);
}
