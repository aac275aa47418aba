// ShardedOptimizer parity: DP {1, 2, 4} x Zero<0..3> x gradient accumulation {1, 3} train like one rank on
// the global batch (fp32 within 1e-6 relative, bf16 within 1e-2), with Adam, AdamW and SGD with momentum.
#include "sharded.hpp"

namespace px = parallax;
using namespace parallax::test::sharded;

namespace {

template <class Z, class R, class T>
void check_parity(typename R::Hyper hyper, double tolerance) {
  for (int accumulation : {1, 3}) {
    for (int dp : {1, 2, 4}) {
      const Run run{.dp = dp, .accumulation = accumulation};
      INFO("Zero<" << Z::stage << "> " << R::name << " DP " << dp << " accumulation " << accumulation);
      const auto ref = reference<R, T>(run, hyper);
      const auto got = train<R, Z, T>(run, hyper);
      check_values(got, ref, tolerance);
      for (const auto& o : got)
        for (std::size_t s = 0; s < ref.norms.size(); ++s) CHECK(o.norms[s] == Approx(ref.norms[s]).epsilon(tolerance));
    }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("ShardedOptimizer trains like one rank on the global batch (fp32, AdamW)",
                   "[optim][sharded][parity]", px::Zero<0>, px::Zero<1>, px::Zero<2>, px::Zero<3>) {
  check_parity<TestType, px::optim::AdamW, float>({.lr = 1e-2f, .weight_decay = 0.1f}, 1e-6);
}

TEMPLATE_TEST_CASE("ShardedOptimizer trains like one rank on the global batch (bf16, AdamW)",
                   "[optim][sharded][parity]", px::Zero<0>, px::Zero<1>, px::Zero<2>, px::Zero<3>) {
  check_parity<TestType, px::optim::AdamW, px::bf16>({.lr = 1e-2f, .weight_decay = 0.1f}, 1e-2);
}

TEST_CASE("ShardedOptimizer parity holds for SGD with momentum and for Adam", "[optim][sharded][parity]") {
  check_parity<px::Zero<2>, px::optim::SGD, float>({.lr = 0.5f, .momentum = 0.9f, .nesterov = true}, 1e-6);
  check_parity<px::Zero<3>, px::optim::Adam, float>({.lr = 1e-2f, .weight_decay = 0.01f}, 1e-6);
}
