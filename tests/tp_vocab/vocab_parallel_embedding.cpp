// VocabParallelEmbedding: outputs and gradients for TP 1-4, with and without sequence parallelism, fp32 and bf16,
// against the host kernels on the whole tables; initialisation; accumulation over two microbatches; errors.
//
// Rank threads only record what they saw (each rank in its own slot); the main thread asserts after `launch`.
#include <catch2/catch.hpp>

#include <parallax/backend/host/backend.hpp>
#include <parallax/comm/launch.hpp>
#include <parallax/mesh/device_mesh.hpp>
#include <parallax/tp/vocab_parallel_embedding.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "../support/gradcheck.hpp"
#include "../support/support.hpp"

namespace {

namespace px = parallax;
using Backend = px::host::Backend;
using Mem = px::host::Memory;
using Mesh = px::DeviceMesh<1, 1, px::dynamic>;
template <class T>
using Embedding = px::tp::VocabParallelEmbedding<Mesh, Backend, T>;

static_assert(px::nn::Module<Embedding<float>>);
static_assert(px::nn::Module<Embedding<px::bf16>>);

constexpr std::int64_t kVocab = 24, kMaxSeq = 16, kDim = 6, kSeq = 12, kBatch = 2;
constexpr std::uint64_t kSeed = 11;
constexpr float kStd = 0.5f;
const px::tp::VocabParallelEmbeddingOptions kOptions{.init_std = kStd, .seed = kSeed, .name = "wte"};

template <class T>
std::vector<float> as_float(const std::vector<T>& v) {
  return std::vector<float>(v.begin(), v.end());
}
template <class T>
std::vector<T> from_float(const std::vector<float>& v) {
  return std::vector<T>(v.begin(), v.end());
}

// Token ids [kSeq, kBatch] of microbatch `mb`: repeats, and the first and last id of the vocabulary.
std::vector<std::int32_t> make_ids(int mb) {
  const auto u = px::test::random_values(kSeq * kBatch, 40 + static_cast<std::uint64_t>(mb));
  std::vector<std::int32_t> ids(u.size());
  for (std::size_t i = 0; i < u.size(); ++i)
    ids[i] = std::min<std::int32_t>(static_cast<std::int32_t>((u[i] + 1.f) * 0.5f * kVocab), kVocab - 1);
  ids[1] = 0;
  ids[2] = kVocab - 1;
  ids[5] = ids[9];
  return ids;
}

using parallax::test::cview;
using parallax::test::view;

// The whole tables as the single-rank initialisation draws them.
template <class T>
std::vector<T> whole_table(const char* param, std::int64_t rows) {
  std::vector<T> t(static_cast<std::size_t>(rows * kDim));
  const auto spec = px::nn::ShardSpec::replicated(param, px::Shape{rows, kDim});
  px::nn::init_shard(view(t, spec.global), spec, px::init::normal(kStd, px::nn::seed_for(kSeed, param)));
  return t;
}

// What the single-rank embedding computes with the host kernels: outputs of each microbatch and the gradients
// accumulated over both.
template <class T>
struct Reference {
  std::vector<T> token = whole_table<T>("wte.token.weight", kVocab);
  std::vector<T> position = whole_table<T>("wte.position.weight", kMaxSeq);
  std::vector<std::vector<float>> y;
  std::vector<float> dtoken, dposition;

