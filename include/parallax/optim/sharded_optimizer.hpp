// parallax/optim/sharded_optimizer.hpp — ShardedOptimizer<Rule, Zero<S>, Mesh, B>: data-parallel training with
// ZeRO stages 0-3, fp32 master weights, global-norm clipping, dynamic loss scaling and CPU offload.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "../backend/concept.hpp"
#include "../comm/rank.hpp"
#include "../core/tensor.hpp"
#include "../dp/flat_layout.hpp"
#include "../dp/flat_parameters.hpp"
#include "../dp/gradient_buckets.hpp"
#include "../error.hpp"
#include "../mesh/device_mesh.hpp"
#include "../nn/parameter.hpp"
#include "clip_grad_norm.hpp"
#include "loss_scaler.hpp"
#include "offload.hpp"
#include "rule.hpp"
#include "zero.hpp"

namespace parallax::optim {

//! Options of a `ShardedOptimizer`.
struct ShardedOptions {
  //! Microbatches per step: every parameter must receive this many gradients between two `step()`s;
  //! the DP reduction runs after the last one only.
  int accumulation = 1;
  //! Gradient bytes per bucket (one collective each; under ZeRO-3 also the unit of parameter gathering).
  std::size_t bucket_bytes = std::size_t{25} << 20;
  //! Clip the global gradient norm to this value (PyTorch's `clip_grad_norm_`); 0: no clipping.
  float clip_norm = 0;
  //! The learning rate of each applied step (1-based); empty: the rule's `Hyper::lr`.
  std::function<float(std::int64_t)> lr_schedule{};
  //! Dynamic loss scaling (fp16): the trainer multiplies the loss gradient by `loss_scale()`.
  std::optional<LossScalerOptions> loss_scaler{};
  //! How DP replicas combine gradients (`sum`: the loss gradient is already 1 / global tokens).
  dp::Reduction reduction = dp::Reduction::sum;
  //! ZeRO-Offload: fp32 master weights and optimizer state in host memory, updated by the CPU. For device
  //! backends (CUDA); a no-op on the host backend, whose state is host memory already.
  bool offload = false;
};

//! What one `step()` did.
struct StepReport {
  double grad_norm = 0;   // global L2 norm of the (unscaled) gradients before clipping; not finite when skipped
  bool skipped = false;   // a gradient was NaN or infinite on some rank: no update anywhere
  float loss_scale = 1;   // the scale this step's gradients carried
  float lr = 0;           // the learning rate of this update (of the next one when skipped)
  std::int64_t step = 0;  // updates applied so far
};

//! What a `ShardedOptimizer` keeps on one rank, in elements: the parameters' own, the layout's padded
//! total and one rank's shard of it. The padding is reported here (and is zeros in every buffer).
struct ShardedFootprint {
  std::int64_t parameters = 0, padded = 0, shard = 0, padding = 0;
  int dp = 1;  // ranks the state is sharded over (DP x CP)
};

namespace detail {

//! The type-independent interface of a ShardedOptimizer's implementation (the parameters' storage type is
//! known only to the constructor).
class ShardedBase {
 public:
  virtual ~ShardedBase() = default;
  virtual StepReport step() = 0;
  [[nodiscard]] virtual float loss_scale() const = 0;
  [[nodiscard]] virtual std::int64_t steps() const = 0;
  [[nodiscard]] virtual std::int64_t skipped_steps() const = 0;
  [[nodiscard]] virtual const dp::FlatLayout& layout() const = 0;
  [[nodiscard]] virtual double exposed_reduction_seconds() const = 0;
  [[nodiscard]] virtual dp::GatherStats gather_stats() const = 0;
  [[nodiscard]] virtual const MemoryStats* offloaded_memory() const = 0;
};

}  // namespace detail

//! A data-parallel optimizer with ZeRO stage `Z`: it reduces the gradients of `params` over the mesh's
//! DP x CP group during backward, and applies rule `R` to fp32 master weights sharded as `Z` says.
//!
//! Per step (`step()` after the microbatches' backwards): wait for the bucket reductions; the global
//! gradient norm over every shard on every axis (DP shards, TP shards, PP stages; parameters replicated
//! across TP counted once, shared copies of tied weights not at all), one fp64 all-reduce over the world; a NaN or infinite gradient anywhere makes
//! that sum non-finite, so every rank skips the step (and a loss scaler backs off); otherwise the rule
//! updates this rank's part of the fp32 master weights with grad_scale = clip coefficient / loss scale,
//! the parameters are set from them (rounded to T) and, under ZeRO-1/2, all-gathered. Then the gradients
//! are zeroed for the next step.
//!
//! Gradient contract: the sum over the DP replicas (`dp::Reduction::sum`), i.e. the trainer scales the
//! loss gradient by 1 / (tokens of the global batch, all microbatches of all replicas); option
//! `reduction = mean` divides by the group size instead.
//!
//! Memory per rank for P parameters on N = DP x CP ranks (storage T of 2 bytes, Adam: master + m + v =
//! 12 bytes of fp32 per element), up to the layout's padding (`footprint()`):
//!   Zero<0>: 16P    Zero<1>: 4P + 12P/N    Zero<2>: 2P + 14P/N    Zero<3>: 16P/N
//! in the `parameters`, `gradients` and `optimizer` categories; bucket buffers in flight are
//! `communication`, ZeRO-3's gathered buckets `gathered_parameters`. With T = float the master weights
//! are the parameters themselves (no copy): 4 + 4 + 8 bytes per element replicated, the same 16P.
//!
//! Every rank of the world constructs it (collective), with its parameters in the same order on every
//! rank of a DP group; it installs hooks on them (see `dp::GradientBuckets`, `dp::FlatParameters`).
//! @tparam R a `Rule` (`SGD`, `Adam`, `AdamW`).  @tparam Z `Zero<0>` .. `Zero<3>`.
//! @tparam Mesh the `DeviceMesh` type.  @tparam B the backend.
//! @code
//! ShardedOptimizer<AdamW, Zero<2>, Mesh, host::Backend> opt(mesh, model.parameters(), {.lr = 3e-4f},
//!                                                          {.accumulation = 4, .clip_norm = 1.0f});
//! for (int mb = 0; mb < 4; ++mb) { ...forward, backward_input, backward_weight... }
//! StepReport r = opt.step();
//! @endcode
template <class R, class Z, class Mesh, class B>
class ShardedOptimizer {
  static_assert(Rule<R>,
                "ShardedOptimizer<R, Z, Mesh, B>: R must model optim::Rule (Hyper with lr, name, "
                "state_count): use optim::SGD, optim::Adam or optim::AdamW");
  static_assert(ZeroStage<Z>, "ShardedOptimizer<R, Z, Mesh, B>: Z must be optim::Zero<0>, <1>, <2> or <3>");
  static_assert(Backend<B>,
                "ShardedOptimizer<R, Z, Mesh, B>: B must model parallax::Backend (host::Backend, "
                "cuda::Backend)");

