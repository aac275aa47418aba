// parallax/pp/one_f_one_b.hpp — 1F1B (PipeDream-Flush): a forward, then a backward, in the steady state.
#pragma once

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "schedule.hpp"

namespace parallax::pp {
namespace detail {

//! The 1F1B order of `total` forwards and backwards: `warmup` forwards, then forward/backward pairs, then the
//! backwards left; `forward(k)` and `backward(k)` are the k-th forward and backward.
template <class Forward, class Backward>
constexpr std::vector<Action> one_f_one_b(int total, int warmup, Forward forward, Backward backward) {
  std::vector<Action> out;
  for (int k = 0; k < warmup; ++k) out.push_back(forward(k));
  for (int k = 0; k < total - warmup; ++k) {
    out.push_back(forward(warmup + k));
    out.push_back(backward(k));
  }
  for (int k = total - warmup; k < total; ++k) out.push_back(backward(k));
  return out;
}

}  // namespace detail

//! 1F1B (PipeDream-Flush, Narayanan et al., 2021; Megatron's default): rank r runs min(p-r-1, m) warm-up
//! forwards, then alternates one forward and one (fused) backward, then drains the backwards. Same bubble as
//! GPipe, (p-1)/m for F = 1, B = 2, but rank r holds at most p - r microbatches' activations instead of m.
//! Any m works. p = 4, m = 6:
//! @code
//! rank 0 |F0|F1|F2|F3|  |  |  |  |  |  |B0   |F4|B1   |F5|B2   |  |B3   |  |B4   |  |B5   |
//! rank 1 |  |F0|F1|F2|  |  |  |  |B0   |F3|B1   |F4|B2   |F5|B3   |  |B4   |  |B5   |  |  |
//! rank 2 |  |  |F0|F1|  |  |B0   |F2|B1   |F3|B2   |F4|B3   |F5|B4   |  |B5   |  |  |  |  |
//! rank 3 |  |  |  |F0|B0   |F1|B1   |F2|B2   |F3|B3   |F4|B4   |F5|B5   |  |  |  |  |  |  |
//! @endcode
struct OneFOneB {
  static constexpr std::string_view name = "1f1b";
  static std::string type_name() { return "OneFOneB"; }
  static constexpr int chunks = 1;
  static constexpr bool split_backward = false;

  static constexpr int stage_of(int rank, int /*chunk*/, int /*stages*/) { return rank; }
  static constexpr Requirements requirements(int /*stages*/) { return {}; }
  //! p - r on rank r (p on the first rank), at most m.
  static constexpr int max_in_flight(int rank, ScheduleShape shape) {
    return std::min(shape.stages - rank, shape.microbatches);
  }

  static constexpr std::vector<Action> actions(int rank, ScheduleShape shape) {
    const int m = shape.microbatches;
    return detail::one_f_one_b(
        m, std::min(shape.stages - rank - 1, m), [](int k) { return Action{Op::forward, k, 0}; },
        [](int k) { return Action{Op::backward, k, 0}; });
  }
};

}  // namespace parallax::pp

namespace parallax {
using pp::OneFOneB;  // the name users write: parallax::OneFOneB
}  // namespace parallax
