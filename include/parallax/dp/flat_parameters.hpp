// parallax/dp/flat_parameters.hpp — parameter values in a DP group's flat layout: replicated, or sharded and
// gathered around each use (ZeRO-3 / FSDP).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
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

//! Counters of a sharded `FlatParameters`.
struct GatherStats {
  std::int64_t gathers = 0;     // all-gathers of a bucket's values (prefetches included)
  std::int64_t prefetched = 0;  // uses that found their bucket already gathered or in flight by prefetch
};

//! The values of a DP group's parameters, in a `FlatLayout` shared with its `GradientBuckets`.
//!
//! - replicated (ZeRO-0/1/2): one flat buffer of the padded parameters (`parameters` category) to which
//!   every parameter's value is bound. An optimizer that updates only this rank's slice of each bucket
//!   (`owned`) calls `publish()`: each bucket is all-gathered in place, asynchronously; the first read of a
//!   parameter (its `before_value` hook) waits for its bucket, so the gathers overlap the next forward.
//! - sharded (ZeRO-3): the `parameters` category holds only this rank's slice of every bucket. A bucket
//!   is the unit of gathering: the first read of one of its parameters all-gathers it into a transient
//!   buffer (`gathered_parameters` category) and binds its parameters' values there; it stays while any of
//!   them is read, and is freed when a read of another bucket begins (or at `release()`). From the second
//!   step on, the buckets are gathered in the order the first step used them, one ahead: the next bucket's
//!   gather starts (asynchronously) when the current one is first read. So at most two buckets are gathered
//!   at a time, plus any whose reads nest. Between uses a parameter's `value()` points at no storage: read
//!   values with `gather(p)`.
//!
//! At construction every bucket is broadcast from the group's rank 0, so the replicas start equal (as
//! PyTorch DDP does). Construct it on every rank of `group`, in the same order, with the layout of the
//! `GradientBuckets` built on the same parameters; it installs value hooks (one owner per parameter). It
//! owns the value storage: once it is destroyed the parameters' `value()` views point at none, so destroy
//! it before (or with) the model.
//! @tparam B the backend.  @tparam T the parameters' storage type.
//! @code
//! dp::FlatParameters<host::Backend, bf16> values(rank, mesh.dp_cp(), params, buckets.layout(), /*sharded=*/true);
//! auto y = model.forward(ctx, x);        // each module's bucket is gathered just before it runs
//! values.release();                      // before the optimizer step
//! @endcode
template <Backend B, FloatElement T>
class FlatParameters {
 public:
  using Memory = typename B::Memory;
  using Params = nn::ParameterList<T, Memory>;

