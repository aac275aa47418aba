// examples/05_train_gpt/trainer.hpp — one rank of train_gpt: its mesh, its pipeline and AdamW under its ZeRO stage,
// the training loop, the evaluation and the save; and `run_ranks`, which launches the ranks.
//
// Only train_ranks.cpp includes it (once per mesh type and storage type), so main.cpp compiles none of it.
#pragma once

#include <parallax/parallax.hpp>
#include <parallax/pp/pipeline_stage.hpp>

#include <array>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "gpt.hpp"
#include "train_gpt.hpp"

namespace train_gpt {

using Clock = std::chrono::steady_clock;

// -----------------------------------------------------------------------------------------------------------------
// The mesh: a static DeviceMesh for the demo's shape, run-time views for the others.

//! A `DeviceMesh` seen through run-time extents, as `std::dextents` views any `std::extents`: the model, the optimizer
//! and the checkpoint code are instantiated once for it, whatever the shape of the mesh it views. It offers what
//! they ask of a mesh (groups, sizes, coordinates, the rank), forwarding to the viewed mesh, which must outlive it.
class DynamicMesh {
 public:
  static constexpr int static_tp = px::dynamic;  // no compile-time TP extent to check `fixed<N>` sizes against

  template <int DP, int PP, int TP, int CP>
  explicit DynamicMesh(px::DeviceMesh<DP, PP, TP, CP>& m)
      : name_(fmt::format("DynamicMesh over {}", m.name())),
        shape_(m.shape()),
        coords_(m.coords()),
        groups_{&m.dp(), &m.pp(), &m.tp(), &m.cp()},
        dp_cp_(&m.dp_cp()),
        world_(&m.world()),
        rank_(&px::mesh_rank<Backend>(m)) {}

  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  [[nodiscard]] const px::MeshShape& shape() const noexcept { return shape_; }
  [[nodiscard]] const px::Coords& coords() const noexcept { return coords_; }
  [[nodiscard]] int rank() const { return world_->rank(); }
  [[nodiscard]] int dp_size() const noexcept { return shape_.dp; }
  [[nodiscard]] int pp_size() const noexcept { return shape_.pp; }
  [[nodiscard]] int tp_size() const noexcept { return shape_.tp; }
  [[nodiscard]] int dp_rank() const noexcept { return coords_.dp; }
  [[nodiscard]] int pp_rank() const noexcept { return coords_.pp; }
  [[nodiscard]] int tp_rank() const noexcept { return coords_.tp; }
  [[nodiscard]] px::Communicator& group(px::Axis a) const noexcept { return *groups_[static_cast<std::size_t>(a)]; }
  [[nodiscard]] px::Communicator& pp() const noexcept { return group(px::Axis::pp); }
  [[nodiscard]] px::Communicator& tp() const noexcept { return group(px::Axis::tp); }
  [[nodiscard]] px::Communicator& dp_cp() const noexcept { return *dp_cp_; }
  [[nodiscard]] px::Communicator& world() const noexcept { return *world_; }
  template <px::Backend B>
  requires std::same_as<B, Backend>
  [[nodiscard]] px::Rank<B>& backend_rank() const noexcept { return *rank_; }

