// checkpoint::save / load: a toy two-stage model saved from TP = 2, PP x TP = 2 x 2 and DP x PP x TP = 2 x 2 x 2,
// loaded on one rank, TP = 4 and PP x TP = 2 x 2 with identical gathered values; transposed and tied mappings,
// bf16 files and parameters; every error thrown alike on every rank.
#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <parallax/backend/host/backend.hpp>
#include <parallax/checkpoint/checkpoint.hpp>
#include <parallax/comm/launch.hpp>

#include "temp_dir.hpp"

namespace px = parallax;
namespace ck = parallax::checkpoint;
using px::Shape;

namespace {

using B = px::host::Backend;
using Mem = px::host::Memory;
using Values = std::map<std::string, std::vector<float>>;  // parameter name -> full tensor

// A parameter of the toy model: split over TP along `dim` in `blocks` blocks, or replicated (dim < 0).
struct Def {
  std::string name;
  Shape global;
  int dim = -1;
  int blocks = 1;
};

// The parameters of pipeline stage 0 or 1; both stages' when `stage` is -1 (a mesh without PP).
std::vector<Def> defs(int stage = -1) {
  const std::vector<Def> first{{"embed.weight", Shape{16, 8}, 0},
                               {"h.0.qkv.weight", Shape{24, 8}, 0, 3},
                               {"h.0.proj.weight", Shape{8, 8}, 1},
                               {"h.0.ln.bias", Shape{8}}};
  const std::vector<Def> second{{"h.1.fc.weight", Shape{16, 8}, 0},
                                {"h.1.fc.bias", Shape{16}, 0},
                                {"h.1.proj.weight", Shape{8, 16}, 1},
                                {"ln_f.weight", Shape{8}}};
  if (stage == 0) return first;
  if (stage == 1) return second;
  auto all = first;
  all.insert(all.end(), second.begin(), second.end());
  return all;
}

std::uint64_t seed_of(const std::string& name) { return px::nn::seed_for(7, name); }

// This rank's shards of the parameters `ds`, drawn from their names (`init`) or zero.
template <class T>
struct Params {
  std::vector<std::unique_ptr<px::nn::Parameter<T, Mem>>> owned;
  px::nn::ParameterList<T, Mem> list;

  template <class Mesh>
  Params(Mesh& mesh, const std::vector<Def>& ds, bool init) {
    auto& rank = px::mesh_rank<B>(mesh);
    for (const auto& d : ds) {
      auto spec = d.dim < 0 ? px::nn::ShardSpec::replicated(d.name, d.global)
                            : px::nn::ShardSpec::split(d.name, d.global, px::Axis::tp, d.dim, mesh.tp_size(),
                                                       mesh.tp_rank(), d.blocks);
      owned.push_back(std::make_unique<px::nn::Parameter<T, Mem>>(rank.allocator(), spec));
      if (init) px::nn::init_shard(owned.back()->value(), spec, px::init::uniform(-1.f, 1.f, seed_of(d.name)));
      list.push_back(owned.back().get());
    }
  }
};

// The full tensors the parameters `ds` are drawn as, stored as T.
template <class T>
Values reference(const std::vector<Def>& ds) {
  Values out;
  for (const auto& d : ds) {
    std::vector<T> v(static_cast<std::size_t>(d.global.numel()));
    px::init::fill(px::View<T, Mem>(v.data(), d.global), px::init::uniform(-1.f, 1.f, seed_of(d.name)));
    out[d.name] = std::vector<float>(v.begin(), v.end());
  }
  return out;
}

// This stage's parameters on `mesh`.
template <class Mesh>
std::vector<Def> stage_defs(const Mesh& mesh) {
  return mesh.pp_size() == 1 ? defs() : defs(mesh.pp_rank());
}

// Saves the drawn toy model from a `Mesh` of `n` ranks.
template <class Mesh, class T = float>
void save_from(int n, const std::filesystem::path& path, const ck::TensorMap& map = {}, const ck::SaveOptions& o = {}) {
  px::launch<B>(n, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    Params<T> p(mesh, stage_defs(mesh), true);
    ck::save(mesh, p.list, path, map, o);
  });
}

