// The GPT and Hugging Face GPT-2 files: the PyTorch-saved fixture (tests/fixtures/gpt2_tiny) gives PyTorch's eval
// loss on 1x1x1, 2x2x2 and TP 2 with sequence parallelism; a model trained and saved on 2x2x2 loads on 1x1x1 and
// 1x4x1 with the same eval loss, under GPT-2's names; config_from_file takes the sizes from the file and rejects a
// flag that disagrees, and a tensor of the wrong shape fails on every rank.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <parallax/checkpoint/checkpoint.hpp>

#include "../checkpoint/temp_dir.hpp"
#include "../support/support.hpp"
#include "harness.hpp"

using namespace gpt_test;
using px::dynamic;
using px::test::error_of;
namespace ck = parallax::checkpoint;

namespace {

const std::string fixture = PARALLAX_FIXTURE_DIR "/gpt2_tiny/gpt2_tiny.safetensors";

//! The fixture's config: the sizes from the file, its heads from the metadata.
gpt::Config fixture_config() {
  const auto file = ck::SafetensorsFile::open(fixture);
  return gpt::config_from_file(fixture, {.heads = std::stoll(file.metadata("n_head"))}, {});
}

//! A copy of the fixture at `path` with tensor `name` replaced by one of shape `shape` (zeros).
void write_altered(const std::filesystem::path& path, const std::string& name, const px::Shape& shape) {
  const auto file = ck::SafetensorsFile::open(fixture);
  ck::SafetensorsWriter w;
  for (const auto& t : file.tensors())
    if (t.name == name)
      w.add(t.name, std::vector<float>(static_cast<std::size_t>(shape.numel())), shape);
    else
      w.add(t.name, file.read<float>(t.name), t.shape);
  w.write(path);
}

}  // namespace

TEST_CASE("gpt: the PyTorch GPT-2 fixture gives PyTorch's eval loss on 1x1x1, 2x2x2 and TP 2 with SP",
          "[gpt][checkpoint][oracle]") {
  const auto file = ck::SafetensorsFile::open(fixture);
  const gpt::Config c = fixture_config();
  CHECK(c.vocab == 64);
  CHECK(c.seq == 16);
  CHECK(c.layers == 2);
  CHECK(c.dim == 24);
  CHECK(c.heads == 4);
  const auto tokens = nlohmann::json::parse(file.metadata("tokens")).get<std::vector<std::int32_t>>();
  const gpt::Dataset d = gpt::sequences(tokens, c.seq, c.vocab);
  REQUIRE(d.size() == 4);
  const gpt::Batch global = gpt::eval_batch(d, 0, 4);
  const double want = std::stod(file.metadata("loss"));
  gpt::Config sp = c;
  sp.sequence_parallel = true;
  const auto check = [&](const std::vector<gpt::EvalStats>& ranks) {
    for (std::size_t r = 0; r < ranks.size(); ++r) {
      INFO("rank " << r << ": " << ranks[r].loss() << " vs PyTorch's " << want);
      CHECK(close(ranks[r].loss(), want, 1e-5));
      CHECK(ranks[r].tokens == 64);
      CHECK(ranks[r].sequences == 4);
    }
  };
  check(evaluate_file<px::DeviceMesh<1, dynamic, 1>>(1, c, fixture, global, 1));
  check(evaluate_file<px::DeviceMesh<2, 2, 2>>(8, c, fixture, global, 2));
  check(evaluate_file<px::DeviceMesh<1, 1, dynamic>>(2, sp, fixture, global, 1));
}

