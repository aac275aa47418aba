// parallax/nn/sequential.hpp — Sequential<Ms...>: layers run one after another, as one layer.
#pragma once

#include <cstddef>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include <fmt/format.h>

#include "module.hpp"

namespace parallax::nn {

namespace detail {

//! Whether every layer of `Ms` has the first one's backend and value_type (true when some is not a
//! `Layer`: that is reported on its own).
template <class... Ms>
consteval bool same_backend_and_type() {
  if constexpr (sizeof...(Ms) > 0 && (Layer<Ms> && ...)) {
    using F = std::tuple_element_t<0, std::tuple<Ms...>>;
    return ((std::is_same_v<typename Ms::backend, typename F::backend> &&
             std::is_same_v<typename Ms::value_type, typename F::value_type>) && ...);
  } else {
    return true;
  }
}

}  // namespace detail

//! Layers run in order as one layer: forward chains them, backward_input runs them in reverse, and
//! backward_weight runs every layer's backward_weight in reverse order. Its context holds one context
//! per layer; its parameters are the layers' parameters, in order. Intermediate outputs are freed as
//! soon as the next layer has consumed them.
//!
//! @tparam Ms `nn::Layer`s of one backend and one value_type; the first one's `rank()` is the rank.
//! @code
//! using LN = nn::LayerNorm<host::Backend, float>;  using Fc = nn::Linear<host::Backend, float>;
//! nn::Sequential mlp("mlp", LN(rank, 64), Fc(rank, 64, 256, {.name = "fc1"}), nn::GELU<host::Backend, float>(rank),
//!                    Fc(rank, 256, 64, {.name = "fc2"}));
//! decltype(mlp)::Ctx ctx;
//! auto y = mlp.forward(ctx, x);   auto dx = mlp.backward_input(ctx, dy);   mlp.backward_weight(ctx);
//! auto& fc1 = mlp.get<1>();
//! @endcode
template <class... Ms>
class Sequential {
  static_assert(sizeof...(Ms) > 0, "Sequential<Ms...>: give at least one layer");
  static_assert((Layer<Ms> && ...),
                "Sequential<Ms...>: every module must model nn::Layer (forward and backward_input map activations "
                "of its value_type to activations)");
  static_assert(detail::same_backend_and_type<Ms...>(),
                "Sequential<Ms...>: every layer must have the same backend and the same value_type (storage type)");

  using First = std::tuple_element_t<0, std::tuple<Ms...>>;
  static constexpr std::size_t count = sizeof...(Ms);

 public:
  using backend = typename First::backend;
  using value_type = typename First::value_type;
  using Memory = typename backend::Memory;

  struct Ctx : CtxBase {
    std::tuple<typename Ms::Ctx...> inner;
  };

  //! The layers, moved in; `name` names the sequence (its layers keep their own names).
  explicit Sequential(std::string name, Ms... ms) : name_(std::move(name)), layers_(std::move(ms)...) {}

  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  [[nodiscard]] Rank<backend>& rank() const noexcept { return std::get<0>(layers_).rank(); }
  //! Layer I.
  template <std::size_t I>
  [[nodiscard]] auto& get() noexcept {
    return std::get<I>(layers_);
  }
  template <std::size_t I>
  [[nodiscard]] const auto& get() const noexcept {
    return std::get<I>(layers_);
  }

  [[nodiscard]] ParameterList<value_type, Memory> parameters() {
    ParameterList<value_type, Memory> p;
    std::apply([&](auto&... m) { (append(p, m.parameters()), ...); }, layers_);
    return p;
  }

  [[nodiscard]] TensorOf<backend, value_type> forward(Ctx& ctx, ViewOf<backend, const value_type> x) {
    detail::advance(ctx, Pass::none, Pass::forward, label(), "forward", rank().id());
    TensorOf<backend, value_type> y;
    each([&]<std::size_t I>(Index<I>) {
      y = std::get<I>(layers_).forward(std::get<I>(ctx.inner), I == 0 ? x : y.cview());
    });
    return y;
  }

  [[nodiscard]] TensorOf<backend, value_type> backward_input(Ctx& ctx, ViewOf<backend, const value_type> dy) {
    detail::advance(ctx, Pass::forward, Pass::backward_input, label(), "backward_input", rank().id());
    TensorOf<backend, value_type> d;
    each_reversed([&]<std::size_t I>(Index<I>) {
      d = std::get<I>(layers_).backward_input(std::get<I>(ctx.inner), I == count - 1 ? dy : d.cview());
    });
    return d;
  }

  void backward_weight(Ctx& ctx) {
    detail::advance(ctx, Pass::backward_input, Pass::none, label(), "backward_weight", rank().id());
    each_reversed([&]<std::size_t I>(Index<I>) { std::get<I>(layers_).backward_weight(std::get<I>(ctx.inner)); });
  }

 private:
  template <std::size_t I>
  using Index = std::integral_constant<std::size_t, I>;

  //! f(Index<I>{}) for I = 0 .. count-1, and for I = count-1 .. 0.
  template <class F>
  static void each(F&& f) {
    [&]<std::size_t... I>(std::index_sequence<I...>) { (f(Index<I>{}), ...); }(std::make_index_sequence<count>{});
  }
  template <class F>
  static void each_reversed(F&& f) {
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (f(Index<count - 1 - I>{}), ...);
    }(std::make_index_sequence<count>{});
  }

  [[nodiscard]] std::string label() const { return fmt::format("Sequential '{}'", name_); }

  std::string name_;
  std::tuple<Ms...> layers_;
};

}  // namespace parallax::nn
