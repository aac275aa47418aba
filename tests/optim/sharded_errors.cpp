// ShardedOptimizer rejects what it cannot train: no parameters, a wrong number of gradients per step,
// parameters split over DP, bad options, a parameter it does not hold.
#include "sharded.hpp"

namespace px = parallax;
using namespace parallax::test::sharded;

TEST_CASE("ShardedOptimizer rejects bad parameters, options and gradient counts", "[optim][sharded][errors]") {
  std::vector<std::string> msgs;
  px::launch<B>(1, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    auto model = make_mlp<float>(rank);
    using Opt = px::optim::ShardedOptimizer<px::optim::AdamW, px::Zero<2>, Mesh, B>;
    auto msg = [&](auto&& f) {
      try {
        f();
        msgs.push_back("(no error)");
      } catch (const px::Error& e) {
        msgs.push_back(e.what());
      }
    };
    msg([&] { Opt(mesh, px::nn::ParameterList<float, Mem>{}, {}); });
    px::nn::Parameter<float, Mem> split(
        rank.allocator(), px::nn::ShardSpec::split("expert.weight", px::Shape{4, 2}, px::Axis::dp, 0, 2, 0));
    msg([&] { Opt(mesh, px::nn::ParameterList<float, Mem>{&split}, {}); });
    msg([&] { Opt(mesh, model.parameters(), {}, {.clip_norm = -1.f}); });
    msg([&] { Opt(mesh, model.parameters(), {}, {.accumulation = 0}); });
    msg([&] { Opt(mesh, model.parameters(), {.beta1 = 1.f}); });
    msg([&] { Opt(mesh, model.parameters(), {}, {.loss_scaler = px::optim::LossScalerOptions{.hysteresis = 0}}); });
    {
      Opt opt(mesh, model.parameters(), {}, {.accumulation = 2});
      msg([&] { Opt(mesh, model.parameters(), {}); });  // a second owner
      run_microbatch(model, 0, 0, 2);
      msg([&] { (void)opt.step(); });  // one microbatch of two
      run_microbatch(model, 0, 1, 2);
      msg([&] { run_microbatch(model, 0, 2, 2); });  // a third
      px::nn::Parameter<float, Mem> stranger(rank.allocator(), px::nn::ShardSpec::replicated("stranger", px::Shape{2}));
      msg([&] { (void)opt.value(stranger); });
    }
  });
  REQUIRE(msgs.size() == 10);
  CHECK_THAT(msgs[0], Catch::Contains("ShardedOptimizer: the parameter list is empty"));
  CHECK_THAT(msgs[1], Catch::Contains("parameter 'expert.weight' is split over the dp axis"));
  CHECK_THAT(msgs[2], Catch::Contains("clip_norm -1 is not finite and >= 0"));
  CHECK_THAT(msgs[3], Catch::Contains("accumulation 0 is not a positive number of microbatches"));
  CHECK_THAT(msgs[4], Catch::Contains("AdamW: betas (1, 0.999) are not in [0, 1)"));
  CHECK_THAT(msgs[5], Catch::Contains("DynamicLossScaler: hysteresis 0 is not >= 1"));
  CHECK_THAT(msgs[6], Catch::Contains("parameter 'fc1.weight' already has gradient hooks"));
  CHECK_THAT(msgs[7],
             Catch::Contains("parameter 'fc1.weight' received 1 gradient(s) this step, expected accumulation = 2"));
  CHECK_THAT(msgs[8], Catch::Contains("parameter 'fc2.weight' receives gradient 3 of a step whose accumulation is 2"));
  CHECK_THAT(msgs[9], Catch::Contains("parameter 'stranger' is not one of this group's"));
}