TEST_CASE("gpt: trained and saved on 2x2x2, loaded on 1x1x1 and 1x4x1, the same eval loss", "[gpt][checkpoint]") {
  const gpt::Config c = small_config();
  const gpt::Dataset train = random_sequences(c, 16), heldout = random_sequences(c, 8, 11);
  const gpt::Batch global = gpt::eval_batch(heldout, 0, 8);
  px::test::TempDir dir;
  const auto path = dir / "gpt.safetensors";
  using Mesh = px::DeviceMesh<2, 2, 2>;
  std::vector<gpt::EvalStats> saved(8);
  px::launch<B>(
      8,
      [&](px::Rank<B>& rank) {
        Mesh mesh(rank);
        gpt::Pipeline<pp::OneFOneB, Mesh, B, float> pipeline(mesh, gpt::make_chunks<pp::OneFOneB, B, float>(mesh, c),
                                                             {.microbatches = 2});
        px::optim::ShardedOptimizer<px::optim::AdamW, px::Zero<1>, Mesh, B> opt(mesh, pipeline.parameters(),
                                                                              {.lr = 1e-2f}, {.accumulation = 2});
        gpt::TiedEmbedding tie(mesh, pipeline);
        for (int s = 0; s < 3; ++s) {
          const Microbatches mbs(gpt::train_batch(train, s, 8), mesh.dp_rank(), 2, 2);
          (void)pipeline.train_step(mbs.views);
          tie.sync();
          (void)opt.step();
        }
        const Microbatches mbs(global, mesh.dp_rank(), 2, 2);
        saved[static_cast<std::size_t>(rank.id())] = gpt::evaluate(mesh, pipeline, mbs.views);
        ck::save(mesh, pipeline.parameters(), path, gpt::hf_names());
      },
      {.timeout = timeout});

  // GPT-2's names and layouts: Conv1D weights [in, out], no LM head (tied to wte), no parallax names.
  const auto file = ck::SafetensorsFile::open(path);
  CHECK(file.tensors().size() == static_cast<std::size_t>(2 + 12 * c.layers + 2));
  CHECK(file.info("wte.weight").shape == px::Shape{c.vocab, c.dim});
  CHECK(file.info("wpe.weight").shape == px::Shape{c.seq, c.dim});
  CHECK(file.info("h.3.attn.c_attn.weight").shape == px::Shape{c.dim, 3 * c.dim});
  CHECK(file.info("h.3.mlp.c_proj.weight").shape == px::Shape{4 * c.dim, c.dim});
  CHECK(file.contains("ln_f.bias"));
  CHECK_FALSE(file.contains("lm_head.weight"));
  CHECK_FALSE(file.contains("embed.token.weight"));
  const gpt::Config loaded = gpt::config_from_file(path.string(), {.heads = c.heads}, {});
  CHECK(loaded.vocab == c.vocab);
  CHECK(loaded.seq == c.seq);
  CHECK(loaded.layers == c.layers);
  CHECK(loaded.dim == c.dim);

  const double want = saved[0].loss();
  for (const auto& s : saved) CHECK(s.loss() == want);
  const auto check = [&](const std::vector<gpt::EvalStats>& ranks) {
    for (std::size_t r = 0; r < ranks.size(); ++r) {
      INFO("rank " << r << ": " << ranks[r].loss() << " vs " << want << " before saving");
      CHECK(close(ranks[r].loss(), want, 1e-6));
      CHECK(ranks[r].tokens == saved[0].tokens);
      CHECK(ranks[r].correct_sequences == saved[0].correct_sequences);
    }
  };
  check(evaluate_file<px::DeviceMesh<1, dynamic, 1>>(1, loaded, path, global, 1));
  check(evaluate_file<px::DeviceMesh<1, dynamic, 1>, pp::GPipe>(4, loaded, path, global, 4));
}

