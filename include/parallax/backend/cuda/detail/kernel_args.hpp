// parallax/backend/cuda/detail/kernel_args.hpp — argument types and shape checks of the CUDA backend's kernels.
#pragma once

#include <type_traits>

#include "../../../core/view.hpp"
#include "../../host/detail/kernel_args.hpp"
#include "../memory.hpp"

namespace parallax::cuda::detail {

//! A read-only device view whose element type is deduced from another argument, so that a mutable view
//! (or a tensor) converts to it as well as a const one (`host::detail::In` for device memory).
template <class T>
using In = View<const std::type_identity_t<T>, Memory>;

//! A writable device view whose element type is deduced from another argument.
template <class T>
using Out = View<std::type_identity_t<T>, Memory>;

// The shape checks are the host kernels': same rules, same messages. They only read shapes.
using host::detail::check_position_ids;
using host::detail::expect_rank;
using host::detail::expect_shape;

//! A default-constructed view (`{}`): an optional output the caller asks to skip.
template <class T>
[[nodiscard]] bool absent(const View<T, Memory>& v) noexcept {
  return v.data() == nullptr && v.shape().rank() == 1 && v.shape()[0] == 0;
}

}  // namespace parallax::cuda::detail
