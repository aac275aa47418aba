// parallax/pp/trace.hpp — what a pipeline step really did: each rank's actions with measured start and end
// times, their bubble, an ASCII timeline (drawn by pp::timeline) and a Chrome trace (Perfetto, chrome://tracing).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "../error.hpp"
#include "action.hpp"
#include "simulate.hpp"
#include "timeline.hpp"

namespace parallax::pp {

//! One action as it ran: [start, end) in nanoseconds of a steady clock, from the step's start.
struct ActionRecord {
  Action action;
  std::int64_t start_ns = 0;
  std::int64_t end_ns = 0;

  friend constexpr bool operator==(const ActionRecord&, const ActionRecord&) = default;
};

//! A step's actions on every rank of one pipeline (`ranks[r]`: pipeline rank r's, in the order it ran them).
struct Recording {
  std::string schedule;  //!< the schedule's C++ name ("Interleaved1F1B<2>")
  ScheduleShape shape;
  std::vector<std::vector<ActionRecord>> ranks;

  //! From the first start to the last end, over every rank.
  [[nodiscard]] std::int64_t makespan_ns() const {
    std::int64_t first = 0, last = 0;
    bool any = false;
    for (const auto& rank : ranks)
      for (const ActionRecord& a : rank) {
        first = any ? std::min(first, a.start_ns) : a.start_ns;
        last = any ? std::max(last, a.end_ns) : a.end_ns;
        any = true;
      }
    return last - first;
  }
  //! The time rank `r` spent in its actions.
  [[nodiscard]] std::int64_t busy_ns(int r) const {
    std::int64_t busy = 0;
    for (const ActionRecord& a : ranks.at(static_cast<std::size_t>(r))) busy += a.end_ns - a.start_ns;
    return busy;
  }
  //! (makespan - busy) / busy of the busiest rank: the idle share of a step relative to its work, as
  //! `Simulation::bubble` defines it in theory (where every rank is equally busy). 0 for an empty recording.
  [[nodiscard]] double bubble() const {
    std::int64_t busy = 0;
    for (int r = 0; r < static_cast<int>(ranks.size()); ++r) busy = std::max(busy, busy_ns(r));
    return busy > 0 ? double(makespan_ns() - busy) / double(busy) : 0.0;
  }
};

//! `rec` as a `Simulation` in whole time units of `unit_ns` nanoseconds (0: the shortest action, but at least
//! 1/100 of the makespan so a timeline stays readable), times rounded to the nearest unit, each action at least
//! one unit long and never before the previous one ends. For drawing: `Simulation::schedule` views
//! `rec.schedule`, which must outlive the result.
[[nodiscard]] inline Simulation to_simulation(const Recording& rec, std::int64_t unit_ns = 0) {
  std::int64_t origin = 0, shortest = 0;
  bool any = false;
  for (const auto& rank : rec.ranks)
    for (const ActionRecord& a : rank) {
      origin = any ? std::min(origin, a.start_ns) : a.start_ns;
      shortest = any ? std::min(shortest, a.end_ns - a.start_ns) : a.end_ns - a.start_ns;
      any = true;
    }
  if (unit_ns <= 0) unit_ns = std::max<std::int64_t>({shortest, rec.makespan_ns() / 100, 1});
  const auto units = [&](std::int64_t t) { return static_cast<int>(std::llround(double(t - origin) / double(unit_ns))); };
  Simulation sim;
  sim.schedule = rec.schedule;
  sim.shape = rec.shape;
  for (const auto& rank : rec.ranks) {
    auto& out = sim.ranks.emplace_back();
    int now = 0;
    for (const ActionRecord& a : rank) {
      const int start = std::max(now, units(a.start_ns));
      now = std::max(start + 1, units(a.end_ns));
      out.push_back({a.action, start, now});
    }
    sim.makespan = std::max(sim.makespan, now);
  }
  return sim;
}

//! The ASCII timeline of a recorded step, one line per rank, drawn as `pp::timeline` draws a simulation
//! (see `to_simulation` for `unit_ns`). Equal-cost actions give the simulation's picture:
//! @code
//! rank 0 |F0|F1|  |  |B0   |F2|B1   |  |B2   |
//! rank 1 |  |F0|B0   |F1|B1   |F2|B2   |  |  |
//! @endcode
[[nodiscard]] inline std::string timeline(const Recording& rec, std::int64_t unit_ns = 0) {
  return timeline(to_simulation(rec, unit_ns));
}

//! The step as Chrome trace event JSON: one complete ("X") event per action, on one track per rank (pid 0,
//! tid = the rank, named "rank r"), named by its timeline label ("F3", "B0b"), with times in microseconds.
//! Opens in Perfetto (ui.perfetto.dev) and chrome://tracing.
[[nodiscard]] inline std::string chrome_trace(const Recording& rec) {
  std::string out = "{\"traceEvents\":[\n";
  out += fmt::format(R"json({{"name":"process_name","ph":"M","pid":0,"tid":0,"args":{{"name":"{} (p {}, m {}, v {})"}}}})json",
                     rec.schedule, rec.shape.stages, rec.shape.microbatches, rec.shape.chunks);
  for (std::size_t r = 0; r < rec.ranks.size(); ++r) {
    out += fmt::format(",\n{{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":0,\"tid\":{0},\"args\":{{\"name\":\"rank {0}\"}}}}", r);
    for (const ActionRecord& a : rec.ranks[r])
      out += fmt::format(",\n{{\"name\":\"{}\",\"cat\":\"{}\",\"ph\":\"X\",\"ts\":{:.3f},\"dur\":{:.3f},\"pid\":0,"
                         "\"tid\":{},\"args\":{{\"microbatch\":{},\"chunk\":{}}}}}",
                         timeline_label(a.action, rec.shape.chunks), op_name(a.action.op), double(a.start_ns) / 1e3,
                         double(a.end_ns - a.start_ns) / 1e3, r, a.action.microbatch, a.action.chunk);
  }
  out += "\n],\"displayTimeUnit\":\"ms\"}\n";
  return out;
}

//! Writes `chrome_trace(rec)` to the file `path`; throws `Error` if it cannot.
inline void write_chrome_trace(const std::string& path, const Recording& rec) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file << chrome_trace(rec);
  if (!file.flush())
    throw Error(fmt::format("pp::write_chrome_trace: cannot write '{}'", path));
}

}  // namespace parallax::pp
