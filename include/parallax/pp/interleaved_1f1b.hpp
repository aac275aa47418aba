// parallax/pp/interleaved_1f1b.hpp — interleaved 1F1B (Megatron's virtual pipeline stages).
#pragma once

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "one_f_one_b.hpp"
#include "schedule.hpp"

namespace parallax::pp {

//! Interleaved 1F1B (Narayanan et al., 2021, Megatron-LM's virtual pipeline): each rank holds V model chunks,
//! chunk c of rank r being virtual stage c*p + r, so a microbatch crosses every rank V times and the bubble
//! shrinks V-fold to (p-1)/(V m) for F = 1, B = 2 per chunk. Forwards go in groups of p microbatches per chunk
//! (microbatches 0..p-1 through chunk 0, then chunk 1, ..., then microbatches p..2p-1), backwards likewise
//! from the last chunk down. Rank r warms up with 2(p-r-1) + (V-1)p forwards (all of them when m = p), then
//! alternates, then drains, exactly as Megatron does. Needs m to be a multiple of p. Activation memory: at most
//! min(V m, 2(p-r-1) + (V-1)p + 1) chunk-microbatches on rank r (V m when m = p), each 1/V of a stage's.
//! p = 2, m = 4, V = 2 (the letter after the microbatch is the chunk: a = 0, b = 1):
//! @code
//! rank 0 |F0a|F1a|F0b|F1b|F2a|   |B0b    |F3a|B1b    |F2b|B0a    |F3b|B1a    |   |B2b    |   |B3b    |B2a    |B3a    |
//! rank 1 |   |F0a|F1a|F0b|B0b    |F1b|B1b    |F2a|B0a    |F3a|B1a    |F2b|B2b    |F3b|B3b    |B2a    |B3a    |   |   |
//! @endcode
//! @tparam V model chunks per rank (virtual stages), at least 1
template <int V>
struct Interleaved1F1B {
  static_assert(V >= 1, "Interleaved1F1B<V>: V (model chunks per rank) must be at least 1");

  static constexpr std::string_view name = "interleaved";
  static std::string type_name() { return fmt::format("Interleaved1F1B<{}>", V); }
  static constexpr int chunks = V;
  static constexpr bool split_backward = false;

  static constexpr int stage_of(int rank, int chunk, int stages) { return chunk * stages + rank; }
  static constexpr Requirements requirements(int /*stages*/) { return {.microbatches_multiple_of_stages = true}; }
  static constexpr int max_in_flight(int rank, ScheduleShape shape) {
    return std::min(shape.microbatches * V, warmup(rank, shape) + 1);
  }

  static constexpr std::vector<Action> actions(int rank, ScheduleShape shape) {
    const int p = shape.stages;
    // The k-th forward (backward) of every rank: microbatch and chunk.
    auto microbatch = [p](int k) { return k / (p * V) * p + k % p; };
    return detail::one_f_one_b(
        shape.microbatches * V, warmup(rank, shape),
        [=](int k) { return Action{Op::forward, microbatch(k), k / p % V}; },
        [=](int k) { return Action{Op::backward, microbatch(k), V - 1 - k / p % V}; });
  }

 private:
  static constexpr int warmup(int rank, ScheduleShape shape) {
    const int total = shape.microbatches * V, p = shape.stages;
    return shape.microbatches == p ? total : std::min(2 * (p - rank - 1) + (V - 1) * p, total);
  }
};

}  // namespace parallax::pp

namespace parallax {
using pp::Interleaved1F1B;  // the name users write: parallax::Interleaved1F1B<2>
}  // namespace parallax
