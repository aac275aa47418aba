// RowParallelLinear against the single-rank nn::Linear, and the Megatron MLP chain (ColumnParallelLinear ->
// RowParallelLinear, behind a replicated layer on the sequence shard under SP) over two microbatches with
// deferred weight gradients: TP 1-4, sequence parallel on and off, fp32 and bf16; errors.
#include <catch2/catch.hpp>

#include <parallax/nn/linear.hpp>
#include <parallax/tp/column_parallel_linear.hpp>
#include <parallax/tp/row_parallel_linear.hpp>
#include <parallax/tp/sequence_parallel.hpp>

#include "parity.hpp"

namespace px = parallax;
using namespace px::test::tp;

static_assert(px::nn::Layer<px::tp::RowParallelLinear<Mesh, B, float>>);
static_assert(px::nn::Layer<px::tp::RowParallelLinear<Mesh, B, px::bf16>>);

namespace {

constexpr std::int64_t in = 24, out = 12;

}  // namespace

TEMPLATE_TEST_CASE("RowParallelLinear equals the single-rank Linear", "[tp][row]", float, px::bf16) {
  using T = TestType;
  Record ref;
  px::launch<B>(1, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    px::nn::Linear<B, T> fc(rank, in, out, {.name = "fc"});
    test_init<T>(fc.parameters());
    const auto x = values<T>(seq * batch * in, 1), dy = values<T>(seq * batch * out, 2);
    typename px::nn::Linear<B, T>::Ctx ctx;
    auto y = fc.forward(ctx, CView<T>(x.data(), px::Shape{seq, batch, in}));
    auto dx = fc.backward_input(ctx, CView<T>(dy.data(), y.shape()));
    fc.backward_weight(ctx);
    ref.y.push_back(floats(y.cview()));
    ref.dx.push_back(floats(dx.cview()));
    record_parameters(mesh, fc.parameters(), ref);
  });
  for (int tp : {1, 2, 3, 4})
    for (bool sp : {false, true}) {
      INFO("TP " << tp << (sp ? ", sequence parallel" : ""));
      std::vector<Record> recs(static_cast<std::size_t>(tp));
      px::launch<B>(tp, [&](px::Rank<B>& rank) {
        Mesh mesh(rank);
        const int r = mesh.tp_rank();
        px::tp::RowParallelLinear<Mesh, B, T> fc(mesh, in, out, {.sequence_parallel = sp, .name = "fc"});
        test_init<T>(fc.parameters());
        // This rank's input features; under SP its sequence shard of dy.
        const auto x = shard_columns(values<T>(seq * batch * in, 1), in, 1, tp, r);
        auto dy = values<T>(seq * batch * out, 2);
        if (sp) dy = rows(dy, batch * out, r * (seq / tp), seq / tp);
        typename decltype(fc)::Ctx ctx;
        auto y = fc.forward(ctx, CView<T>(x.data(), px::Shape{seq, batch, in / tp}));
        auto dx = fc.backward_input(ctx, CView<T>(dy.data(), y.shape()));
        fc.backward_weight(ctx);
        Record& rec = recs[static_cast<std::size_t>(rank.id())];
        rec.y.push_back(floats(y.cview()));
        rec.dx.push_back(floats(dx.cview()));
        record_parameters(mesh, fc.parameters(), rec);
      });
      std::vector<std::vector<float>> ys, dxs;
      for (const auto& rec : recs) {
        ys.push_back(rec.y[0]);
        dxs.push_back(rec.dx[0]);
      }
      if (sp)
        check_close<T>(join_rows(ys), ref.y[0], "y (sequence shards)");
      else
        for (const auto& y : ys) check_close<T>(y, ref.y[0], "y");
      check_close<T>(join_columns(dxs, seq * batch), ref.dx[0], "dx (input features)");
      check_parameters<T>(recs, ref);
    }
}

