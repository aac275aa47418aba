// Sequential and Residual: the same results as running their layers by hand, gradients against finite
// differences, parameter order and names, freeing, errors.
#include <catch2/catch.hpp>

#include <parallax/comm/launch.hpp>
#include <parallax/nn/gelu.hpp>
#include <parallax/nn/layer_norm.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/residual.hpp>
#include <parallax/nn/sequential.hpp>

#include "../support/gradcheck.hpp"
#include "../support/support.hpp"

namespace px = parallax;
using Backend = px::host::Backend;
using px::test::error_of;
using px::test::random_values;
using CView = px::View<const float, px::host::Memory>;

namespace {

using LN = px::nn::LayerNorm<Backend, float>;
using Fc = px::nn::Linear<Backend, float>;
using Act = px::nn::GELU<Backend, float>;
using Mlp = px::nn::Sequential<LN, Fc, Act, Fc>;
using Block = px::nn::Residual<Mlp>;

Mlp make_mlp(px::Rank<Backend>& rank, std::int64_t d, std::int64_t f) {
  return Mlp("mlp", LN(rank, d, {.name = "ln"}), Fc(rank, d, f, {.init_std = 0.5f, .seed = 1, .name = "fc1"}),
             Act(rank, "act"), Fc(rank, f, d, {.init_std = 0.5f, .seed = 1, .name = "fc2"}));
}

// The parameters' gradients, concatenated in order; zeroes them.
std::vector<float> take_grads(const px::nn::ParameterList<float, px::host::Memory>& params) {
  std::vector<float> g;
  for (auto* p : params) {
    const auto v = px::to_vector(p->grad());
    g.insert(g.end(), v.begin(), v.end());
    p->zero_grad();
  }
  return g;
}

// y, dx and the parameter gradients of one forward and backward of `m`.
struct Run {
  std::vector<float> y, dx, grads;
};
template <class M>
Run run(M& m, const std::vector<float>& x, const std::vector<float>& dy, px::Shape s) {
  typename M::Ctx ctx;
  Run r;
  r.y = px::to_vector(m.forward(ctx, CView(x.data(), s)).cview());
  r.dx = px::to_vector(m.backward_input(ctx, CView(dy.data(), s)).cview());
  m.backward_weight(ctx);
  r.grads = take_grads(m.parameters());
  return r;
}

void check_all_ok(const std::vector<px::test::GradError>& errs) {
  for (const auto& e : errs) {
    INFO(e.str());
    CHECK(e.ok());
  }
}

}  // namespace

TEST_CASE("Sequential and Residual equal their layers run by hand", "[nn][sequential][residual]") {
  const px::Shape s{3, 2, 8};
  const auto x = random_values(s.numel(), 1), dy = random_values(s.numel(), 2);
  Run seq, block, hand;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    auto mlp = make_mlp(rank, 8, 16);
    seq = run(mlp, x, dy, s);

    // The same layers, chained by hand, in the same order of passes.
    LN::Ctx c0;
    Fc::Ctx c1;
    Act::Ctx c2;
    Fc::Ctx c3;
    auto h0 = mlp.get<0>().forward(c0, CView(x.data(), s));
    auto h1 = mlp.get<1>().forward(c1, h0.cview());
    auto h2 = mlp.get<2>().forward(c2, h1.cview());
    auto y = mlp.get<3>().forward(c3, h2.cview());
    auto d3 = mlp.get<3>().backward_input(c3, CView(dy.data(), s));
    auto d2 = mlp.get<2>().backward_input(c2, d3.cview());
    auto d1 = mlp.get<1>().backward_input(c1, d2.cview());
    auto d0 = mlp.get<0>().backward_input(c0, d1.cview());
    mlp.get<3>().backward_weight(c3);
    mlp.get<2>().backward_weight(c2);
    mlp.get<1>().backward_weight(c1);
    mlp.get<0>().backward_weight(c0);
    hand = {px::to_vector(y.cview()), px::to_vector(d0.cview()), take_grads(mlp.parameters())};

    Block res(std::move(mlp));
    block = run(res, x, dy, s);
  });
  CHECK(seq.y == hand.y);
  CHECK(seq.dx == hand.dx);
  CHECK(seq.grads == hand.grads);
  REQUIRE(block.y.size() == x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    CHECK(block.y[i] == x[i] + seq.y[i]);
    CHECK(block.dx[i] == dy[i] + seq.dx[i]);
  }
  CHECK(block.grads == seq.grads);
}