 public:
  using rule = R;
  using stage = Z;
  using backend = B;
  using Memory = typename B::Memory;
  using Hyper = typename R::Hyper;

  //! An optimizer of `params` (storage T, on this rank's `mesh_rank<B>(mesh)`).
  template <FloatElement T>
  ShardedOptimizer(Mesh& mesh, const nn::ParameterList<T, Memory>& params, Hyper hyper, ShardedOptions options = {})
      : impl_(std::make_unique<Impl<T>>(mesh, params, std::move(hyper), std::move(options))) {}

  //! Waits for the reductions, updates (or skips), zeroes the gradients. Collective over the world.
  StepReport step() { return impl_->step(); }

  //! The factor the trainer multiplies the loss gradient by (1 without a loss scaler).
  [[nodiscard]] float loss_scale() const { return impl_->loss_scale(); }
  //! Updates applied and steps skipped so far.
  [[nodiscard]] std::int64_t steps() const { return impl_->steps(); }
  [[nodiscard]] std::int64_t skipped_steps() const { return impl_->skipped_steps(); }
  //! The flat layout of the parameters, gradients and optimizer state.
  [[nodiscard]] const dp::FlatLayout& layout() const { return impl_->layout(); }
  //! Elements kept: the parameters', the padded layout's, one shard's, and the padding.
  [[nodiscard]] ShardedFootprint footprint() const {
    const auto& l = layout();
    return {l.numel(), l.padded_numel(), l.shard_numel(), l.padding(), l.parts()};
  }
  //! Seconds `step()` waited for gradient reductions that backward did not hide.
  [[nodiscard]] double exposed_reduction_seconds() const { return impl_->exposed_reduction_seconds(); }
  //! ZeRO-3's gather counters.
  [[nodiscard]] dp::GatherStats gather_stats() const { return impl_->gather_stats(); }
  //! The host bytes of offloaded state (null unless offload moved it off the device).
  [[nodiscard]] const MemoryStats* offloaded_memory() const { return impl_->offloaded_memory(); }

  //! The current value of `p` (its local tensor) as a host vector. Collective over the DP group under
  //! ZeRO-3 (every rank calls it for the same parameters in the same order), where `p.value()` has no
  //! storage outside a module's use.
  template <FloatElement T>
  [[nodiscard]] std::vector<T> value(const nn::Parameter<T, Memory>& p) {
    auto* impl = dynamic_cast<Impl<T>*>(impl_.get());
    if (impl == nullptr)
      throw Error(
          fmt::format("ShardedOptimizer: parameter '{}' has another storage type than the optimizer's", p.name()));
    return impl->values().gather(p);
  }

