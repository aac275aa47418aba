// Parameter hooks: every module brackets value reads and gradient accumulations, in order, once per pass.
#include <catch2/catch.hpp>

#include <map>
#include <string>

#include <parallax/comm/launch.hpp>
#include <parallax/nn/layer_norm.hpp>
#include <parallax/nn/linear.hpp>

#include "../support/gradcheck.hpp"

namespace px = parallax;
using Backend = px::host::Backend;
using Mem = px::host::Memory;

TEST_CASE("Parameter hooks bracket every read and accumulation", "[nn][parameter][hooks]") {
  std::map<std::string, int> counts;
  std::string order;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    px::nn::LayerNorm<Backend, float> ln(rank, 4, {.name = "ln"});
    px::nn::Linear<Backend, float> fc(rank, 4, 3, {.name = "fc"});
    int open = 0;  // reads in progress: must be back to 0 after every pass
    auto install = [&](px::nn::Parameter<float, Mem>* p) {
      px::nn::ParameterHooks<float, Mem> h;
      h.before_value = [&](auto& q) { ++counts[q.name() + " before_value"]; ++open; };
      h.after_value = [&](auto& q) { ++counts[q.name() + " after_value"]; --open; };
      h.before_grad = [&](auto& q) { ++counts[q.name() + " before_grad"]; };
      h.after_grad = [&](auto& q) {
        ++counts[q.name() + " after_grad"];
        order += q.name() + ";";
      };
      (void)p->set_hooks(std::move(h));
    };
    for (auto* p : ln.parameters()) install(p);
    for (auto* p : fc.parameters()) install(p);
    auto x = px::test::random_values(2 * 4, 1);
    decltype(ln)::Ctx lc;
    decltype(fc)::Ctx fcx;
    auto h = ln.forward(lc, px::View<const float, Mem>(x.data(), px::Shape{2, 4}));
    auto y = fc.forward(fcx, h.cview());
    auto dh = fc.backward_input(fcx, y.cview());
    (void)ln.backward_input(lc, dh.cview());
    fc.backward_weight(fcx);
    ln.backward_weight(lc);
    if (open != 0) order = "unbalanced reads";
  });
  // Linear reads W in forward and backward_input, b in forward; LayerNorm reads gamma in all three passes.
  CHECK(counts["fc.weight before_value"] == 2);
  CHECK(counts["fc.weight after_value"] == 2);
  CHECK(counts["fc.bias before_value"] == 1);
  CHECK(counts["ln.weight before_value"] == 3);
  CHECK(counts["ln.bias before_value"] == 1);
  for (const char* p : {"fc.weight", "fc.bias", "ln.weight", "ln.bias"}) {
    CHECK(counts[std::string(p) + " before_grad"] == 1);
    CHECK(counts[std::string(p) + " after_grad"] == 1);
  }
  CHECK(order == "fc.weight;fc.bias;ln.weight;ln.bias;");
}
