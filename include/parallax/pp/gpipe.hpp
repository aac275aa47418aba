// parallax/pp/gpipe.hpp — GPipe: every microbatch's forward, then every backward.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "schedule.hpp"

namespace parallax::pp {

//! GPipe (Huang et al., 2019): each rank runs the forwards of all m microbatches, then their (fused) backwards
//! in the same order. Simple, and any m works, but every rank holds the activations of all m microbatches.
//! Bubble (p-1)/m for F = 1, B = 2. p = 4, m = 4:
//! @code
//! rank 0 |F0|F1|F2|F3|  |  |  |  |  |  |  |  |  |B0   |B1   |B2   |B3   |
//! rank 1 |  |F0|F1|F2|F3|  |  |  |  |  |  |B0   |B1   |B2   |B3   |  |  |
//! rank 2 |  |  |F0|F1|F2|F3|  |  |  |B0   |B1   |B2   |B3   |  |  |  |  |
//! rank 3 |  |  |  |F0|F1|F2|F3|B0   |B1   |B2   |B3   |  |  |  |  |  |  |
//! @endcode
struct GPipe {
  static constexpr std::string_view name = "gpipe";
  static std::string type_name() { return "GPipe"; }
  static constexpr int chunks = 1;
  static constexpr bool split_backward = false;

  static constexpr int stage_of(int rank, int /*chunk*/, int /*stages*/) { return rank; }
  static constexpr Requirements requirements(int /*stages*/) { return {}; }
  //! All m microbatches, on every rank.
  static constexpr int max_in_flight(int /*rank*/, ScheduleShape shape) { return shape.microbatches; }

  static constexpr std::vector<Action> actions(int /*rank*/, ScheduleShape shape) {
    std::vector<Action> out;
    for (int i = 0; i < shape.microbatches; ++i) out.push_back({Op::forward, i, 0});
    for (int i = 0; i < shape.microbatches; ++i) out.push_back({Op::backward, i, 0});
    return out;
  }
};

}  // namespace parallax::pp

namespace parallax {
using pp::GPipe;  // the name users write: parallax::GPipe
}  // namespace parallax
