// parallax/backend/concept.hpp — the Backend concept that host::Backend and cuda::Backend model.
#pragma once

#include <concepts>

#include "../core/memory_space.hpp"
#include "../core/view.hpp"
#include "trans.hpp"

namespace parallax {

//! A backend is a type naming a memory space, a per-rank execution context and the closed set of
//! kernels the layers need, as static functions (`B::gemm`, `B::axpby`, ...).
template <class B>
concept Backend = MemorySpace<typename B::Memory> && requires(const typename B::Context& ctx, float a,
                                                              View<const float, typename B::Memory> x,
                                                              View<float, typename B::Memory> y) {
  { B::name } -> std::convertible_to<const char*>;
  ctx.synchronize();
  B::fill(ctx, y, a);
  B::copy(ctx, x, y);
  B::axpby(ctx, a, x, a, y);
  B::gemm(ctx, Trans::N, Trans::N, a, x, x, a, y);
  { B::sum_squares(ctx, x) } -> std::convertible_to<double>;
};

}  // namespace parallax
