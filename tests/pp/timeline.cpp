// pp::timeline: the ASCII drawing of a simulated schedule.
#include <catch2/catch.hpp>

#include <string>

#include <parallax/pp/interleaved_1f1b.hpp>
#include <parallax/pp/one_f_one_b.hpp>
#include <parallax/pp/simulate.hpp>
#include <parallax/pp/timeline.hpp>
#include <parallax/pp/zero_bubble_h1.hpp>

#include "../support/support.hpp"

namespace pp = parallax::pp;

TEST_CASE("timeline of 1F1B, p = 4, m = 8", "[pp][timeline]") {
  CHECK(pp::timeline(pp::simulate<pp::OneFOneB>({4, 8, 1})) ==
        "rank 0 |F0|F1|F2|F3|  |  |  |  |  |  |B0   |F4|B1   |F5|B2   |F6|B3   |F7|B4   |  |B5   |  |B6   |  |B7   |\n"
        "rank 1 |  |F0|F1|F2|  |  |  |  |B0   |F3|B1   |F4|B2   |F5|B3   |F6|B4   |F7|B5   |  |B6   |  |B7   |  |  |\n"
        "rank 2 |  |  |F0|F1|  |  |B0   |F2|B1   |F3|B2   |F4|B3   |F5|B4   |F6|B5   |F7|B6   |  |B7   |  |  |  |  |\n"
        "rank 3 |  |  |  |F0|B0   |F1|B1   |F2|B2   |F3|B3   |F4|B4   |F5|B5   |F6|B6   |F7|B7   |  |  |  |  |  |  |\n");
}

TEST_CASE("timeline: split backward, chunk letters, time unit from the costs", "[pp][timeline]") {
  CHECK(pp::timeline(pp::simulate<pp::ZeroBubbleH1>({2, 3, 1})) ==
        "rank 0 |F0|F1|  |B0|W0|F2|B1|W1|B2|W2|\n"
        "rank 1 |  |F0|B0|F1|B1|W0|F2|B2|W1|W2|\n");
  CHECK(pp::timeline(pp::simulate<pp::Interleaved1F1B<2>>({2, 2, 2})) ==
        "rank 0 |F0a|F1a|F0b|F1b|   |   |   |B0b    |B1b    |B0a    |B1a    |\n"
        "rank 1 |   |F0a|F1a|F0b|F1b|B0b    |B1b    |B0a    |B1a    |   |   |\n");
  // Doubling every cost draws the same picture.
  const auto sim = pp::simulate<pp::OneFOneB>({3, 5, 1});
  const auto slow = pp::simulate<pp::OneFOneB>({3, 5, 1}, {.forward = 2, .backward_input = 2, .backward_weight = 2,
                                                            .backward = 4});
  CHECK(slow.makespan == 2 * sim.makespan);
  CHECK(pp::timeline(slow) == pp::timeline(sim));
}

TEST_CASE("timeline rejects more chunks than it has letters", "[pp][timeline][errors]") {
  pp::Simulation sim;
  sim.shape = {1, 1, 27};
  CHECK(parallax::test::error_of([&] { (void)pp::timeline(sim); }) ==
        "pp::timeline: 27 chunks; chunk letters go up to 26 (a to z)");
}
