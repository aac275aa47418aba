// expect: pp::StaticSchedule<S, P, M>: the schedule is invalid for these P and M
// expect: Issue::microbatches_not_multiple_of_stages, -1, parallax::pp::Op::forward, -1, -1>
#include <parallax/pp/interleaved_1f1b.hpp>
#include <parallax/pp/simulate.hpp>
// Megatron's interleaved schedule needs m to be a multiple of p: 6 microbatches on 4 stages do not compile.
int main() { return parallax::pp::StaticSchedule<parallax::pp::Interleaved1F1B<2>, 4, 6>::makespan; }
