// parallax/tp/divisible.hpp — the one check that a size split over tensor parallelism divides by TP.
#pragma once

#include <cstdint>
#include <string_view>
#include <type_traits>

#include <fmt/format.h>

#include "../core/extent.hpp"
#include "../error.hpp"

namespace parallax::tp {

//! False only when the size type `S` is a `fixed<N>`, `Mesh`'s TP extent is static and N is not a multiple
//! of it: the condition of the `static_assert` a tensor-parallel module states for each size it splits.
//! @code
//! static_assert(tp::statically_divisible<Mesh, Out>,
//!               "ColumnParallelLinear: fixed<N> output features are not divisible by the mesh's static TP extent");
//! @endcode
template <class Mesh, class S>
inline constexpr bool statically_divisible = [] {
  using Size = std::remove_cvref_t<S>;
  if constexpr (is_fixed<Size> && Mesh::static_tp != dynamic)
    return Size::value % Mesh::static_tp == 0;
  else
    return true;
}();

//! Checks at run time that `size` (a count split over the mesh's TP group) divides by TP and returns the
//! per-rank share `size / TP`; otherwise throws "`module`: `what` `size` are not divisible by TP `tp`",
//! naming this rank. `module` reads like "ColumnParallelLinear 'fc1'", `what` like "output features".
//! @code
//! const std::int64_t local_out = tp::check_divisible(mesh, "ColumnParallelLinear 'fc1'", "output features", out);
//! @endcode
template <class Mesh, SizeArg S>
std::int64_t check_divisible(const Mesh& mesh, std::string_view module, std::string_view what, S size) {
  const auto n = static_cast<std::int64_t>(size);
  const int tp = mesh.tp_size();
  if (n % tp != 0)
    throw Error(fmt::format("{}: {} {} are not divisible by TP {}", module, what, n, tp), mesh.rank());
  return n / tp;
}

}  // namespace parallax::tp
