// expect: pp::StaticSchedule<S, P, M>: the schedule is invalid for these P and M
// expect: Issue::deadlock, 0, parallax::pp::Op::backward, 0, 0>
#include <vector>

#include <parallax/pp/one_f_one_b.hpp>
#include <parallax/pp/simulate.hpp>
namespace pp = parallax::pp;
// Rank 0 waits for rank 1's backward of microbatch 0 before its forward of microbatch 1, which rank 1 waits for
// first: the schedule deadlocks, and a schedule that deadlocks does not compile.
struct Deadlocking : pp::OneFOneB {
  static constexpr std::vector<pp::Action> actions(int rank, pp::ScheduleShape) {
    using pp::Op;
    if (rank == 0) return {{Op::forward, 0, 0}, {Op::backward, 0, 0}, {Op::forward, 1, 0}, {Op::backward, 1, 0}};
    return {{Op::forward, 1, 0}, {Op::backward, 1, 0}, {Op::forward, 0, 0}, {Op::backward, 0, 0}};
  }
};
int main() { return pp::StaticSchedule<Deadlocking, 2, 2>::makespan; }