// Loads the toy model (starting from zeros) on a `Mesh` of `n` ranks; returns every parameter's gathered full
// tensor, checking that every rank holding it gathered the same.
template <class Mesh, class T = float>
Values load_on(int n, const std::filesystem::path& path, const ck::TensorMap& map = {}) {
  std::vector<Values> by_rank(static_cast<std::size_t>(n));
  px::launch<B>(n, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    Params<T> p(mesh, stage_defs(mesh), false);
    ck::load(mesh, p.list, path, map);
    for (auto* q : p.list) {
      const auto full = px::tp::gather_parameter(mesh, *q);
      by_rank[static_cast<std::size_t>(rank.id())][q->name()] = std::vector<float>(full.begin(), full.end());
    }
  });
  Values all;
  for (const auto& values : by_rank)
    for (const auto& [name, v] : values) {
      const auto [it, fresh] = all.emplace(name, v);
      if (!fresh) CHECK(it->second == v);
    }
  return all;
}

// The message every rank of `n` threw from `f(mesh, rank)`, checked to be the same on all ranks.
template <class Mesh, class F>
std::string error_everywhere(int n, F&& f) {
  std::vector<std::string> msgs(static_cast<std::size_t>(n), "(no error)");
  px::launch<B>(n, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    try {
      f(mesh);
    } catch (const px::Error& e) {
      msgs[static_cast<std::size_t>(rank.id())] = e.what();
    }
  });
  for (const auto& m : msgs) CHECK(m == msgs[0]);
  return msgs[0];
}

// The identity map, except that `parameter` is tied to `tensor`.
ck::TensorMap tie(std::string parameter, std::string tensor) {
  return {.rule = [=](std::string_view p) {
    return std::optional(p == parameter ? ck::Mapping{.tensor = tensor, .tied = true} : ck::Mapping{std::string(p)});
  }};
}

using One = px::DeviceMesh<1, 1, 1>;
using Tp = px::DeviceMesh<1, 1, px::dynamic>;
using PpTp = px::DeviceMesh<1, 2, 2>;
using DpPpTp = px::DeviceMesh<2, 2, 2>;

}  // namespace

TEST_CASE("checkpoint: saved from TP 2, PP x TP and DP x PP x TP, loaded on any mesh, gives the same tensors",
          "[checkpoint][save][load]") {
  px::test::TempDir dir;
  const auto want = reference<float>(defs());
  const auto tp2 = dir / "tp2.safetensors", pptp = dir / "pptp.safetensors", dpptp = dir / "dpptp.safetensors";
  save_from<Tp>(2, tp2);
  save_from<PpTp>(4, pptp);
  save_from<DpPpTp>(8, dpptp);

  // The file holds every full tensor as F32, whatever wrote it, and the temporary file is gone.
  for (const auto& path : {tp2, pptp, dpptp}) {
    INFO(path.string());
    const auto f = ck::SafetensorsFile::open(path);
    CHECK(f.tensors().size() == want.size());
    CHECK(f.metadata("format") == "pt");
    for (const auto& [name, v] : want) {
      CHECK(f.info(name).dtype == px::DType::f32);
      CHECK(f.read<float>(name) == v);
    }
    CHECK_FALSE(std::filesystem::exists(path.string() + ".tmp"));
  }
  CHECK(px::test::read_file(pptp) == px::test::read_file(tp2));
  CHECK(px::test::read_file(dpptp) == px::test::read_file(tp2));

  CHECK(load_on<One>(1, dpptp) == want);
  CHECK(load_on<Tp>(4, dpptp) == want);
  CHECK(load_on<Tp>(2, pptp) == want);
  CHECK(load_on<PpTp>(4, tp2) == want);
  CHECK(load_on<DpPpTp>(8, tp2) == want);
}

