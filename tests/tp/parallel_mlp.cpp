// ParallelMLP, whose GELU runs in the epilogues of its two GEMMs, against the unfused single-rank composition
// Linear -> GELU -> Linear: TP 1-4, sequence parallel on and off, fp32 and bf16; what it keeps per microbatch;
// errors of the column-parallel layer's fused backward.
#include <catch2/catch.hpp>

#include <parallax/nn/gelu.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/tp/parallel_mlp.hpp>

#include "parity.hpp"

namespace px = parallax;
using namespace px::test::tp;

static_assert(px::nn::Layer<px::tp::ParallelMLP<Mesh, B, float>>);
static_assert(px::nn::Layer<px::tp::ParallelMLP<Mesh, B, px::bf16>>);

namespace {

constexpr std::int64_t dim = 12, hidden = 48;

// One step of the unfused composition on one rank, with the MLP's parameter names.
template <class T>
Record unfused_reference() {
  Record ref;
  px::launch<B>(1, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    using Linear = px::nn::Linear<B, T>;
    px::nn::Sequential mlp("mlp", Linear(rank, dim, hidden, {.name = "mlp.fc"}), px::nn::GELU<B, T>(rank),
                           Linear(rank, hidden, dim, {.name = "mlp.proj"}));
    test_init<T>(mlp.parameters());
    const auto x = values<T>(seq * batch * dim, 1), dy = values<T>(seq * batch * dim, 2);
    typename decltype(mlp)::Ctx ctx;
    auto y = mlp.forward(ctx, CView<T>(x.data(), px::Shape{seq, batch, dim}));
    auto dx = mlp.backward_input(ctx, CView<T>(dy.data(), y.shape()));
    mlp.backward_weight(ctx);
    ref.y.push_back(floats(y.cview()));
    ref.dx.push_back(floats(dx.cview()));
    record_parameters(mesh, mlp.parameters(), ref);
  });
  return ref;
}

// One step of ParallelMLP on `tp` ranks; `kept` receives rank 0's activation bytes once the forward's output is
// freed, `after` every rank's once backward_weight is done.
template <class T>
std::vector<Record> parallel(int tp, bool sp, std::int64_t& kept, std::vector<std::size_t>& after) {
  std::vector<Record> recs(static_cast<std::size_t>(tp));
  after.assign(static_cast<std::size_t>(tp), 1);
  px::launch<B>(tp, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    const int r = mesh.tp_rank();
    px::tp::ParallelMLP<Mesh, B, T> mlp(mesh, dim, hidden, {.sequence_parallel = sp, .name = "mlp"});
    test_init<T>(mlp.parameters());
    const std::int64_t t = sp ? seq / tp : seq;
    auto x = values<T>(seq * batch * dim, 1), dy = values<T>(seq * batch * dim, 2);
    if (sp) {
      x = rows(x, batch * dim, r * t, t);
      dy = rows(dy, batch * dim, r * t, t);
    }
    typename decltype(mlp)::Ctx ctx;
    auto y = mlp.forward(ctx, CView<T>(x.data(), px::Shape{t, batch, dim}));
    Record& rec = recs[static_cast<std::size_t>(rank.id())];
    rec.y.push_back(floats(y.cview()));
    const px::Shape ys = y.shape();
    y.reset();
    if (rank.id() == 0) kept = static_cast<std::int64_t>(rank.memory().live(px::MemoryCategory::activations));
    auto dx = mlp.backward_input(ctx, CView<T>(dy.data(), ys));
    mlp.backward_weight(ctx);
    rec.dx.push_back(floats(dx.cview()));
    dx.reset();
    after[static_cast<std::size_t>(rank.id())] = rank.memory().live(px::MemoryCategory::activations);
    record_parameters(mesh, mlp.parameters(), rec);
  });
  return recs;
}

template <class T>
void check_parity(const Record& ref) {
  for (int tp : {1, 2, 3, 4})
    for (bool sp : {false, true}) {
      INFO("TP " << tp << (sp ? ", sequence parallel" : ""));
      std::int64_t kept = -1;
      std::vector<std::size_t> after;
      const auto recs = parallel<T>(tp, sp, kept, after);
      std::vector<std::vector<float>> ys;
      for (const auto& rec : recs) ys.push_back(rec.y[0]);
      if (sp)
        check_close<T>(join_rows(ys), ref.y[0], "y (sequence shards)");
      else
        for (const auto& y : ys) check_close<T>(y, ref.y[0], "y");
      check_dx<T>(recs, ref.dx[0], sp);
      check_parameters<T>(recs, ref);
      // Kept per microbatch: fc's input (the gathered sequence under SP), the pre-activation and proj's input.
      const std::int64_t tokens = seq * batch;
      CHECK(kept == (tokens * dim + 2 * tokens * (hidden / tp)) * static_cast<std::int64_t>(sizeof(T)));
      CHECK(after == std::vector<std::size_t>(static_cast<std::size_t>(tp), 0));
    }
}

}  // namespace

TEMPLATE_TEST_CASE("ParallelMLP with the GELU fused into its GEMMs equals Linear, GELU, Linear",
                   "[tp][mlp][fused][parity]", float, px::bf16) {
  check_parity<TestType>(unfused_reference<TestType>());
}

TEST_CASE("ParallelMLP on one rank is within 1e-6 of the unfused composition in fp32", "[tp][mlp][fused]") {
  const Record ref = unfused_reference<float>();
  std::int64_t kept = -1;
  std::vector<std::size_t> after;
  const auto got = parallel<float>(1, false, kept, after);
  CHECK(relative_error(got[0].y[0], ref.y[0]) <= 1e-6);
  CHECK(relative_error(got[0].dx[0], ref.dx[0]) <= 1e-6);
  REQUIRE(got[0].names == ref.names);
  for (std::size_t i = 0; i < ref.names.size(); ++i) {
    INFO(ref.names[i]);
    CHECK(relative_error(got[0].grads[i], ref.grads[i]) <= 1e-6);
  }
}

TEST_CASE("ColumnParallelLinear's fused backward rejects a wrong pre-activation gradient", "[tp][mlp][errors]") {
  std::vector<std::string> msgs(2);
  px::launch<B>(2, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    using Column = px::tp::ColumnParallelLinear<Mesh, B, float>;
    Column fc(mesh, 4, 8, {.activation = px::Activation::gelu, .name = "mlp.fc"});
    std::vector<float> x(3 * 4, 1.f);
    Column::Ctx ctx;
    (void)fc.forward(ctx, CView<float>(x.data(), px::Shape{3, 4}));
    const std::string wrong = message_of([&] {
      (void)fc.backward_input_preactivation(ctx, px::nn::activation<B, float>(rank, px::Shape{3, 8}));
    });
    Column::Ctx none;
    const std::string early = message_of([&] { (void)fc.backward_input_preactivation(none, {}); });
    if (rank.id() == 1) msgs = {wrong, early};
  });
  CHECK_THAT(msgs[0],
             Catch::Contains("Linear 'mlp.fc': backward_input got dpre [3, 8], the forward's output was [3, 4]"));
  CHECK_THAT(msgs[1], Catch::Contains("ColumnParallelLinear 'mlp.fc': backward_input_preactivation called on a context "
                                      "whose forward has not run"));
}
