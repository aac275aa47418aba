// parallax/dp/gradient_buckets.hpp — data-parallel gradient buckets, reduced during backward as they fill up.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "../backend/concept.hpp"
#include "../comm/communicator.hpp"
#include "../comm/rank.hpp"
#include "../core/tensor.hpp"
#include "../error.hpp"
#include "../nn/parameter.hpp"
#include "detail/drain.hpp"
#include "flat_layout.hpp"

namespace parallax::dp {

//! How the replicas' gradients combine. `sum` is the contract of parallax's trainers: the loss gradient is
//! already scaled by 1 / (tokens in the global batch), so the sum over replicas is the gradient of the
//! global-batch mean. `mean` divides the sum by the group size, for a loss scaled by 1 / (tokens per replica)
//! (PyTorch DDP's convention).
enum class Reduction { sum, mean };

//! Options of `GradientBuckets`.
struct BucketOptions {
  int accumulation = 1;                              // microbatches per step; only the last one reduces
  std::size_t bucket_bytes = std::size_t{25} << 20;  // gradient bytes per bucket (one collective each)
  Reduction reduction = Reduction::sum;
  bool shard = false;  // reduce-scatter into this rank's shard (ZeRO-2/3) instead of all-reducing in place
  //! Sharded: bucket reductions in flight at most; a bucket that starts filling beyond them first waits for the
  //! oldest, so at most `max_in_flight` + 1 full bucket buffers exist at a time (with accumulation 1).
  int max_in_flight = 2;
};

//! Data-parallel gradient reduction, overlapped with backward.
//!
//! The parameters' gradients are laid out in a `FlatLayout` over `group` (the DP x CP group). Each
//! parameter counts the gradients its module accumulates (the `after_grad` hook); when every parameter of
//! a bucket has received its `accumulation`-th, the bucket's reduction starts asynchronously while backward
//! goes on. With gradient accumulation only the last microbatch reduces: the earlier ones accumulate
//! locally. `finish()` waits for the reductions; then the gradients are those of the global batch
//! (`Reduction::sum`: summed over the replicas).
//!
//! Where the gradients live (all counted, in the rank's `MemoryStats`):
//!  - replicated (`shard = false`, ZeRO-0/1): one flat buffer of the padded parameters, `gradients`
//!    category, each parameter's gradient bound to its slice; buckets are all-reduced in place.
//!  - sharded (`shard = true`, ZeRO-2/3): the `gradients` category holds only this rank's shard (its slice
//!    of every bucket). A bucket's full gradient is a transient `communication` buffer, allocated when its
//!    first gradient arrives, reduce-scattered into the shard, and freed once that is done (at most
//!    `max_in_flight` of them reducing while the next one fills, so the peak is bounded). Between steps
//!    (and after a bucket was reduced) the parameters' `grad()` views point at no storage: read the shard
//!    through `reduced()`. With accumulation > 1 the full bucket buffers live from the first microbatch's
//!    backward to the last one's reduction (one reduce-scatter per step, as PyTorch FSDP's `no_sync`).
//!
//! The gradients start at zero and `reset()` zeroes them for the next step. Construct it on every rank of
//! `group` with the same parameters in the same order; it installs gradient hooks on them (a parameter
//! may belong to one `GradientBuckets` at a time) and removes them when destroyed. It owns the gradient
//! storage: once it is destroyed the parameters' `grad()` views point at none, so destroy it before
//! (or with) the model, never run backward after.
//! @tparam B the backend.  @tparam T the gradients' storage type.
//! @code
//! dp::GradientBuckets<host::Backend, float> ddp(rank, mesh.dp_cp(), model.parameters(), {.accumulation = 4});
//! for (int mb = 0; mb < 4; ++mb) { ...forward, backward_input, backward_weight... }   // buckets reduce as they fill
//! ddp.finish();   // every gradient is now summed over the DP group
//! ...update...;   ddp.reset();
//! @endcode
template <Backend B, FloatElement T>
class GradientBuckets {
 public:
  using Memory = typename B::Memory;
  using Params = nn::ParameterList<T, Memory>;

