// pp::validate / pp::simulate / pp::check / pp::StaticSchedule: bad shapes and broken schedules are rejected
// with the first offending action, at run time and in constant expressions alike.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include <parallax/pp/gpipe.hpp>
#include <parallax/pp/interleaved_1f1b.hpp>
#include <parallax/pp/one_f_one_b.hpp>
#include <parallax/pp/simulate.hpp>
#include <parallax/pp/zero_bubble_h1.hpp>
#include <parallax/pp/zero_bubble_v.hpp>

#include "../support/support.hpp"

namespace pp = parallax::pp;
using parallax::test::error_of;
using pp::Op;

namespace {

enum class Defect { none, deadlock, missing, twice, out_of_range, wrong_kind, over_memory, stage_twice, stage_outside };

//! 1F1B with one deliberate defect, for p = 2 stages and m = 2 microbatches (1F1B's lists there: rank 0 F0 F1 B0
//! B1, rank 1 F0 B0 F1 B1).
template <Defect D>
struct Broken : pp::OneFOneB {
  static std::string type_name() { return "Broken"; }
  static constexpr int stage_of(int rank, int /*chunk*/, int /*stages*/) {
    return D == Defect::stage_twice ? 0 : D == Defect::stage_outside ? rank + 5 : rank;
  }
  static constexpr int max_in_flight(int rank, pp::ScheduleShape shape) {
    return pp::OneFOneB::max_in_flight(rank, shape) - (D == Defect::over_memory ? 1 : 0);
  }
  static constexpr std::vector<pp::Action> actions(int rank, pp::ScheduleShape shape) {
    // Deadlock: rank 0 waits for rank 1's B0 before its F1; rank 1 waits for F1 first.
    if (D == Defect::deadlock && rank == 0)
      return {{Op::forward, 0, 0}, {Op::backward, 0, 0}, {Op::forward, 1, 0}, {Op::backward, 1, 0}};
    if (D == Defect::deadlock)
      return {{Op::forward, 1, 0}, {Op::backward, 1, 0}, {Op::forward, 0, 0}, {Op::backward, 0, 0}};
    auto a = pp::OneFOneB::actions(rank, shape);
    if (rank != 1) return a;
    if (D == Defect::missing) a.pop_back();
    if (D == Defect::twice) a.push_back({Op::forward, 0, 0});
    if (D == Defect::out_of_range) a[2].microbatch = 2;
    if (D == Defect::wrong_kind) a[1].op = Op::backward_input;
    return a;
  }
};

}  // namespace

// The constexpr path: the same checks in constant expressions.
static_assert(pp::Schedule<pp::GPipe> && pp::Schedule<pp::OneFOneB> && pp::Schedule<pp::Interleaved1F1B<2>> &&
              pp::Schedule<pp::ZeroBubbleH1> && pp::Schedule<pp::ZeroBubbleV> && pp::Schedule<Broken<Defect::none>>);
static_assert(!pp::Schedule<int>);
static_assert(pp::check<pp::OneFOneB>(4, 8, 1));
static_assert(pp::check<pp::GPipe>(4, 3));
static_assert(pp::check<pp::Interleaved1F1B<2>>(4, 8));
static_assert(pp::check<pp::ZeroBubbleH1>(4, 3));
static_assert(pp::check<pp::ZeroBubbleV>(4, 7));
static_assert(!pp::check<pp::Interleaved1F1B<2>>(4, 6));
static_assert(!pp::check<pp::ZeroBubbleV>(4, 6));
static_assert(!pp::check<pp::OneFOneB>(4, 8, 2));
static_assert(!pp::check<pp::OneFOneB>(0, 8));
static_assert(pp::check<Broken<Defect::none>>(2, 2));
static_assert(!pp::check<Broken<Defect::deadlock>>(2, 2));
static_assert(!pp::check<Broken<Defect::missing>>(2, 2));
static_assert(!pp::check<Broken<Defect::twice>>(2, 2));
static_assert(!pp::check<Broken<Defect::out_of_range>>(2, 2));
static_assert(!pp::check<Broken<Defect::wrong_kind>>(2, 2));
static_assert(!pp::check<Broken<Defect::over_memory>>(2, 2));
static_assert(!pp::check<Broken<Defect::stage_twice>>(2, 2));
static_assert(!pp::check<Broken<Defect::stage_outside>>(2, 2));

using Plan = pp::StaticSchedule<pp::OneFOneB, 4, 8>;
static_assert(Plan::shape == pp::ScheduleShape{4, 8, 1});
static_assert(Plan::makespan == 33 && Plan::ideal == 24 && Plan::bubble == 3.0 / 8);
static_assert(pp::StaticSchedule<pp::GPipe, 4, 8>::makespan == 33);
static_assert(pp::StaticSchedule<pp::Interleaved1F1B<2>, 4, 8>::makespan == 48 + 9);
static_assert(pp::StaticSchedule<pp::ZeroBubbleH1, 4, 8>::makespan == 24 + 3);
static_assert(pp::StaticSchedule<pp::ZeroBubbleV, 4, 8>::makespan == 48 + 3);

static_assert(pp::OneFOneB::actions(3, {4, 2, 1}) ==
              std::vector<pp::Action>{{Op::forward, 0, 0}, {Op::backward, 0, 0}, {Op::forward, 1, 0},
                                      {Op::backward, 1, 0}});
