// parallax/comm/communicator.hpp — Communicator: the typed collective and point-to-point API of a group.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "../core/dtype.hpp"
#include "../core/memory_space.hpp"
#include "../core/view.hpp"
#include "../error.hpp"
#include "collective.hpp"
#include "transport.hpp"
#include "work.hpp"

namespace parallax {

//! A rank's handle on one communication group.
//!
//! Operations take `View<T, Space>` of any element type and memory space; the space must be the one the
//! group's transport works on (host memory for threads over host and MPI, device memory for NCCL),
//! otherwise the call throws before anything is sent. Every operation has a blocking form and an `_async` form returning `Work`. Element types: fp32,
//! bf16, fp16, int32, int64 (and fp64). Reductions of 16-bit types accumulate in fp32 and round once.
//! Within a group, every rank must issue the same collectives in the same order; the transport checks
//! this and throws on every rank, listing what each called, rather than hang. In a group of one, in-place
//! calls (all_reduce, broadcast, reduce, and the others when input and output coincide) and barriers return
//! at once without reaching the transport: TP 1 or DP 1 costs no launch and no device synchronisation.
//!
//! @code
//! Communicator& world = rank.world();
//! world.all_reduce(grads.view(), ReduceOp::avg);
//! auto tp = world.split(/*color=*/rank.id() / 2, /*key=*/rank.id(), "tp");
//! @endcode
class Communicator {
 public:
  Communicator() = default;
  explicit Communicator(std::shared_ptr<Transport> t) : t_(std::move(t)) {}

  //! False for the result of `split` with a negative color.
  [[nodiscard]] bool valid() const noexcept { return t_ != nullptr; }
  [[nodiscard]] int rank() const { return impl().rank(); }
  [[nodiscard]] int size() const { return impl().size(); }
  [[nodiscard]] const std::vector<int>& members() const { return impl().members(); }
  [[nodiscard]] const std::string& label() const { return impl().label(); }
  //! This rank's world rank.
  [[nodiscard]] int world_rank() const { return impl().members()[static_cast<std::size_t>(impl().rank())]; }
  //! "tp group {4,5}".
  [[nodiscard]] std::string describe() const { return fmt::format("{} group {{{}}}", label(), fmt::join(members(), ",")); }

  //! In place: every rank ends with the reduction of all ranks' `data`.
  template <Element T, MemorySpace Space>
  void all_reduce(View<T, Space> data, ReduceOp op = ReduceOp::sum) { all_reduce_async(data, op, false).wait(); }
  template <Element T, MemorySpace Space>
  [[nodiscard]] Work all_reduce_async(View<T, Space> data, ReduceOp op = ReduceOp::sum, bool async = true) {
    return go<Space>({CollectiveKind::all_reduce, dtype_of<T>, data.numel(), op}, data.data(), data.data(), async);
  }

  //! `in` holds size() equal chunks; rank r gets the reduction of everyone's chunk r in `out`.
  template <Element T, MemorySpace Space>
  void reduce_scatter(View<const T, Space> in, View<T, Space> out, ReduceOp op = ReduceOp::sum) {
    reduce_scatter_async(in, out, op, false).wait();
  }
  template <Element T, MemorySpace Space>
  [[nodiscard]] Work reduce_scatter_async(View<const T, Space> in, View<T, Space> out, ReduceOp op = ReduceOp::sum,
                                          bool async = true) {
    if (in.numel() != out.numel() * size())
      fail("reduce_scatter", fmt::format("input has {} elements, expected output {} x group size {} = {}", in.numel(),
                                         out.numel(), size(), out.numel() * size()));
    return go<Space>({CollectiveKind::reduce_scatter, dtype_of<T>, out.numel(), op}, in.data(), out.data(), async);
  }

  //! Every rank's `in` concatenated in rank order into every rank's `out`.
  template <Element T, MemorySpace Space>
  void all_gather(View<const T, Space> in, View<T, Space> out) { all_gather_async(in, out, false).wait(); }
  template <Element T, MemorySpace Space>
  [[nodiscard]] Work all_gather_async(View<const T, Space> in, View<T, Space> out, bool async = true) {
    if (out.numel() != in.numel() * size())
      fail("all_gather", fmt::format("output has {} elements, expected input {} x group size {} = {}", out.numel(),
                                     in.numel(), size(), in.numel() * size()));
    return go<Space>({CollectiveKind::all_gather, dtype_of<T>, in.numel()}, in.data(), out.data(), async);
  }

