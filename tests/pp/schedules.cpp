// Pipeline schedules over p in {1, 2, 4} x m in {1, p, 2p, 2p+1}: each rank runs every action once, no action
// starts before its inputs exist, and the bubble and peak activation memory are exactly what theory says.
#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include <fmt/format.h>

#include <parallax/pp/gpipe.hpp>
#include <parallax/pp/interleaved_1f1b.hpp>
#include <parallax/pp/one_f_one_b.hpp>
#include <parallax/pp/simulate.hpp>
#include <parallax/pp/zero_bubble_h1.hpp>
#include <parallax/pp/zero_bubble_v.hpp>

#include "../support/support.hpp"

namespace pp = parallax::pp;
using parallax::test::error_of;

namespace {

//! What theory says of schedule S on p stages and m microbatches with the default costs.
struct Theory {
  bool valid = true;
  double bubble = 0;
  std::vector<int> peak_in_flight;
};

template <class S>
Theory theory(int p, int m) {
  Theory t;
  for (int r = 0; r < p; ++r) {
    if constexpr (std::is_same_v<S, pp::GPipe>) {
      t.bubble = double(p - 1) / m;
      t.peak_in_flight.push_back(m);
    } else if constexpr (std::is_same_v<S, pp::OneFOneB>) {
      t.bubble = double(p - 1) / m;
      t.peak_in_flight.push_back(std::min(p - r, m));
    } else if constexpr (std::is_same_v<S, pp::ZeroBubbleH1>) {
      // A third of 1F1B's for m >= p; for m < p the first rank's first backward still waits until 2p - 1.
      t.bubble = double(p - 1 + std::max(0, p - m)) / (3 * m);
      t.peak_in_flight.push_back(std::min(p - r, m));
    } else if constexpr (std::is_same_v<S, pp::ZeroBubbleV>) {
      t.valid = m >= 2 * p - 1;
      t.bubble = double(p - 1) / (6 * m);
      t.peak_in_flight.push_back(2 * p);
    } else {  // Interleaved1F1B<V>, as Megatron-LM: all forwards first when m == p
      constexpr int v = S::chunks;
      t.valid = m % p == 0;
      t.bubble = double(p - 1) / (v * m);
      t.peak_in_flight.push_back(m == p ? v * m : std::min(v * m, 2 * (p - r - 1) + (v - 1) * p + 1));
    }
  }
  return t;
}

//! The first broken rule in `sim`, or "": a rank runs two actions at once, an action lasts other than its cost,
//! a rank runs some (op, microbatch, chunk) other than once, or an action starts before its inputs exist.
template <class S>
std::string first_violation(const pp::Simulation& sim) {
  const auto [p, m, v] = sim.shape;
  const int last = p * v - 1;
  const std::vector<pp::Op> ops = S::split_backward
                                      ? std::vector{pp::Op::forward, pp::Op::backward_input, pp::Op::backward_weight}
                                      : std::vector{pp::Op::forward, pp::Op::backward};
  std::map<std::tuple<pp::Op, int, int>, int> end;  // (op, microbatch, virtual stage) -> end time
  for (int r = 0; r < p; ++r) {
    std::map<std::tuple<pp::Op, int, int>, int> runs;  // (op, microbatch, chunk) -> times run
    int free_at = 0;
    for (const auto& t : sim.ranks[static_cast<std::size_t>(r)]) {
      const auto& a = t.action;
      if (t.start < free_at) return fmt::format("rank {} starts {} before its last action ends", r, pp::describe(a));
      if (t.end - t.start != sim.costs.of(a.op))
        return fmt::format("rank {}: {} is not as long as its cost", r, pp::describe(a));
      free_at = t.end;
      ++runs[{a.op, a.microbatch, a.chunk}];
      end[{a.op, a.microbatch, S::stage_of(r, a.chunk, p)}] = t.end;
    }
    for (pp::Op op : ops)
      for (int c = 0; c < v; ++c)
        for (int i = 0; i < m; ++i)
          if (runs[{op, i, c}] != 1)
            return fmt::format("rank {} runs {} {} times", r, pp::describe({op, i, c}), runs[{op, i, c}]);
  }
  const pp::Op backward = S::split_backward ? pp::Op::backward_input : pp::Op::backward;
  for (int r = 0; r < p; ++r)
    for (const auto& t : sim.ranks[static_cast<std::size_t>(r)]) {
      const auto& a = t.action;
      const int s = S::stage_of(r, a.chunk, p);
      std::vector<std::tuple<pp::Op, int, int>> inputs;
      if (a.op == pp::Op::forward && s > 0) inputs.push_back({pp::Op::forward, a.microbatch, s - 1});
      if (a.op == backward) inputs.push_back({pp::Op::forward, a.microbatch, s});
      if (a.op == backward && s < last) inputs.push_back({backward, a.microbatch, s + 1});
      if (a.op == pp::Op::backward_weight) inputs.push_back({backward, a.microbatch, s});
      for (const auto& in : inputs)
        if (end.at(in) > t.start) return fmt::format("rank {} starts {} before its input is ready", r, pp::describe(a));
    }
  return {};
}

}  // namespace

