// checkpoint::load of a GPT-2 saved in Hugging Face's layout (tests/fixtures/gpt2_tiny, made by PyTorch): the
// `transformer.` prefix, Conv1D weights stored [in, out], the tied LM head, and the `attn.bias` buffers to ignore.
// A GPT-2 built from parallax's TP modules, loaded onto TP = 1, 2, 4, gives the loss PyTorch computed; saving
// it back writes the same tensors under the same names.
#include <catch2/catch.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <parallax/backend/host/backend.hpp>
#include <parallax/checkpoint/checkpoint.hpp>
#include <parallax/comm/launch.hpp>
#include <parallax/nn/layer_norm.hpp>
#include <parallax/tp/column_parallel_linear.hpp>
#include <parallax/tp/transformer_block.hpp>
#include <parallax/tp/vocab_parallel_cross_entropy.hpp>
#include <parallax/tp/vocab_parallel_embedding.hpp>

#include "temp_dir.hpp"

namespace px = parallax;
namespace ck = parallax::checkpoint;
using px::Shape;

namespace {

using B = px::host::Backend;
using Mem = px::host::Memory;
using Mesh = px::DeviceMesh<1, 1, px::dynamic>;
const char* const fixture = PARALLAX_FIXTURE_DIR "/gpt2_tiny/gpt2_tiny.safetensors";

// parallax's parameter names -> Hugging Face GPT-2's: the embedding tables are wte / wpe, the projections
// c_attn / c_proj / c_fc / c_proj stored transposed, the LM head tied to wte.
std::optional<ck::Mapping> gpt2_names(std::string_view p) {
  if (p == "embed.token.weight") return ck::Mapping{"wte.weight"};
  if (p == "embed.position.weight") return ck::Mapping{"wpe.weight"};
  if (p == "lm_head.weight") return ck::Mapping{.tensor = "wte.weight", .tied = true};
  std::string name(p);
  for (const auto& [ours, theirs] : {std::pair{".attn.qkv.", ".attn.c_attn."}, {".attn.proj.", ".attn.c_proj."},
                                     {".mlp.fc.", ".mlp.c_fc."}, {".mlp.proj.", ".mlp.c_proj."}})
    if (const auto at = name.find(ours); at != std::string::npos) {
      const bool weight = name.ends_with(".weight");  // Conv1D weights are stored [in, out]
      return ck::Mapping{name.replace(at, std::string_view(ours).size(), theirs), weight};
    }
  return ck::Mapping{name};
}

struct Config {
  std::int64_t vocab, positions, dim, layers, heads;
};

// A GPT-2 of parallax's modules: token + position embedding, pre-LayerNorm blocks, ln_f, an LM head whose
// weight is tied to the token table (by the checkpoint map), and the vocabulary-parallel loss.
struct Gpt2 {
  using Block = px::tp::TransformerBlock<Mesh, B, float>;
  px::tp::VocabParallelEmbedding<Mesh, B, float> embed;
  std::vector<Block> blocks;
  px::nn::LayerNorm<B, float> ln_f;
  px::tp::ColumnParallelLinear<Mesh, B, float> head;
  px::tp::VocabParallelCrossEntropy<Mesh, B, float> loss;

  Gpt2(Mesh& mesh, const Config& c)
      : embed(mesh, c.vocab, c.positions, c.dim, {.name = "embed"}),
        ln_f(px::mesh_rank<B>(mesh), c.dim, {.eps = 1e-5f, .name = "ln_f"}),
        head(mesh, c.dim, c.vocab, {.bias = false, .name = "lm_head"}),
        loss(mesh, c.vocab) {
    for (std::int64_t i = 0; i < c.layers; ++i)
      blocks.emplace_back(mesh, c.dim, c.heads, px::tp::TransformerBlockOptions{.name = fmt::format("h.{}", i)});
  }

  px::nn::ParameterList<float, Mem> parameters() {
    auto p = embed.parameters();
    for (auto& b : blocks) px::nn::append(p, b.parameters());
    px::nn::append(p, ln_f.parameters());
    px::nn::append(p, head.parameters());
    return p;
  }

  // The summed loss of predicting `targets` from `ids` (both int32 [T, B]).
  px::nn::LossValue evaluate(const std::vector<std::int32_t>& ids, const std::vector<std::int32_t>& targets, Shape tb) {
    decltype(embed)::Ctx ec;
    auto x = embed.forward(ec, px::View<const std::int32_t, Mem>(ids.data(), tb));
    for (auto& b : blocks) {
      Block::Ctx bc;
      x = b.forward(bc, x.cview());
    }
    decltype(ln_f)::Ctx lc;
    x = ln_f.forward(lc, x.cview());
    decltype(head)::Ctx hc;
    const auto logits = head.forward(hc, x.cview());
    decltype(loss)::Ctx cc;
    return loss.forward(cc, logits.cview(), px::View<const std::int32_t, Mem>(targets.data(), tb));
  }
};

// Inputs and targets [seq, count] of sequences [first, first + count) of `tokens` (sequence-first).
std::pair<std::vector<std::int32_t>, std::vector<std::int32_t>> sequences(const std::vector<std::int32_t>& tokens,
                                                                          std::int64_t seq, std::int64_t first,
                                                                          std::int64_t count) {
  std::vector<std::int32_t> ids, targets;
  for (std::int64_t t = 0; t < seq; ++t)
    for (std::int64_t b = first; b < first + count; ++b) {
      ids.push_back(tokens[static_cast<std::size_t>(b * seq + t)]);
      targets.push_back(tokens[static_cast<std::size_t>(b * seq + t + 1)]);
    }
  return {ids, targets};
}

}  // namespace

