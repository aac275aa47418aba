// ColumnParallelLinear against the single-rank nn::Linear: TP 1-4, sequence parallel on and off, gathered
// output on and off, fused q|k|v blocks, fp32 and bf16; the gathered initialisation; errors.
#include <catch2/catch.hpp>

#include <parallax/nn/linear.hpp>
#include <parallax/tp/column_parallel_linear.hpp>

#include "parity.hpp"

namespace px = parallax;
using namespace px::test::tp;

static_assert(px::nn::Layer<px::tp::ColumnParallelLinear<Mesh, B, float>>);
static_assert(px::nn::Layer<px::tp::ColumnParallelLinear<Mesh, B, px::bf16>>);

namespace {

constexpr std::int64_t in = 12;

// The single-rank layer: y = x W^T + b and its gradients for x [seq, batch, in] and dy [seq, batch, out].
template <class T>
Record reference(std::int64_t out) {
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
  return ref;
}

// Each rank of a TP group runs the column-parallel layer on what it holds of x and dy.
template <class T>
std::vector<Record> column_parallel(int tp, std::int64_t out, px::tp::ColumnParallelOptions o) {
  std::vector<Record> recs(static_cast<std::size_t>(tp));
  px::launch<B>(tp, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    const int r = mesh.tp_rank();
    px::tp::ColumnParallelLinear<Mesh, B, T> fc(mesh, in, out, o);
    test_init<T>(fc.parameters());
    auto x = values<T>(seq * batch * in, 1), dy = values<T>(seq * batch * out, 2);
    const std::int64_t t = o.sequence_parallel ? seq / tp : seq;
    if (o.sequence_parallel) x = rows(x, batch * in, r * t, t);
    if (!o.gather_output) dy = shard_columns(dy, out, o.blocks, tp, r);
    typename decltype(fc)::Ctx ctx;
    auto y = fc.forward(ctx, CView<T>(x.data(), px::Shape{t, batch, in}));
    auto dx = fc.backward_input(ctx, CView<T>(dy.data(), y.shape()));
    fc.backward_weight(ctx);
    Record& rec = recs[static_cast<std::size_t>(rank.id())];
    rec.y.push_back(floats(y.cview()));
    rec.dx.push_back(floats(dx.cview()));
    record_parameters(mesh, fc.parameters(), rec);
  });
  return recs;
}

}  // namespace

TEMPLATE_TEST_CASE("ColumnParallelLinear equals the single-rank Linear", "[tp][column]", float, px::bf16) {
  using T = TestType;
  constexpr std::int64_t out = 24;
  const Record ref = reference<T>(out);
  for (int tp : {1, 2, 3, 4})
    for (bool sp : {false, true})
      for (bool gather : {false, true}) {
        INFO("TP " << tp << (sp ? ", sequence parallel" : "") << (gather ? ", gather_output" : ""));
        const auto recs =
            column_parallel<T>(tp, out, {.gather_output = gather, .sequence_parallel = sp, .name = "fc"});
        std::vector<std::vector<float>> ys;
        for (const auto& rec : recs) ys.push_back(rec.y[0]);
        // Output: every rank's gathered y, or the ranks' columns side by side.
        if (gather)
          for (const auto& y : ys) check_close<T>(y, ref.y[0], "y");
        else
          check_close<T>(join_columns(ys, seq * batch), ref.y[0], "y");
        check_dx<T>(recs, ref.dx[0], sp);
        check_parameters<T>(recs, ref);
      }
}

TEMPLATE_TEST_CASE("ColumnParallelLinear with 3 blocks equals the single-rank fused q|k|v layer", "[tp][column]", float,
                   px::bf16) {
  using T = TestType;
  constexpr std::int64_t out = 3 * 12;
  const Record ref = reference<T>(out);
  for (int tp : {1, 2, 3, 4})
    for (bool sp : {false, true}) {
      INFO("TP " << tp << (sp ? ", sequence parallel" : ""));
      const auto recs = column_parallel<T>(tp, out, {.sequence_parallel = sp, .blocks = 3, .name = "fc"});
      // Rank r's output: its piece of q, of k and of v.
      for (int r = 0; r < tp; ++r)
        check_close<T>(recs[static_cast<std::size_t>(r)].y[0], shard_columns(ref.y[0], out, 3, tp, r),
                       "y (q | k | v pieces)");
      check_dx<T>(recs, ref.dx[0], sp);
      check_parameters<T>(recs, ref);
    }
}

TEST_CASE("ColumnParallelLinear shards gather into the single-rank initialisation", "[tp][column][gather]") {
  for (int blocks : {1, 3}) {
    std::vector<std::vector<float>> want;
    px::launch<B>(1, [&](px::Rank<B>& rank) {
      px::nn::Linear<B, float> fc(rank, in, 24, {.init_std = 0.5f, .seed = 9, .name = "attn.qkv"});
      for (auto* p : fc.parameters()) want.push_back(floats(CView<float>(p->value())));
    });
    for (int tp : {1, 2, 4}) {
      INFO("TP " << tp << ", " << blocks << " block(s)");
      std::vector<std::vector<std::vector<float>>> got(static_cast<std::size_t>(tp));
      std::vector<std::vector<std::int64_t>> local(static_cast<std::size_t>(tp));
      px::launch<B>(tp, [&](px::Rank<B>& rank) {
        Mesh mesh(rank);
        px::tp::ColumnParallelLinear<Mesh, B, float> fc(
            mesh, in, 24, {.blocks = blocks, .init_std = 0.5f, .seed = 9, .name = "attn.qkv"});
        for (auto* p : fc.parameters()) {
          got[static_cast<std::size_t>(rank.id())].push_back(floats(px::tp::gather_parameter(mesh, *p)));
          local[static_cast<std::size_t>(rank.id())].push_back(p->numel());
        }
      });
      for (int r = 0; r < tp; ++r) {
        CHECK(got[static_cast<std::size_t>(r)] == want);  // bitwise: the same draws, placed by the spec
        CHECK(local[static_cast<std::size_t>(r)] == std::vector<std::int64_t>{24 * in / tp, 24 / tp});
      }
    }
  }
}