TEST_CASE("checkpoint: a transposed mapping stores [in, out] and reads back; unmapped parameters stay",
          "[checkpoint][map]") {
  px::test::TempDir dir;
  const auto path = dir / "t.safetensors";
  // Hugging Face style: h.0.proj.weight stored transposed as h.0.c_proj.weight; h.0.ln.bias not in the file.
  const ck::TensorMap map{.rule = [](std::string_view p) -> std::optional<ck::Mapping> {
    if (p == "h.0.proj.weight") return ck::Mapping{.tensor = "h.0.c_proj.weight", .transpose = true};
    if (p == "h.0.ln.bias") return std::nullopt;
    return ck::Mapping{std::string(p)};
  }};
  save_from<PpTp>(4, path, map);
  const auto want = reference<float>(defs());
  const auto f = ck::SafetensorsFile::open(path);
  CHECK_FALSE(f.contains("h.0.proj.weight"));
  CHECK_FALSE(f.contains("h.0.ln.bias"));
  REQUIRE(f.contains("h.0.c_proj.weight"));
  CHECK(f.info("h.0.c_proj.weight").shape == Shape{8, 8});
  const auto stored = f.read<float>("h.0.c_proj.weight");
  const auto& w = want.at("h.0.proj.weight");
  for (int r = 0; r < 8; ++r)
    for (int c = 0; c < 8; ++c)
      CHECK(stored[static_cast<std::size_t>(c * 8 + r)] == w[static_cast<std::size_t>(r * 8 + c)]);

  auto got = load_on<Tp>(4, path, map);
  CHECK(got.at("h.0.ln.bias") == std::vector<float>(8, 0.f));  // not in the file: untouched
  got.erase("h.0.ln.bias");
  auto rest = want;
  rest.erase("h.0.ln.bias");
  CHECK(got == rest);
}

TEST_CASE("checkpoint: a prefix on the file's names is accepted", "[checkpoint][map]") {
  px::test::TempDir dir;
  const auto path = dir / "p.safetensors";
  save_from<Tp>(2, path, {.rule = [](std::string_view p) {
    return std::optional(ck::Mapping{"transformer." + std::string(p)});
  }});
  CHECK(ck::SafetensorsFile::open(path).contains("transformer.embed.weight"));
  CHECK(load_on<Tp>(2, path, {.optional_prefix = "transformer."}) == reference<float>(defs()));
}

TEST_CASE("checkpoint: a tied parameter is not saved and loads its owner's tensor", "[checkpoint][map]") {
  px::test::TempDir dir;
  const auto path = dir / "tied.safetensors";
  // h.1.fc.weight [16, 8] shares embed.weight (stage 0) across the pipeline, as a tied LM head does.
  const auto tied = tie("h.1.fc.weight", "embed.weight");
  save_from<PpTp>(4, path, tied);
  const auto f = ck::SafetensorsFile::open(path);
  CHECK(f.tensors().size() == defs().size() - 1);
  CHECK_FALSE(f.contains("h.1.fc.weight"));
  auto want = reference<float>(defs());
  want["h.1.fc.weight"] = want.at("embed.weight");
  CHECK(load_on<PpTp>(4, path, tied) == want);
}

TEST_CASE("checkpoint: bf16 files from fp32 parameters, and bf16 parameters", "[checkpoint][bf16]") {
  px::test::TempDir dir;
  const auto f32 = dir / "f32.safetensors", b16 = dir / "b16.safetensors", from_b16 = dir / "from_b16.safetensors";
  save_from<Tp>(2, f32);
  save_from<PpTp>(4, b16, {}, {.dtype = px::DType::bf16, .metadata = {{"step", "10"}, {"format", "parallax"}}});
  save_from<Tp, px::bf16>(2, from_b16);

  const auto rounded = reference<px::bf16>(defs());
  const auto f = ck::SafetensorsFile::open(b16);
  CHECK(f.metadata("step") == "10");
  CHECK(f.metadata("format") == "parallax");
  for (const auto& [name, v] : rounded) {
    CHECK(f.info(name).dtype == px::DType::bf16);
    CHECK(f.read<float>(name) == v);
  }
  CHECK(load_on<Tp>(4, b16) == rounded);            // bf16 file -> fp32 parameters: exact
  CHECK(load_on<Tp, px::bf16>(2, f32) == rounded);  // fp32 file -> bf16 parameters: rounded once
  CHECK(load_on<One>(1, from_b16) == rounded);      // bf16 parameters saved as F32: exact
  CHECK(ck::SafetensorsFile::open(from_b16).info("embed.weight").dtype == px::DType::f32);
}

