// parallax/pp/schedule.hpp — the `pp::Schedule` concept that pipeline schedule policies model, and the
// placement and point-to-point links that follow from a schedule's `stage_of`.
#pragma once

#include <concepts>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "action.hpp"

namespace parallax::pp {

//! What a schedule needs of its shape; `pp::validate` checks it before asking for any action.
struct Requirements {
  int min_microbatches = 1;                      //!< m >= this
  bool microbatches_multiple_of_stages = false;  //!< m % p == 0
};

//! A pipeline schedule policy: a type whose static, `constexpr` members say, for p stages, m microbatches and
//! v chunks, the ordered actions of each rank.
//!
//! - `name`: short id ("gpipe", "1f1b", "interleaved", "zb-h1", "zb-v"); `type_name()`: the C++ name for
//!   messages ("Interleaved1F1B<2>").
//! - `chunks`: v, the model chunks each rank holds; `split_backward`: whether backward is split into
//!   backward_input and backward_weight (otherwise fused `backward`).
//! - `stage_of(rank, chunk, stages)`: the virtual stage (0..p*v-1) a rank's chunk is. Virtual stage 0 reads the
//!   microbatch; the last one computes the loss.
//! - `requirements(stages)`: what the schedule needs of m.
//! - `max_in_flight(rank, shape)`: the activation-memory promise: at most this many (microbatch, chunk)
//!   forwards whose backward (backward_input when split) has not run yet, on that rank.
//! - `actions(rank, shape)`: that rank's actions in order, each (microbatch, chunk) forward and backward once.
//!
//! `pp::validate` / `pp::simulate` check all of it; `pp::StaticSchedule` checks it at compile time.
//! @code
//! const pp::ScheduleShape shape{.stages = 4, .microbatches = 8};
//! pp::validate<pp::OneFOneB>(shape);
//! for (const pp::Action& a : pp::OneFOneB::actions(rank, shape)) {
//!   const pp::Links l = pp::links<pp::OneFOneB>(rank, a, shape);  // recv from l.recv_from, run a, send to l.send_to
//! }
//! @endcode
template <class S>
concept Schedule = requires(int i, ScheduleShape shape) {
  { S::name } -> std::convertible_to<std::string_view>;
  { S::type_name() } -> std::convertible_to<std::string>;
  typename std::integral_constant<int, S::chunks>;
  typename std::bool_constant<S::split_backward>;
  { S::stage_of(i, i, i) } -> std::same_as<int>;
  { S::requirements(i) } -> std::same_as<Requirements>;
  { S::max_in_flight(i, shape) } -> std::same_as<int>;
  { S::actions(i, shape) } -> std::same_as<std::vector<Action>>;
};

//! Where a virtual stage lives: a rank and that rank's chunk; {-1, -1} for a stage no chunk maps to.
struct Placement {
  int rank = -1;
  int chunk = -1;

  friend constexpr bool operator==(const Placement&, const Placement&) = default;
};

//! The rank and chunk that hold virtual stage `stage` of a `stages`-rank pipeline under schedule `S`.
template <Schedule S>
[[nodiscard]] constexpr Placement placement(int stage, int stages) {
  for (int r = 0; r < stages; ++r)
    for (int c = 0; c < S::chunks; ++c)
      if (S::stage_of(r, c, stages) == stage) return {r, c};
  return {};
}

//! The point-to-point traffic of one action on one rank.
//!
//! `recv_from`: the rank that produces the action's input (the previous virtual stage's activation for a
//! forward, the next virtual stage's input gradient for a backward); `send_to`: the rank that consumes its
//! output. -1 where there is none (a forward of virtual stage 0 reads the microbatch, a backward of the last
//! virtual stage starts from the loss, backward_weight talks to nobody); the action's own rank where the
//! neighbouring virtual stage is another chunk of the same rank (a local hand-over, no communication).
struct Links {
  int recv_from = -1;
  int send_to = -1;

  friend constexpr bool operator==(const Links&, const Links&) = default;
};

//! The sends and receives that `rank` running `a` implies under schedule `S`.
//! @code
//! constexpr auto l = pp::links<pp::OneFOneB>(1, {pp::Op::forward, 0, 0}, {4, 8, 1});  // {0, 2}
//! @endcode
template <Schedule S>
[[nodiscard]] constexpr Links links(int rank, const Action& a, ScheduleShape shape) {
  const int s = S::stage_of(rank, a.chunk, shape.stages);
  const int before = s > 0 ? placement<S>(s - 1, shape.stages).rank : -1;
  const int after = s + 1 < shape.virtual_stages() ? placement<S>(s + 1, shape.stages).rank : -1;
  switch (a.op) {
    case Op::forward: return {before, after};
    case Op::backward:
    case Op::backward_input: return {after, before};
    case Op::backward_weight: break;
  }
  return {};
}

}  // namespace parallax::pp