TEST_CASE("ColumnParallelLinear with fixed sizes on a static mesh", "[tp][column]") {
  using Static = px::DeviceMesh<1, 1, 2>;
  static_assert(px::tp::statically_divisible<Static, px::Fixed<24>>);
  static_assert(!px::tp::statically_divisible<Static, px::Fixed<25>>);
  static_assert(px::tp::statically_divisible<Mesh, px::Fixed<25>>);  // dynamic TP: checked at run time
  static_assert(px::tp::statically_divisible<Static, std::int64_t>);
  std::vector<std::int64_t> shapes(2);
  px::launch<B>(2, [&](px::Rank<B>& rank) {
    Static mesh(rank);
    px::tp::ColumnParallelLinear<Static, B, float> fc(mesh, px::fixed<in>, px::fixed<24>, {.name = "fc"});
    shapes[static_cast<std::size_t>(rank.id())] = fc.local_out_features();
  });
  CHECK(shapes == std::vector<std::int64_t>{12, 12});
}

TEST_CASE("ColumnParallelLinear rejects sizes, options and passes that do not fit", "[tp][column][errors]") {
  std::vector<std::vector<std::string>> msgs(4);
  px::launch<B>(4, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    auto& m = msgs[static_cast<std::size_t>(rank.id())];
    using Column = px::tp::ColumnParallelLinear<Mesh, B, float>;
    m.push_back(message_of([&] { Column fc(mesh, in, 10, {.name = "fc1"}); }));
    m.push_back(message_of([&] { Column fc(mesh, px::fixed<in>, px::fixed<10>, {.name = "fc1"}); }));
    m.push_back(message_of([&] { Column fc(mesh, in, 30, {.blocks = 3, .name = "qkv"}); }));
    m.push_back(message_of([&] { Column fc(mesh, in, 35, {.blocks = 3, .name = "qkv"}); }));
    m.push_back(message_of([&] { Column fc(mesh, in, 36, {.gather_output = true, .blocks = 3, .name = "qkv"}); }));
    m.push_back(message_of([&] { Column fc(mesh, in, 36, {.blocks = 0, .name = "qkv"}); }));
    Column fc(mesh, in, 8, {.gather_output = true, .name = "fc1"});
    std::vector<float> x(2 * in, 1.f), dy(2 * 4, 1.f);
    Column::Ctx ctx;
    m.push_back(message_of([&] { (void)fc.backward_input(ctx, CView<float>(dy.data(), px::Shape{2, 4})); }));
    auto y = fc.forward(ctx, CView<float>(x.data(), px::Shape{2, in}));
    m.push_back(message_of([&] { (void)fc.backward_input(ctx, CView<float>(dy.data(), px::Shape{2, 4})); }));
    m.push_back(y.shape() == px::Shape{2, 8} ? "y [2, 8]" : "y has the wrong shape");
  });
  for (const auto& m : msgs) {
    REQUIRE(m.size() == 9);
    CHECK_THAT(m[0], Catch::Contains("ColumnParallelLinear 'fc1': output features 10 are not divisible by TP 4"));
    CHECK_THAT(m[1], Catch::Contains("ColumnParallelLinear 'fc1': output features 10 are not divisible by TP 4"));
    CHECK_THAT(m[2], Catch::Contains("ColumnParallelLinear 'qkv': output features per block 10 are not divisible by TP 4"));
    CHECK_THAT(m[3], Catch::Contains("ColumnParallelLinear 'qkv': output features 35 do not split into 3 blocks"));
    CHECK_THAT(m[4], Catch::Contains("gather_output cannot be combined with 3 blocks"));
    CHECK_THAT(m[5], Catch::Contains("blocks is 0, must be >= 1"));
    CHECK_THAT(m[6], Catch::Contains("ColumnParallelLinear 'fc1': backward_input called on a context whose forward has not run"));
    CHECK_THAT(m[7], Catch::Contains("ColumnParallelLinear 'fc1': backward_input got dy [2, 4], the forward's output was [2, 8]"));
    CHECK(m[8] == "y [2, 8]");
  }
  CHECK_THAT(msgs[3][0], Catch::Contains("(rank 3)"));
}

TEST_CASE("ColumnParallelLinear needs a mesh built from a Rank", "[tp][column][errors]") {
  std::vector<std::string> msgs(2);
  px::launch<B>(2, [&](px::Rank<B>& rank) {
    Mesh mesh(rank.world());
    msgs[static_cast<std::size_t>(rank.id())] =
        message_of([&] { px::tp::ColumnParallelLinear<Mesh, B, float> fc(mesh, in, 8, {.name = "fc1"}); });
  });
  for (const auto& m : msgs) CHECK_THAT(m, Catch::Contains("built from a communicator, not a Rank"));
}