  //! `root`'s data copied to every rank.
  template <Element T, MemorySpace Space>
  void broadcast(View<T, Space> data, int root) { broadcast_async(data, root, false).wait(); }
  template <Element T, MemorySpace Space>
  [[nodiscard]] Work broadcast_async(View<T, Space> data, int root, bool async = true) {
    check_peer("broadcast", root, "root");
    return go<Space>({CollectiveKind::broadcast, dtype_of<T>, data.numel(), ReduceOp::sum, root}, data.data(), data.data(), async);
  }

  //! In place at `root`: the reduction of all ranks' data; other ranks' data is left unchanged.
  template <Element T, MemorySpace Space>
  void reduce(View<T, Space> data, ReduceOp op, int root) { reduce_async(data, op, root, false).wait(); }
  template <Element T, MemorySpace Space>
  [[nodiscard]] Work reduce_async(View<T, Space> data, ReduceOp op, int root, bool async = true) {
    check_peer("reduce", root, "root");
    return go<Space>({CollectiveKind::reduce, dtype_of<T>, data.numel(), op, root}, data.data(), data.data(), async);
  }

  //! Point-to-point, matched by peer and order: the n-th send to a peer meets that peer's n-th recv from us.
  template <Element T, MemorySpace Space>
  void send(View<const T, Space> data, int peer) { send_async(data, peer, false).wait(); }
  template <Element T, MemorySpace Space>
  [[nodiscard]] Work send_async(View<const T, Space> data, int peer, bool async = true) {
    check_peer("send", peer, "peer");
    return go<Space>({CollectiveKind::send, dtype_of<T>, data.numel(), ReduceOp::sum, peer}, data.data(), nullptr, async);
  }
  template <Element T, MemorySpace Space>
  void recv(View<T, Space> data, int peer) { recv_async(data, peer, false).wait(); }
  template <Element T, MemorySpace Space>
  [[nodiscard]] Work recv_async(View<T, Space> data, int peer, bool async = true) {
    check_peer("recv", peer, "peer");
    return go<Space>({CollectiveKind::recv, dtype_of<T>, data.numel(), ReduceOp::sum, peer}, nullptr, data.data(), async);
  }

  void barrier() { barrier_async(false).wait(); }
  [[nodiscard]] Work barrier_async(bool async = true) {
    if (size() == 1) return {};
    return impl().start({CollectiveKind::barrier}, nullptr, nullptr, async);
  }

  //! Collective: ranks with equal `color` form a new group ordered by (`key`, rank); color < 0 gives an
  //! invalid communicator. `label` names the group in messages.
  [[nodiscard]] Communicator split(int color, int key, std::string label) {
    return Communicator(impl().split(color, key, std::move(label)));
  }

  //! The underlying transport (for the mesh and for tests).
  [[nodiscard]] Transport& transport() const { return impl(); }

 private:
  Transport& impl() const {
    if (!t_) throw Error("Communicator: this rank is not a member of the group (empty communicator)");
    return *t_;
  }
  template <MemorySpace Space>
  Work go(CollectiveDesc d, const void* in, void* out, bool async) {
    if (std::string_view(Space::name) != impl().memory_space())
      fail(name(d.kind).data(), fmt::format("buffers are in {} memory but the group's transport works on {} memory",
                                            Space::name, impl().memory_space()));
    if (in == out && size() == 1 && d.kind != CollectiveKind::send && d.kind != CollectiveKind::recv)
      return {};  // in place in a group of one: the data is the result; nothing to queue, wait for or sync
    return impl().start(d, in, out, async);
  }
  [[noreturn]] void fail(const char* op, const std::string& why) const {
    throw Error(fmt::format("{} on {}: {}", op, describe(), why), world_rank(), describe(), op);
  }
  void check_peer(const char* op, int peer, const char* what) const {
    if (peer < 0 || peer >= size()) fail(op, fmt::format("{} {} is outside the group of size {}", what, peer, size()));
    if ((std::string_view(op) == "send" || std::string_view(op) == "recv") && peer == rank())
      fail(op, fmt::format("{} {} is this rank itself", what, peer));
  }

  std::shared_ptr<Transport> t_;
};

}  // namespace parallax
