// parallax/pp/zero_bubble_h1.hpp — ZB-H1: 1F1B with the backward split and weight gradients deferred.
#pragma once

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "schedule.hpp"

namespace parallax::pp {

//! ZB-H1 (Qi et al., 2024, "Zero Bubble Pipeline Parallelism"): the backward is split into backward_input (B),
//! which the previous stage waits for, and backward_weight (W), which nobody waits for. Rank r runs
//! min(p-r, m) forwards, then for each microbatch j: B of j, W of j - r (rank r defers its weight gradients by
//! r microbatches), the next forward; then the deferred Ws. The input-gradient chain through the pipeline no
//! longer waits for weight gradients, and the deferred Ws fill the cool-down bubble.
//!
//! Same activation memory as 1F1B (at most min(p-r, m) microbatches between forward and backward_input on
//! rank r), plus up to r+1 microbatches waiting for W. For F = B = W = 1 the bubble is (p-1)/(3m) for m >= p,
//! a third of 1F1B's, and (2p-1-m)/(3m) for m < p: optimal under that memory limit (the first rank's first
//! B cannot start before 2p-1, and after it, it has no idle slot). Any m works. p = 4, m = 6:
//! @code
//! rank 0 |F0|F1|F2|F3|  |  |  |B0|W0|F4|B1|W1|F5|B2|W2|B3|W3|B4|W4|B5|W5|
//! rank 1 |  |F0|F1|F2|  |  |B0|F3|B1|W0|F4|B2|W1|F5|B3|W2|B4|W3|B5|W4|W5|
//! rank 2 |  |  |F0|F1|  |B0|F2|B1|F3|B2|W0|F4|B3|W1|F5|B4|W2|B5|W3|W4|W5|
//! rank 3 |  |  |  |F0|B0|F1|B1|F2|B2|F3|B3|W0|F4|B4|W1|F5|B5|W2|W3|W4|W5|
//! @endcode
struct ZeroBubbleH1 {
  static constexpr std::string_view name = "zb-h1";
  static std::string type_name() { return "ZeroBubbleH1"; }
  static constexpr int chunks = 1;
  static constexpr bool split_backward = true;

  static constexpr int stage_of(int rank, int /*chunk*/, int /*stages*/) { return rank; }
  static constexpr Requirements requirements(int /*stages*/) { return {}; }
  //! As 1F1B: p - r on rank r, at most m.
  static constexpr int max_in_flight(int rank, ScheduleShape shape) {
    return std::min(shape.stages - rank, shape.microbatches);
  }

  static constexpr std::vector<Action> actions(int rank, ScheduleShape shape) {
    const int m = shape.microbatches;
    std::vector<Action> out;
    int forwards = std::min(shape.stages - rank, m), weights = 0;
    for (int i = 0; i < forwards; ++i) out.push_back({Op::forward, i, 0});
    for (int j = 0; j < m; ++j) {
      out.push_back({Op::backward_input, j, 0});
      if (j >= rank) out.push_back({Op::backward_weight, weights++, 0});
      if (forwards < m) out.push_back({Op::forward, forwards++, 0});
    }
    while (weights < m) out.push_back({Op::backward_weight, weights++, 0});
    return out;
  }
};

}  // namespace parallax::pp

namespace parallax {
using pp::ZeroBubbleH1;  // the name users write: parallax::ZeroBubbleH1
}  // namespace parallax