 private:
  template <FloatElement T>
  class Impl;

  std::unique_ptr<detail::ShardedBase> impl_;
};

template <class R, class Z, class Mesh, class B>
template <FloatElement T>
class ShardedOptimizer<R, Z, Mesh, B>::Impl final : public detail::ShardedBase {
  static_assert(RuleFor<R, B, T>,
                "ShardedOptimizer: the rule has no step for this backend and gradient type "
                "(is the backend's optimizer kernel struct among its bases?)");
  static constexpr bool master_is_value = std::is_same_v<T, float>;

 public:
  Impl(Mesh& mesh, const nn::ParameterList<T, Memory>& params, Hyper hyper, ShardedOptions options)
      : mesh_(&mesh),
        rank_(&mesh_rank<B>(mesh)),
        hyper_(std::move(hyper)),
        options_(std::move(options)),
        scaler_(options_.loss_scaler ? std::optional<DynamicLossScaler>(std::in_place, *options_.loss_scaler)
                                     : std::nullopt),
        buckets_(*rank_, mesh.dp_cp(), checked(params),
                 {.accumulation = options_.accumulation,
                  .bucket_bytes = options_.bucket_bytes,
                  .reduction = options_.reduction,
                  .shard = Z::shards_gradients}),
        values_(*rank_, mesh.dp_cp(), params, buckets_.layout(), Z::shards_parameters) {
    const auto& layout = buckets_.layout();
    const int states = R::state_count(hyper_);
    if (offloaded()) {
      std::vector<std::int64_t> lengths;
      for (std::size_t b = 0; b < layout.buckets().size(); ++b) lengths.push_back(update_values(b).numel());
      offload_.emplace(rank_->id(), states, std::move(lengths));
      for (std::size_t b = 0; b < layout.buckets().size(); ++b) offload_->load(b, update_values(b));
      return;
    }
    const std::int64_t n = Z::shards_optimizer_state ? layout.shard_numel() : layout.padded_numel();
    if constexpr (!master_is_value) {
      master_ = Tensor<float, Memory>(rank_->allocator(), Shape{n}, MemoryCategory::optimizer);
      for (std::size_t b = 0; b < layout.buckets().size(); ++b)
        B::cast(rank_->context(), View<const T, Memory>(update_values(b)), master(b));
    }
    for (int s = 0; s < states; ++s) state_.emplace_back(rank_->allocator(), Shape{n}, MemoryCategory::optimizer);
  }

  StepReport step() override {
    buckets_.finish();
    values_.release();
    const auto& layout = buckets_.layout();
    auto& ctx = rank_->context();

    // This rank's slice of every bucket: disjoint over DP x CP, and over TP / PP but for TP-replicated tensors.
    // One backend call for all of it (one host synchronization on a device backend).
    std::vector<View<const T, Memory>> pieces;
    const int me = mesh_->dp_cp().rank();
    for (std::size_t b = 0; b < layout.buckets().size(); ++b) {
      const auto owned = View<const T, Memory>(buckets_.owned(b));
      const std::int64_t base = layout.slice_offset(b, me);
      layout.for_each_piece(b, base, base + owned.numel(),
                            [&](std::size_t i, std::int64_t, std::int64_t at, std::int64_t len) {
                              if (detail::counts_in_norm(*buckets_.parameters()[i], mesh_->tp_rank()))
                                pieces.push_back(owned.rows(at - base, at - base + len));
                            });
    }
    const double local = B::sum_squares(ctx, std::span<const View<const T, Memory>>(pieces));
    const double total = detail::sum_over(rank_->allocator(), mesh_->world(), local);

    StepReport r;
    r.loss_scale = loss_scale();
    r.grad_norm = std::sqrt(total) / r.loss_scale;
    const bool found_inf = !std::isfinite(total);
    r.skipped = scaler_ ? scaler_->update(found_inf) : found_inf;
    r.lr = options_.lr_schedule ? options_.lr_schedule(steps_ + 1) : hyper_.lr;
    if (r.skipped) {
      ++skipped_;
    } else {
      const StepInfo info{.step = ++steps_,
                          .lr = r.lr,
                          .grad_scale = detail::clip_coefficient(r.grad_norm, options_.clip_norm) / r.loss_scale};
      update(info);
    }
    r.step = steps_;
    buckets_.reset();
    return r;
  }

