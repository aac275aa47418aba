// parallax/optim/zero.hpp — Zero<S>: the ZeRO stage of a ShardedOptimizer, as a policy type.
#pragma once

#include <type_traits>

namespace parallax::optim {

//! ZeRO stage `S` of a `ShardedOptimizer`: what each data-parallel rank keeps of the training state.
//!
//! | stage | optimizer state (fp32 master, moments) | gradients | parameters | gradient reduction |
//! |---|---|---|---|---|
//! | `Zero<0>` | replicated | replicated | replicated | all-reduce |
//! | `Zero<1>` | sharded | replicated | replicated | all-reduce, then all-gather of the updated parameters |
//! | `Zero<2>` | sharded | sharded | replicated | reduce-scatter, then all-gather of the updated parameters |
//! | `Zero<3>` | sharded | sharded | sharded, gathered around each use | reduce-scatter |
//!
//! @tparam S 0, 1, 2 or 3.
//! @code
//! optim::ShardedOptimizer<optim::AdamW, optim::Zero<2>, Mesh, host::Backend> opt(mesh, params, {.lr = 3e-4f});
//! @endcode
template <int S>
struct Zero {
  static_assert(S >= 0 && S <= 3, "Zero<S>: the ZeRO stage must be 0, 1, 2 or 3");
  static constexpr int stage = S;
  //! Whether each rank keeps only its shard of the optimizer state (stage >= 1).
  static constexpr bool shards_optimizer_state = S >= 1;
  //! Whether each rank keeps only its shard of the reduced gradients (stage >= 2).
  static constexpr bool shards_gradients = S >= 2;
  //! Whether each rank keeps only its shard of the parameters between uses (stage 3).
  static constexpr bool shards_parameters = S >= 3;
};

namespace detail {
template <class T>
struct is_zero : std::false_type {};
template <int S>
struct is_zero<Zero<S>> : std::true_type {};
}  // namespace detail

//! A ZeRO stage policy: `Zero<0>` .. `Zero<3>`.
template <class Z>
concept ZeroStage = detail::is_zero<Z>::value;

}  // namespace parallax::optim

namespace parallax {
using optim::Zero;  // the name users write: parallax::Zero<2>
}  // namespace parallax