namespace {

// The chain pre -> fc1 (column) -> fc2 (row) on two microbatches: forward 0, forward 1, backward_input 1,
// backward_input 0, then the deferred backward_weight 0 and 1, so the gradients of both add up.
// Single rank: three nn::Linear. TP: `pre` is replicated; under SP it runs on the sequence shard
// (SequenceParallel), fc1 gathers the sequence and fc2 reduce-scatters it.
constexpr std::int64_t dim = 12, hidden = 24;
constexpr int microbatches = 2;

template <class T>
Record chain_reference() {
  Record ref;
  px::launch<B>(1, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    using Linear = px::nn::Linear<B, T>;
    Linear pre(rank, dim, dim, {.name = "pre"}), fc1(rank, dim, hidden, {.name = "fc1"}),
        fc2(rank, hidden, dim, {.name = "fc2"});
    px::nn::ParameterList<T, Mem> params = pre.parameters();
    px::nn::append(params, fc1.parameters());
    px::nn::append(params, fc2.parameters());
    test_init<T>(params);
    for (int mb = 0; mb < microbatches; ++mb) {
      const auto x = values<T>(seq * batch * dim, 10 + mb), dy = values<T>(seq * batch * dim, 20 + mb);
      typename Linear::Ctx c0, c1, c2;
      auto h0 = pre.forward(c0, CView<T>(x.data(), px::Shape{seq, batch, dim}));
      auto h1 = fc1.forward(c1, h0.cview());
      auto y = fc2.forward(c2, h1.cview());
      auto d1 = fc2.backward_input(c2, CView<T>(dy.data(), y.shape()));
      auto d0 = fc1.backward_input(c1, d1.cview());
      auto dx = pre.backward_input(c0, d0.cview());
      fc2.backward_weight(c2);
      fc1.backward_weight(c1);
      pre.backward_weight(c0);
      ref.y.push_back(floats(y.cview()));
      ref.dx.push_back(floats(dx.cview()));
    }
    record_parameters(mesh, params, ref);
  });
  return ref;
}

template <class T, bool SP>
std::vector<Record> chain_parallel(int tp, std::vector<std::size_t>& live_after) {
  std::vector<Record> recs(static_cast<std::size_t>(tp));
  live_after.assign(static_cast<std::size_t>(tp), 1);
  px::launch<B>(tp, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    const int r = mesh.tp_rank();
    using Pre = std::conditional_t<SP, px::tp::SequenceParallel<Mesh, px::nn::Linear<B, T>>, px::nn::Linear<B, T>>;
    Pre pre = [&] {
      if constexpr (SP)
        return Pre(mesh, dim, dim, px::nn::LinearOptions{.name = "pre"});
      else
        return Pre(rank, dim, dim, {.name = "pre"});
    }();
    px::tp::ColumnParallelLinear<Mesh, B, T> fc1(mesh, dim, hidden, {.sequence_parallel = SP, .name = "fc1"});
    px::tp::RowParallelLinear<Mesh, B, T> fc2(mesh, hidden, dim, {.sequence_parallel = SP, .name = "fc2"});
    px::nn::ParameterList<T, Mem> params = pre.parameters();
    px::nn::append(params, fc1.parameters());
    px::nn::append(params, fc2.parameters());
    test_init<T>(params);
    const std::int64_t t = SP ? seq / tp : seq;
    std::vector<typename Pre::Ctx> c0(microbatches);
    std::vector<typename decltype(fc1)::Ctx> c1(microbatches);
    std::vector<typename decltype(fc2)::Ctx> c2(microbatches);
    Record& rec = recs[static_cast<std::size_t>(rank.id())];
    {
      std::vector<px::nn::TensorOf<B, T>> ys;
      for (int mb = 0; mb < microbatches; ++mb) {
        auto x = values<T>(seq * batch * dim, 10 + mb);
        if (SP) x = rows(x, batch * dim, r * t, t);
        auto h0 = pre.forward(c0[mb], CView<T>(x.data(), px::Shape{t, batch, dim}));
        auto h1 = fc1.forward(c1[mb], h0.cview());
        ys.push_back(fc2.forward(c2[mb], h1.cview()));
        rec.y.push_back(floats(ys.back().cview()));
      }
      rec.dx.resize(microbatches);
      for (int mb = microbatches - 1; mb >= 0; --mb) {
        auto dy = values<T>(seq * batch * dim, 20 + mb);
        if (SP) dy = rows(dy, batch * dim, r * t, t);
        auto d1 = fc2.backward_input(c2[mb], CView<T>(dy.data(), ys[static_cast<std::size_t>(mb)].shape()));
        auto d0 = fc1.backward_input(c1[mb], d1.cview());
        rec.dx[static_cast<std::size_t>(mb)] = floats(pre.backward_input(c0[mb], d0.cview()).cview());
      }
    }
    for (int mb = 0; mb < microbatches; ++mb) {
      fc2.backward_weight(c2[mb]);
      fc1.backward_weight(c1[mb]);
      pre.backward_weight(c0[mb]);
    }
    live_after[static_cast<std::size_t>(rank.id())] = rank.memory().live(px::MemoryCategory::activations);
    record_parameters(mesh, params, rec);
  });
  return recs;
}