TEST_CASE("checkpoint: a PyTorch-saved Hugging Face GPT-2 loads onto TP 1, 2, 4 and gives PyTorch's loss",
          "[checkpoint][gpt2][oracle]") {
  const auto file = ck::SafetensorsFile::open(fixture);
  const auto meta = [&](const char* key) { return std::stoll(file.metadata(key)); };
  const Config c{meta("vocab_size"), meta("n_positions"), meta("n_embd"), meta("n_layer"), meta("n_head")};
  const std::int64_t seq = meta("seq");
  const auto tokens = nlohmann::json::parse(file.metadata("tokens")).get<std::vector<std::int32_t>>();
  const std::int64_t n = (static_cast<std::int64_t>(tokens.size()) - 1) / seq;
  const double want = std::stod(file.metadata("loss"));
  std::vector<double> want_each;
  for (const auto& s : nlohmann::json::parse(file.metadata("losses")))
    want_each.push_back(std::stod(s.get<std::string>()));
  REQUIRE(n == 4);
  REQUIRE(want_each.size() == 4);
  const ck::TensorMap hf{.rule = gpt2_names, .optional_prefix = "transformer."};

  for (int tp : {1, 2, 4}) {
    INFO("TP " << tp);
    std::vector<double> mean(static_cast<std::size_t>(tp)), each(static_cast<std::size_t>(tp * n));
    std::vector<std::int64_t> counted(static_cast<std::size_t>(tp));
    px::launch<B>(tp, [&](px::Rank<B>& rank) {
      Mesh mesh(rank);
      Gpt2 model(mesh, c);
      ck::load(mesh, model.parameters(), fixture, hf);
      const auto r = static_cast<std::size_t>(rank.id());
      const auto [ids, targets] = sequences(tokens, seq, 0, n);
      const auto all = model.evaluate(ids, targets, Shape{seq, n});
      mean[r] = all.mean();
      counted[r] = all.count;
      for (std::int64_t i = 0; i < n; ++i) {
        const auto [one_ids, one_targets] = sequences(tokens, seq, i, 1);
        each[r * static_cast<std::size_t>(n) + static_cast<std::size_t>(i)] =
            model.evaluate(one_ids, one_targets, Shape{seq, 1}).mean();
      }
    });
    for (int r = 0; r < tp; ++r) {
      CHECK(counted[static_cast<std::size_t>(r)] == n * seq);
      CHECK(mean[static_cast<std::size_t>(r)] == Approx(want).epsilon(1e-6));
      for (std::int64_t i = 0; i < n; ++i)
        CHECK(each[static_cast<std::size_t>(r * n + i)] ==
              Approx(want_each[static_cast<std::size_t>(i)]).epsilon(1e-6));
    }
  }
}

TEST_CASE("checkpoint: a GPT-2 loaded from Hugging Face names saves the same tensors under the same names",
          "[checkpoint][gpt2]") {
  const auto file = ck::SafetensorsFile::open(fixture);
  const auto meta = [&](const char* key) { return std::stoll(file.metadata(key)); };
  const Config c{meta("vocab_size"), meta("n_positions"), meta("n_embd"), meta("n_layer"), meta("n_head")};
  px::test::TempDir dir;
  const auto path = dir / "resaved.safetensors";
  px::launch<B>(2, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    Gpt2 model(mesh, c);
    ck::load(mesh, model.parameters(), fixture, {.rule = gpt2_names, .optional_prefix = "transformer."});
    ck::save(mesh, model.parameters(), path, {.rule = gpt2_names});
  });
  const auto saved = ck::SafetensorsFile::open(path);
  std::size_t buffers = 0;
  for (const auto& t : file.tensors()) {
    INFO(t.name);
    REQUIRE(t.name.starts_with("transformer."));
    const std::string name = t.name.substr(12);
    if (name.ends_with(".attn.bias")) {  // the causal-mask buffer: not a parameter
      ++buffers;
      CHECK_FALSE(saved.contains(name));
      continue;
    }
    REQUIRE(saved.contains(name));
    CHECK(saved.info(name).shape == t.shape);
    CHECK(saved.read<float>(name) == file.read<float>(t.name));
  }
  CHECK(buffers == static_cast<std::size_t>(c.layers));
  CHECK(saved.tensors().size() == file.tensors().size() - buffers);
}
