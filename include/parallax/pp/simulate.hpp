// parallax/pp/simulate.hpp — runs a pipeline schedule in simulated time: checks that it is complete, keeps its
// memory promise and cannot deadlock, and measures its timeline, makespan and bubble. The same check runs at
// compile time (`pp::check`, `pp::StaticSchedule`) and at run time (`pp::validate`, `pp::simulate`).
#pragma once

#include <algorithm>
#include <array>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "../error.hpp"
#include "action.hpp"
#include "schedule.hpp"

namespace parallax::pp {

//! How long each op takes, in whole simulated time units (at least 1 each). The defaults make a forward,
//! a backward_input and a backward_weight equally long, and a fused backward as long as the last two together.
struct Costs {
  int forward = 1;
  int backward_input = 1;
  int backward_weight = 1;
  int backward = 2;

  //! The cost of `op`.
  [[nodiscard]] constexpr int of(Op op) const noexcept {
    switch (op) {
      case Op::forward: return forward;
      case Op::backward: return backward;
      case Op::backward_input: return backward_input;
      case Op::backward_weight: return backward_weight;
    }
    return 0;
  }
};

//! An action as simulated: it ran over [start, end).
struct TimedAction {
  Action action;
  int start = 0;
  int end = 0;

  friend constexpr bool operator==(const TimedAction&, const TimedAction&) = default;
};

//! The result of `pp::simulate`: each rank's actions with their simulated times, and what they add up to.
//!
//! Every action starts as soon as its rank is free and its inputs exist; communication is free (the
//! simulation measures the schedule, not the network).
struct Simulation {
  std::string_view schedule;                      //!< the schedule's `name` ("1f1b")
  ScheduleShape shape;
  Costs costs;
  std::vector<std::vector<TimedAction>> ranks;    //!< per rank, in the order it runs them
  std::vector<int> peak_in_flight;                //!< per rank: most (microbatch, chunk) forwards not yet backward
                                                  //!< (backward_input when split): the activation memory
  std::vector<int> peak_deferred_weights;         //!< per rank: most backward_inputs whose backward_weight waits
  int makespan = 0;                               //!< when the last action ends
  int ideal = 0;                                  //!< one rank's busy time: m * v * (forward + backward)
  //! Whether, for every pair of ranks, one sends to the other in the order the other consumes: then a plain
  //! in-order receive before each action (the Communicator's matching, the n-th send meets the n-th receive)
  //! gets the right message. Otherwise (ZB-V: a rank sends its neighbour both chunk-0 activations and chunk-1
  //! gradients) the receiver must take messages in the sender's order and keep the early ones.
  bool messages_in_order = true;