TEMPLATE_TEST_CASE("every schedule, p in {1, 2, 4} x m in {1, p, 2p, 2p+1}: complete, ordered, bubble and memory "
                   "as theory says",
                   "[pp][schedule]", pp::GPipe, pp::OneFOneB, pp::Interleaved1F1B<2>, pp::Interleaved1F1B<3>,
                   pp::ZeroBubbleH1, pp::ZeroBubbleV) {
  using S = TestType;
  for (int p : {1, 2, 4})
    for (int m : {1, p, 2 * p, 2 * p + 1}) {
      INFO(S::type_name() << " p " << p << " m " << m);
      const Theory t = theory<S>(p, m);
      const pp::ScheduleShape shape{p, m, S::chunks};
      if (!t.valid) {
        CHECK(error_of([&] { pp::validate<S>(shape); }).find("microbatches are") != std::string::npos);
        continue;
      }
      const pp::Simulation sim = pp::simulate<S>(shape);
      CHECK(sim.schedule == S::name);
      CHECK(first_violation<S>(sim) == "");
      CHECK(sim.ideal == m * S::chunks * 3);
      CHECK(sim.bubble() == t.bubble);
      CHECK(sim.peak_in_flight == t.peak_in_flight);
      for (int r = 0; r < p; ++r) CHECK(sim.peak_in_flight[static_cast<std::size_t>(r)] <= S::max_in_flight(r, shape));
    }
}

TEST_CASE("ZB-H1 keeps 1F1B's activation memory and has a third of its bubble for m >= p", "[pp][schedule]") {
  for (int p : {2, 3, 4, 8})
    for (int m = 1; m <= 3 * p; ++m) {
      INFO("p " << p << " m " << m);
      const auto zb = pp::simulate<pp::ZeroBubbleH1>({p, m, 1});
      const auto base = pp::simulate<pp::OneFOneB>({p, m, 1});
      CHECK(zb.ideal == base.ideal);
      CHECK(zb.peak_in_flight == base.peak_in_flight);
      CHECK(zb.bubble() < base.bubble());
      if (m >= p) CHECK(3 * (zb.makespan - zb.ideal) == base.makespan - base.ideal);
      // Rank r defers its weight gradients by r microbatches: r + 1 wait for backward_weight at most.
      for (int r = 0; r < p; ++r) CHECK(zb.peak_deferred_weights[static_cast<std::size_t>(r)] == std::min(r + 1, m));
    }
}

TEST_CASE("interleaving V chunks divides 1F1B's bubble by V; ZB-V halves ZB-H1's", "[pp][schedule]") {
  const auto base = pp::simulate<pp::OneFOneB>({4, 8, 1});
  const auto two = pp::simulate<pp::Interleaved1F1B<2>>({4, 8, 2});
  const auto four = pp::simulate<pp::Interleaved1F1B<4>>({4, 8, 4});
  CHECK(base.makespan - base.ideal == 9);  // (p - 1) (F + B), whatever V
  CHECK(two.makespan - two.ideal == 9);
  CHECK(four.makespan - four.ideal == 9);
  CHECK(two.ideal == 2 * base.ideal);
  CHECK(four.ideal == 4 * base.ideal);
  const auto h1 = pp::simulate<pp::ZeroBubbleH1>({4, 8, 1});
  const auto v = pp::simulate<pp::ZeroBubbleV>({4, 8, 2});
  CHECK(h1.makespan - h1.ideal == 3);
  CHECK(v.makespan - v.ideal == 3);
  CHECK(v.ideal == 2 * h1.ideal);
}

