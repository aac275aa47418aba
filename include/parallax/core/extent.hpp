// parallax/core/extent.hpp — `dynamic` extents, and sizes known at compile time (`fixed<N>`).
#pragma once

#include <cstdint>
#include <type_traits>

namespace parallax {

//! Marks a template extent whose value is resolved at run time, e.g. `DeviceMesh<2, dynamic, 4>`.
inline constexpr int dynamic = -1;

//! A size known at compile time. Modules take sizes as `std::int64_t` or as `fixed<N>`; with `fixed<N>`
//! and a static mesh, a size that does not divide over the mesh fails to compile instead of throwing.
//! @code
//! ColumnParallelLinear<Mesh, B, float> up(mesh, fixed<1024>, fixed<4096>);
//! @endcode
template <std::int64_t N>
struct Fixed {
  static_assert(N >= 0, "parallax::fixed<N>: a size must be non-negative");
  static constexpr std::int64_t value = N;
  constexpr operator std::int64_t() const noexcept { return N; }
};
template <std::int64_t N>
inline constexpr Fixed<N> fixed{};

//! Whether `S` is a `Fixed<N>`.
template <class S>
inline constexpr bool is_fixed = false;
template <std::int64_t N>
inline constexpr bool is_fixed<Fixed<N>> = true;

//! A module size argument: a run-time integer or a `fixed<N>`.
template <class S>
concept SizeArg = is_fixed<std::remove_cvref_t<S>> || std::is_integral_v<std::remove_cvref_t<S>>;

}  // namespace parallax