 private:
  std::string name_;
  px::MeshShape shape_;
  px::Coords coords_;
  std::array<px::Communicator*, 4> groups_;  // by px::Axis
  px::Communicator *dp_cp_, *world_;
  px::Rank<Backend>* rank_;
};

//! Builds a `DeviceMesh<dynamic, PP, TP>` of shape `s` (one `runs`) on `rank` and calls `f(view)` with a
//! `DynamicMesh` view of it: per shape, only the mesh's constructor is instantiated.
template <std::size_t I = 0, std::size_t J = 0, class F>
void with_dynamic_mesh(const px::MeshShape& s, px::Rank<Backend>& rank, F&& f) {
  constexpr int PP = pp_extents[I], TP = tp_extents[J];
  if (s.pp == PP && s.tp == TP) {
    px::DeviceMesh<px::dynamic, PP, TP> mesh(rank);
    DynamicMesh view(mesh);
    return f(view);
  }
  if constexpr (J + 1 < tp_extents.size())
    return with_dynamic_mesh<I, J + 1>(s, rank, std::forward<F>(f));
  else if constexpr (I + 1 < pp_extents.size())
    return with_dynamic_mesh<I + 1, 0>(s, rank, std::forward<F>(f));
  else
    throw px::Error(fmt::format("with_dynamic_mesh: no mesh type for DP {} x PP {} x TP {}", s.dp, s.pp, s.tp));
}

// -----------------------------------------------------------------------------------------------------------------
// The model's pipeline and its optimizer.

//! AdamW under any ZeRO stage, behind one interface (so each stage is instantiated once per mesh and precision,
//! not once per schedule too).
template <class B, class T>
class Optimizer {
 public:
  virtual ~Optimizer() = default;
  virtual px::optim::StepReport step() = 0;
};

//! `ShardedOptimizer<AdamW, Z, Mesh, B>` as an `Optimizer`.
template <class Z, class Mesh, class B, class T>
class ShardedAdamW final : public Optimizer<B, T> {
 public:
  ShardedAdamW(Mesh& mesh, const px::nn::ParameterList<T, typename B::Memory>& params, px::optim::AdamW::Hyper hyper,
               px::optim::ShardedOptions options)
      : opt_(mesh, params, hyper, std::move(options)) {}
  px::optim::StepReport step() override { return opt_.step(); }

 private:
  px::ShardedOptimizer<px::optim::AdamW, Z, Mesh, B> opt_;
};

//! AdamW under ZeRO stage `zero` (0..3) over `params`.
template <class Mesh, class B, class T>
std::unique_ptr<Optimizer<B, T>> make_optimizer(int zero, Mesh& mesh,
                                                const px::nn::ParameterList<T, typename B::Memory>& params,
                                                px::optim::AdamW::Hyper hyper, px::optim::ShardedOptions options) {
  switch (zero) {
    case 0:
      return std::make_unique<ShardedAdamW<px::Zero<0>, Mesh, B, T>>(mesh, params, hyper, std::move(options));
    case 1:
      return std::make_unique<ShardedAdamW<px::Zero<1>, Mesh, B, T>>(mesh, params, hyper, std::move(options));
    case 2:
      return std::make_unique<ShardedAdamW<px::Zero<2>, Mesh, B, T>>(mesh, params, hyper, std::move(options));
    default:
      return std::make_unique<ShardedAdamW<px::Zero<3>, Mesh, B, T>>(mesh, params, hyper, std::move(options));
  }
}

//! Microbatches of one global batch: this DP rank's `m` slices, in the backend's memory.
template <class B>
struct Microbatches {
  std::vector<px::Tensor<std::int32_t, typename B::Memory>> tensors;
  std::vector<pp::Microbatch<typename B::Memory>> views;

