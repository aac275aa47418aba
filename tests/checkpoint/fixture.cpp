// The PyTorch-made GPT-2 block fixture (tests/fixtures/gpt2_block): complete, finite, consistent with
// identities any correct block satisfies, and rewritten byte for byte by SafetensorsWriter.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <parallax/checkpoint/safetensors.hpp>

#include "temp_dir.hpp"

namespace px = parallax;
using px::Shape;
using px::checkpoint::SafetensorsFile;

namespace {

constexpr std::int64_t T = 8, B = 2, D = 32, H = 4;
const char* const path = PARALLAX_FIXTURE_DIR "/gpt2_block/gpt2_block.safetensors";

// Parameter names and shapes of the block (parallax's names; the gradient of each is "grad.<name>").
const std::vector<std::pair<std::string, Shape>>& parameters() {
  static const std::vector<std::pair<std::string, Shape>> p{
      {"ln_1.weight", Shape{D}},          {"ln_1.bias", Shape{D}},
      {"attn.qkv.weight", Shape{3 * D, D}}, {"attn.qkv.bias", Shape{3 * D}},
      {"attn.proj.weight", Shape{D, D}},  {"attn.proj.bias", Shape{D}},
      {"ln_2.weight", Shape{D}},          {"ln_2.bias", Shape{D}},
      {"mlp.fc.weight", Shape{4 * D, D}}, {"mlp.fc.bias", Shape{4 * D}},
      {"mlp.proj.weight", Shape{D, 4 * D}}, {"mlp.proj.bias", Shape{D}},
  };
  return p;
}

}  // namespace

TEST_CASE("gpt2_block fixture has every tensor, with the documented shapes and metadata", "[checkpoint][fixture]") {
  const auto f = SafetensorsFile::open(path);
  CHECK(f.metadata("T") == std::to_string(T));
  CHECK(f.metadata("B") == std::to_string(B));
  CHECK(f.metadata("D") == std::to_string(D));
  CHECK(f.metadata("H") == std::to_string(H));
  CHECK(std::stod(f.metadata("eps")) == 1e-5);
  CHECK(f.metadata("gelu") == "tanh");
  CHECK_FALSE(f.metadata("torch").empty());
  CHECK_THAT(f.metadata("command"), Catch::Contains("make_fixture.py"));

  std::vector<std::pair<std::string, Shape>> want{
      {"x", Shape{T, B, D}}, {"dy", Shape{T, B, D}}, {"out", Shape{T, B, D}}, {"grad.x", Shape{T, B, D}}};
  for (const auto& [name, shape] : parameters()) {
    want.emplace_back(name, shape);
    want.emplace_back("grad." + name, shape);
  }
  CHECK(f.tensors().size() == want.size());
  for (const auto& [name, shape] : want) {
    INFO(name);
    REQUIRE(f.contains(name));
    CHECK(f.info(name).dtype == px::DType::f32);
    CHECK(f.info(name).shape == shape);
    const auto v = f.read<float>(name);
    CHECK(std::all_of(v.begin(), v.end(), [](float e) { return std::isfinite(e); }));
    CHECK(std::any_of(v.begin(), v.end(), [](float e) { return e != 0.f; }));
  }
}

TEST_CASE("gpt2_block fixture satisfies identities of a residual block", "[checkpoint][fixture]") {
  const auto f = SafetensorsFile::open(path);
  const auto x = f.read<float>("x"), dy = f.read<float>("dy"), out = f.read<float>("out");
  const auto gx = f.read<float>("grad.x");
  const auto g_mlp_bias = f.read<float>("grad.mlp.proj.bias"), g_attn_bias = f.read<float>("grad.attn.proj.bias");

  // The block changes its input noticeably (out = x + attention + MLP).
  double change = 0;
  for (std::size_t i = 0; i < x.size(); ++i) change = std::max(change, std::abs(double(out[i]) - x[i]));
  CHECK(change > 0.5);

  // z = y + mlp.proj(...) + b: the last bias's gradient is dy summed over the tokens.
  for (std::int64_t d = 0; d < D; ++d) {
    double s = 0;
    for (std::int64_t n = 0; n < T * B; ++n) s += dy[static_cast<std::size_t>(n * D + d)];
    CHECK(g_mlp_bias[static_cast<std::size_t>(d)] == Approx(s).margin(1e-4));
  }
  // LayerNorm's input gradient sums to zero over the features, and both branches start with one: per token,
  // sum_d grad.x == sum_d dL/dy == sum_d dy; and attn.proj.bias's gradient (dL/dy summed over tokens) sums to
  // the sum of all of dy.
  double total = 0, bias_total = 0;
  for (std::int64_t n = 0; n < T * B; ++n) {
    double sx = 0, sd = 0;
    for (std::int64_t d = 0; d < D; ++d) {
      sx += gx[static_cast<std::size_t>(n * D + d)];
      sd += dy[static_cast<std::size_t>(n * D + d)];
    }
    CHECK(sx == Approx(sd).margin(1e-4));
    total += sd;
  }
  for (float g : g_attn_bias) bias_total += g;
  CHECK(bias_total == Approx(total).margin(1e-4));
}

TEST_CASE("gpt2_block fixture is rewritten byte for byte by SafetensorsWriter", "[checkpoint][fixture]") {
  const auto f = SafetensorsFile::open(path);
  px::checkpoint::SafetensorsWriter w;
  for (const auto& t : f.tensors()) w.add(t.name, f.read<float>(t.name), t.shape);
  for (const auto& [key, value] : f.metadata()) w.metadata(key, value);
  px::test::TempDir dir;
  w.write(dir / "copy.safetensors");
  CHECK(px::test::read_file(dir / "copy.safetensors") == px::test::read_file(path));
}