  [[nodiscard]] float loss_scale() const override { return scaler_ ? scaler_->scale() : 1.f; }
  [[nodiscard]] std::int64_t steps() const override { return steps_; }
  [[nodiscard]] std::int64_t skipped_steps() const override { return skipped_; }
  [[nodiscard]] const dp::FlatLayout& layout() const override { return buckets_.layout(); }
  [[nodiscard]] double exposed_reduction_seconds() const override { return buckets_.exposed_seconds(); }
  [[nodiscard]] dp::GatherStats gather_stats() const override { return values_.stats(); }
  [[nodiscard]] const MemoryStats* offloaded_memory() const override {
    return offload_ ? &offload_->memory() : nullptr;
  }
  [[nodiscard]] dp::FlatParameters<B, T>& values() noexcept { return values_; }

 private:
  //! The parameter list, or an error naming what cannot be data-parallel or a bad option (checked before any
  //! parameter's storage is taken over).
  const nn::ParameterList<T, Memory>& checked(const nn::ParameterList<T, Memory>& params) const {
    if (!(options_.clip_norm >= 0.f) || !std::isfinite(options_.clip_norm))
      throw Error(fmt::format("ShardedOptimizer: clip_norm {} is not finite and >= 0", options_.clip_norm),
                  rank_->id());
    if constexpr (requires { R::check(hyper_, 0); }) R::check(hyper_, rank_->id());
    if (params.empty()) throw Error("ShardedOptimizer: the parameter list is empty", rank_->id());
    for (const auto* p : params)
      if (p != nullptr && p->spec().sharded() && (*p->spec().axis == Axis::dp || *p->spec().axis == Axis::cp))
        throw Error(fmt::format("ShardedOptimizer: parameter '{}' is split over the {} axis; only parameters "
                                "replicated over DP and CP can be data-parallel",
                                p->name(), name(*p->spec().axis)),
                    rank_->id());
    return params;
  }
  [[nodiscard]] bool offloaded() const noexcept { return options_.offload && offload_moves_state<B>; }

  //! The parameters and the gradient that bucket b's update reads and writes: the whole bucket under
  //! ZeRO-0, this rank's slice otherwise.
  [[nodiscard]] View<T, Memory> update_values(std::size_t b) const {
    return Z::shards_optimizer_state ? values_.owned(b) : values_.bucket(b);
  }
  [[nodiscard]] View<const T, Memory> update_grad(std::size_t b) const {
    return Z::shards_optimizer_state ? buckets_.owned(b) : buckets_.reduced(b);
  }
  //! Where bucket b's update range sits in the master and state buffers.
  [[nodiscard]] std::int64_t update_offset(std::size_t b) const {
    const auto& k = buckets_.layout().bucket(b);
    return Z::shards_optimizer_state ? k.shard_offset : k.offset;
  }
  [[nodiscard]] View<float, Memory> master(std::size_t b) const {
    if constexpr (master_is_value) {
      return update_values(b);
    } else {
      const std::int64_t at = update_offset(b);
      return master_.view().rows(at, at + update_values(b).numel());
    }
  }

  void update(const StepInfo& info) {
    const auto& layout = buckets_.layout();
    const std::size_t nb = layout.buckets().size();
    if (offloaded()) {
      std::vector<View<const T, Memory>> grads;
      std::vector<View<T, Memory>> values;
      for (std::size_t b = 0; b < nb; ++b) {
        grads.push_back(update_grad(b));
        values.push_back(update_values(b));
      }
      offload_->update(hyper_, info, grads, values);
    } else {
      auto& ctx = rank_->context();
      std::vector<View<float, Memory>> state(state_.size());
      for (std::size_t b = 0; b < nb; ++b) {
        const std::int64_t at = update_offset(b), n = update_values(b).numel();
        for (std::size_t s = 0; s < state_.size(); ++s) state[s] = state_[s].view().rows(at, at + n);
        R::template step<B, T>(ctx, hyper_, info, master(b), update_grad(b), state);
        if constexpr (!master_is_value) B::cast(ctx, View<const float, Memory>(master(b)), update_values(b));
      }
    }
    if constexpr (Z::shards_optimizer_state && !Z::shards_parameters) values_.publish();
  }

  Mesh* mesh_;
  Rank<B>* rank_;
  Hyper hyper_;
  ShardedOptions options_;
  std::optional<DynamicLossScaler> scaler_;
  dp::GradientBuckets<B, T> buckets_;
  dp::FlatParameters<B, T> values_;
  Tensor<float, Memory> master_;              // fp32 master weights (none when T is float)
  std::vector<Tensor<float, Memory>> state_;  // the rule's fp32 state
  std::optional<detail::HostOffload<R, B, T>> offload_;
  std::int64_t steps_ = 0, skipped_ = 0;
};

}  // namespace parallax::optim

namespace parallax {
using optim::ShardedOptimizer;  // the name users write: parallax::ShardedOptimizer<AdamW, Zero<2>, Mesh, B>
}  // namespace parallax
