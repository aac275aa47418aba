// tests/optim/sharded.hpp — the tiny model, the data and the single-rank reference training of the
// ShardedOptimizer tests.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include <parallax/backend/host/backend.hpp>
#include <parallax/comm/launch.hpp>
#include <parallax/core/bf16.hpp>
#include <parallax/core/fp16.hpp>
#include <parallax/mesh/device_mesh.hpp>
#include <parallax/nn/gelu.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/optim/adam.hpp>
#include <parallax/optim/sgd.hpp>
#include <parallax/optim/sharded_optimizer.hpp>

#include "../support/gradcheck.hpp"
#include "../support/support.hpp"

namespace parallax::test::sharded {

using B = host::Backend;
using Mem = host::Memory;
//! DP from the world size.
using Mesh = DeviceMesh<dynamic, 1, 1>;

template <class T>
using Mlp = nn::Sequential<nn::Linear<B, T>, nn::GELU<B, T>, nn::Linear<B, T>>;

//! fc1 [7, 5] + [7], fc2 [3, 7] + [3]: 66 parameters. Buckets of 40 elements hold {fc1.weight} and
//! {fc1.bias, fc2.weight, fc2.bias} (35 and 31 elements: one element of padding each over 2 or 4 ranks).
inline constexpr std::int64_t in = 5, hidden = 7, out = 3, rows = 4;
inline constexpr std::int64_t parameter_count = in * hidden + hidden + hidden * out + out;

template <class T>
inline constexpr std::size_t bucket_bytes = 40 * sizeof(T);

template <class T>
Mlp<T> make_mlp(Rank<B>& rank) {
  return Mlp<T>("mlp", nn::Linear<B, T>(rank, in, hidden, {.init_std = 0.5f, .name = "fc1"}), nn::GELU<B, T>(rank),
                nn::Linear<B, T>(rank, hidden, out, {.init_std = 0.5f, .name = "fc2"}));
}

//! Values drawn from `seed`, stored as T.
template <class T>
std::vector<T> draw(std::int64_t n, std::uint64_t seed, float scale = 1.f) {
  std::vector<T> v;
  for (float x : random_values(n, seed, scale)) v.push_back(T(x));
  return v;
}

//! Runs forward and backward of microbatch `m` of step `s` on `model`, out of `microbatches` in the global
//! batch: loss = sum(w * y) / (rows * microbatches), so dy = w / (global rows), times a loss scale.
//! `poison` makes dy[0] infinite.
template <class T>
void run_microbatch(Mlp<T>& model, int s, int m, int microbatches, bool poison = false, float loss_scale = 1.f) {
  const auto x = draw<T>(rows * in, 1000 + 100 * static_cast<std::uint64_t>(s) + static_cast<std::uint64_t>(m));
  auto dy = draw<T>(rows * out, 5000 + 100 * static_cast<std::uint64_t>(s) + static_cast<std::uint64_t>(m),
                    loss_scale / static_cast<float>(rows * microbatches));
  if (poison) dy[0] = T(std::numeric_limits<float>::infinity());
  typename Mlp<T>::Ctx ctx;
  auto y = model.forward(ctx, View<const T, Mem>(x.data(), Shape{rows, in}));
  auto dx = model.backward_input(ctx, View<const T, Mem>(dy.data(), y.shape()));
  model.backward_weight(ctx);
}

//! A training run: `steps` steps of `microbatches` global microbatches, split over `dp` ranks with
//! `accumulation` each (microbatches = dp * accumulation); microbatch `poison.second` of step `poison.first`
//! gets an infinite loss gradient.
struct Run {
  int dp = 1, accumulation = 1, steps = 5;
  std::pair<int, int> poison{-1, -1};
  float clip_norm = 0;
  [[nodiscard]] int microbatches() const { return dp * accumulation; }
};

//! Final parameter values (as floats, in parameter order) and each step's report, as rank `dp` saw them.
struct Outcome {
  std::vector<std::vector<float>> values;
  std::vector<double> norms;
  std::vector<bool> skipped;
};

template <class T>
std::vector<float> floats(const std::vector<T>& v) {
  return std::vector<float>(v.begin(), v.end());
}

//! Single-rank reference: the model's gradients over the whole global batch (summed in fp32 over the
//! microbatches, so a 16-bit model's reference is not less exact than the DP runs), then rule R on an fp32
//! copy of every parameter (its kernels are tested against PyTorch by the rule tests), with the same clipping
//! and skipping as the optimizer.
template <class R, class T>
Outcome reference(const Run& run, typename R::Hyper hyper) {
  Outcome o;
  launch<B>(1, [&](Rank<B>& rank) {
    auto model = make_mlp<T>(rank);
    const auto params = model.parameters();
    std::vector<std::vector<float>> master;
    std::vector<std::vector<std::vector<float>>> state;
    for (auto* p : params) {
      master.push_back(floats(to_vector(View<const T, Mem>(p->value()))));
      state.emplace_back(static_cast<std::size_t>(R::state_count(hyper)), std::vector<float>(master.back().size()));
    }
    std::int64_t applied = 0;
    for (int s = 0; s < run.steps; ++s) {
      std::vector<std::vector<float>> grads;
      for (auto* p : params) grads.emplace_back(static_cast<std::size_t>(p->numel()));
      for (int m = 0; m < run.microbatches(); ++m) {
        run_microbatch(model, s, m, run.microbatches(), run.poison == std::pair{s, m});
        for (std::size_t i = 0; i < params.size(); ++i) {
          B::axpby(rank.context(), 1.f, View<const T, Mem>(params[i]->grad()), 1.f, view(grads[i]));
          params[i]->zero_grad();
        }
      }
      double sq = 0;
      for (auto& g : grads) sq += B::sum_squares(rank.context(), cview(g));
      const double norm = std::sqrt(sq);
      o.norms.push_back(norm);
      o.skipped.push_back(!std::isfinite(sq));
      if (std::isfinite(sq)) {
        const float coef = run.clip_norm > 0 ? static_cast<float>(std::min(1.0, run.clip_norm / (norm + 1e-6))) : 1.f;
        const optim::StepInfo info{.step = ++applied, .lr = hyper.lr, .grad_scale = coef};
        for (std::size_t i = 0; i < params.size(); ++i) {
          std::vector<View<float, Mem>> st;
          for (auto& v : state[i]) st.push_back(view(v));
          R::template step<B, float>(rank.context(), hyper, info, view(master[i]), cview(grads[i]), st);
          B::cast(rank.context(), cview(master[i]), params[i]->value());
        }
      }
    }
    for (auto* p : params) o.values.push_back(floats(to_vector(View<const T, Mem>(p->value()))));
  });
  return o;
}

//! The same training on `run.dp` ranks with ShardedOptimizer<R, Z>; the outcome of every rank.
template <class R, class Z, class T>
std::vector<Outcome> train(const Run& run, typename R::Hyper hyper, optim::ShardedOptions options = {}) {
  std::vector<Outcome> out(static_cast<std::size_t>(run.dp));
  options.accumulation = run.accumulation;
  options.bucket_bytes = bucket_bytes<T>;
  options.clip_norm = run.clip_norm;
  launch<B>(run.dp, [&](Rank<B>& rank) {
    Mesh mesh(rank);
    auto model = make_mlp<T>(rank);
    optim::ShardedOptimizer<R, Z, Mesh, B> opt(mesh, model.parameters(), hyper, options);
    auto& o = out[static_cast<std::size_t>(rank.id())];
    for (int s = 0; s < run.steps; ++s) {
      for (int k = 0; k < run.accumulation; ++k) {
        const int m = mesh.dp_rank() * run.accumulation + k;
        run_microbatch(model, s, m, run.microbatches(), run.poison == std::pair{s, m});
      }
      const auto report = opt.step();
      o.norms.push_back(report.grad_norm);
      o.skipped.push_back(report.skipped);
    }
    for (auto* p : model.parameters()) o.values.push_back(floats(opt.value(*p)));
  });
  return out;
}

//! max |a - b| / max |b| over one tensor.
inline double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(double(a[i]) - double(b[i])));
    scale = std::max(scale, std::abs(double(b[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

//! Checks every rank's final values against the reference's, tensor by tensor, within `tolerance`.
inline void check_values(const std::vector<Outcome>& ranks, const Outcome& ref, double tolerance) {
  for (std::size_t r = 0; r < ranks.size(); ++r) {
    INFO("DP rank " << r);
    REQUIRE(ranks[r].values.size() == ref.values.size());
    for (std::size_t i = 0; i < ref.values.size(); ++i) {
      INFO("parameter " << i);
      CHECK(relative_error(ranks[r].values[i], ref.values[i]) <= tolerance);
    }
  }
}

}  // namespace parallax::test::sharded
