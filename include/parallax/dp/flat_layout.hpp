// parallax/dp/flat_layout.hpp — where each parameter sits in the flat, bucketed, padded buffers of a DP group.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include <fmt/format.h>

#include "../error.hpp"

namespace parallax::dp {

//! The flat layout that data-parallel gradient buckets and ZeRO shards share.
//!
//! Parameters (their local, e.g. TP-sharded, tensors) are laid out one after the other in the order given
//! and grouped into buckets: a bucket closes when the next parameter would take it past `bucket_bytes`,
//! and a parameter larger than that gets a bucket of its own. Each bucket is padded with zeros to a
//! multiple of the group size `parts`, and rank r owns the r-th of its `parts` equal slices: the
//! reduce-scatter of a bucket lands exactly on its owners, and all-gathering the slices rebuilds it.
//! Rank r's shard is its slice of every bucket, one after the other. The padding is what the layout
//! adds to the parameters' own elements: `padding()`, reported, never hidden.
//! @code
//! dp::FlatLayout layout(std::vector<std::int64_t>{4096, 64, 64}, /*element_bytes=*/2, /*bucket_bytes=*/8192,
//! /*parts=*/4); layout.buckets().size() == 2;  layout.padding() == 0;  layout.shard_numel() == 1056;
//! @endcode
class FlatLayout {
 public:
  //! One bucket: elements [offset, offset + padded) of the full flat buffer hold parameters
  //! [first, first + count), `numel` elements, then `padded - numel` zeros. Each rank owns `padded / parts`
  //! of them; rank r's slice sits at `shard_offset` in its shard.
  struct Bucket {
    std::int64_t offset = 0, numel = 0, padded = 0;
    std::size_t first = 0, count = 0;
    std::int64_t shard_offset = 0;
    [[nodiscard]] std::int64_t slice(int parts) const noexcept { return padded / parts; }
  };
  //! Where one parameter sits: its bucket and its offset in the full flat buffer.
  struct Slot {
    std::size_t bucket = 0;
    std::int64_t offset = 0, numel = 0;
  };

  FlatLayout() = default;
  //! Lays out parameters of `numels` elements (of `element_bytes` each) in buckets of at most `bucket_bytes`
  //! for a group of `parts` ranks.
  FlatLayout(std::span<const std::int64_t> numels, std::size_t element_bytes, std::size_t bucket_bytes, int parts)
      : parts_(parts) {
    if (parts < 1) throw Error(fmt::format("FlatLayout: group size {} is not positive", parts));
    if (element_bytes == 0 || bucket_bytes < element_bytes)
      throw Error(fmt::format("FlatLayout: bucket_bytes {} holds no element of {} bytes", bucket_bytes, element_bytes));
    const auto cap = static_cast<std::int64_t>(bucket_bytes / element_bytes);
    for (std::size_t i = 0; i < numels.size(); ++i) {
      const std::int64_t n = numels[i];
      if (n < 0) throw Error(fmt::format("FlatLayout: parameter {} has {} elements", i, n));
      if (buckets_.empty() || (buckets_.back().numel > 0 && buckets_.back().numel + n > cap)) {
        close_last();
        buckets_.push_back(Bucket{padded_numel_, 0, 0, i, 0, shard_numel_});
      }
      Bucket& b = buckets_.back();
      slots_.push_back(Slot{buckets_.size() - 1, b.offset + b.numel, n});
      b.numel += n;
      ++b.count;
      numel_ += n;
    }
    close_last();
  }

  //! Number of ranks the buffers are sharded over.
  [[nodiscard]] int parts() const noexcept { return parts_; }
  [[nodiscard]] const std::vector<Bucket>& buckets() const noexcept { return buckets_; }
  [[nodiscard]] const Bucket& bucket(std::size_t b) const { return buckets_.at(b); }
  [[nodiscard]] const Slot& slot(std::size_t param) const { return slots_.at(param); }
  [[nodiscard]] std::size_t parameter_count() const noexcept { return slots_.size(); }
  //! The parameters' own elements (P), the full flat buffer's elements (P plus padding), and one rank's
  //! shard (the full buffer divided by `parts`).
  [[nodiscard]] std::int64_t numel() const noexcept { return numel_; }
  [[nodiscard]] std::int64_t padded_numel() const noexcept { return padded_numel_; }
  [[nodiscard]] std::int64_t shard_numel() const noexcept { return shard_numel_; }
  //! Zeros added so that every bucket divides into `parts` equal slices.
  [[nodiscard]] std::int64_t padding() const noexcept { return padded_numel_ - numel_; }
  //! Full-buffer offset of rank `r`'s slice of bucket `b`.
  [[nodiscard]] std::int64_t slice_offset(std::size_t b, int r) const {
    const Bucket& k = bucket(b);
    return k.offset + r * k.slice(parts_);
  }

  //! Calls f(param, param_offset, full_offset, n) for each run of a parameter's elements within the full-buffer
  //! range [begin, end) of bucket `b` (padding is skipped).
  template <class F>
  void for_each_piece(std::size_t b, std::int64_t begin, std::int64_t end, F&& f) const {
    const Bucket& k = bucket(b);
    for (std::size_t i = k.first; i < k.first + k.count; ++i) {
      const Slot& s = slots_[i];
      const std::int64_t lo = std::max(begin, s.offset), hi = std::min(end, s.offset + s.numel);
      if (lo < hi) f(i, lo - s.offset, lo, hi - lo);
    }
  }

 private:
  void close_last() {
    if (buckets_.empty()) return;
    Bucket& b = buckets_.back();
    b.padded = (b.numel + parts_ - 1) / parts_ * parts_;
    padded_numel_ = b.offset + b.padded;
    shard_numel_ = b.shard_offset + b.slice(parts_);
  }

  int parts_ = 1;
  std::vector<Bucket> buckets_;
  std::vector<Slot> slots_;
  std::int64_t numel_ = 0, padded_numel_ = 0, shard_numel_ = 0;
};

}  // namespace parallax::dp