TEST_CASE("Sequential and Residual gradients match finite differences", "[nn][sequential][residual][gradcheck]") {
  std::vector<px::test::GradError> seq, block;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    auto mlp = make_mlp(rank, 6, 12);
    seq = px::test::gradcheck(mlp, random_values(3 * 2 * 6, 3), px::Shape{3, 2, 6});
    Block res(make_mlp(rank, 6, 12));
    block = px::test::gradcheck(res, random_values(3 * 2 * 6, 4), px::Shape{3, 2, 6});
  });
  REQUIRE(seq.size() == 7);  // dx and 6 parameters
  REQUIRE(block.size() == 7);
  check_all_ok(seq);
  check_all_ok(block);
}

TEST_CASE("Sequential and Residual list their layers' parameters in order", "[nn][sequential][residual]") {
  std::vector<std::string> names;
  std::string seq_name, block_name;
  bool same_pointers = false;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    Block res("mlp", LN(rank, 4, {.name = "h.0.ln_2"}), Fc(rank, 4, 8, {.name = "h.0.mlp.c_fc"}), Act(rank),
              Fc(rank, 8, 4, {.name = "h.0.mlp.c_proj"}));
    const auto params = res.parameters();
    for (const auto* p : params) names.push_back(p->name());
    auto& mlp = res.inner();
    same_pointers = params.size() == 6 && params[0] == &mlp.get<0>().weight() && params[1] == &mlp.get<0>().bias() &&
                    params[2] == &mlp.get<1>().weight() && params[3] == mlp.get<1>().bias() &&
                    params[4] == &mlp.get<3>().weight() && params[5] == mlp.get<3>().bias();
    seq_name = mlp.name();
    block_name = res.name();
  });
  CHECK(names == std::vector<std::string>{"h.0.ln_2.weight", "h.0.ln_2.bias", "h.0.mlp.c_fc.weight",
                                          "h.0.mlp.c_fc.bias", "h.0.mlp.c_proj.weight", "h.0.mlp.c_proj.bias"});
  CHECK(same_pointers);
  CHECK(seq_name == "mlp");
  CHECK(block_name == "mlp");
}

TEST_CASE("Sequential and Residual hold no activations after backward_weight", "[nn][sequential][residual][memory]") {
  const px::Shape s{4, 2, 8};
  std::int64_t after_seq = -1, after_block = -1;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    const auto x = random_values(s.numel(), 5);
    auto live = [&] { return static_cast<std::int64_t>(rank.memory().live(px::MemoryCategory::activations)); };
    auto mlp = make_mlp(rank, 8, 16);
    (void)run(mlp, x, x, s);
    after_seq = live();
    Block res(std::move(mlp));
    (void)run(res, x, x, s);
    after_block = live();
  });
  CHECK(after_seq == 0);
  CHECK(after_block == 0);
}

TEST_CASE("Sequential and Residual reject passes out of order and a shape-changing inner layer",
          "[nn][sequential][residual][errors]") {
  std::vector<std::string> msgs;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    std::vector<float> x(8, 1.f);
    const CView xv(x.data(), px::Shape{2, 4});
    Block res(make_mlp(rank, 4, 8));
    Block::Ctx ctx;
    msgs.push_back(error_of([&] { (void)res.backward_input(ctx, xv); }));
    Mlp::Ctx seq_ctx;
    msgs.push_back(error_of([&] { res.inner().backward_weight(seq_ctx); }));
    (void)res.forward(ctx, xv);
    msgs.push_back(error_of([&] { (void)res.forward(ctx, xv); }));
    Block wide(make_mlp(rank, 8, 8));
    Block::Ctx wide_ctx;
    msgs.push_back(error_of([&] { (void)wide.forward(wide_ctx, xv); }));
    px::nn::Residual<px::nn::Sequential<LN, Fc>> proj("proj", LN(rank, 4), Fc(rank, 4, 3));
    decltype(proj)::Ctx proj_ctx;
    msgs.push_back(error_of([&] { (void)proj.forward(proj_ctx, xv); }));
  });
  REQUIRE(msgs.size() == 5);
  CHECK_THAT(msgs[0], Catch::Contains("Residual 'mlp': backward_input called on a context whose forward has not run"));
  CHECK_THAT(msgs[1], Catch::Contains("Sequential 'mlp': backward_weight called on a context whose backward_input has not run"));
  CHECK_THAT(msgs[2], Catch::Contains("Residual 'mlp': forward called on a context whose forward already ran"));
  CHECK_THAT(msgs[3], Catch::Contains("LayerNorm 'ln': input [2, 4] is not [..., 8]"));
  CHECK_THAT(msgs[4], Catch::Contains("Residual 'proj': the inner layer maps [2, 4] to [2, 3]; a residual needs the same shape"));
}