TEST_CASE("checkpoint: load errors are thrown alike on every rank and change nothing", "[checkpoint][errors]") {
  px::test::TempDir dir;
  const auto good = dir / "good.safetensors";
  save_from<Tp>(2, good);
  const std::string bytes = px::test::read_file(good);

  // Loads on PP x TP = 2 x 2 (each stage has different parameters) and reports the error; the parameters must
  // still be zero on every rank.
  const auto load_error = [&](const std::filesystem::path& path, const ck::TensorMap& map = {}) {
    return error_everywhere<PpTp>(4, [&](PpTp& mesh) {
      Params<float> p(mesh, stage_defs(mesh), false);
      try {
        ck::load(mesh, p.list, path, map);
      } catch (...) {
        for (auto* q : p.list)
          for (float v : px::to_vector(q->value()))
            if (v != 0.f) throw px::Error("a failed load changed a parameter");
        throw;
      }
    });
  };

  SECTION("missing file") {
    const auto msg = load_error(dir / "none.safetensors");
    CHECK_THAT(msg, Catch::StartsWith("checkpoint::load: SafetensorsFile::open: cannot open"));
    CHECK_THAT(msg, Catch::Contains("none.safetensors' (no such file)"));
  }
  SECTION("truncated file") {
    const auto path = dir.write("cut.safetensors", bytes.substr(0, bytes.size() - 100));
    const auto msg = load_error(path);
    CHECK_THAT(msg, Catch::StartsWith("checkpoint::load: SafetensorsFile::open: '"));
    CHECK_THAT(msg, Catch::Contains("are outside the"));
    const auto header_cut = dir.write("cut2.safetensors", bytes.substr(0, 20));
    CHECK_THAT(load_error(header_cut), Catch::Contains("exceeds the 12 bytes after it"));
  }
  SECTION("a tensor the file lacks, only on stage 1: every rank still throws, naming it and listing some names") {
    const auto msg = load_error(good, {.rule = [](std::string_view p) {
      return std::optional(ck::Mapping{p == "ln_f.weight" ? "ln_f.gamma" : std::string(p)});
    }});
    CHECK_THAT(msg, Catch::StartsWith("checkpoint::load: parameter 'ln_f.weight' needs tensor 'ln_f.gamma': "
                                      "SafetensorsFile '"));
    CHECK_THAT(msg, Catch::Contains("no tensor 'ln_f.gamma' (has 'embed.weight', 'h.0.ln.bias', 'h.0.proj.weight', "
                                    "'h.0.qkv.weight', 'h.1.fc.bias', ... (8 in all))"));
    CHECK_THAT(msg, Catch::EndsWith("(rank 2)"));  // the first rank of stage 1 found it
    const auto prefixed = load_error(good, {.rule = [](std::string_view p) {
      return std::optional(ck::Mapping{p == "embed.weight" ? "wte.weight" : std::string(p)});
    }, .optional_prefix = "transformer."});
    CHECK_THAT(prefixed, Catch::StartsWith("checkpoint::load: parameter 'embed.weight' needs tensor 'wte.weight' or "
                                           "'transformer.wte.weight': "));
  }
  SECTION("wrong shapes") {
    px::checkpoint::SafetensorsWriter w;
    const auto f = ck::SafetensorsFile::open(good);
    for (const auto& t : f.tensors())
      w.add(t.name, f.read<float>(t.name), t.name == "h.1.proj.weight" ? Shape{16, 8} : t.shape);
    w.write(dir / "shapes.safetensors");
    const auto msg = load_error(dir / "shapes.safetensors");
    CHECK_THAT(msg, Catch::StartsWith("checkpoint::load: tensor 'h.1.proj.weight' in '"));
    CHECK_THAT(msg, Catch::EndsWith("shapes.safetensors' is [16, 8], but parameter 'h.1.proj.weight' needs [8, 16] "
                                    "(rank 2)"));
    const auto transposed = load_error(good, {.rule = [](std::string_view p) {
      return std::optional(ck::Mapping{std::string(p), p == "h.1.proj.weight"});
    }});
    CHECK_THAT(transposed, Catch::EndsWith("is [8, 16], but parameter 'h.1.proj.weight' needs [16, 8] (its [8, 16] "
                                           "transposed) (rank 2)"));
    const auto vector = load_error(good, {.rule = [](std::string_view p) {
      return std::optional(ck::Mapping{std::string(p), p == "h.0.ln.bias"});
    }});
    CHECK(vector == "checkpoint: parameter 'h.0.ln.bias' [8] is mapped transposed, but only 2-D tensors transpose "
                    "(rank 0)");
  }
}