  GradientBuckets(Rank<B>& rank, Communicator& group, Params params, BucketOptions options = {})
      : rank_(&rank), group_(&group), params_(std::move(params)), options_(options) {
    if (params_.empty()) throw Error("GradientBuckets: the parameter list is empty", rank.id());
    if (options_.accumulation < 1)
      throw Error(fmt::format("GradientBuckets: accumulation {} is not a positive number of microbatches",
                              options_.accumulation),
                  rank.id());
    if (options_.max_in_flight < 1)
      throw Error(fmt::format("GradientBuckets: max_in_flight {} is not positive", options_.max_in_flight), rank.id());
    std::vector<std::int64_t> numels;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      auto* p = params_[i];
      if (p == nullptr) throw Error(fmt::format("GradientBuckets: parameter {} is null", i), rank.id());
      if (!index_.emplace(p, i).second)
        throw Error(fmt::format("GradientBuckets: parameter '{}' appears twice in the list", p->name()), rank.id());
      if (p->hooks().before_grad || p->hooks().after_grad)
        throw Error(fmt::format("GradientBuckets: parameter '{}' already has gradient hooks (is it handed to two "
                                "optimizers or reducers?)",
                                p->name()),
                    rank.id());
      numels.push_back(p->numel());
    }
    layout_ = FlatLayout(numels, sizeof(T), options_.bucket_bytes, group.size());
    const std::size_t nb = layout_.buckets().size();
    counts_.assign(params_.size(), 0);
    ready_.assign(nb, 0);
    works_.resize(nb);
    started_.assign(nb, false);
    if (options_.shard) {
      shard_ = Tensor<T, Memory>(rank.allocator(), Shape{layout_.shard_numel()}, MemoryCategory::gradients);
      staging_.resize(nb);
      for (std::size_t b = 0; b < nb; ++b) {  // frees the modules' own gradient storage
        stage(b);
        free_staging(b);
      }
    } else {
      full_ = Tensor<T, Memory>(rank.allocator(), Shape{layout_.padded_numel()}, MemoryCategory::gradients);
      for (std::size_t i = 0; i < params_.size(); ++i) {
        auto slot = slice(full_.view(), layout_.slot(i).offset, params_[i]->shape());
        copy(slot, View<const T, Memory>(params_[i]->grad()));
        (void)params_[i]->bind_grad(slot);
      }
    }
    for (auto* p : params_) {
      auto h = p->hooks();
      h.before_grad = [this](nn::Parameter<T, Memory>& q) { before_grad(q); };
      h.after_grad = [this](nn::Parameter<T, Memory>& q) { after_grad(q); };
      (void)p->set_hooks(std::move(h));
    }
  }
  GradientBuckets(const GradientBuckets&) = delete;
  GradientBuckets& operator=(const GradientBuckets&) = delete;
  //! Waits for the reductions in flight, gives the gradients owned storage (holding what they hold; zeros where
  //! only a reduced slice existed) and removes the hooks.
  ~GradientBuckets() {
    detail::drain(works_);
    for (auto* p : params_) {
      try {
        p->own_grad();
      } catch (...) {
        p->detach_grad("could not be given storage when its optimizer went (out of memory)");
      }
      auto h = p->hooks();
      h.before_grad = nullptr;
      h.after_grad = nullptr;
      (void)p->set_hooks(std::move(h));
    }
  }

  [[nodiscard]] const FlatLayout& layout() const noexcept { return layout_; }
  [[nodiscard]] const BucketOptions& options() const noexcept { return options_; }
  [[nodiscard]] const Params& parameters() const noexcept { return params_; }
  [[nodiscard]] Communicator& group() const noexcept { return *group_; }
  //! Index of `p` in the parameter list, or nothing.
  [[nodiscard]] std::optional<std::size_t> index_of(const nn::Parameter<T, Memory>& p) const {
    const auto it = index_.find(&p);
    return it == index_.end() ? std::nullopt : std::optional(it->second);
  }