  Reference(const std::vector<std::vector<std::int32_t>>& ids, const std::vector<std::vector<T>>& dy) {
    const px::host::Context ctx;
    const std::int64_t n = kSeq * kBatch;
    std::vector<std::int32_t> positions(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) positions[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i / kBatch);
    std::vector<T> gt(token.size()), gp(position.size());
    for (std::size_t mb = 0; mb < ids.size(); ++mb) {
      std::vector<T> out(static_cast<std::size_t>(n * kDim)), pos(out.size());
      Backend::embedding_forward(ctx, cview(ids[mb], px::Shape{n}), cview(token, px::Shape{kVocab, kDim}),
                                 view(out, px::Shape{n, kDim}));
      Backend::embedding_forward(ctx, cview(positions, px::Shape{n}), cview(position, px::Shape{kMaxSeq, kDim}),
                                 view(pos, px::Shape{n, kDim}));
      Backend::axpby(ctx, 1.f, cview(pos, px::Shape{n * kDim}), 1.f, view(out, px::Shape{n * kDim}));
      y.push_back(as_float(out));
      Backend::embedding_backward(ctx, cview(ids[mb], px::Shape{n}), cview(dy[mb], px::Shape{n, kDim}),
                                  view(gt, px::Shape{kVocab, kDim}));
      Backend::embedding_backward(ctx, cview(positions, px::Shape{n}), cview(dy[mb], px::Shape{n, kDim}),
                                  view(gp, px::Shape{kMaxSeq, kDim}));
    }
    dtoken = as_float(gt);
    dposition = as_float(gp);
  }
};

// What each rank of a TP group saw.
struct Seen {
  std::vector<std::vector<float>> y;  // per microbatch: this rank's output
  std::vector<float> token, position, dtoken, dposition;
  std::int64_t vocab_begin = -1, local_vocab = -1;
};

// Two microbatches through a TP-`tp` embedding: both forwards, both backward_inputs, then both backward_weights.
template <class T>
std::vector<Seen> run(int tp, bool sp, const std::vector<std::vector<std::int32_t>>& ids,
                      const std::vector<std::vector<T>>& dy) {
  std::vector<Seen> seen(static_cast<std::size_t>(tp));
  px::launch<Backend>(tp, [&](px::Rank<Backend>& rank) {
    Mesh mesh(rank);
    auto o = kOptions;
    o.sequence_parallel = sp;
    Embedding<T> emb(mesh, kVocab, kMaxSeq, kDim, o);
    Seen& s = seen[static_cast<std::size_t>(mesh.tp_rank())];
    const std::int64_t rows = sp ? kSeq / tp : kSeq, first = sp ? mesh.tp_rank() * rows : 0;
    std::vector<typename Embedding<T>::Ctx> ctx(ids.size());
    std::vector<px::nn::TensorOf<Backend, T>> y;
    for (std::size_t mb = 0; mb < ids.size(); ++mb) {
      y.push_back(emb.forward(ctx[mb], cview(ids[mb], px::Shape{kSeq, kBatch})));
      s.y.push_back(as_float(px::to_vector(y.back().cview())));
    }
    for (std::size_t mb = 0; mb < ids.size(); ++mb)
      emb.backward_input(ctx[mb], cview(dy[mb], px::Shape{kSeq, kBatch, kDim}).rows(first, first + rows));
    for (auto& c : ctx) emb.backward_weight(c);
    s.token = as_float(px::to_vector(emb.token_weight().value()));
    s.position = as_float(px::to_vector(emb.position_weight().value()));
    s.dtoken = as_float(px::to_vector(emb.token_weight().grad()));
    s.dposition = as_float(px::to_vector(emb.position_weight().grad()));
    s.vocab_begin = emb.vocab_begin();
    s.local_vocab = emb.local_vocab();
  });
  return seen;
}

// Largest |got - want| / (|want| + 1e-3) over the elements; sizes must match.
double worst(const std::vector<float>& got, const std::vector<float>& want) {
  REQUIRE(got.size() == want.size());
  double w = 0;
  for (std::size_t i = 0; i < got.size(); ++i)
    w = std::max(w, std::abs(double(got[i]) - double(want[i])) / (std::abs(double(want[i])) + 1e-3));
  return w;
}

template <class T>
constexpr double tolerance = std::is_same_v<T, float> ? 1e-5 : 1e-2;

// The message of the parallax::Error f throws, or "no error" (usable on rank threads, unlike Catch's macros).
template <class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const px::Error& e) {
    return e.what();
  }
  return "no error";
}

// Each rank's message from f(rank), for errors every rank raises alike.
template <class F>
std::vector<std::string> messages(int n, F&& f) {
  std::vector<std::string> msgs(static_cast<std::size_t>(n));
  px::launch<Backend>(n, [&](px::Rank<Backend>& rank) {
    msgs[static_cast<std::size_t>(rank.id())] = message_of([&] { f(rank); });
  });
  return msgs;
}

}  // namespace

TEMPLATE_TEST_CASE("VocabParallelEmbedding equals the single-rank embedding for every TP, with and without SP",
                   "[tp][embedding]", float, px::bf16) {
  using T = TestType;
  const std::vector<std::vector<std::int32_t>> ids{make_ids(0), make_ids(1)};
  const std::vector<std::vector<T>> dy{from_float<T>(px::test::random_values(kSeq * kBatch * kDim, 50)),
                                       from_float<T>(px::test::random_values(kSeq * kBatch * kDim, 51))};
  const Reference<T> ref(ids, dy);
  for (int tp : {1, 2, 3, 4})
    for (bool sp : {false, true}) {
      INFO("TP " << tp << (sp ? " with SP" : " without SP"));
      const auto seen = run<T>(tp, sp, ids, dy);
      const auto spec = px::nn::ShardSpec::split("wte.token.weight", px::Shape{kVocab, kDim}, px::Axis::tp, 0, tp, 0);
      std::vector<std::vector<float>> tokens, dtokens;
      for (int r = 0; r < tp; ++r) {
        const Seen& s = seen[static_cast<std::size_t>(r)];
        CHECK(s.vocab_begin == r * kVocab / tp);
        CHECK(s.local_vocab == kVocab / tp);
        tokens.push_back(s.token);
        dtokens.push_back(s.dtoken);
        CHECK(s.position == as_float(ref.position));  // replicated, drawn like the single-rank table
        CHECK(worst(s.dposition, ref.dposition) <= tolerance<T>);
      }
      CHECK(px::nn::assemble<float>(spec, tokens) == as_float(ref.token));  // shards are slices of the whole table
      CHECK(worst(px::nn::assemble<float>(spec, dtokens), ref.dtoken) <= tolerance<T>);
      for (std::size_t mb = 0; mb < ids.size(); ++mb) {
        std::vector<float> y;  // the ranks' outputs: each the whole, or the sequence shards in rank order
        for (int r = 0; r < (sp ? tp : 1); ++r) {
          const auto& part = seen[static_cast<std::size_t>(r)].y[mb];
          y.insert(y.end(), part.begin(), part.end());
        }
        CHECK(worst(y, ref.y[mb]) <= tolerance<T>);
        if (!sp)
          for (int r = 1; r < tp; ++r) CHECK(seen[static_cast<std::size_t>(r)].y[mb] == seen[0].y[mb]);
      }
    }
}

