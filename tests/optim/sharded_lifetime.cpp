// Parameter storage around a ShardedOptimizer's life: under ZeRO-2/3 a gradient, and under ZeRO-3 a value, that
// exists only in slices throws a clear Error when read instead of reading freed memory; when the optimizer goes,
// every parameter gets owned storage holding its value (ZeRO 0-2), or stays detached saying why (ZeRO-3).
// checkpoint::save reads parameters as modules do, so it saves a ZeRO-3 model as it is.
#include <parallax/checkpoint/checkpoint.hpp>

#include <filesystem>

#include "sharded.hpp"

namespace px = parallax;
using namespace parallax::test::sharded;
using Catch::Matchers::Contains;

namespace {

//! What rank 0 saw: the values the optimizer held before it went, the values after, and what reading threw.
struct Seen {
  std::vector<std::vector<float>> before, after;
  std::string grad_between_steps, value_between_steps, value_after;
  bool trained_after = false;
};

template <class Z>
Seen run_and_destroy(const std::filesystem::path& saved) {
  Seen seen;
  px::launch<B>(2, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    auto model = make_mlp<float>(rank);
    const auto params = model.parameters();
    const auto error_of = [](auto&& f) -> std::string {
      try {
        f();
      } catch (const px::Error& e) {
        return e.what();
      }
      return "";
    };
    std::vector<std::vector<float>> before;
    {
      px::ShardedOptimizer<px::optim::AdamW, Z, Mesh, B> opt(mesh, params, {.lr = 1e-2f},
                                                             {.bucket_bytes = bucket_bytes<float>});
      for (int s = 0; s < 2; ++s) {
        run_microbatch(model, s, mesh.dp_rank(), 2);
        (void)opt.step();
      }
      const std::string g = error_of([&] { (void)params.front()->grad(); });
      const std::string v = error_of([&] { (void)params.front()->value(); });
      for (auto* p : params) before.push_back(floats(opt.value(*p)));
      px::checkpoint::save(mesh, params, saved);
      if (rank.id() == 0) {
        seen.grad_between_steps = g;
        seen.value_between_steps = v;
        seen.before = before;
      }
    }
    const std::string after = error_of([&] { (void)params.front()->value(); });
    std::vector<std::vector<float>> values;
    bool trained = false;
    if (after.empty()) {
      for (auto* p : params) values.push_back(floats(px::to_vector(px::View<const float, Mem>(p->value()))));
      run_microbatch(model, 2, mesh.dp_rank(), 2);  // the model trains on without the optimizer
      trained = true;
    }
    if (rank.id() == 0) {
      seen.value_after = after;
      seen.after = values;
      seen.trained_after = trained;
    }
  });
  return seen;
}

}  // namespace

TEMPLATE_TEST_CASE("After the optimizer goes, parameters own their values; a sharded one that cannot says why",
                   "[optim][sharded][lifetime]", px::Zero<0>, px::Zero<1>, px::Zero<2>, px::Zero<3>) {
  const auto saved = std::filesystem::temp_directory_path() /
                     fmt::format("parallax_sharded_lifetime_zero{}.safetensors", TestType::stage);
  const Seen seen = run_and_destroy<TestType>(saved);
  REQUIRE(seen.before.size() == 4);
  const auto file = px::checkpoint::SafetensorsFile::open(saved);
  const char* names[] = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"};
  for (std::size_t i = 0; i < 4; ++i) CHECK(file.template read<float>(names[i]) == seen.before[i]);
  std::filesystem::remove(saved);
  if constexpr (TestType::stage >= 2)
    CHECK_THAT(seen.grad_between_steps, Contains("Parameter 'fc1.weight': its gradient is sharded over DP (ZeRO-2/3)"));
  else
    CHECK(seen.grad_between_steps.empty());
  if constexpr (TestType::stage == 3) {
    CHECK_THAT(seen.value_between_steps, Contains("Parameter 'fc1.weight': its value is sharded over DP (ZeRO-3)"));
    CHECK_THAT(seen.value_after, Contains("Parameter 'fc1.weight': its value was sharded over DP by a ZeRO-3 "
                                          "optimizer that no longer exists; read it through ShardedOptimizer::value"));
    CHECK(!seen.trained_after);
  } else {
    CHECK(seen.value_between_steps.empty());
    CHECK(seen.value_after.empty());
    CHECK(seen.after == seen.before);
    CHECK(seen.trained_after);
  }
}
