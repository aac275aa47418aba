// parallax/pp/timeline.hpp — ASCII drawing of a simulated pipeline schedule, one line per rank.
#pragma once

#include <algorithm>
#include <cstddef>
#include <numeric>
#include <string>

#include <fmt/format.h>

#include "../error.hpp"
#include "action.hpp"
#include "simulate.hpp"

namespace parallax::pp {

//! The label of an action in a timeline: op letter (F, B, W) and microbatch, then, when the schedule has
//! several chunks, the chunk as a letter (a = chunk 0, b = chunk 1, ...): "F3", "B0b".
[[nodiscard]] inline std::string timeline_label(const Action& a, int chunks) {
  std::string s = fmt::format("{}{}", op_letter(a.op), a.microbatch);
  if (chunks > 1) s += static_cast<char>('a' + a.chunk);
  return s;
}

//! Draws `sim` as one line per rank: one cell per time unit (the greatest common divisor of the actions'
//! durations), an action spanning as many cells as it lasts, idle cells blank, every line as long as the
//! makespan. 1F1B, p = 2, m = 3:
//! @code
//! rank 0 |F0|F1|  |  |B0   |F2|B1   |  |B2   |
//! rank 1 |  |F0|B0   |F1|B1   |F2|B2   |  |  |
//! @endcode
//! Throws `Error` for more than 26 chunks (the letters a to z).
[[nodiscard]] inline std::string timeline(const Simulation& sim) {
  const int chunks = sim.shape.chunks;
  if (chunks > 26) throw Error(fmt::format("pp::timeline: {} chunks; chunk letters go up to 26 (a to z)", chunks));
  int unit = 0;
  std::size_t width = 1;
  for (const auto& rank : sim.ranks)
    for (const TimedAction& t : rank) {
      unit = std::gcd(unit, std::gcd(t.start, t.end - t.start));
      width = std::max(width, timeline_label(t.action, chunks).size());
    }
  const std::string idle = std::string(width, ' ') + '|';
  const std::size_t rank_width = fmt::formatted_size("{}", std::max<std::size_t>(sim.ranks.size(), 1) - 1);
  std::string out;
  for (std::size_t r = 0; r < sim.ranks.size(); ++r) {
    out += fmt::format("rank {:>{}} |", r, rank_width);
    int now = 0;
    for (const TimedAction& t : sim.ranks[r]) {
      for (; now < t.start; now += unit) out += idle;
      const auto cells = static_cast<std::size_t>((t.end - t.start) / unit);
      out += fmt::format("{:<{}}|", timeline_label(t.action, chunks), cells * (width + 1) - 1);
      now = t.end;
    }
    for (; now < sim.makespan; now += unit) out += idle;
    out += '\n';
  }
  return out;
}

}  // namespace parallax::pp
