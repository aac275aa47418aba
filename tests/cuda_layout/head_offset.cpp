// Tests of the index math of the CUDA backend's head-layout copies (parallax/backend/cuda/detail/head_offset.hpp),
// on the host: every unit of a packed [T, B, S * H * Dh] activation, moved as single elements or as 16-byte chunks,
// with 32- and 64-bit offsets, must land where the host backend's split_qkv / merge_heads put its elements.

#include <parallax/backend/cuda/detail/head_offset.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace {

namespace cd = parallax::cuda::detail;
using i64 = std::int64_t;

//! The host backend's layout (backend/host/attention.hpp): packed[t, b, s * H * Dh + h * Dh + i] is element
//! [b, h, t, i] of section s.
struct Place {
  int section;
  i64 offset;
};
Place host_place(i64 p, const cd::HeadDims& d) {
  const i64 i = p % d.dh, h = (p / d.dh) % d.nh, s = (p / (d.dh * d.nh)) % d.sections,
            b = (p / (d.dh * d.nh * d.sections)) % d.nb, t = p / (d.dh * d.nh * d.sections * d.nb);
  return {static_cast<int>(s), ((b * d.nh + h) * d.nt + t) * d.dh + i};
}

//! Checks every unit when a unit is `per_unit` elements; returns the first mismatch, or "".
template <class Index>
std::string check_units(const cd::HeadDims& d, i64 per_unit) {
  const i64 elements = d.nt * d.nb * d.sections * d.nh * d.dh, units = d.dh / per_unit;
  std::vector<int> hits(static_cast<std::size_t>(elements), 0);
  for (i64 u = 0; u < elements / per_unit; ++u) {
    int s = -1;
    const auto o = static_cast<i64>(cd::head_unit_offset(static_cast<Index>(u), static_cast<Index>(units), d, s));
    for (i64 e = 0; e < per_unit; ++e) {
      const Place want = host_place(u * per_unit + e, d);
      if (s != want.section || o * per_unit + e != want.offset)
        return "unit " + std::to_string(u) + " element " + std::to_string(e) + ": section " + std::to_string(s) +
               " offset " + std::to_string(o * per_unit + e) + ", expected " + std::to_string(want.section) + " " +
               std::to_string(want.offset);
      ++hits[static_cast<std::size_t>(want.section * (elements / d.sections) + want.offset)];
    }
  }
  for (int h : hits)
    if (h != 1) return "an element of the head-major operands was written " + std::to_string(h) + " times";
  return "";
}

}  // namespace

TEST_CASE("head layout offsets: every unit of the packed activation lands where the host layout puts it",
          "[cuda][layout][head]") {
  // B, H, T, Dh, sections; units of 1 element, and of 8 (16 bytes of bf16) or 4 (16 bytes of fp32) where Dh allows.
  const std::vector<cd::HeadDims> shapes{{2, 3, 5, 4, 3}, {3, 2, 7, 33, 3}, {1, 1, 1, 1, 1},  {2, 12, 16, 64, 3},
                                         {2, 4, 9, 128, 1}, {4, 2, 3, 8, 1},  {1, 5, 11, 16, 3}};
  for (const auto& d : shapes) {
    INFO("B " << d.nb << " H " << d.nh << " T " << d.nt << " Dh " << d.dh << " sections " << d.sections);
    for (const i64 per_unit : {i64{1}, i64{4}, i64{8}}) {
      if (d.dh % per_unit != 0) continue;
      INFO(per_unit << " elements a unit");
      CHECK(check_units<std::uint32_t>(d, per_unit).empty());
      CHECK(check_units<std::uint64_t>(d, per_unit).empty());
    }
  }
}