  Microbatches(px::Rank<B>& rank, const gpt::Batch& global, int dp_rank, int dp, int m) {
    const auto upload = [&](const std::vector<std::int32_t>& host, const px::Shape& shape) {
      auto& t = tensors.emplace_back(rank.allocator(), shape, px::MemoryCategory::workspace);
      px::copy_from(t.view(), std::span<const std::int32_t>(host));
      return t.cview();
    };
    tensors.reserve(2 * static_cast<std::size_t>(m));
    for (int i = 0; i < m; ++i) {
      const gpt::Batch mb = gpt::slice(global, dp_rank, dp, i, m);
      const auto tokens = upload(mb.tokens, mb.shape());
      views.push_back({tokens, upload(mb.targets, mb.shape())});
    }
  }
};

//! The pipeline of one schedule and the tie of its token tables, behind one interface (so the training loop is
//! instantiated once per mesh and precision, not once per schedule too).
template <class B, class T>
class Pipeline {
 public:
  using Memory = typename B::Memory;
  virtual ~Pipeline() = default;
  [[nodiscard]] virtual px::nn::ParameterList<T, Memory> parameters() = 0;
  //! Ties the token tables' gradients: after the optimizer is built, undone before it is destroyed (see
  //! gpt::TiedEmbedding).
  virtual void tie() = 0;
  virtual void untie() = 0;
  //! A training step, its tied gradients summed.
  virtual pp::StepResult train_step(std::span<const pp::Microbatch<Memory>> mbs) = 0;
  //! The statistics of a global batch (the same on every rank).
  virtual gpt::EvalStats evaluate(std::span<const pp::Microbatch<Memory>> mbs) = 0;
  [[nodiscard]] virtual const pp::Recording& recording() const = 0;
};

//! `gpt::Pipeline<S, Mesh, B, T>` and its `gpt::TiedEmbedding` as a `Pipeline`.
template <class S, class Mesh, class B, class T>
class PipelineOf final : public Pipeline<B, T> {
 public:
  using Memory = typename B::Memory;
  PipelineOf(Mesh& mesh, const Plan& plan)
      : mesh_(&mesh),
        pipeline_(mesh, gpt::make_chunks<S, B, T>(mesh, plan.model),
                  {.microbatches = plan.microbatches, .ignore_index = gpt::ignore_index, .record = plan.record()}) {}
  px::nn::ParameterList<T, Memory> parameters() override { return pipeline_.parameters(); }
  void tie() override { tie_.emplace(*mesh_, pipeline_); }
  void untie() override { tie_.reset(); }
  pp::StepResult train_step(std::span<const pp::Microbatch<Memory>> mbs) override {
    const pp::StepResult r = pipeline_.train_step(mbs);
    tie_->sync();
    return r;
  }
  gpt::EvalStats evaluate(std::span<const pp::Microbatch<Memory>> mbs) override {
    return gpt::evaluate(*mesh_, pipeline_, mbs);
  }
  const pp::Recording& recording() const override { return pipeline_.recording(); }