  //! Waits for every bucket's reduction. Throws, naming the parameter, if one did not receive exactly
  //! `accumulation` gradients since the last `reset()` (its bucket could not be reduced).
  void finish() {
    for (std::size_t i = 0; i < params_.size(); ++i)
      if (counts_[i] != options_.accumulation)
        throw Error(fmt::format("GradientBuckets: parameter '{}' received {} gradient(s) this step, expected "
                                "accumulation = {}",
                                params_[i]->name(), counts_[i], options_.accumulation),
                    rank_->id());
    const auto t0 = std::chrono::steady_clock::now();
    for (std::size_t b = 0; b < works_.size(); ++b) {
      works_[b].wait();
      if (options_.shard) free_staging(b);
    }
    in_flight_.clear();
    exposed_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  //! Zeroes the gradients and the microbatch counts: the next step begins.
  void reset() {
    counts_.assign(counts_.size(), 0);
    ready_.assign(ready_.size(), 0);
    started_.assign(started_.size(), false);
    if (!options_.shard) B::fill(rank_->context(), full_.view(), 0.f);
  }

  //! The reduced gradient this rank keeps of bucket `b` (after `finish()`): the whole padded bucket when
  //! replicated, this rank's slice of it when sharded.
  [[nodiscard]] View<T, Memory> reduced(std::size_t b) const {
    const auto& k = layout_.bucket(b);
    return options_.shard ? shard_.view().rows(k.shard_offset, k.shard_offset + k.slice(layout_.parts()))
                          : full_.view().rows(k.offset, k.offset + k.padded);
  }
  //! This rank's slice of the reduced gradient of bucket `b` (full-buffer elements
  //! [`layout().slice_offset(b, rank)`, + slice)).
  [[nodiscard]] View<T, Memory> owned(std::size_t b) const {
    if (options_.shard) return reduced(b);
    const auto& k = layout_.bucket(b);
    const std::int64_t at = layout_.slice_offset(b, group_->rank());
    return full_.view().rows(at, at + k.slice(layout_.parts()));
  }

  //! Seconds `finish()` has spent waiting for reductions (the communication that backward did not hide).
  [[nodiscard]] double exposed_seconds() const noexcept { return exposed_; }
  //! Bucket reductions started so far.
  [[nodiscard]] std::int64_t reductions() const noexcept { return reductions_; }

 private:
  //! The `n`-element slice at `offset` of a flat buffer, shaped `shape`.
  static View<T, Memory> slice(View<T, Memory> flat, std::int64_t offset, const Shape& shape) {
    return flat.rows(offset, offset + shape.numel()).reshape(shape);
  }
  //! Frees bucket `b`'s full gradient buffer, detaching its parameters' gradients from it first.
  void free_staging(std::size_t b) {
    const auto& k = layout_.bucket(b);
    for (std::size_t i = k.first; i < k.first + k.count; ++i)
      params_[i]->detach_grad("is sharded over DP (ZeRO-2/3): after its bucket's reduce-scatter only this rank's "
                              "slice exists, in the optimizer");
    staging_[b].reset();
  }
  //! Allocates bucket `b`'s full gradient buffer (zeroed) and binds its parameters' gradients to it.
  void stage(std::size_t b) {
    const auto& k = layout_.bucket(b);
    staging_[b] = Tensor<T, Memory>(rank_->allocator(), Shape{k.padded}, MemoryCategory::communication);
    for (std::size_t i = k.first; i < k.first + k.count; ++i)
      (void)params_[i]->bind_grad(slice(staging_[b].view(), layout_.slot(i).offset - k.offset, params_[i]->shape()));
  }
  //! Frees the buffers of buckets whose reduce-scatter is done, then waits for the oldest ones until fewer
  //! than `max_in_flight` are reducing.
  void collect() {
    std::erase_if(in_flight_, [&](std::size_t b) {
      if (!works_[b].ready()) return false;
      works_[b].wait();
      free_staging(b);
      return true;
    });
    while (in_flight_.size() >= static_cast<std::size_t>(options_.max_in_flight)) {
      const std::size_t b = in_flight_.front();
      works_[b].wait();
      free_staging(b);
      in_flight_.erase(in_flight_.begin());
    }
  }
  [[nodiscard]] std::size_t checked_index(const nn::Parameter<T, Memory>& p) const {
    const auto i = index_of(p);
    if (!i) throw Error(fmt::format("GradientBuckets: hook called for unknown parameter '{}'", p.name()), rank_->id());
    return *i;
  }

  void before_grad(nn::Parameter<T, Memory>& p) {
    const std::size_t i = checked_index(p);
    if (counts_[i] >= options_.accumulation)
      throw Error(fmt::format("GradientBuckets: parameter '{}' receives gradient {} of a step whose accumulation is {} "
                              "(its bucket is already being reduced)",
                              p.name(), counts_[i] + 1, options_.accumulation),
                  rank_->id());
    if (!options_.shard) return;
    const std::size_t b = layout_.slot(i).bucket;
    if (staging_[b].empty()) {
      collect();
      stage(b);
    }
  }
  void after_grad(nn::Parameter<T, Memory>& p) {
    const std::size_t i = checked_index(p);
    if (++counts_[i] != options_.accumulation) return;
    const std::size_t b = layout_.slot(i).bucket;
    if (++ready_[b] == layout_.bucket(b).count) start(b);
  }
  //! Starts bucket `b`'s reduction.
  void start(std::size_t b) {
    const ReduceOp op = options_.reduction == Reduction::mean ? ReduceOp::avg : ReduceOp::sum;
    if (options_.shard) {
      works_[b] = group_->reduce_scatter_async(View<const T, Memory>(staging_[b].view()), reduced(b), op);
      in_flight_.push_back(b);
    } else
      works_[b] = group_->all_reduce_async(reduced(b), op);
    started_[b] = true;
    ++reductions_;
  }

  Rank<B>* rank_;
  Communicator* group_;
  Params params_;
  BucketOptions options_;
  FlatLayout layout_;
  std::unordered_map<const nn::Parameter<T, Memory>*, std::size_t> index_;
  std::vector<int> counts_;         // gradients received this step, per parameter
  std::vector<std::size_t> ready_;  // parameters with their final gradient, per bucket
  std::vector<Work> works_;
  std::vector<bool> started_;
  Tensor<T, Memory> full_;                  // replicated: the padded flat gradients
  Tensor<T, Memory> shard_;                 // sharded: this rank's slice of every bucket
  std::vector<Tensor<T, Memory>> staging_;  // sharded: each bucket's full gradient while it is built and reduced
  std::vector<std::size_t> in_flight_;      // sharded: buckets reducing, oldest first
  double exposed_ = 0;
  std::int64_t reductions_ = 0;
};

}  // namespace parallax::dp
