// parallax/comm/collective.hpp — what one communication call is: its kind, element type, count and peers.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "../core/dtype.hpp"

namespace parallax {

//! How a reduction combines values; `avg` is the sum divided by the group size.
enum class ReduceOp : int { sum, avg, max, min };

[[nodiscard]] constexpr std::string_view name(ReduceOp op) noexcept {
  switch (op) {
    case ReduceOp::sum: return "sum";
    case ReduceOp::avg: return "avg";
    case ReduceOp::max: return "max";
    case ReduceOp::min: return "min";
  }
  return "?";
}

//! The kinds of communication call.
enum class CollectiveKind : int { all_reduce, reduce_scatter, all_gather, broadcast, reduce, barrier, split, send, recv };

[[nodiscard]] constexpr std::string_view name(CollectiveKind k) noexcept {
  switch (k) {
    case CollectiveKind::all_reduce: return "all_reduce";
    case CollectiveKind::reduce_scatter: return "reduce_scatter";
    case CollectiveKind::all_gather: return "all_gather";
    case CollectiveKind::broadcast: return "broadcast";
    case CollectiveKind::reduce: return "reduce";
    case CollectiveKind::barrier: return "barrier";
    case CollectiveKind::split: return "split";
    case CollectiveKind::send: return "send";
    case CollectiveKind::recv: return "recv";
  }
  return "?";
}

//! One call as every rank of a group must agree on it (the checking layer compares these).
//! `count` is the per-rank element count: the input of all_gather, the output of reduce_scatter.
//! `root` is the root of broadcast/reduce and the peer of send/recv (group rank), else -1.
struct CollectiveDesc {
  CollectiveKind kind = CollectiveKind::barrier;
  DType dtype = DType::f32;
  std::int64_t count = 0;
  ReduceOp op = ReduceOp::sum;
  int root = -1;
  std::uint64_t seq = 0;  // position in the group's sequence of collectives (1-based)

  [[nodiscard]] bool same_call(const CollectiveDesc& o) const noexcept {
    const bool reduces = kind == CollectiveKind::all_reduce || kind == CollectiveKind::reduce_scatter ||
                         kind == CollectiveKind::reduce;
    const bool rooted = kind == CollectiveKind::broadcast || kind == CollectiveKind::reduce;
    const bool typed = kind != CollectiveKind::barrier && kind != CollectiveKind::split;
    return kind == o.kind && (!typed || (dtype == o.dtype && count == o.count)) && (!reduces || op == o.op) &&
           (!rooted || root == o.root);
  }
  //! "all_reduce(bf16, 4096, sum)".
  [[nodiscard]] std::string str() const {
    switch (kind) {
      case CollectiveKind::barrier: return "barrier()";
      case CollectiveKind::split: return "split()";
      case CollectiveKind::all_reduce:
      case CollectiveKind::reduce_scatter: return fmt::format("{}({}, {}, {})", name(kind), name(dtype), count, name(op));
      case CollectiveKind::reduce: return fmt::format("reduce({}, {}, {}, root {})", name(dtype), count, name(op), root);
      case CollectiveKind::broadcast: return fmt::format("broadcast({}, {}, root {})", name(dtype), count, root);
      case CollectiveKind::send: return fmt::format("send({}, {}, to {})", name(dtype), count, root);
      case CollectiveKind::recv: return fmt::format("recv({}, {}, from {})", name(dtype), count, root);
      default: return fmt::format("{}({}, {})", name(kind), name(dtype), count);
    }
  }
};

}  // namespace parallax