 private:
  Mesh* mesh_;
  gpt::Pipeline<S, Mesh, B, T> pipeline_;
  std::optional<gpt::TiedEmbedding<Mesh, B, T>> tie_;
};

//! This rank's pipeline of the plan's schedule.
template <class Mesh, class B, class T>
std::unique_ptr<Pipeline<B, T>> make_pipeline(Mesh& mesh, const Plan& plan) {
  std::unique_ptr<Pipeline<B, T>> p;
  with_schedule(plan.options.schedule, [&]<class S>() { p = std::make_unique<PipelineOf<S, Mesh, B, T>>(mesh, plan); });
  return p;
}

//! The statistics of `d` evaluated in batches of `batch` sequences (the same on every rank).
template <class Mesh, class B, class T>
gpt::EvalStats evaluate(Mesh& mesh, Pipeline<B, T>& pipeline, const gpt::Dataset& d, const Plan& plan) {
  gpt::EvalStats total;
  for (std::int64_t i = 0; i < gpt::eval_batches(d, plan.options.batch); ++i) {
    const Microbatches<B> mbs(px::mesh_rank<B>(mesh), gpt::eval_batch(d, i, plan.options.batch), mesh.dp_rank(),
                              mesh.dp_size(), plan.microbatches);
    total += pipeline.evaluate(mbs.views);
  }
  return total;
}

//! One rank's run on `mesh`.
template <class Mesh, class B, class T>
void train(Mesh& mesh, const Plan& plan, Report& report) {
  const Options& o = plan.options;
  px::Rank<B>& rank = px::mesh_rank<B>(mesh);
  if (rank.id() == 0) report.mesh_type = mesh.name();
  const std::unique_ptr<Pipeline<B, T>> pipeline = make_pipeline<Mesh, B, T>(mesh, plan);
  const auto params = pipeline->parameters();
  if (!o.load.empty()) px::checkpoint::load(mesh, params, o.load, gpt::hf_names());
  if (mesh.dp_rank() == 0 && mesh.tp_rank() == 0)
    for (const auto* p : params)
      if (p->name() != gpt::head_weight)
        report.parameters[static_cast<std::size_t>(rank.id())] += p->spec().global.numel();

  const auto barrier = [&] { mesh.world().barrier(); };
  barrier();
  if (rank.id() == 0) {
    std::int64_t total = 0;
    for (const std::int64_t n : report.parameters) total += n;
    print_header(plan, report, total);
  }
  const auto started = Clock::now();
  if (o.eval_only) {
    (void)take_peaks(rank.memory(), report, rank.id());
    const gpt::EvalStats s = evaluate(mesh, *pipeline, plan.eval, plan);
    (void)take_peaks(rank.memory(), report, rank.id());
    if (rank.id() == 0) {
      report.eval = s;
      report.seconds = std::chrono::duration<double>(Clock::now() - started).count();
    }
    return;
  }

  const px::optim::WarmupCosine lr{.peak = o.lr, .min = o.lr / 10, .warmup_steps = plan.warmup, .total_steps = o.steps};
  const auto opt =
      make_optimizer<Mesh, B, T>(o.zero, mesh, params, {.lr = o.lr, .weight_decay = o.weight_decay},
                                 {.accumulation = plan.microbatches, .clip_norm = o.clip, .lr_schedule = lr});
  pipeline->tie();
  struct Untie {
    Pipeline<B, T>& p;
    ~Untie() { p.untie(); }
  } untie{*pipeline};
  (void)take_peaks(rank.memory(), report, rank.id());  // the model and the optimizer's state

  for (int step = 0; step < o.steps; ++step) {
    const auto t0 = Clock::now();
    const Microbatches<B> mbs(rank, gpt::train_batch(plan.train, step, o.batch), mesh.dp_rank(), mesh.dp_size(),
                              plan.microbatches);
    const pp::StepResult r = pipeline->train_step(mbs.views);
    const px::optim::StepReport u = opt->step();
    report.step_peak[static_cast<std::size_t>(step)][static_cast<std::size_t>(rank.id())] =
        take_peaks(rank.memory(), report, rank.id());
    barrier();
    if (rank.id() != 0) continue;
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    report.steps.push_back({.loss = r.loss,
                            .ms = 1e3 * seconds,
                            .tokens_per_s = double(o.batch * plan.model.seq) / seconds,
                            .grad_norm = u.grad_norm,
                            .lr = u.lr,
                            .skipped = u.skipped});
    print_step(plan, report, step, std::chrono::duration<double>(Clock::now() - started).count());
  }
  if (rank.id() == 0 && plan.record()) report.recording = pipeline->recording();

  const gpt::EvalStats s = evaluate(mesh, *pipeline, plan.eval, plan);
  if (rank.id() == 0) report.eval = s;
  // Collective; under ZeRO-3 each parameter is gathered over DP as it is read, like a forward reads it.
  if (!o.save.empty()) px::checkpoint::save(mesh, params, o.save, gpt::hf_names());
  (void)take_peaks(rank.memory(), report, rank.id());
  if (rank.id() == 0) report.seconds = std::chrono::duration<double>(Clock::now() - started).count();
}

template <MeshType M, class T>
void run_ranks(const Plan& plan, Report& report) {
  px::launch<Backend>(
      plan.ranks(),
      [&](px::Rank<Backend>& rank) {
        if constexpr (M == MeshType::fixed) {
          px::DeviceMesh<static_shape.dp, static_shape.pp, static_shape.tp> mesh(rank);
          train<decltype(mesh), Backend, T>(mesh, plan, report);
        } else {
          with_dynamic_mesh(plan.mesh, rank,
                            [&](DynamicMesh& mesh) { train<DynamicMesh, Backend, T>(mesh, plan, report); });
        }
      },
      {.in_order = plan.options.in_order ? std::optional(true) : std::nullopt});  // unset: the environment
}

}  // namespace train_gpt