TEST_CASE("unequal costs: GPipe and 1F1B take (m + p - 1)(F + B)", "[pp][schedule]") {
  const pp::Costs costs{.forward = 2, .backward = 5};
  for (int p : {2, 4})
    for (int m : {3, 8}) {
      INFO("p " << p << " m " << m);
      const auto g = pp::simulate<pp::GPipe>({p, m, 1}, costs);
      const auto f = pp::simulate<pp::OneFOneB>({p, m, 1}, costs);
      CHECK(first_violation<pp::GPipe>(g) == "");
      CHECK(first_violation<pp::OneFOneB>(f) == "");
      CHECK(g.makespan == (m + p - 1) * 7);
      CHECK(f.makespan == (m + p - 1) * 7);
      CHECK(f.ideal == m * 7);
    }
}

TEST_CASE("messages between two ranks arrive in the order they are consumed, except in ZB-V's V", "[pp][schedule]") {
  CHECK(pp::simulate<pp::GPipe>({4, 8, 1}).messages_in_order);
  CHECK(pp::simulate<pp::OneFOneB>({4, 8, 1}).messages_in_order);
  CHECK(pp::simulate<pp::ZeroBubbleH1>({4, 8, 1}).messages_in_order);
  CHECK(pp::simulate<pp::Interleaved1F1B<2>>({2, 4, 2}).messages_in_order);
  CHECK(pp::simulate<pp::Interleaved1F1B<3>>({4, 8, 3}).messages_in_order);
  CHECK(pp::simulate<pp::ZeroBubbleV>({1, 3, 2}).messages_in_order);  // one rank: no messages at all
  CHECK_FALSE(pp::simulate<pp::ZeroBubbleV>({2, 3, 2}).messages_in_order);
}

TEST_CASE("links: who sends each action its input and who receives its output", "[pp][schedule]") {
  using pp::Op;
  const pp::ScheduleShape four{4, 8, 1};
  CHECK(pp::links<pp::OneFOneB>(0, {Op::forward, 0, 0}, four) == pp::Links{-1, 1});
  CHECK(pp::links<pp::OneFOneB>(1, {Op::forward, 0, 0}, four) == pp::Links{0, 2});
  CHECK(pp::links<pp::OneFOneB>(3, {Op::forward, 0, 0}, four) == pp::Links{2, -1});
  CHECK(pp::links<pp::OneFOneB>(3, {Op::backward, 0, 0}, four) == pp::Links{-1, 2});
  CHECK(pp::links<pp::OneFOneB>(1, {Op::backward, 0, 0}, four) == pp::Links{2, 0});
  CHECK(pp::links<pp::ZeroBubbleH1>(1, {Op::backward_weight, 0, 0}, four) == pp::Links{});
  // Interleaved, p = 2: rank 1 chunk 0 (stage 1) feeds rank 0 chunk 1 (stage 2).
  CHECK(pp::links<pp::Interleaved1F1B<2>>(1, {Op::forward, 0, 0}, {2, 2, 2}) == pp::Links{0, 0});
  CHECK(pp::links<pp::Interleaved1F1B<2>>(0, {Op::backward, 0, 1}, {2, 2, 2}) == pp::Links{1, 1});
  // ZB-V: rank 0 chunk 1 is the last stage; the bottom of the V hands over on the same rank.
  CHECK(pp::links<pp::ZeroBubbleV>(0, {Op::forward, 0, 1}, {4, 8, 2}) == pp::Links{1, -1});
  CHECK(pp::links<pp::ZeroBubbleV>(3, {Op::forward, 0, 0}, {4, 8, 2}) == pp::Links{2, 3});
  CHECK(pp::links<pp::ZeroBubbleV>(3, {Op::backward_input, 0, 0}, {4, 8, 2}) == pp::Links{3, 2});
  CHECK(pp::placement<pp::ZeroBubbleV>(5, 4) == pp::Placement{2, 1});
  CHECK(pp::placement<pp::ZeroBubbleV>(8, 4) == pp::Placement{});
}
