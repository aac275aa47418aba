// parallax/backend/host/detail/kernel_args.hpp — argument types and shape checks shared by the host kernels.
#pragma once

#include <cstdint>
#include <limits>
#include <type_traits>

#include <fmt/format.h>

#include "../../../core/shape.hpp"
#include "../../../core/view.hpp"
#include "../../../error.hpp"
#include "../memory.hpp"

namespace parallax::host::detail {

//! A read-only host view whose element type is deduced from another argument, so that a mutable view
//! (or a tensor) converts to it as well as a const one.
template <class T>
using In = View<const std::type_identity_t<T>, Memory>;

//! A writable host view whose element type is deduced from another argument.
template <class T>
using Out = View<std::type_identity_t<T>, Memory>;

//! Throws "op: name has shape [got], expected [want]" unless the shapes are equal.
inline void expect_shape(const char* op, const char* name, const Shape& got, const Shape& want) {
  if (got != want) throw Error(fmt::format("{}: {} has shape {}, expected {}", op, name, got, want));
}

//! Throws "op: name has shape [got], expected layout" unless `got` has rank `rank`; `layout` reads "[N, D]".
inline void expect_rank(const char* op, const char* name, const Shape& got, int rank, const char* layout) {
  if (got.rank() != rank) throw Error(fmt::format("{}: {} has shape {}, expected {}", op, name, got, layout));
}

//! Throws unless `n` ids are rows of `batch` positions counting from `first`, all within int32 (`position_ids`).
inline void check_position_ids(std::int64_t n, std::int64_t first, std::int64_t batch) {
  if (n == 0) return;
  if (batch <= 0 || n % batch != 0)
    throw Error(fmt::format("position_ids: {} ids are not rows of a batch of {}", n, batch));
  if (first < 0 || first + n / batch - 1 > std::numeric_limits<std::int32_t>::max())
    throw Error(fmt::format("position_ids: positions {} to {} are not int32 positions", first, first + n / batch - 1));
}

//! A default-constructed view (`{}`): an optional output the caller asks to skip.
template <class T>
[[nodiscard]] bool absent(const View<T, Memory>& v) noexcept {
  return v.data() == nullptr && v.shape().rank() == 1 && v.shape()[0] == 0;
}

}  // namespace parallax::host::detail