template <class T, bool SP>
void check_chain(const Record& ref) {
  for (int tp : {1, 2, 3, 4}) {
    INFO("TP " << tp << (SP ? ", sequence parallel" : ""));
    std::vector<std::size_t> live_after;
    const auto recs = chain_parallel<T, SP>(tp, live_after);
    for (std::size_t mb = 0; mb < microbatches; ++mb) {
      INFO("microbatch " << mb);
      std::vector<std::vector<float>> ys;
      for (const auto& rec : recs) ys.push_back(rec.y[mb]);
      if (SP)
        check_close<T>(join_rows(ys), ref.y[mb], "y (sequence shards)");
      else
        for (const auto& y : ys) check_close<T>(y, ref.y[mb], "y");
      check_dx<T>(recs, ref.dx[mb], SP, mb);
    }
    check_parameters<T>(recs, ref);
    CHECK(live_after == std::vector<std::size_t>(static_cast<std::size_t>(tp), 0));  // all saved tensors freed
  }
}

}  // namespace

TEMPLATE_TEST_CASE("Column -> Row MLP chain with gradient accumulation equals the single-rank layers", "[tp][row][chain]",
                   float, px::bf16) {
  const Record ref = chain_reference<TestType>();
  check_chain<TestType, false>(ref);
  check_chain<TestType, true>(ref);
}

TEST_CASE("RowParallelLinear rejects sizes and sequences that do not fit", "[tp][row][errors]") {
  std::vector<std::vector<std::string>> msgs(4);
  px::launch<B>(4, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    auto& m = msgs[static_cast<std::size_t>(rank.id())];
    using Row = px::tp::RowParallelLinear<Mesh, B, float>;
    m.push_back(message_of([&] { Row fc(mesh, 10, 8, {.name = "fc2"}); }));
    m.push_back(message_of([&] { Row fc(mesh, px::fixed<10>, px::fixed<8>, {.name = "fc2"}); }));
    Row fc(mesh, 8, 4, {.sequence_parallel = true, .name = "fc2"});
    std::vector<float> x(6 * 2, 1.f), dy(4, 1.f);
    Row::Ctx bad;
    m.push_back(message_of([&] { (void)fc.forward(bad, CView<float>(x.data(), px::Shape{6, 2})); }));
    Row::Ctx ctx;
    auto y = fc.forward(ctx, CView<float>(x.data(), px::Shape{4, 2}));
    m.push_back(fmt::format("y {}", y.shape()));
    m.push_back(message_of([&] { (void)fc.backward_input(ctx, CView<float>(dy.data(), px::Shape{4, 1})); }));
    Row::Ctx early;
    (void)fc.forward(early, CView<float>(x.data(), px::Shape{4, 2}));
    m.push_back(message_of([&] { fc.backward_weight(early); }));
  });
  for (const auto& m : msgs) {
    REQUIRE(m.size() == 6);
    CHECK_THAT(m[0], Catch::Contains("RowParallelLinear 'fc2': input features 10 are not divisible by TP 4"));
    CHECK_THAT(m[1], Catch::Contains("RowParallelLinear 'fc2': input features 10 are not divisible by TP 4"));
    CHECK_THAT(m[2], Catch::Contains("RowParallelLinear 'fc2': sequence positions 6 are not divisible by TP 4"));
    CHECK(m[3] == "y [1, 4]");
    CHECK_THAT(m[4], Catch::Contains("RowParallelLinear 'fc2': backward_input got dy [4, 1], the forward's output was [1, 4]"));
    CHECK_THAT(m[5], Catch::Contains("RowParallelLinear 'fc2': backward_weight called on a context whose backward_input has not run"));
  }
}