  FlatParameters(Rank<B>& rank, Communicator& group, Params params, FlatLayout layout, bool sharded)
      : rank_(&rank), group_(&group), params_(std::move(params)), layout_(std::move(layout)), sharded_(sharded) {
    if (params_.size() != layout_.parameter_count() || layout_.parts() != group.size())
      throw Error(fmt::format("FlatParameters: the layout is for {} parameters over {} ranks, given {} parameters "
                              "over {} ranks",
                              layout_.parameter_count(), layout_.parts(), params_.size(), group.size()),
                  rank.id());
    for (std::size_t i = 0; i < params_.size(); ++i) {
      auto* p = params_[i];
      if (p == nullptr || p->numel() != layout_.slot(i).numel)
        throw Error(fmt::format("FlatParameters: parameter {} does not have the layout's {} elements", i,
                                layout_.slot(i).numel),
                    rank.id());
      if (p->hooks().before_value || p->hooks().after_value)
        throw Error(fmt::format("FlatParameters: parameter '{}' already has value hooks (is it handed to two "
                                "optimizers?)",
                                p->name()),
                    rank.id());
      index_.emplace(p, i);
    }
    const std::size_t nb = layout_.buckets().size();
    works_.resize(nb);
    if (sharded_) {
      shard_ = Tensor<T, Memory>(rank.allocator(), Shape{layout_.shard_numel()}, MemoryCategory::parameters);
      gathered_.resize(nb);
      in_use_.assign(nb, 0);
      bound_.assign(nb, false);
      for (std::size_t b = 0; b < nb; ++b) {
        // The bucket's values, as rank 0 holds them, give this rank its slice; the modules' own storage goes.
        gathered_[b] =
            Tensor<T, Memory>(rank.allocator(), Shape{layout_.bucket(b).padded}, MemoryCategory::gathered_parameters);
        load(b, gathered_[b].view());
        const std::int64_t n = layout_.bucket(b).slice(layout_.parts());
        copy(owned(b), View<const T, Memory>(gathered_[b].view().rows(group.rank() * n, (group.rank() + 1) * n)));
        free_gathered(b);
      }
    } else {
      flat_ = Tensor<T, Memory>(rank.allocator(), Shape{layout_.padded_numel()}, MemoryCategory::parameters);
      for (std::size_t b = 0; b < nb; ++b) load(b, bucket(b));
    }
    for (auto* p : params_) {
      auto h = p->hooks();
      h.before_value = [this](nn::Parameter<T, Memory>& q) { before_value(q); };
      h.after_value = [this](nn::Parameter<T, Memory>& q) { after_value(q); };
      (void)p->set_hooks(std::move(h));
    }
  }
  FlatParameters(const FlatParameters&) = delete;
  FlatParameters& operator=(const FlatParameters&) = delete;
  //! Waits for the gathers in flight, gives the parameters owned storage holding their values (replicated, or
  //! gathered at the time; a ZeRO-3 parameter that is not stays detached: its value no longer exists whole) and
  //! removes the hooks.
  ~FlatParameters() {
    detail::drain(works_);
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const std::size_t b = layout_.slot(i).bucket;
      try {
        if (!sharded_ || bound_[b])
          params_[i]->own_value();
        else
          params_[i]->detach_value("was sharded over DP by a ZeRO-3 optimizer that no longer exists; read it "
                                   "through ShardedOptimizer::value before destroying the optimizer");
      } catch (...) {
        params_[i]->detach_value("could not be given storage when its optimizer went (out of memory)");
      }
    }
    for (auto* p : params_) {
      auto h = p->hooks();
      h.before_value = nullptr;
      h.after_value = nullptr;
      (void)p->set_hooks(std::move(h));
    }
  }

  [[nodiscard]] const FlatLayout& layout() const noexcept { return layout_; }
  [[nodiscard]] bool sharded() const noexcept { return sharded_; }
  [[nodiscard]] const GatherStats& stats() const noexcept { return stats_; }

  //! This rank's slice of bucket `b`'s values (what a sharded optimizer updates).
  [[nodiscard]] View<T, Memory> owned(std::size_t b) const {
    const auto& k = layout_.bucket(b);
    if (sharded_) return shard_.view().rows(k.shard_offset, k.shard_offset + k.slice(layout_.parts()));
    const std::int64_t at = layout_.slice_offset(b, group_->rank());
    return flat_.view().rows(at, at + k.slice(layout_.parts()));
  }
  //! Bucket `b`'s values, padded (replicated only).
  [[nodiscard]] View<T, Memory> bucket(std::size_t b) const {
    if (sharded_) throw Error("FlatParameters: a sharded bucket has no full values outside a use", rank_->id());
    const auto& k = layout_.bucket(b);
    return flat_.view().rows(k.offset, k.offset + k.padded);
  }

  //! Replicated: starts the all-gather of every bucket from its owners' slices (after a sharded update).
  //! Sharded: nothing (buckets are gathered when used).
  void publish() {
    if (sharded_) return;
    for (std::size_t b = 0; b < works_.size(); ++b)
      works_[b] = group_->all_gather_async(View<const T, Memory>(owned(b)), bucket(b));
  }
  //! Waits for the gathers in flight; sharded: frees every gathered bucket (call before the update) and
  //! starts a new pass of the use order.
  void release() {
    for (std::size_t b = 0; b < works_.size(); ++b) {
      works_[b].wait();
      if (!sharded_) continue;
      if (in_use_[b] > 0)
        throw Error(fmt::format("FlatParameters: bucket {} is released while {} read(s) of its parameters are open", b,
                                in_use_[b]),
                    rank_->id());
      free_gathered(b);
    }
    if (sharded_) {
      recording_ = order_.empty();
      cursor_ = 0;
      last_ = std::nullopt;
    }
  }

  //! The value of `p` (its local tensor, e.g. its TP shard) as a host vector. Collective over the group when
  //! sharded: every rank must call it for the same parameters in the same order.
  [[nodiscard]] std::vector<T> gather(const nn::Parameter<T, Memory>& p) {
    const auto it = index_.find(&p);
    if (it == index_.end())
      throw Error(fmt::format("FlatParameters: parameter '{}' is not one of this group's", p.name()), rank_->id());
    const auto& s = layout_.slot(it->second);
    const auto& k = layout_.bucket(s.bucket);
    works_[s.bucket].wait();
    if (!sharded_) return to_vector(View<const T, Memory>(p.value()));
    Tensor<T, Memory> all(rank_->allocator(), Shape{k.padded}, MemoryCategory::gathered_parameters);
    group_->all_gather(View<const T, Memory>(owned(s.bucket)), all.view());
    return to_vector(View<const T, Memory>(all.view().rows(s.offset - k.offset, s.offset - k.offset + s.numel)));
  }

 private:
  //! Copies bucket `b`'s parameter values into `dst` (its padded values), broadcasts them from group rank 0
  //! and binds the parameters' values to `dst`.
  void load(std::size_t b, View<T, Memory> dst) {
    const auto& k = layout_.bucket(b);
    for (std::size_t i = k.first; i < k.first + k.count; ++i) {
      const auto slot = slice(dst, i);
      copy(slot, View<const T, Memory>(params_[i]->value()));
      (void)params_[i]->bind_value(slot);
    }
    group_->broadcast(dst, 0);
  }
  //! Frees bucket `b`'s gathered values, detaching its parameters' values from them first.
  void free_gathered(std::size_t b) {
    const auto& k = layout_.bucket(b);
    for (std::size_t i = k.first; i < k.first + k.count; ++i)
      params_[i]->detach_value("is sharded over DP (ZeRO-3) and exists whole only while a module reads it "
                               "(acquire_value); read it through ShardedOptimizer::value");
    gathered_[b].reset();
    bound_[b] = false;
  }
  //! Parameter `i`'s slice of its bucket's padded values `values`.
  [[nodiscard]] View<T, Memory> slice(View<T, Memory> values, std::size_t i) const {
    const auto& s = layout_.slot(i);
    const auto off = s.offset - layout_.bucket(s.bucket).offset;
    return values.rows(off, off + s.numel).reshape(params_[i]->shape());
  }
  [[nodiscard]] std::size_t bucket_of(const nn::Parameter<T, Memory>& p) const {
    const auto it = index_.find(&p);
    if (it == index_.end())
      throw Error(fmt::format("FlatParameters: hook called for unknown parameter '{}'", p.name()), rank_->id());
    return layout_.slot(it->second).bucket;
  }

  //! Starts gathering bucket `b` into a new buffer.
  void start_gather(std::size_t b) {
    gathered_[b] =
        Tensor<T, Memory>(rank_->allocator(), Shape{layout_.bucket(b).padded}, MemoryCategory::gathered_parameters);
    works_[b] = group_->all_gather_async(View<const T, Memory>(owned(b)), gathered_[b].view());
    ++stats_.gathers;
  }
  //! Frees the gathered buckets nobody reads, except `keep`.
  void free_idle(std::size_t keep) {
    for (std::size_t b = 0; b < gathered_.size(); ++b)
      if (b != keep && in_use_[b] == 0 && !gathered_[b].empty()) {
        works_[b].wait();
        free_gathered(b);
      }
  }

  void before_value(nn::Parameter<T, Memory>& p) {
    const std::size_t b = bucket_of(p);
    if (!sharded_) {
      works_[b].wait();  // this bucket's all-gather after the last update
      return;
    }
    if (last_ != b) {
      free_idle(b);
      if (!gathered_[b].empty())
        ++stats_.prefetched;
      else
        start_gather(b);
      const std::optional<std::size_t> next = advance(b);
      last_ = b;
      if (next && *next != b && gathered_[*next].empty()) start_gather(*next);
    }
    works_[b].wait();
    if (!bound_[b]) {
      const auto& k = layout_.bucket(b);
      for (std::size_t i = k.first; i < k.first + k.count; ++i)
        (void)params_[i]->bind_value(slice(gathered_[b].view(), i));
      bound_[b] = true;
    }
    ++in_use_[b];
  }
  void after_value(nn::Parameter<T, Memory>& p) {
    if (!sharded_) return;
    const std::size_t b = bucket_of(p);
    if (in_use_[b] == 0)
      throw Error(fmt::format("FlatParameters: release_value of '{}' without a matching acquire_value", p.name()),
                  rank_->id());
    --in_use_[b];
  }

  //! Records `b` as the next bucket used (first pass) or finds it in the recorded order; returns the bucket
  //! expected after it.
  std::optional<std::size_t> advance(std::size_t b) {
    if (recording_) {
      order_.push_back(b);
      return std::nullopt;
    }
    const auto it = std::find(order_.begin() + static_cast<std::ptrdiff_t>(cursor_), order_.end(), b);
    if (it == order_.end()) return std::nullopt;
    cursor_ = static_cast<std::size_t>(it - order_.begin()) + 1;
    return cursor_ < order_.size() ? std::optional(order_[cursor_]) : std::nullopt;
  }

  Rank<B>* rank_;
  Communicator* group_;
  Params params_;
  FlatLayout layout_;
  bool sharded_;
  std::unordered_map<const nn::Parameter<T, Memory>*, std::size_t> index_;
  Tensor<T, Memory> flat_;                   // replicated: the padded values of every bucket
  Tensor<T, Memory> shard_;                  // sharded: this rank's slice of every bucket
  std::vector<Tensor<T, Memory>> gathered_;  // sharded: each bucket's values while gathered
  std::vector<Work> works_;                  // each bucket's gather in flight
  std::vector<int> in_use_;                  // sharded: open reads per bucket
  std::vector<bool> bound_;                  // sharded: whether a bucket's values are bound to its gathered buffer
  std::vector<std::size_t> order_;           // sharded: buckets in the order the first pass used them
  bool recording_ = true;
  std::size_t cursor_ = 0;
  std::optional<std::size_t> last_;
  GatherStats stats_;
};

}  // namespace parallax::dp