static_assert(pp::links<pp::OneFOneB>(1, {Op::forward, 0, 0}, {4, 8, 1}) == pp::Links{0, 2});

TEST_CASE("validate rejects shapes the schedule cannot run", "[pp][simulate][errors]") {
  CHECK(error_of([] { pp::validate<pp::Interleaved1F1B<2>>({4, 6, 2}); }) ==
        "Interleaved1F1B<2>: 6 microbatches are not a multiple of 4 stages");
  CHECK(error_of([] { pp::validate<pp::ZeroBubbleV>({4, 6, 2}); }) ==
        "ZeroBubbleV: 6 microbatches are fewer than the 7 it needs on 4 stages");
  CHECK(error_of([] { pp::validate<pp::OneFOneB>({0, 4, 1}); }) == "OneFOneB: 0 stages; a pipeline needs at least 1");
  CHECK(error_of([] { pp::validate<pp::GPipe>({4, 0, 1}); }) == "GPipe: 0 microbatches; a step needs at least 1");
  CHECK(error_of([] { pp::validate<pp::ZeroBubbleH1>({4, 4, 2}); }) ==
        "ZeroBubbleH1: the shape has 2 chunks per rank, the schedule 1");
  CHECK(error_of([] { (void)pp::simulate<pp::OneFOneB>({4, 4, 1}, {.forward = 0}); }) ==
        "pp::simulate<OneFOneB>: costs must be at least 1, got forward 0, backward 2, backward_input 1, "
        "backward_weight 1");
}

TEST_CASE("validate names the first offending action of a broken schedule", "[pp][simulate][errors]") {
  const pp::ScheduleShape shape{2, 2, 1};
  const std::string at = "Broken (stages 2, microbatches 2, chunks 1): ";
  CHECK_NOTHROW(pp::validate<Broken<Defect::none>>(shape));
  CHECK(error_of([&] { pp::validate<Broken<Defect::missing>>(shape); }) ==
        at + "rank 1 never runs backward(microbatch 1, chunk 0)");
  CHECK(error_of([&] { pp::validate<Broken<Defect::twice>>(shape); }) ==
        at + "rank 1 runs forward(microbatch 0, chunk 0) twice (again as action 4)");
  CHECK(error_of([&] { pp::validate<Broken<Defect::out_of_range>>(shape); }) ==
        at + "rank 1, action 2: forward(microbatch 2, chunk 0) is outside microbatches 0..1, chunks 0..0");
  CHECK(error_of([&] { pp::validate<Broken<Defect::wrong_kind>>(shape); }) ==
        at + "rank 1, action 1: backward_input(microbatch 0, chunk 0) in a schedule whose backward is fused "
             "(backward)");
  CHECK(error_of([&] { pp::validate<Broken<Defect::over_memory>>(shape); }) ==
        at + "rank 0 has 2 microbatches in flight after forward(microbatch 1, chunk 0), more than the 1 the schedule "
             "promises");
  CHECK(error_of([&] { pp::validate<Broken<Defect::stage_twice>>(shape); }) ==
        at + "stage_of maps rank 0 chunk 0 and rank 1 chunk 0 both to virtual stage 0");
  CHECK(error_of([&] { pp::validate<Broken<Defect::stage_outside>>(shape); }) ==
        at + "stage_of maps rank 0 chunk 0 to virtual stage 5, outside 0..1");
}

TEST_CASE("a deadlock names each blocked rank's next action and what it waits for", "[pp][simulate][errors]") {
  CHECK(error_of([] { pp::validate<Broken<Defect::deadlock>>({2, 2, 1}); }) ==
        "Broken (stages 2, microbatches 2, chunks 1): deadlock: "
        "rank 0 waits at action 1, backward(microbatch 0, chunk 0), for backward of microbatch 0 at virtual stage 1 "
        "(rank 1 chunk 0); "
        "rank 1 waits at action 0, forward(microbatch 1, chunk 0), for forward of microbatch 1 at virtual stage 0 "
        "(rank 0 chunk 0)");
}

TEST_CASE("simulate reports each rank's timed actions in order", "[pp][simulate]") {
  const auto sim = pp::simulate<pp::OneFOneB>({2, 2, 1});
  // rank 0: F0 [0,1) F1 [1,2) B0 [4,6) B1 [7,9); rank 1: F0 [1,2) B0 [2,4) F1 [4,5) B1 [5,7)
  using T = pp::TimedAction;
  CHECK(sim.ranks[0] == std::vector<T>{{{Op::forward, 0, 0}, 0, 1},
                                       {{Op::forward, 1, 0}, 1, 2},
                                       {{Op::backward, 0, 0}, 4, 6},
                                       {{Op::backward, 1, 0}, 7, 9}});
  CHECK(sim.ranks[1] == std::vector<T>{{{Op::forward, 0, 0}, 1, 2},
                                       {{Op::backward, 0, 0}, 2, 4},
                                       {{Op::forward, 1, 0}, 4, 5},
                                       {{Op::backward, 1, 0}, 5, 7}});
  CHECK(sim.makespan == 9);
  CHECK(sim.ideal == 6);
  CHECK(sim.peak_in_flight == std::vector<int>{2, 1});
  CHECK(sim.peak_deferred_weights == std::vector<int>{0, 0});
}
