// parallax/nn/module.hpp — the module protocol: forward, split backward, per-microbatch contexts, parameters.
#pragma once

#include <concepts>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <fmt/format.h>

#include "../backend/concept.hpp"
#include "../comm/rank.hpp"
#include "../core/tensor.hpp"
#include "../error.hpp"
#include "parameter.hpp"

namespace parallax::nn {

//! A module is a type with
//!   - `backend`, `value_type` (the storage type T) and `Ctx`: what one microbatch's forward saved;
//!   - `Tensor forward(Ctx&, View<const T> x)`: computes y and saves into the context what backward needs;
//!   - `Tensor backward_input(Ctx&, View<const T> dy)`: returns dx and keeps what `backward_weight` needs;
//!   - `void backward_weight(Ctx&)`: accumulates (+=) into the parameters' gradients and frees the context;
//!   - `ParameterList parameters()` in a fixed order, `name()`, and `rank()`: the `Rank<B>` whose context
//!     and allocator it runs on.
//! Each microbatch in flight has its own `Ctx` (default-constructible, movable), so a pipeline can run the
//! forwards of several microbatches before their backwards, and a zero-bubble schedule can defer
//! `backward_weight`. Saved tensors are counted as activations and are freed when their last use is done.
//! Calling the passes out of order throws, naming the module.
template <class M>
concept Module = Backend<typename M::backend> && requires(M& m, typename M::Ctx& ctx) {
  typename M::value_type;
  m.backward_weight(ctx);
  {
    m.parameters()
  } -> std::same_as<ParameterList<typename M::value_type, typename M::backend::Memory>>;
  { m.name() } -> std::convertible_to<std::string_view>;
  { std::as_const(m).rank() } -> std::same_as<Rank<typename M::backend>&>;
};

//! A module whose input and output are activations of its value type (not token ids or a loss).
template <class M>
concept Layer = Module<M> && requires(M& m, typename M::Ctx& ctx,
                                      View<const typename M::value_type, typename M::backend::Memory> x) {
  { m.forward(ctx, x) } -> std::same_as<Tensor<typename M::value_type, typename M::backend::Memory>>;
  { m.backward_input(ctx, x) } -> std::same_as<Tensor<typename M::value_type, typename M::backend::Memory>>;
};

//! The last pass run on a context.
enum class Pass { none, forward, backward_input };

//! Base of every module's `Ctx`: tracks which pass ran last, so passes out of order throw.
struct CtxBase {
  Pass pass = Pass::none;
};

namespace detail {

//! Moves `ctx` from pass `from` to pass `to`, or throws naming the module and what went wrong.
inline void advance(CtxBase& ctx, Pass from, Pass to, std::string_view module, std::string_view op, int rank) {
  if (ctx.pass != from) {
    const char* why = from == Pass::none            ? "a context whose forward already ran (use one context per microbatch)"
                      : from == Pass::forward       ? "a context whose forward has not run, or whose backward_input already ran"
                                                    : "a context whose backward_input has not run";
    throw Error(fmt::format("{}: {} called on {}", module, op, why), rank);
  }
  ctx.pass = to;
}

}  // namespace detail

//! A tensor of the backend's memory, and views of it.
template <Backend B, Element T>
using TensorOf = Tensor<T, typename B::Memory>;
template <Backend B, class T>
  requires Element<std::remove_const_t<T>>
using ViewOf = View<T, typename B::Memory>;

//! A new activation tensor holding a copy of `x` (what a module saves for its backward), made on the rank's stream.
template <Backend B, Element T>
[[nodiscard]] TensorOf<B, T> save(Rank<B>& rank, View<const T, typename B::Memory> x) {
  TensorOf<B, T> t(rank.allocator(), x.shape(), MemoryCategory::activations);
  B::copy(rank.context(), x, t.view());
  return t;
}

//! A new zero activation tensor of `shape`.
template <Backend B, Element T>
[[nodiscard]] TensorOf<B, T> activation(Rank<B>& rank, Shape shape) {
  return TensorOf<B, T>(rank.allocator(), shape, MemoryCategory::activations);
}

//! `x` as a matrix: all leading dimensions folded into rows, the last kept.
template <class T, MemorySpace Space>
[[nodiscard]] View<T, Space> as_matrix(View<T, Space> x) {
  const Shape& s = x.shape();
  if (s.rank() == 0) return x.reshape(Shape{1, 1});
  const std::int64_t d = s[s.rank() - 1];
  return x.reshape(Shape{d == 0 ? 0 : x.numel() / d, d});
}

}  // namespace parallax::nn