TEST_CASE("gpt::config_from_file: sizes from the file; a flag that disagrees, or not a GPT-2, is an error",
          "[gpt][checkpoint][errors]") {
  // Flags the user did not give are replaced; heads and the rest are kept.
  const gpt::Config c = gpt::config_from_file(fixture, {.vocab = 256, .seq = 8, .layers = 6, .heads = 2, .dim = 32,
                                                        .sequence_parallel = true, .seed = 9},
                                              {});
  CHECK(c.vocab == 64);
  CHECK(c.seq == 16);
  CHECK(c.positions == 16);
  CHECK(c.layers == 2);
  CHECK(c.dim == 24);
  CHECK(c.heads == 2);
  CHECK(c.sequence_parallel);
  CHECK(c.seed == 9);
  // Given and agreeing: fine.
  CHECK(gpt::config_from_file(fixture, {.seq = 16, .layers = 2, .dim = 24}, {.seq = true, .layers = true, .dim = true})
            .dim == 24);
  CHECK(error_of([] { (void)gpt::config_from_file(fixture, {.dim = 32}, {.dim = true}); }) ==
        fmt::format("gpt::config_from_file: --dim 32 disagrees with '{}', whose wte.weight [64, 24] makes it 24",
                    fixture));
  // A sequence shorter than the file's 16 positions is fine (the first 8 are used); a longer one is not.
  const gpt::Config shorter = gpt::config_from_file(fixture, {.seq = 8}, {.seq = true});
  CHECK(shorter.seq == 8);
  CHECK(shorter.positions == 16);
  CHECK(error_of([] { (void)gpt::config_from_file(fixture, {.seq = 17}, {.seq = true}); }) ==
        fmt::format("gpt::config_from_file: --seq 17 is longer than the 16 positions of '{}' (wpe.weight [16, 24])",
                    fixture));
  CHECK(error_of([] { (void)gpt::config_from_file(fixture, {.layers = 4}, {.layers = true}); }) ==
        fmt::format("gpt::config_from_file: --layers 4 disagrees with '{}', whose blocks h.0 .. h.1 makes it 2",
                    fixture));
  CHECK(error_of([] { (void)gpt::config_from_file(fixture, {.vocab = 256}, {.vocab = true}); }) ==
        fmt::format("gpt::config_from_file: --vocab 256 disagrees with '{}', whose wte.weight [64, 24] makes it 64",
                    fixture));
  const std::string block = PARALLAX_FIXTURE_DIR "/gpt2_block/gpt2_block.safetensors";
  CHECK(error_of([&] { (void)gpt::config_from_file(block, {}, {}); }) ==
        fmt::format("gpt::config_from_file: '{}' has no 2-D tensor 'wte.weight' (nor 'transformer.wte.weight'); is it "
                    "a GPT-2?",
                    block));
  const std::string missing = "/nonexistent/gpt2.safetensors";
  CHECK(error_of([&] { (void)gpt::config_from_file(missing, {}, {}); }).starts_with("gpt::config_from_file: "));
  px::test::TempDir dir;
  const auto no_blocks = dir / "no_blocks.safetensors";
  ck::SafetensorsWriter()
      .add("wte.weight", std::vector<float>(8), px::Shape{4, 2})
      .add("wpe.weight", std::vector<float>(6), px::Shape{3, 2})
      .write(no_blocks);
  CHECK(error_of([&] { (void)gpt::config_from_file(no_blocks.string(), {}, {}); }) ==
        fmt::format("gpt::config_from_file: '{}' has no blocks (no tensor 'h.0.ln_1.weight')", no_blocks.string()));
  const auto other_dims = dir / "other_dims.safetensors";
  ck::SafetensorsWriter()
      .add("wte.weight", std::vector<float>(8), px::Shape{4, 2})
      .add("wpe.weight", std::vector<float>(9), px::Shape{3, 3})
      .write(other_dims);
  CHECK(error_of([&] { (void)gpt::config_from_file(other_dims.string(), {}, {}); }) ==
        fmt::format("gpt::config_from_file: '{}' has wte.weight [4, 2] and wpe.weight [3, 3], of different dims",
                    other_dims.string()));
}

TEST_CASE("gpt: a weights file with a tensor of the wrong shape fails on every rank of 2x2x2",
          "[gpt][checkpoint][errors]") {
  px::test::TempDir dir;
  const auto path = dir / "bad.safetensors";
  write_altered(path, "transformer.h.1.mlp.c_fc.weight", px::Shape{24, 95});
  const gpt::Config c = gpt::config_from_file(path.string(), {.heads = 4}, {});  // the sizes it reads are fine
  using Mesh = px::DeviceMesh<2, 2, 2>;
  check_every_rank(errors_on_ranks(8,
                                   [&](px::Rank<B>& rank) {
                                     Mesh mesh(rank);
                                     gpt::Pipeline<pp::OneFOneB, Mesh, B, float> pipeline(
                                         mesh, gpt::make_chunks<pp::OneFOneB, B, float>(mesh, c), {.microbatches = 2});
                                     ck::load(mesh, pipeline.parameters(), path, gpt::hf_names());
                                   }),
                   fmt::format("checkpoint::load: tensor 'transformer.h.1.mlp.c_fc.weight' in '{}' is [24, 95], but "
                               "parameter 'h.1.mlp.fc.weight' needs [24, 96] (its [96, 24] transposed)",
                               path.string()));
}