TEST_CASE("VocabParallelEmbedding output is the token row plus the position row (fp64 loop)", "[tp][embedding]") {
  const std::vector<std::vector<std::int32_t>> ids{make_ids(3)};
  const std::vector<std::vector<float>> dy{std::vector<float>(kSeq * kBatch * kDim, 1.f)};
  const auto seen = run<float>(2, false, ids, dy);
  const auto token = whole_table<float>("wte.token.weight", kVocab);
  const auto position = whole_table<float>("wte.position.weight", kMaxSeq);
  for (std::int64_t t : {std::int64_t{0}, std::int64_t{5}, kSeq - 1})
    for (std::int64_t b = 0; b < kBatch; ++b)
      for (std::int64_t j = 0; j < kDim; ++j) {
        const auto id = ids[0][static_cast<std::size_t>(t * kBatch + b)];
        const double want = double(token[static_cast<std::size_t>(id * kDim + j)]) +
                            double(position[static_cast<std::size_t>(t * kDim + j)]);
        CHECK(seen[0].y[0][static_cast<std::size_t>((t * kBatch + b) * kDim + j)] == Approx(want).epsilon(1e-6));
      }
  // With dy = 1 the position gradient counts the batch and the token gradient counts each id's occurrences.
  for (std::int64_t t = 0; t < kMaxSeq; ++t)
    CHECK(seen[0].dposition[static_cast<std::size_t>(t * kDim)] == (t < kSeq ? kBatch : 0));
  for (std::int32_t v = 0; v < kVocab / 2; ++v)
    CHECK(seen[0].dtoken[static_cast<std::size_t>(v * kDim)] == float(std::count(ids[0].begin(), ids[0].end(), v)));
}

TEST_CASE("VocabParallelEmbedding frees what it saved once backward_weight is done", "[tp][embedding][memory]") {
  std::vector<std::int64_t> during(2), after(2);
  const auto ids = make_ids(0);
  const std::vector<float> dy(kSeq * kBatch * kDim / 2, 1.f);
  px::launch<Backend>(2, [&](px::Rank<Backend>& rank) {
    Mesh mesh(rank);
    auto o = kOptions;
    o.sequence_parallel = true;
    Embedding<float> emb(mesh, kVocab, kMaxSeq, kDim, o);
    Embedding<float>::Ctx ctx;
    auto y = emb.forward(ctx, cview(ids, px::Shape{kSeq, kBatch}));
    const auto r = static_cast<std::size_t>(rank.id());
    during[r] = static_cast<std::int64_t>(rank.memory().live(px::MemoryCategory::activations));
    emb.backward_input(ctx, cview(dy, y.shape()));
    emb.backward_weight(ctx);
    y.reset();
    after[r] = static_cast<std::int64_t>(rank.memory().live(px::MemoryCategory::activations));
  });
  for (int r = 0; r < 2; ++r) {
    CHECK(during[static_cast<std::size_t>(r)] == kSeq * kBatch * 4 + kSeq / 2 * kBatch * kDim * 4);  // saved ids, y
    CHECK(after[static_cast<std::size_t>(r)] == 0);
  }
}

TEST_CASE("VocabParallelEmbedding rejects a vocabulary TP does not divide, and bad sizes", "[tp][embedding][errors]") {
  auto build = [](int tp, std::int64_t vocab, std::int64_t max_seq, std::int64_t dim) {
    px::launch<Backend>(tp, [&](px::Rank<Backend>& rank) {
      Mesh mesh(rank);
      Embedding<float> emb(mesh, vocab, max_seq, dim, kOptions);
    });
  };
  CHECK_THROWS_WITH(build(4, 50, kMaxSeq, kDim),
                    Catch::Contains("VocabParallelEmbedding 'wte': vocabulary entries 50 are not divisible by TP 4"));
  CHECK_THROWS_WITH(build(1, kVocab, 0, kDim),
                    Catch::Contains("vocabulary 24, max_seq 0 and dim 6 must be positive"));
  CHECK_NOTHROW(build(3, kVocab, kMaxSeq, kDim));
}