TEST_CASE("checkpoint: save errors are thrown alike on every rank", "[checkpoint][errors]") {
  px::test::TempDir dir;
  const auto save_error = [&](const std::filesystem::path& path, const ck::TensorMap& map = {},
                              const ck::SaveOptions& o = {}) {
    return error_everywhere<PpTp>(4, [&](PpTp& mesh) {
      Params<float> p(mesh, stage_defs(mesh), true);
      ck::save(mesh, p.list, path, map, o);
    });
  };
  const auto path = dir / "x.safetensors";

  CHECK_THAT(save_error(dir / "no" / "such" / "dir.safetensors"),
             Catch::StartsWith("checkpoint::save: cannot write '") &&
                 Catch::Contains("dir.safetensors': SafetensorsWriter::write: cannot open '") &&
                 Catch::EndsWith("(rank 0)"));
  // Two parameters of different stages map to one tensor; a tie to a tensor nobody saves.
  const auto same = save_error(path, {.rule = [](std::string_view p) {
    return std::optional(ck::Mapping{p == "ln_f.weight" ? "h.0.ln.bias" : std::string(p)});
  }});
  CHECK(same == "checkpoint::save: parameters 'h.0.ln.bias' and 'ln_f.weight' both map to tensor 'h.0.ln.bias' (mark "
                "one tied) (rank 0)");
  const auto dangling = save_error(path, tie("ln_f.weight", "lm_head.weight"));
  CHECK(dangling == "checkpoint::save: parameter 'ln_f.weight' is tied to tensor 'lm_head.weight', which no parameter "
                    "saves (rank 0)");
  const auto valid_tie = save_error(path, tie("ln_f.weight", "h.0.ln.bias"));
  CHECK(valid_tie == "(no error)");  // the same shape [8]
  const auto bad_tie = save_error(path, tie("h.1.fc.bias", "h.0.ln.bias"));
  CHECK(bad_tie == "checkpoint::save: parameter 'h.1.fc.bias' [16] is tied to tensor 'h.0.ln.bias', saved by "
                   "'h.0.ln.bias' as [8] (rank 0)");
  // Errors found before any data moves, on one stage only.
  CHECK(save_error(path, {.rule = [](std::string_view p) {
          return std::optional(ck::Mapping{std::string(p), p == "h.1.fc.bias"});
        }}) == "checkpoint: parameter 'h.1.fc.bias' [16] is mapped transposed, but only 2-D tensors transpose "
               "(rank 2)");
  CHECK(save_error(path, {.rule = [](std::string_view p) {
          if (p == "ln_f.weight") throw std::runtime_error("no name for ln_f.weight");
          return std::optional(ck::Mapping{std::string(p)});
        }}) == "no name for ln_f.weight (rank 2)");
  CHECK(save_error(path, {}, {.dtype = px::DType::i32}) ==
        "checkpoint::save: file dtype int32 is not f32, bf16 or f16 (rank 0)");
  CHECK_FALSE(std::filesystem::exists(dir / "x.safetensors.tmp"));
}