  //! (makespan - ideal) / ideal: the idle share of a rank's step, relative to its work.
  [[nodiscard]] double bubble() const noexcept { return double(makespan - ideal) / double(ideal); }
};

namespace detail {

//! What is wrong with a schedule; the first problem found decides. A compile-time failure shows it.
enum class Issue {
  none,
  no_stages,                            // stages < 1
  no_microbatches,                      // microbatches < 1
  wrong_chunks,                         // shape.chunks != S::chunks
  microbatches_not_multiple_of_stages,  // S::requirements
  too_few_microbatches,                 // S::requirements
  stage_map_not_one_to_one,             // stage_of: a virtual stage out of range or held twice
  action_out_of_range,                  // microbatch or chunk outside the shape
  wrong_backward_kind,                  // fused backward in a split schedule, or the reverse
  action_twice,
  action_missing,
  over_memory_promise,                  // more in flight than S::max_in_flight
  deadlock,                             // no rank can run its next action
};

//! The first problem: which, on which rank and action (for a stage map problem, `action.chunk` is the chunk
//! and `value` its virtual stage), plus the numbers the message needs.
struct Problem {
  Issue issue = Issue::none;
  int rank = -1;
  Action action{Op::forward, -1, -1};
  int value = 0;  // the action's position in its rank's list, the in-flight count, the stage, ...
  int limit = 0;  // the bound it broke
};

//! An output an action waits for: `op` of `microbatch` at virtual stage `stage`; stage -1 for none.
struct Need {
  Op op = Op::forward;
  int microbatch = 0;
  int stage = -1;
};

//! The outputs action `a`, at virtual stage `s` of `stages_total`, needs before it can run.
constexpr std::array<Need, 2> needs_of(const Action& a, int s, int stages_total, bool split) {
  std::array<Need, 2> needs{};
  if (a.op == Op::forward) {
    if (s > 0) needs[0] = {Op::forward, a.microbatch, s - 1};
  } else if (a.op == Op::backward_weight) {
    needs[0] = {Op::backward_input, a.microbatch, s};
  } else {
    needs[0] = {Op::forward, a.microbatch, s};
    if (s + 1 < stages_total) needs[1] = {split ? Op::backward_input : Op::backward, a.microbatch, s + 1};
  }
  return needs;
}

//! Row of an op in tables indexed by op: forward, backward (fused or input), backward_weight.
constexpr int kind_of(Op op) { return op == Op::forward ? 0 : op == Op::backward_weight ? 2 : 1; }

//! A rank that cannot go on: its next action (position `position` in its list) and the output it waits for.
struct Blocked {
  int rank = -1;
  int position = 0;
  Action action;
  Need need;
};

//! Everything `run` finds: the first problem (if any), the simulation, and on a deadlock the blocked ranks.
struct Outcome {
  Problem problem;
  Simulation sim;
  std::vector<Blocked> blocked;
};

//! The shape against the schedule's requirements, and `stage_of` one-to-one onto 0..p*v-1 (`owner[s]` is
//! the rank of virtual stage s).
template <Schedule S>
constexpr Problem check_shape(ScheduleShape shape, std::vector<int>& owner) {
  const int p = shape.stages, m = shape.microbatches, v = shape.chunks;
  const Action none{Op::forward, -1, -1};  // a problem with the shape itself has no action
  if (p < 1) return {Issue::no_stages, -1, none, p};
  if (m < 1) return {Issue::no_microbatches, -1, none, m};
  if (v != S::chunks) return {Issue::wrong_chunks, -1, none, v, S::chunks};
  const Requirements req = S::requirements(p);
  if (req.microbatches_multiple_of_stages && m % p != 0)
    return {Issue::microbatches_not_multiple_of_stages, -1, none, m, p};
  if (m < req.min_microbatches) return {Issue::too_few_microbatches, -1, none, m, req.min_microbatches};
  owner.assign(static_cast<std::size_t>(p * v), -1);
  for (int r = 0; r < p; ++r)
    for (int c = 0; c < v; ++c) {
      const int s = S::stage_of(r, c, p);
      if (s < 0 || s >= p * v || owner[static_cast<std::size_t>(s)] >= 0)
        return {Issue::stage_map_not_one_to_one, r, {Op::forward, 0, c}, s};
      owner[static_cast<std::size_t>(s)] = r;
    }
  return {};
}

//! Rank `rank`'s list: in range, the schedule's kind of backward, every (op, microbatch, chunk) exactly once,
//! within the memory promise. Records the rank's peak in-flight and deferred-weight counts in `sim`.
template <Schedule S>
constexpr Problem check_list(int rank, const std::vector<Action>& list, Simulation& sim) {
  const int m = sim.shape.microbatches, v = sim.shape.chunks;
  const bool split = S::split_backward;
  const auto slot = [m, v](int kind, int microbatch, int chunk) {
    return static_cast<std::size_t>((kind * m + microbatch) * v + chunk);
  };
  std::vector<unsigned char> seen(slot(3, 0, 0), 0);  // vector<bool> costs more in constant evaluation
  const int promise = S::max_in_flight(rank, sim.shape);
  int& peak = sim.peak_in_flight[static_cast<std::size_t>(rank)];
  int& peak_deferred = sim.peak_deferred_weights[static_cast<std::size_t>(rank)];
  int in_flight = 0, deferred = 0, at = 0;
  for (const Action& a : list) {
    if (a.microbatch < 0 || a.microbatch >= m || a.chunk < 0 || a.chunk >= v)
      return {Issue::action_out_of_range, rank, a, at};
    if (split ? a.op == Op::backward : a.op == Op::backward_input || a.op == Op::backward_weight)
      return {Issue::wrong_backward_kind, rank, a, at};
    if (seen[slot(kind_of(a.op), a.microbatch, a.chunk)]) return {Issue::action_twice, rank, a, at};
    seen[slot(kind_of(a.op), a.microbatch, a.chunk)] = 1;
    if (a.op == Op::forward && ++in_flight > promise) return {Issue::over_memory_promise, rank, a, in_flight, promise};
    if (a.op == Op::backward || a.op == Op::backward_input) --in_flight;
    deferred += a.op == Op::backward_input ? 1 : a.op == Op::backward_weight ? -1 : 0;
    peak = std::max(peak, in_flight);
    peak_deferred = std::max(peak_deferred, deferred);
    ++at;
  }
  const Op ops[3] = {Op::forward, split ? Op::backward_input : Op::backward, Op::backward_weight};
  for (int kind = 0; kind < (split ? 3 : 2); ++kind)
    for (int c = 0; c < v; ++c)
      for (int i = 0; i < m; ++i)
        if (!seen[slot(kind, i, c)]) return {Issue::action_missing, rank, {ops[kind], i, c}};
  return {};
}

//! Runs the lists in simulated time into `sim.ranks` (each rank's next action starts once the rank is free and
//! the action's inputs exist) and returns the ranks left blocked: none unless the lists deadlock.
template <Schedule S>
constexpr std::vector<Blocked> run_in_time(const std::vector<std::vector<Action>>& lists, Simulation& sim) {
  const int p = sim.shape.stages, m = sim.shape.microbatches, stages_total = sim.shape.virtual_stages();
  std::vector<int> ends(static_cast<std::size_t>(3 * m * stages_total), -1);  // -1: not run yet
  const auto end_of = [&ends, m, stages_total](Op op, int microbatch, int stage) -> int& {
    return ends[static_cast<std::size_t>((kind_of(op) * m + microbatch) * stages_total + stage)];
  };
  // The output `a` (at stage s) still waits for, if any.
  const auto missing = [&](const Action& a, int s) {
    for (const Need& n : needs_of(a, s, stages_total, S::split_backward))
      if (n.stage >= 0 && end_of(n.op, n.microbatch, n.stage) < 0) return n;
    return Need{};
  };
  std::vector<int> next(static_cast<std::size_t>(p), 0), clock(static_cast<std::size_t>(p), 0);
  sim.ranks.assign(static_cast<std::size_t>(p), {});
  for (bool progress = true; progress;) {
    progress = false;
    for (int r = 0; r < p; ++r) {
      const auto& list = lists[static_cast<std::size_t>(r)];
      for (int& i = next[static_cast<std::size_t>(r)]; i < static_cast<int>(list.size()); ++i) {
        const Action& a = list[static_cast<std::size_t>(i)];
        const int s = S::stage_of(r, a.chunk, p);
        int start = clock[static_cast<std::size_t>(r)];
        bool ready = true;
        for (const Need& n : needs_of(a, s, stages_total, S::split_backward))
          if (n.stage >= 0) {
            const int at = end_of(n.op, n.microbatch, n.stage);
            ready = ready && at >= 0;
            start = std::max(start, at);
          }
        if (!ready) break;
        const int end = start + sim.costs.of(a.op);
        sim.ranks[static_cast<std::size_t>(r)].push_back({a, start, end});
        end_of(a.op, a.microbatch, s) = clock[static_cast<std::size_t>(r)] = end;
        progress = true;
      }
    }
  }
  sim.makespan = *std::max_element(clock.begin(), clock.end());
  std::vector<Blocked> blocked;
  for (int r = 0; r < p; ++r) {
    const int i = next[static_cast<std::size_t>(r)];
    if (i == static_cast<int>(lists[static_cast<std::size_t>(r)].size())) continue;
    const Action& a = lists[static_cast<std::size_t>(r)][static_cast<std::size_t>(i)];
    blocked.push_back({r, i, a, missing(a, S::stage_of(r, a.chunk, p))});
  }
  return blocked;
}

//! Whether, for every pair of ranks, the n-th message one sends the other is the n-th the other consumes. A
//! message is an activation (from a forward) or a gradient (from a backward) leaving a virtual stage for a
//! microbatch.
template <Schedule S>
constexpr bool messages_in_order(const std::vector<std::vector<Action>>& lists, ScheduleShape shape,
                                 const std::vector<int>& owner) {
  const int p = shape.stages, m = shape.microbatches, stages_total = shape.virtual_stages();
  std::vector<int> sent_as(static_cast<std::size_t>(2 * m * stages_total), -1);  // its place in the sender's order
  const auto id = [m, stages_total](bool gradient, int microbatch, int from_stage) {
    return static_cast<std::size_t>(((gradient ? 1 : 0) * m + microbatch) * stages_total + from_stage);
  };
  for (const bool sending : {true, false}) {
    std::vector<int> count(static_cast<std::size_t>(p * p), 0);  // messages so far, from rank a to rank b
    const auto next_from_to = [&count, p](int a, int b) { return count[static_cast<std::size_t>(a * p + b)]++; };
    for (int r = 0; r < p; ++r)
      for (const Action& a : lists[static_cast<std::size_t>(r)]) {
        if (a.op == Op::backward_weight) continue;
        const bool gradient = a.op != Op::forward;
        const int s = S::stage_of(r, a.chunk, p);
        const int peer_stage = sending == gradient ? s - 1 : s + 1;
        if (peer_stage < 0 || peer_stage >= stages_total) continue;
        const int peer = owner[static_cast<std::size_t>(peer_stage)];
        if (peer == r) continue;
        if (sending)
          sent_as[id(gradient, a.microbatch, s)] = next_from_to(r, peer);
        else if (sent_as[id(gradient, a.microbatch, peer_stage)] != next_from_to(peer, r))
          return false;
      }
  }
  return true;
}

//! The one check and simulation behind `simulate`, `validate`, `check` and `StaticSchedule`; constexpr.
template <Schedule S>
constexpr Outcome run(ScheduleShape shape, const Costs& costs) {
  Outcome out;
  out.sim.schedule = S::name;
  out.sim.shape = shape;
  out.sim.costs = costs;
  std::vector<int> owner;
  out.problem = check_shape<S>(shape, owner);
  if (out.problem.issue != Issue::none) return out;
  std::vector<std::vector<Action>> lists;
  out.sim.peak_in_flight.assign(static_cast<std::size_t>(shape.stages), 0);
  out.sim.peak_deferred_weights.assign(static_cast<std::size_t>(shape.stages), 0);
  for (int r = 0; r < shape.stages; ++r) {
    lists.push_back(S::actions(r, shape));
    out.problem = check_list<S>(r, lists.back(), out.sim);
    if (out.problem.issue != Issue::none) return out;
  }
  out.blocked = run_in_time<S>(lists, out.sim);
  if (!out.blocked.empty()) {
    const Blocked& b = out.blocked.front();
    out.problem = {Issue::deadlock, b.rank, b.action, b.position};
    return out;
  }
  out.sim.ideal = shape.microbatches * shape.chunks *
                  (costs.forward + (S::split_backward ? costs.backward_input + costs.backward_weight : costs.backward));
  out.sim.messages_in_order = messages_in_order<S>(lists, shape, owner);
  return out;
}

//! The message for a run-time `Error` about `o.problem`.
template <Schedule S>
std::string message(const Outcome& o) {
  const Problem& e = o.problem;
  const int p = o.sim.shape.stages, m = o.sim.shape.microbatches, v = o.sim.shape.chunks;
  const std::string name = S::type_name();
  const std::string at = fmt::format("{} (stages {}, microbatches {}, chunks {}): ", name, p, m, v);
  const auto holder = [p](int stage) {
    const Placement h = placement<S>(stage, p);
    return fmt::format("rank {} chunk {}", h.rank, h.chunk);
  };
  switch (e.issue) {
    case Issue::none: return {};
    case Issue::no_stages: return fmt::format("{}: {} stages; a pipeline needs at least 1", name, e.value);
    case Issue::no_microbatches: return fmt::format("{}: {} microbatches; a step needs at least 1", name, e.value);
    case Issue::wrong_chunks:
      return fmt::format("{}: the shape has {} chunks per rank, the schedule {}", name, e.value, e.limit);
    case Issue::microbatches_not_multiple_of_stages:
      return fmt::format("{}: {} microbatches are not a multiple of {} stages", name, e.value, e.limit);
    case Issue::too_few_microbatches:
      return fmt::format("{}: {} microbatches are fewer than the {} it needs on {} stages", name, e.value, e.limit, p);
    case Issue::stage_map_not_one_to_one:
      if (e.value < 0 || e.value >= p * v)
        return fmt::format("{}stage_of maps rank {} chunk {} to virtual stage {}, outside 0..{}", at, e.rank,
                           e.action.chunk, e.value, p * v - 1);
      return fmt::format("{}stage_of maps {} and rank {} chunk {} both to virtual stage {}", at, holder(e.value),
                         e.rank, e.action.chunk, e.value);
    case Issue::action_out_of_range:
      return fmt::format("{}rank {}, action {}: {} is outside microbatches 0..{}, chunks 0..{}", at, e.rank, e.value,
                         describe(e.action), m - 1, v - 1);
    case Issue::wrong_backward_kind:
      return fmt::format("{}rank {}, action {}: {} in a schedule whose backward is {}", at, e.rank, e.value,
                         describe(e.action),
                         S::split_backward ? "split (backward_input, backward_weight)" : "fused (backward)");
    case Issue::action_twice:
      return fmt::format("{}rank {} runs {} twice (again as action {})", at, e.rank, describe(e.action), e.value);
    case Issue::action_missing: return fmt::format("{}rank {} never runs {}", at, e.rank, describe(e.action));
    case Issue::over_memory_promise:
      return fmt::format("{}rank {} has {} microbatches in flight after {}, more than the {} the schedule promises",
                         at, e.rank, e.value, describe(e.action), e.limit);
    case Issue::deadlock: {
      std::string text = at + "deadlock:";
      for (const Blocked& b : o.blocked)
        text += fmt::format("{}rank {} waits at action {}, {}, for {} of microbatch {} at virtual stage {} ({})",
                            &b == &o.blocked.front() ? " " : "; ", b.rank, b.position, describe(b.action),
                            op_name(b.need.op), b.need.microbatch, b.need.stage, holder(b.need.stage));
      return text;
    }
  }
  return {};
}

//! A `Problem` and the timing it came with: what a constant expression may keep of an `Outcome`.
struct Summary {
  Problem problem;
  int makespan = 0;
  int ideal = 0;
};

//! `run` with the default costs, kept to its `Summary`.
template <Schedule S>
constexpr Summary summarize(ScheduleShape shape) {
  const Outcome o = run<S>(shape, Costs{});
  return {o.problem, o.sim.makespan, o.sim.ideal};
}

//! True when `I` is `Issue::none`; otherwise a `static_assert` on it fails and the compiler's diagnostic shows
//! the issue and the first offending rank, op, microbatch and chunk as its template arguments.
template <Issue I, int Rank, Op O, int Microbatch, int Chunk>
inline constexpr bool schedule_is_valid = I == Issue::none;

}  // namespace detail

//! Simulates schedule `S` on `shape` with `costs` and returns each rank's timed actions, the makespan, the
//! bubble and the peak memory. Throws `Error` naming the schedule, the numbers and the first offending action
//! when the shape breaks the schedule's requirements, a rank's list is incomplete, repeats or misnames an
//! action, a rank exceeds the schedule's memory promise, or the ranks deadlock (then each blocked rank's next
//! action and the output it waits for).
//! @code
//! auto sim = pp::simulate<pp::OneFOneB>({.stages = 4, .microbatches = 8});
//! // sim.bubble() == 3.0 / 8; pp::timeline(sim) draws it
//! @endcode
template <Schedule S>
[[nodiscard]] Simulation simulate(ScheduleShape shape, const Costs& costs = {}) {
  if (costs.forward < 1 || costs.backward < 1 || costs.backward_input < 1 || costs.backward_weight < 1)
    throw Error(fmt::format("pp::simulate<{}>: costs must be at least 1, got forward {}, backward {}, "
                            "backward_input {}, backward_weight {}",
                            S::type_name(), costs.forward, costs.backward, costs.backward_input,
                            costs.backward_weight));
  detail::Outcome o = detail::run<S>(shape, costs);
  if (o.problem.issue != detail::Issue::none) throw Error(detail::message<S>(o));
  return std::move(o.sim);
}

//! Checks schedule `S` on `shape` as `simulate` does, throwing the same `Error`.
template <Schedule S>
void validate(ScheduleShape shape) {
  (void)simulate<S>(shape);
}

//! Whether schedule `S` is valid on p stages, m microbatches, v chunks; usable in a constant expression.
//!
//! Constant evaluation counts its steps: GCC's default `-fconstexpr-ops-limit` (2^25) covers a few thousand
//! actions in all (ZB-V on 8 stages x 64 microbatches, 3072 actions, takes about a third of it). Check bigger
//! shapes at run time with `validate`, or raise the limit.
//! @code
//! static_assert(pp::check<pp::OneFOneB>(4, 8));
//! static_assert(!pp::check<pp::Interleaved1F1B<2>>(4, 6));
//! @endcode
template <Schedule S>
[[nodiscard]] constexpr bool check(int stages, int microbatches, int chunks = S::chunks) {
  return detail::run<S>({stages, microbatches, chunks}, Costs{}).problem.issue == detail::Issue::none;
}

//! Schedule `S` on `P` stages and `M` microbatches, checked at compile time: naming a member of an invalid one
//! fails to compile, the diagnostic naming the issue and the first offending action. Timing uses the default costs;
//! the shape's size is bounded as for `check`.
//! @code
//! using Plan = pp::StaticSchedule<pp::OneFOneB, 4, 8>;
//! static_assert(Plan::makespan == 33 && Plan::bubble == 3.0 / 8);
//! @endcode
//! @tparam S a schedule policy
//! @tparam P stages (pipeline ranks)
//! @tparam M microbatches per step
template <Schedule S, int P, int M>
struct StaticSchedule {
  static constexpr ScheduleShape shape{P, M, S::chunks};

 private:
  static constexpr detail::Summary summary_ = detail::summarize<S>(shape);
  static_assert(detail::schedule_is_valid<summary_.problem.issue, summary_.problem.rank, summary_.problem.action.op,
                                          summary_.problem.action.microbatch, summary_.problem.action.chunk>,
                "pp::StaticSchedule<S, P, M>: the schedule is invalid for these P and M; the arguments of "
                "schedule_is_valid<...> name the issue, then the first offending rank, op, microbatch and chunk");

 public:
  static constexpr int makespan = summary_.makespan;  //!< with the default costs
  static constexpr int ideal = summary_.ideal;
  static constexpr double bubble = double(makespan - ideal) / double(ideal);
};

}  // namespace parallax::pp