TEST_CASE("VocabParallelEmbedding takes a fixed<N> vocabulary on a static mesh", "[tp][embedding]") {
  std::vector<std::int64_t> local(2);
  px::launch<Backend>(2, [&](px::Rank<Backend>& rank) {
    px::DeviceMesh<1, 1, 2> mesh(rank);
    px::tp::VocabParallelEmbedding<decltype(mesh), Backend, float> emb(mesh, px::fixed<kVocab>, kMaxSeq, kDim);
    local[static_cast<std::size_t>(rank.id())] = emb.local_vocab();
  });
  CHECK(local == std::vector<std::int64_t>{kVocab / 2, kVocab / 2});
}

TEST_CASE("VocabParallelEmbedding: an id out of range throws on every rank alike", "[tp][embedding][errors]") {
  for (std::int32_t bad : {std::int32_t{kVocab}, std::int32_t{-1}}) {
    auto ids = make_ids(0);
    ids[7] = bad;
    const auto msgs = messages(4, [&](px::Rank<Backend>& rank) {
      Mesh mesh(rank);
      Embedding<float> emb(mesh, kVocab, kMaxSeq, kDim, kOptions);
      Embedding<float>::Ctx ctx;
      (void)emb.forward(ctx, cview(ids, px::Shape{kSeq, kBatch}));
    });
    for (const auto& m : msgs)
      CHECK_THAT(m, Catch::Contains(fmt::format("id {} at position 7 is outside [0, 24)", bad)));
    // And `launch` reports it when the ranks let it through.
    CHECK_THROWS_WITH(px::launch<Backend>(2,
                                          [&](px::Rank<Backend>& rank) {
                                            Mesh mesh(rank);
                                            Embedding<float> emb(mesh, kVocab, kMaxSeq, kDim, kOptions);
                                            Embedding<float>::Ctx ctx;
                                            (void)emb.forward(ctx, cview(ids, px::Shape{kSeq, kBatch}));
                                          }),
                      Catch::Contains("launch: rank") && Catch::Contains("is outside [0, 24)"));
  }
}

TEST_CASE("VocabParallelEmbedding rejects bad ids shapes, dy shapes and passes out of order",
          "[tp][embedding][errors]") {
  const auto ids = make_ids(0);
  const std::vector<float> dy(kSeq * kBatch * kDim, 0.f);
  std::vector<std::vector<std::string>> msgs(2);
  px::launch<Backend>(2, [&](px::Rank<Backend>& rank) {
    Mesh mesh(rank);
    auto o = kOptions;
    o.sequence_parallel = true;
    Embedding<float> emb(mesh, kVocab, 8, kDim, o);
    Embedding<float>::Ctx a, b, c, d, e;
    auto& m = msgs[static_cast<std::size_t>(rank.id())];
    m.push_back(message_of([&] { (void)emb.forward(a, cview(ids, px::Shape{kSeq * kBatch})); }));
    m.push_back(message_of([&] { (void)emb.forward(b, cview(ids, px::Shape{kSeq, kBatch})); }));
    m.push_back(message_of([&] { (void)emb.forward(c, cview(ids, px::Shape{3, 8})); }));
    (void)emb.forward(d, cview(ids, px::Shape{4, 6}));
    m.push_back(message_of([&] { emb.backward_input(d, cview(dy, px::Shape{4, 6, kDim})); }));
    m.push_back(message_of([&] { emb.backward_weight(e); }));
    m.push_back(message_of([&] { (void)emb.forward(d, cview(ids, px::Shape{4, 6})); }));
  });
  for (const auto& m : msgs) {
    REQUIRE(m.size() == 6);
    CHECK_THAT(m[0], Catch::Contains("VocabParallelEmbedding 'wte': ids [24] are not [T, B]"));
    CHECK_THAT(m[1], Catch::Contains("VocabParallelEmbedding 'wte': sequence length 12 exceeds max_seq 8"));
    CHECK_THAT(m[2], Catch::Contains("VocabParallelEmbedding 'wte': sequence positions 3 are not divisible by TP 2"));
    CHECK_THAT(m[3], Catch::Contains("backward_input got dy [4, 6, 6], the forward's output was [2, 6, 6]"));
    CHECK_THAT(m[4], Catch::Contains("backward_weight called on a context whose backward_input has not run"));
    CHECK_THAT(m[5], Catch::Contains("forward called on a context whose forward already ran"));
  }
}
