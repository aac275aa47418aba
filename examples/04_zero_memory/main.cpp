// 04_zero_memory — what each ZeRO stage keeps per rank. A model of about P parameters (bf16) trained one step
// with AdamW (fp32 master weights and moments) on N data-parallel CPU-thread ranks, once per stage; each rank's
// allocator figures next to the ZeRO paper's formulas: 16P, 4P + 12P/N, 2P + 14P/N, 16P/N bytes.
// Run: ./build/examples/04_zero_memory/zero_memory [P = 2000000] [N = 4]
#include <parallax/parallax.hpp>
#include <parallax/optim/adam.hpp>
#include <parallax/optim/sharded_optimizer.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace px = parallax;
using B = px::host::Backend;
using Mesh = px::DeviceMesh<px::dynamic, 1, 1>;  // DP = the number of ranks
using Fc = px::nn::Linear<B, px::bf16>;
using Category = px::MemoryCategory;

namespace {

constexpr int layers = 4;

struct Figures {
  std::size_t parameters = 0, gradients = 0, optimizer = 0, communication_peak = 0, gathered_peak = 0;
  std::int64_t padding = 0;
};

//! Bytes the ZeRO paper gives per rank for p parameters on n ranks (2-byte parameters and gradients, 12 bytes of
//! fp32 Adam state per parameter).
double formula(int stage, double p, int n) {
  const double by_stage[] = {16 * p, 4 * p + 12 * p / n, 2 * p + 14 * p / n, 16 * p / n};
  return by_stage[stage];
}

//! One training step of `layers` Linear(dim, dim) layers under ZeRO stage Z on n ranks; rank 0's figures.
template <class Z>
Figures run(std::int64_t dim, int n) {
  Figures f;
  px::launch<B>(n, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    std::vector<Fc> model;
    model.reserve(layers);
    for (int l = 0; l < layers; ++l)
      model.emplace_back(rank, dim, dim, px::nn::LinearOptions{.name = fmt::format("l{}", l)});
    px::nn::ParameterList<px::bf16, B::Memory> params;
    for (auto& fc : model) px::nn::append(params, fc.parameters());
    px::ShardedOptimizer<px::optim::AdamW, Z, Mesh, B> opt(mesh, params, {.lr = 1e-3f}, {.bucket_bytes = 1 << 20});
    rank.memory().reset_peaks();

    px::Tensor<px::bf16, B::Memory> x(rank.allocator(), {8, dim}, Category::workspace);
    px::init::fill(x.view(), px::init::normal(1.f, 1 + static_cast<std::uint64_t>(rank.id())));
    std::vector<Fc::Ctx> ctx(layers);
    px::Tensor<px::bf16, B::Memory> h;
    for (std::size_t l = 0; l < model.size(); ++l) h = model[l].forward(ctx[l], l == 0 ? x.cview() : h.cview());
    for (std::size_t l = model.size(); l-- > 0;) {
      h = model[l].backward_input(ctx[l], h.cview());
      model[l].backward_weight(ctx[l]);
    }
    (void)opt.step();

    if (rank.id() != 0) return;
    const auto& m = rank.memory();
    f = {m.live(Category::parameters),    m.live(Category::gradients),           m.live(Category::optimizer),
         m.peak(Category::communication), m.peak(Category::gathered_parameters), opt.footprint().padding};
  });
  return f;
}

std::string mib(double bytes) { return fmt::format("{:.2f}", bytes / (1 << 20)); }

}  // namespace

int main(int argc, char** argv) {
  const long long wanted = argc > 1 ? std::atoll(argv[1]) : 2000000;
  const int n = argc > 2 ? std::atoi(argv[2]) : 4;
  if (wanted < 8 || n < 1) {
    std::fprintf(stderr, "usage: zero_memory [P >= 8 parameters] [N >= 1 ranks]\n");
    return 2;
  }
  // layers x (dim^2 + dim) parameters, as close to P as the layer shape allows.
  const auto dim = static_cast<std::int64_t>(std::sqrt(static_cast<double>(wanted) / layers));
  const std::int64_t p = layers * (dim * dim + dim);
  fmt::print(
      "ZeRO memory per rank: P = {} parameters ({} x Linear({}, {})), bf16 parameters and gradients, AdamW "
      "state in fp32, N = {} ranks\n\n",
      p, layers, dim, dim, n);
  fmt::print("{:<8} {:>11} {:>10} {:>10} {:>10} {:>12} {:>14} {:>8} {:>10} {:>12}\n", "stage", "params MiB",
             "grads MiB", "optim MiB", "total MiB", "formula", "formula MiB", "padding", "comm peak", "gathered peak");
  const char* formulas[] = {"16P", "4P + 12P/N", "2P + 14P/N", "16P/N"};
  const Figures figures[] = {run<px::Zero<0>>(dim, n), run<px::Zero<1>>(dim, n), run<px::Zero<2>>(dim, n),
                             run<px::Zero<3>>(dim, n)};
  for (int s = 0; s < 4; ++s) {
    const Figures& f = figures[s];
    const double total = static_cast<double>(f.parameters + f.gradients + f.optimizer);
    fmt::print("{:<8} {:>11} {:>10} {:>10} {:>10} {:>12} {:>14} {:>8} {:>10} {:>12}\n", fmt::format("Zero<{}>", s),
               mib(double(f.parameters)), mib(double(f.gradients)), mib(double(f.optimizer)), mib(total), formulas[s],
               mib(formula(s, double(p), n)), f.padding, mib(double(f.communication_peak)),
               mib(double(f.gathered_peak)));
  }
  fmt::print(
      "\npadding: elements added so every bucket splits into N equal slices (zeros, counted in every buffer).\n"
      "comm peak: gradient buckets in flight (sharded gradients); gathered peak: ZeRO-3's transient full\n"
      "parameters (two buckets at most). Neither is kept between steps.\n");
}
