// parallax/pp/zero_bubble_v.hpp — ZB-V: two chunks per rank in a V, split backward, 1F1B's memory.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "schedule.hpp"

namespace parallax::pp {

//! ZB-V (Qi et al., 2024, "Pipeline Parallelism with Controllable Memory"; PyTorch's ScheduleZBVZeroBubble):
//! each rank holds two chunks placed in a V, chunk 0 of rank r is virtual stage r and chunk 1 is virtual stage
//! 2p-1-r, so the first rank both reads the microbatch and computes the loss. The backward is split (B, W) as in
//! ZB-H1. Rank r runs 2(p-r)-1 chunk-0 forwards, r pairs (chunk-1 forward, chunk-0 forward), p-r triples
//! (chunk-1 F, B, W), then the steady state (chunk-0 F, B, W, chunk-1 F, B, W), then drains the backwards with
//! their weight gradients deferred.
//!
//! At most 2p chunk-microbatches (half a stage's activations each: p microbatches' worth, as 1F1B's first rank)
//! between forward and backward_input on every rank. For F = B = W = 1 per chunk the bubble is (p-1)/(6m),
//! optimal (the last rank cannot start before p-1), half of ZB-H1's. Needs m >= 2p - 1. p = 2, m = 3:
//! @code
//! rank 0 |F0a|F1a|F2a|F0b|B0b|W0b|F1b|B1b|W1b|B0a|W0a|F2b|B2b|W2b|B1a|W1a|B2a|W2a|   |
//! rank 1 |   |F0a|F0b|F1a|F1b|B0b|W0b|F2a|B0a|W0a|F2b|B1b|W1b|B1a|B2b|B2a|W1a|W2b|W2a|
//! @endcode
struct ZeroBubbleV {
  static constexpr std::string_view name = "zb-v";
  static std::string type_name() { return "ZeroBubbleV"; }
  static constexpr int chunks = 2;
  static constexpr bool split_backward = true;

  static constexpr int stage_of(int rank, int chunk, int stages) { return chunk == 0 ? rank : 2 * stages - 1 - rank; }
  static constexpr Requirements requirements(int stages) { return {.min_microbatches = 2 * stages - 1}; }
  //! 2p chunk-microbatches on every rank.
  static constexpr int max_in_flight(int /*rank*/, ScheduleShape shape) { return 2 * shape.stages; }

  static constexpr std::vector<Action> actions(int rank, ScheduleShape shape) {
    const int p = shape.stages, m = shape.microbatches;
    std::vector<Action> out;
    int forwards[2] = {0, 0}, inputs[2] = {0, 0};  // per chunk: microbatches through forward, backward_input
    const auto f = [&](int c) { out.push_back({Op::forward, forwards[c]++, c}); };
    const auto b = [&](int c) { out.push_back({Op::backward_input, inputs[c]++, c}); };
    const auto bw = [&](int c) {
      out.push_back({Op::backward_input, inputs[c], c});
      out.push_back({Op::backward_weight, inputs[c]++, c});
    };
    // Warm-up: down the V's left arm, then into its right arm.
    for (int i = 0; i < 2 * (p - rank) - 1; ++i) f(0);
    for (int i = 0; i < rank; ++i) {
      f(1);
      f(0);
    }
    for (int i = 0; i < p - rank; ++i) {
      f(1);
      bw(1);
    }
    // Steady state: one F B W per chunk.
    while (forwards[1] < forwards[0] || forwards[0] < m) {
      if (forwards[0] < m) f(0);
      bw(0);
      f(1);
      bw(1);
    }
    // Cool-down: the input gradients first, the weight gradients deferred into the idle slots.
    int weights[2] = {inputs[0], inputs[1]};
    const auto w = [&](int c) { out.push_back({Op::backward_weight, weights[c]++, c}); };
    for (int i = 0; i < rank; ++i) {
      b(0);
      b(1);
    }
    for (int i = 0; i < p - rank; ++i) {
      b(0);
      w(0);
    }
    while (weights[1] < m) w(1);
    while (weights[0] < m) w(0);
    return out;
  }
};

}  // namespace parallax::pp

namespace parallax {
using pp::ZeroBubbleV;  // the name users write: parallax::ZeroBubbleV
}  // namespace parallax
