// 02_tensor_parallel_mlp — a Megatron-style tensor-parallel MLP on N CPU-thread ranks, checked against the same MLP
// on one rank. fc's output features and proj's input features are split over TP, so each rank holds 1/N of the
// weights and of the hidden activations; one all-reduce in forward and one in backward join the partial results.
// Run: ./build/examples/02_tensor_parallel_mlp/tensor_parallel_mlp [--tp 2]
#include <parallax/parallax.hpp>
#include <parallax/nn/gelu.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/tp/gather.hpp>
#include <parallax/tp/parallel_mlp.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace px = parallax;
using B = px::host::Backend;
using Mesh = px::DeviceMesh<1, 1, px::dynamic>;  // TP = the number of ranks
using Tensor = px::Tensor<float, B::Memory>;

constexpr std::int64_t seq = 8, batch = 2, dim = 64, hidden = 256;
constexpr std::uint64_t seed = 7;  // the same seed and names give the same weights on any number of ranks

// max |a - b| / max |b|
double relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(double(a[i]) - double(b[i])));
    scale = std::max(scale, std::abs(double(b[i])));
  }
  return diff / scale;
}

int main(int argc, char** argv) {
  int tp = 2;
  if (argc == 3 && std::string(argv[1]) == "--tp") tp = std::atoi(argv[2]);
  if ((argc != 1 && argc != 3) || tp < 1) {
    std::fprintf(stderr, "usage: %s [--tp N]\n", argv[0]);
    return 2;
  }
  std::vector<std::string> lines(static_cast<std::size_t>(tp));  // one per rank, printed in rank order
  std::string summary;  // rank 0's comparison with the single-rank reference
  double worst = 0;
  try {
    px::launch<B>(tp, [&](px::Rank<B>& rank) {
      Mesh mesh(rank);
      px::tp::ParallelMLP<Mesh, B, float> mlp(mesh, dim, hidden, {.seed = seed, .name = "mlp"});

      // The same input x and upstream gradient dy on every rank, [T, B, D] (sequence first).
      auto input = [&](std::uint64_t s) {
        Tensor t(rank.allocator(), {seq, batch, dim}, px::MemoryCategory::workspace);
        px::init::fill(t.view(), px::init::normal(1.f, s));
        return t;
      };
      const Tensor x = input(1), dy = input(2);

      decltype(mlp)::Ctx ctx;  // what this microbatch's forward saved for its backward
      Tensor y = mlp.forward(ctx, x.cview());  // fc -> GELU on this rank's hidden features -> proj -> all-reduce
      const auto y_tp = px::to_vector(y.cview());
      y.reset();
      const auto saved = rank.memory().live(px::MemoryCategory::activations);
      Tensor dx = mlp.backward_input(ctx, dy.cview());  // proj -> GELU -> fc -> all-reduce of dx
      mlp.backward_weight(ctx);                          // accumulates this rank's shard of every gradient

      std::string line = fmt::format("rank {}:", rank.id());
      std::vector<std::vector<float>> grads;  // the full gradients, gathered over TP (every rank takes part)
      for (auto* p : mlp.parameters()) {
        line += fmt::format("  {} {}", p->name(), p->shape());
        grads.push_back(px::tp::gather_gradient(mesh, *p));
      }
      line += fmt::format("\n        saved activations after forward: {} bytes", saved);

      if (rank.id() == 0) {
        // The single-rank reference: the same layers, names and seed, so it holds the unsharded weights.
        px::nn::Sequential ref("mlp", px::nn::Linear<B, float>(rank, dim, hidden, {.seed = seed, .name = "mlp.fc"}),
                               px::nn::GELU<B, float>(rank, "mlp.gelu"),
                               px::nn::Linear<B, float>(rank, hidden, dim, {.seed = seed, .name = "mlp.proj"}));
        const auto before = rank.memory().live(px::MemoryCategory::activations);
        decltype(ref)::Ctx rctx;
        Tensor ry = ref.forward(rctx, x.cview());
        const auto y_ref = px::to_vector(ry.cview());
        ry.reset();
        const auto ref_saved = rank.memory().live(px::MemoryCategory::activations) - before;
        Tensor rdx = ref.backward_input(rctx, dy.cview());
        ref.backward_weight(rctx);

        const double y_diff = relative_difference(y_tp, y_ref);
        const double dx_diff = relative_difference(px::to_vector(dx.cview()), px::to_vector(rdx.cview()));
        double grad_diff = 0;
        const auto params = ref.parameters();
        for (std::size_t i = 0; i < params.size(); ++i)
          grad_diff = std::max(grad_diff, relative_difference(grads[i], px::to_vector(params[i]->grad())));
        worst = std::max({y_diff, dx_diff, grad_diff});
        summary = fmt::format("single-rank reference: saved activations {} bytes\nmax relative difference, TP {} vs "
                              "one rank: y {:.1e}, dx {:.1e}, gathered gradients {:.1e}",
                              ref_saved, tp, y_diff, dx_diff, grad_diff);
      }
      lines[static_cast<std::size_t>(rank.id())] = line;
    });
  } catch (const px::Error& e) {  // e.g. --tp 3: "... features 256 are not divisible by TP 3"
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  for (const auto& line : lines) std::puts(line.c_str());
  std::puts(summary.c_str());
  const bool equal = worst <= 1e-5;
  std::printf("TP output and gradients equal the single-rank ones (within 1e-5): %s\n", equal ? "yes" : "NO");
  return equal ? 0 : 1;
}
