// VocabParallelCrossEntropy: loss and dlogits for TP 1-4, fp32 and bf16, against the host kernel on the whole
// logits and an fp64 loop; ignored rows; two microbatches in flight; memory; errors.
//
// Rank threads only record what they saw (each rank in its own slot); the main thread asserts after `launch`.
#include <catch2/catch.hpp>

#include <parallax/backend/host/backend.hpp>
#include <parallax/comm/launch.hpp>
#include <parallax/mesh/device_mesh.hpp>
#include <parallax/tp/vocab_parallel_cross_entropy.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../support/gradcheck.hpp"
#include "../support/support.hpp"

namespace {

namespace px = parallax;
using Backend = px::host::Backend;
using Mem = px::host::Memory;
using Mesh = px::DeviceMesh<1, 1, px::dynamic>;
template <class T>
using Loss = px::tp::VocabParallelCrossEntropy<Mesh, Backend, T>;

static_assert(px::nn::Module<Loss<float>>);
static_assert(px::nn::Module<Loss<px::bf16>>);

constexpr std::int64_t kVocab = 24, kSeq = 5, kBatch = 3, kRows = kSeq * kBatch;
constexpr std::int32_t kIgnore = -100;
constexpr float kScale = 0.37f;

template <class T>
std::vector<float> as_float(const std::vector<T>& v) {
  return std::vector<float>(v.begin(), v.end());
}

// Logits [kSeq, kBatch, kVocab] of microbatch `mb`, spread wide enough that the softmax is far from uniform.
template <class T>
std::vector<T> make_logits(int mb) {
  const auto v = px::test::random_values(kRows * kVocab, 60 + static_cast<std::uint64_t>(mb), 4.f);
  return std::vector<T>(v.begin(), v.end());
}

// Targets [kSeq, kBatch] of microbatch `mb`: the first and last id of the vocabulary and two ignored rows.
std::vector<std::int32_t> make_targets(int mb, std::int32_t ignore = kIgnore) {
  const auto u = px::test::random_values(kRows, 70 + static_cast<std::uint64_t>(mb));
  std::vector<std::int32_t> y(u.size());
  for (std::size_t i = 0; i < u.size(); ++i)
    y[i] = std::min<std::int32_t>(static_cast<std::int32_t>((u[i] + 1.f) * 0.5f * kVocab), kVocab - 1);
  y[0] = 0;
  y[4] = kVocab - 1;
  y[3] = y[11] = ignore;
  return y;
}

using parallax::test::cview;
using parallax::test::view;

// The columns [begin, begin + width) of a row-major [rows, cols] matrix.
template <class T>
std::vector<T> columns(const std::vector<T>& m, std::int64_t cols, std::int64_t begin, std::int64_t width) {
  std::vector<T> out;
  for (std::size_t r = 0; r < m.size() / static_cast<std::size_t>(cols); ++r)
    for (std::int64_t j = begin; j < begin + width; ++j)
      out.push_back(m[r * static_cast<std::size_t>(cols) + static_cast<std::size_t>(j)]);
  return out;
}

// What the host kernel computes on the whole logits.
struct Reference {
  px::nn::LossValue loss;
  std::vector<float> dlogits;
};
template <class T>
Reference reference(const std::vector<T>& logits, const std::vector<std::int32_t>& targets,
                    std::int32_t ignore = kIgnore) {
  const px::host::Context ctx;
  std::vector<float> losses(kRows), lse(kRows);
  Reference ref;
  ref.loss.count =
      Backend::cross_entropy_forward(ctx, cview(logits, px::Shape{kRows, kVocab}), cview(targets, px::Shape{kRows}),
                                     ignore, view(losses, px::Shape{kRows}), view(lse, px::Shape{kRows}));
  ref.loss.sum = Backend::sum(ctx, cview(losses, px::Shape{kRows}));
  std::vector<T> d(logits.size());
  Backend::cross_entropy_backward(ctx, cview(logits, px::Shape{kRows, kVocab}), cview(targets, px::Shape{kRows}),
                                  cview(lse, px::Shape{kRows}), ignore, kScale, view(d, px::Shape{kRows, kVocab}));
  ref.dlogits = as_float(d);
  return ref;
}

// What each rank of a TP group saw, per microbatch.
struct Seen {
  std::vector<px::nn::LossValue> loss;
  std::vector<std::vector<float>> dlogits;
  std::int64_t vocab_begin = -1, local_vocab = -1;
};

// The microbatches through a TP-`tp` loss: all forwards, then all backward_inputs and backward_weights.
template <class T>
std::vector<Seen> run(int tp, const std::vector<std::vector<T>>& logits,
                      const std::vector<std::vector<std::int32_t>>& targets, std::int32_t ignore = kIgnore) {
  std::vector<Seen> seen(static_cast<std::size_t>(tp));
  px::launch<Backend>(tp, [&](px::Rank<Backend>& rank) {
    Mesh mesh(rank);
    Loss<T> loss(mesh, kVocab, {.ignore_index = ignore});
    Seen& s = seen[static_cast<std::size_t>(mesh.tp_rank())];
    s.vocab_begin = loss.vocab_begin();
    s.local_vocab = loss.local_vocab();
    std::vector<typename Loss<T>::Ctx> ctx(logits.size());
    for (std::size_t mb = 0; mb < logits.size(); ++mb) {
      const auto shard = columns(logits[mb], kVocab, loss.vocab_begin(), loss.local_vocab());
      s.loss.push_back(loss.forward(ctx[mb], cview(shard, px::Shape{kSeq, kBatch, loss.local_vocab()}),
                                    cview(targets[mb], px::Shape{kSeq, kBatch})));
    }
    for (auto& c : ctx) {
      auto d = loss.backward_input(c, kScale);
      loss.backward_weight(c);
      s.dlogits.push_back(as_float(px::to_vector(d.cview())));
    }
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

}  // namespace

TEMPLATE_TEST_CASE("VocabParallelCrossEntropy equals the whole-vocabulary loss for every TP", "[tp][cross_entropy]",
                   float, px::bf16) {
  using T = TestType;
  const std::vector<std::vector<T>> logits{make_logits<T>(0), make_logits<T>(1)};
  const std::vector<std::vector<std::int32_t>> targets{make_targets(0), make_targets(1)};
  const Reference refs[] = {reference(logits[0], targets[0]), reference(logits[1], targets[1])};
  for (int tp : {1, 2, 3, 4}) {
    INFO("TP " << tp);
    const auto seen = run<T>(tp, logits, targets);
    const auto spec = px::nn::ShardSpec::split("dlogits", px::Shape{kRows, kVocab}, px::Axis::tp, 1, tp, 0);
    for (std::size_t mb = 0; mb < logits.size(); ++mb) {
      INFO("microbatch " << mb);
      std::vector<std::vector<float>> shards;
      for (int r = 0; r < tp; ++r) {
        const Seen& s = seen[static_cast<std::size_t>(r)];
        CHECK(s.vocab_begin == r * kVocab / tp);
        CHECK(s.local_vocab == kVocab / tp);
        CHECK(s.loss[mb].count == refs[mb].loss.count);
        CHECK(s.loss[mb].sum == seen[0].loss[mb].sum);  // bitwise the same on every TP rank
        shards.push_back(s.dlogits[mb]);
      }
      CHECK(refs[mb].loss.count == kRows - 2);
      CHECK(std::abs(seen[0].loss[mb].sum - refs[mb].loss.sum) <= tolerance<T> * std::abs(refs[mb].loss.sum));
      CHECK(worst(px::nn::assemble<float>(spec, shards), refs[mb].dlogits) <= tolerance<T>);
    }
  }
}

TEST_CASE("VocabParallelCrossEntropy matches an fp64 loop", "[tp][cross_entropy]") {
  const std::vector<std::vector<float>> logits{make_logits<float>(2)};
  const std::vector<std::vector<std::int32_t>> targets{make_targets(2)};
  const auto seen = run<float>(3, logits, targets);
  double sum = 0;
  std::vector<double> dlogits(logits[0].size(), 0.0);
  for (std::int64_t n = 0; n < kRows; ++n) {
    const std::int32_t y = targets[0][static_cast<std::size_t>(n)];
    if (y == kIgnore) continue;
    const float* z = logits[0].data() + n * kVocab;
    const double m = *std::max_element(z, z + kVocab);
    double s = 0;
    for (std::int64_t j = 0; j < kVocab; ++j) s += std::exp(double(z[j]) - m);
    const double lse = m + std::log(s);
    sum += lse - double(z[y]);
    for (std::int64_t j = 0; j < kVocab; ++j)
      dlogits[static_cast<std::size_t>(n * kVocab + j)] =
          kScale * (std::exp(double(z[j]) - lse) - (j == y ? 1.0 : 0.0));
  }
  CHECK(seen[1].loss[0].sum == Approx(sum).epsilon(1e-5));
  CHECK(seen[1].loss[0].count == kRows - 2);
  // Rank 1 holds columns [8, 16).
  for (std::int64_t n = 0; n < kRows; ++n)
    for (std::int64_t j = 0; j < 8; ++j)
      CHECK(seen[1].dlogits[0][static_cast<std::size_t>(n * 8 + j)] ==
            Approx(dlogits[static_cast<std::size_t>(n * kVocab + 8 + j)]).epsilon(1e-5).margin(1e-7));
}

TEST_CASE("VocabParallelCrossEntropy ignores rows whose target is ignore_index", "[tp][cross_entropy]") {
  const std::vector<std::vector<float>> logits{make_logits<float>(3), make_logits<float>(4)};
  std::vector<std::vector<std::int32_t>> targets{make_targets(3, -1), std::vector<std::int32_t>(kRows, -1)};
  const auto seen = run<float>(2, logits, targets, -1);
  const Reference ref = reference(logits[0], targets[0], -1);
  for (const Seen& s : seen) {
    CHECK(s.loss[0].count == kRows - 2);
    CHECK(s.loss[0].sum == Approx(ref.loss.sum).epsilon(1e-5));
    for (std::int64_t row : {3, 11})
      for (std::int64_t j = 0; j < kVocab / 2; ++j)
        CHECK(s.dlogits[0][static_cast<std::size_t>(row * kVocab / 2 + j)] == 0.f);
    CHECK(s.loss[1].count == 0);  // every row ignored: nothing counted, no gradient
    CHECK(s.loss[1].sum == 0.0);
    CHECK(s.dlogits[1] == std::vector<float>(kRows * kVocab / 2, 0.f));
  }
}

TEST_CASE("VocabParallelCrossEntropy keeps only the logits shard, which becomes dlogits",
          "[tp][cross_entropy][memory]") {
  std::vector<std::int64_t> during(2), with_grad(2), after(2);
  const auto logits = make_logits<float>(0);
  const auto targets = make_targets(0);
  px::launch<Backend>(2, [&](px::Rank<Backend>& rank) {
    Mesh mesh(rank);
    Loss<float> loss(mesh, kVocab);
    Loss<float>::Ctx ctx;
    const auto shard = columns(logits, kVocab, loss.vocab_begin(), loss.local_vocab());
    const auto r = static_cast<std::size_t>(rank.id());
    auto live = [&] { return static_cast<std::int64_t>(rank.memory().live(px::MemoryCategory::activations)); };
    (void)loss.forward(ctx, cview(shard, px::Shape{kSeq, kBatch, kVocab / 2}), cview(targets, px::Shape{kSeq, kBatch}));
    during[r] = live();
    auto d = loss.backward_input(ctx, 1.f);
    loss.backward_weight(ctx);
    with_grad[r] = live();
    d.reset();
    after[r] = live();
  });
  for (std::size_t r = 0; r < 2; ++r) {
    CHECK(during[r] == kRows * kVocab / 2 * 4 + kRows * 4 + kRows * 4);  // logits shard, targets, lse
    CHECK(with_grad[r] == kRows * kVocab / 2 * 4);                       // dlogits, in the logits' storage
    CHECK(after[r] == 0);
  }
}

TEST_CASE("VocabParallelCrossEntropy takes a fixed<N> vocabulary on a static mesh", "[tp][cross_entropy]") {
  std::vector<std::int64_t> begin(2);
  px::launch<Backend>(2, [&](px::Rank<Backend>& rank) {
    px::DeviceMesh<1, 1, 2> mesh(rank);
    px::tp::VocabParallelCrossEntropy<decltype(mesh), Backend, float> loss(mesh, px::fixed<kVocab>);
    begin[static_cast<std::size_t>(rank.id())] = loss.vocab_begin();
  });
  CHECK(begin == std::vector<std::int64_t>{0, kVocab / 2});
}

TEST_CASE("VocabParallelCrossEntropy rejects a vocabulary TP does not divide", "[tp][cross_entropy][errors]") {
  CHECK_THROWS_WITH(px::launch<Backend>(2,
                                        [](px::Rank<Backend>& rank) {
                                          Mesh mesh(rank);
                                          Loss<float> loss(mesh, 25);
                                        }),
                    Catch::Contains("VocabParallelCrossEntropy 'loss': vocabulary entries 25 are not divisible by TP 2"));
}

TEST_CASE("VocabParallelCrossEntropy rejects wrong shard widths, shapes, targets and passes out of order",
          "[tp][cross_entropy][errors]") {
  const auto logits = make_logits<float>(0);
  std::vector<std::vector<std::string>> msgs(2);
  px::launch<Backend>(2, [&](px::Rank<Backend>& rank) {
    Mesh mesh(rank);
    Loss<float> loss(mesh, kVocab, {.name = "lm_loss"});
    auto& m = msgs[static_cast<std::size_t>(rank.id())];
    auto targets = make_targets(0);
    Loss<float>::Ctx a, b, c, d, e, f;
    m.push_back(message_of([&] {
      (void)loss.forward(a, cview(logits, px::Shape{kSeq, kBatch, kVocab}), cview(targets, px::Shape{kSeq, kBatch}));
    }));
    m.push_back(message_of([&] {
      (void)loss.forward(b, cview(logits, px::Shape{kSeq, kBatch, 8}), cview(targets, px::Shape{kSeq, kBatch}));
    }));
    m.push_back(message_of([&] {
      (void)loss.forward(c, cview(logits, px::Shape{kRows, kVocab / 2}), cview(targets, px::Shape{kSeq, kBatch}));
    }));
    targets[5] = kVocab;
    m.push_back(message_of([&] {
      (void)loss.forward(d, cview(logits, px::Shape{kRows, kVocab / 2}), cview(targets, px::Shape{kRows}));
    }));
    targets[5] = -7;
    m.push_back(message_of([&] {
      (void)loss.forward(e, cview(logits, px::Shape{kRows, kVocab / 2}), cview(targets, px::Shape{kRows}));
    }));
    m.push_back(message_of([&] { (void)loss.backward_input(f, 1.f); }));
  });
  for (const auto& m : msgs) {
    REQUIRE(m.size() == 6);
    CHECK_THAT(m[0], Catch::Contains("VocabParallelCrossEntropy 'lm_loss': logits shard width 24 times TP 2 is 48, not "
                                     "the vocabulary 24"));
    CHECK_THAT(m[1], Catch::Contains("logits shard width 8 times TP 2 is 16, not the vocabulary 24"));
    CHECK_THAT(m[2], Catch::Contains("targets [5, 3] are not the leading dimensions of logits [15, 12]"));
    CHECK_THAT(m[3], Catch::Contains("target 24 at row 5 is outside [0, 24) and is not ignore_index -100"));
    CHECK_THAT(m[4], Catch::Contains("target -7 at row 5 is outside [0, 24) and is not ignore_index -100"));
    CHECK_THAT(m[5], Catch::Contains("backward_input called on a context whose forward has not run"));
  }
}
