// The CUDA optimizer kernels (detail/optimizer_kernels.cuh), run by the SIMT emulator with the launcher's geometry,
// against host::Optimizer over a few steps: SGD plain, with L2 weight decay, with momentum and dampening, Nesterov
// with a gradient scale; Adam without and with L2 weight decay, and AdamW. Gradients fp32 and bf16. The kernels
// promise the host's per-element fp32 update (each operation rounded once), so weights and state agree bitwise.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <parallax/backend/cuda/detail/elementwise_kernels.cuh>
#include <parallax/backend/cuda/detail/optimizer_kernels.cuh>
#include <parallax/backend/host/optimizer.hpp>
#include <parallax/core/bf16.hpp>

#include "support.hpp"

namespace {

namespace px = parallax;
namespace cd = parallax::cuda::detail;
namespace simt = parallax::simt;
using px::test::bit_differences;
using px::test::cview;
using px::test::emulated::Buffer;
using px::test::emulated::sm_count;
using px::test::values;
using px::test::view;
using i64 = std::int64_t;

constexpr int steps = 2;

//! Element counts: one, below a block, and more than the 32 blocks' threads of the emulated GPU's elementwise grid
//! (not a multiple of them: the grid-stride loop wraps for some threads only).
constexpr i64 sizes[] = {1, 37, 9000};

template <class G>
void check_sgd(i64 n, const px::SgdArgs& args) {
  INFO("n " << n << ", momentum " << args.momentum << ", dampening " << args.dampening << ", weight decay "
            << args.weight_decay << (args.nesterov ? ", Nesterov" : "") << ", grad scale " << args.grad_scale);
  const bool with_buffer = args.momentum != 0.f;
  std::vector<float> w = values<float>(n, 1, 2.f), buf = with_buffer ? values<float>(n, 2) : std::vector<float>{};
  Buffer<float> bw(w), bbuf(buf);
  const px::host::Context ctx;
  for (int step = 0; step < steps; ++step) {
    const std::vector<G> g = values<G>(n, static_cast<std::uint64_t>(10 + step), 3.f);
    px::host::Optimizer::sgd_step(ctx, args, view(w), cview(g), view(buf));
    Buffer<G> bg(g);
    simt::launch("sgd_step", cd::sgd_step_kernel<G>, dim3(cd::elementwise_blocks(n, sm_count)),
                 dim3(cd::elementwise_threads), 0, args, bw.data(), bg.data(), with_buffer ? bbuf.data() : nullptr, n);
  }
  CHECK(bit_differences(bw.values(), w) == 0);
  CHECK(bit_differences(bbuf.values(), buf) == 0);
  CHECK((bw.guards_intact() && bbuf.guards_intact()));
}

//! Steps 1, 2, ... from zero moments, with the bias corrections optim::Adam passes at each.
template <class G>
void check_adam(i64 n, px::AdamArgs args) {
  INFO("n " << n << ", weight decay " << args.weight_decay << (args.decoupled ? " (AdamW)" : " (L2)")
            << ", grad scale " << args.grad_scale);
  std::vector<float> w = values<float>(n, 3, 2.f), m(w.size(), 0.f), v(w.size(), 0.f);
  Buffer<float> bw(w), bm(m), bv(v);
  const px::host::Context ctx;
  for (int step = 1; step <= steps; ++step) {
    args.bias_correction1 = 1.f - std::pow(args.beta1, float(step));
    args.bias_correction2 = 1.f - std::pow(args.beta2, float(step));
    const std::vector<G> g = values<G>(n, static_cast<std::uint64_t>(20 + step), 3.f);
    px::host::Optimizer::adam_step(ctx, args, view(w), cview(g), view(m), view(v));
    Buffer<G> bg(g);
    simt::launch("adam_step", cd::adam_step_kernel<G>, dim3(cd::elementwise_blocks(n, sm_count)),
                 dim3(cd::elementwise_threads), 0, args, bw.data(), bg.data(), bm.data(), bv.data(), n);
  }
  CHECK(bit_differences(bw.values(), w) == 0);
  CHECK(bit_differences(bm.values(), m) == 0);
  CHECK(bit_differences(bv.values(), v) == 0);
  CHECK((bw.guards_intact() && bm.guards_intact() && bv.guards_intact()));
}

}  // namespace

TEMPLATE_TEST_CASE("emulated CUDA SGD step equals host::Optimizer::sgd_step", "[simt][optimizer]", float, px::bf16) {
  const px::SgdArgs cases[] = {
      {.lr = 0.1f},
      {.lr = 0.1f, .weight_decay = 0.02f},
      {.lr = 0.05f, .momentum = 0.9f, .dampening = 0.1f, .weight_decay = 0.01f},
      {.lr = 0.05f, .momentum = 0.9f, .weight_decay = 0.01f, .nesterov = true, .grad_scale = 0.5f},
  };
  for (const i64 n : sizes)
    for (const px::SgdArgs& args : cases) check_sgd<TestType>(n, args);
}

TEMPLATE_TEST_CASE("emulated CUDA Adam step equals host::Optimizer::adam_step", "[simt][optimizer]", float,
                   px::bf16) {
  const px::AdamArgs cases[] = {
      {.lr = 1e-3f},
      {.lr = 1e-3f, .weight_decay = 0.01f, .grad_scale = 0.25f},
      {.lr = 1e-3f, .weight_decay = 0.1f, .decoupled = true},
  };
  for (const i64 n : sizes)
    for (const px::AdamArgs& args : cases) check_adam<TestType>(n, args);
}
