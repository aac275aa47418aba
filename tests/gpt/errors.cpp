// gpt::make_chunks: a model that does not fit the mesh (layers not divisible by PP x chunks, heads or vocabulary
// not divisible by TP, dim not divisible by heads, seq not divisible by TP under sequence parallelism, seq longer
// than the learned positions, a size that is not positive) throws the same clear message on every rank, before any
// communication.
#include <string>

#include "harness.hpp"

using namespace gpt_test;
using px::dynamic;

namespace {

//! Every rank's error when building the chunks of schedule S for `c` on `world` ranks of `Mesh`.
template <class Mesh, pp::Schedule S = pp::OneFOneB>
std::vector<std::string> build(int world, const gpt::Config& c) {
  return errors_on_ranks(world, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    (void)gpt::make_chunks<S, B, float>(mesh, c);
  });
}

}  // namespace

TEST_CASE("gpt: a model that does not fit the mesh is an error on every rank", "[gpt][errors]") {
  const gpt::Config c = small_config();
  using PP = px::DeviceMesh<1, dynamic, 1>;
  using TP = px::DeviceMesh<1, 1, dynamic>;
  check_every_rank(build<PP>(3, c), "gpt: 4 layers are not divisible by PP x chunks = 3 x 1 = 3 pipeline stages");
  gpt::Config two = c;
  two.layers = 2;
  check_every_rank(build<PP, pp::Interleaved1F1B<2>>(2, two),
                   "gpt: 2 layers are not divisible by PP x chunks = 2 x 2 = 4 pipeline stages");
  check_every_rank(build<TP>(3, c), "gpt: 4 heads are not divisible by TP 3");
  gpt::Config odd_vocab = c;
  odd_vocab.vocab = 63;
  check_every_rank(build<TP>(2, odd_vocab), "gpt: vocabulary 63 is not divisible by TP 2");
  gpt::Config narrow = c;
  narrow.dim = 30;
  check_every_rank(build<TP>(2, narrow), "gpt: dim 30 is not divisible by 4 heads");
  gpt::Config sp = c;
  sp.sequence_parallel = true;
  sp.seq = 9;
  check_every_rank(build<TP>(2, sp), "gpt: seq 9 is not divisible by TP 2 (sequence parallelism)");
  gpt::Config too_long = c;
  too_long.positions = 6;
  check_every_rank(build<PP>(2, too_long), "gpt: seq 8 is longer than the model's 6 learned positions");
  gpt::Config empty = c;
  empty.layers = 0;
  check_every_rank(build<PP>(2, empty), "gpt: vocab 64, seq 8, layers 0, heads 4 and dim 32 must be positive");
  // Every check passes, and nothing else is wrong: no error.
  for (const auto& m : build<PP, pp::Interleaved1F1B<2>>(2, c)) CHECK(m.empty());
}
