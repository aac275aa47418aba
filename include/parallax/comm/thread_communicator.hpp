// parallax/comm/thread_communicator.hpp — ThreadCommunicator: ranks are threads of one process, zero-copy.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "../core/dtype.hpp"
#include "../core/memory_space.hpp"
#include "../error.hpp"
#include "collective.hpp"
#include "detail/host_reduce.hpp"
#include "detail/thread_group.hpp"
#include "detail/worker.hpp"
#include "transport.hpp"

namespace parallax {

namespace detail {

//! How the thread transport moves and reduces data in memory space `Space`, ordered after the work each rank
//! queued before its call. A rank's endpoint owns one channel; a call goes: `mark()` when the rank issues it,
//! `after(m)` for the marker of every rank whose buffers it touches, the data operations, then `finish()`, which
//! returns once they are complete (other ranks read the results after the next barrier).
//!
//! Host-accessible spaces: the operations run at once on the calling thread, and there is nothing to order.
//! Device spaces specialise this next to their kernels (`backend/cuda/thread_channel.cuh`: a rank's compute
//! stream is marked with an event, its channel's stream waits for the events and runs the kernels and copies).
template <MemorySpace Space>
class SpaceChannel {
  static_assert(Space::host_accessible,
                "ThreadCommunicator: this memory space is not host-accessible; include the backend header that "
                "specialises parallax::detail::SpaceChannel for it");

 public:
  //! What a rank queues its own work on (a device stream); nothing here.
  struct stream_type {};
  //! The point a rank's own work had reached when it issued a call (copyable); nothing here.
  struct marker {};

  explicit SpaceChannel(stream_type = {}) noexcept {}
  [[nodiscard]] marker mark() const noexcept { return {}; }
  void after(const marker&) noexcept {}
  //! out = in[0] op ... op in[n-1] (`reduce_buffers`' arithmetic and order).
  void reduce(DType t, void* out, const void* const* in, int n, std::int64_t count, ReduceOp op) {
    reduce_buffers(t, out, in, n, count, op);
  }
  //! The same reduction written into each of `outs[0..n_out)` in one pass.
  void reduce_to(DType t, void* const* outs, int n_out, const void* const* in, int n, std::int64_t count,
                 ReduceOp op) {
    reduce_buffers(t, outs, n_out, in, n, count, op);
  }
  void copy(void* dst, const void* src, std::size_t bytes) { Space::copy(dst, src, bytes); }
  void finish() noexcept {}
};

//! [begin, end) of chunk i when `count` elements are split over `n` ranks as evenly as possible.
inline std::pair<std::int64_t, std::int64_t> chunk(std::int64_t count, int n, int i) {
  return {count * i / n, count * (i + 1) / n};
}

//! Waits for a posted send or receive to be matched and copied.
class MailWork final : public WorkState {
 public:
  MailWork(std::shared_ptr<ThreadGroup> g, int r, std::shared_ptr<Mail> m) : g_(std::move(g)), r_(r), m_(std::move(m)) {}
  void wait() override {
    std::unique_lock lock(g_->mutex);
    g_->wait_until(lock, r_, m_->desc, [&] { return m_->done; }, [&] {
      const int peer = g_->world_rank(m_->desc.root);
      return fmt::format("rank {} did not post the matching {}", peer,
                         m_->desc.kind == CollectiveKind::send ? "recv" : "send");
    });
    if (!m_->error.empty())
      throw Error(m_->error, g_->world_rank(r_), g_->describe(), std::string(name(m_->desc.kind)));
  }
  bool ready() override {
    std::lock_guard lock(g_->mutex);
    return m_->done;
  }

 private:
  std::shared_ptr<ThreadGroup> g_;
  int r_;
  std::shared_ptr<Mail> m_;
};

}  // namespace detail

//! Transport for ranks that are threads of one process, over memory space `Space` (host memory, or
//! device memory of one GPU shared by several ranks: there each rank's calls are ordered after its compute
//! stream by events, see `detail::SpaceChannel`).
//!
//! Zero-copy: ranks read each other's buffers directly. An all-reduce of n bytes on N ranks has rank r
//! reduce slice r of every buffer (in rank order, so results are bitwise repeatable) and write the result
//! into slice r of every buffer in the same pass: about n bytes read and n written per rank, no root, no
//! global lock.
//! Every collective starts by exchanging its description, so mismatched calls are always detected, at no cost.
//! Async calls run in issue order on a per-group communication thread. Under `LaunchOptions::in_order` every call
//! goes there and starts only once the rank's previous call on the group completed, as on an NCCL stream.
template <MemorySpace Space>
class ThreadCommunicator final : public Transport {
 public:
  using stream_type = typename detail::SpaceChannel<Space>::stream_type;

  //! Rank `rank` of `group`; `stream` is what the rank queues its own work on (its compute stream, for device
  //! memory), which every call is ordered after.
  ThreadCommunicator(std::shared_ptr<detail::ThreadGroup> group, int rank, stream_type stream = {})
      : g_(std::move(group)), r_(rank), stream_(stream), channel_(stream) {}

  //! Endpoints of a new group of world ranks `members` (rank i of the result belongs to thread members[i]).
  [[nodiscard]] static std::shared_ptr<detail::ThreadGroup> make_group(std::shared_ptr<detail::ThreadWorld> world,
                                                                       std::vector<int> members, std::string label) {
    return detail::ThreadGroup::create(std::move(world), std::move(members), std::move(label));
  }

  int rank() const noexcept override { return r_; }
  int size() const noexcept override { return g_->size(); }
  const std::vector<int>& members() const noexcept override { return g_->members(); }
  const std::string& label() const noexcept override { return g_->label(); }
  std::string_view memory_space() const noexcept override { return Space::name; }

  Work start(CollectiveDesc d, const void* in, void* out, bool async) override {
    const bool p2p = d.kind == CollectiveKind::send || d.kind == CollectiveKind::recv;
    // In order (as NCCL on a stream), every call queues on the group's worker, which starts it once the previous
    // one completed, while the issuing thread goes on (a send or receive waits for its match there). Otherwise a
    // send or receive is posted at once, and a collective runs inline unless async or behind async ones.
    const bool in_order = g_->world().in_order();
    if (!p2p) d.seq = ++seq_;
    Marker ready = channel_.mark();  // now, on the issuing thread: what the rank queued so far
    if (p2p && !in_order) {
      Work w(post(d, in, out, std::move(ready)));
      if (!async) w.wait();
      return w;
    }
    if (!p2p && !in_order && !async && !(worker_ && worker_->busy())) {
      run(d, in, out, ready);
      return {};
    }
    if (!worker_) worker_ = std::make_unique<detail::Worker>();
    Work w(worker_->submit([this, d, in, out, ready, p2p] {
      if (p2p)
        Work(post(d, in, out, ready)).wait();
      else
        run(d, in, out, ready);
    }));
    if (!async) w.wait();
    return w;
  }

  std::shared_ptr<Transport> split(int color, int key, std::string label) override {
    CollectiveDesc d{CollectiveKind::split};
    d.seq = ++seq_;
    if (worker_ && worker_->busy()) worker_->submit([] {})->wait();  // keep issue order
    refuse_if_broken(d);
    auto& s = g_->slot(r_);
    s.desc = d;
    s.color = color;
    s.key = key;
    g_->arrive_and_wait(r_, d);
    g_->check_same_call(r_);
    std::vector<int> mine;  // group ranks with my color, ordered by (key, rank)
    for (int j = 0; j < size(); ++j)
      if (color >= 0 && g_->slot(j).color == color) mine.push_back(j);
    std::stable_sort(mine.begin(), mine.end(), [&](int a, int b) { return g_->slot(a).key < g_->slot(b).key; });
    if (!mine.empty() && mine.front() == r_) {
      std::vector<int> world;
      for (int j : mine) world.push_back(g_->world_rank(j));
      s.child = make_group(g_->world_ptr(), std::move(world), std::move(label));
    }
    g_->arrive_and_wait(r_, d);
    std::shared_ptr<Transport> result;
    if (!mine.empty()) {
      auto child = g_->slot(mine.front()).child;
      const int me = static_cast<int>(std::find(mine.begin(), mine.end(), r_) - mine.begin());
      result = std::make_shared<ThreadCommunicator>(std::move(child), me, stream_);
    }
    g_->arrive_and_wait(r_, d);
    s.child.reset();
    g_->record(r_, d);
    return result;
  }

 private:
  // Throws before touching our slot if the group broke: ranks still reporting a mismatch read every slot.
  void refuse_if_broken(const CollectiveDesc& d) {
    std::lock_guard lock(g_->mutex);
    g_->check_usable(r_, d);
  }

  using Marker = typename detail::SpaceChannel<Space>::marker;

  // One collective, on the calling thread (inline or the worker); `ready` marks the work the rank queued before it.
  void run(const CollectiveDesc& d, const void* in, void* out, const Marker& ready) {
    refuse_if_broken(d);
    auto& s = g_->slot(r_);
    s.desc = d;
    s.in = in;
    s.out = out;
    s.ready = &ready;
    const int n = size();
    g_->arrive_and_wait(r_, d);
    g_->check_same_call(r_);
    if (d.kind != CollectiveKind::barrier)  // every rank's buffers may be touched: after everyone's work
      for (int j = 0; j < n; ++j) channel_.after(*static_cast<const Marker*>(g_->slot(j).ready));
    const std::size_t esz = size_of(d.dtype);
    auto at = [esz](const void* p, std::int64_t i) { return static_cast<const std::byte*>(p) + i * static_cast<std::int64_t>(esz); };
    auto atm = [esz](void* p, std::int64_t i) { return static_cast<std::byte*>(p) + i * static_cast<std::int64_t>(esz); };
    auto bytes = [esz](std::int64_t k) { return static_cast<std::size_t>(k) * esz; };
    std::vector<const void*> ins(static_cast<std::size_t>(n));
    switch (d.kind) {
      case CollectiveKind::all_reduce:
      case CollectiveKind::reduce: {
        // Each rank reduces its slice; all_reduce then gathers the slices, reduce leaves them at the root.
        const auto [b, e] = detail::chunk(d.count, n, r_);
        for (int j = 0; j < n; ++j) ins[static_cast<std::size_t>(j)] = at(g_->slot(j).out, b);
        if (d.kind == CollectiveKind::all_reduce) {
          // One pass: the slice, once reduced, is written straight into every rank's buffer (nobody else
          // touches slice r of any buffer), so each rank reads and writes its slice of n buffers once.
          std::vector<void*> outs(static_cast<std::size_t>(n));
          for (int j = 0; j < n; ++j) outs[static_cast<std::size_t>(j)] = atm(g_->slot(j).out, b);
          if (e > b) channel_.reduce_to(d.dtype, outs.data(), n, ins.data(), n, e - b, d.op);
        } else if (e > b) {
          channel_.reduce(d.dtype, atm(g_->slot(d.root).out, b), ins.data(), n, e - b, d.op);
        }
        break;
      }
      case CollectiveKind::reduce_scatter: {
        for (int j = 0; j < n; ++j) ins[static_cast<std::size_t>(j)] = at(g_->slot(j).in, r_ * d.count);
        if (d.count > 0) channel_.reduce(d.dtype, out, ins.data(), n, d.count, d.op);
        break;
      }
      case CollectiveKind::all_gather:
        for (int j = 0; j < n; ++j) {
          void* dst = atm(out, j * d.count);
          if (d.count > 0 && dst != g_->slot(j).in) channel_.copy(dst, g_->slot(j).in, bytes(d.count));
        }
        break;
      case CollectiveKind::broadcast:
        if (r_ != d.root && d.count > 0) channel_.copy(out, g_->slot(d.root).out, bytes(d.count));
        break;
      default:  // barrier
        break;
    }
    channel_.finish();
    g_->arrive_and_wait(r_, d);  // nobody returns (and frees a buffer) while others still read it
    g_->record(r_, d);
  }

  // Posts a send or receive; the second of a matching pair copies the data.
  // `ready` marks the work the rank queued before the call (taken on the issuing thread).
  std::shared_ptr<detail::WorkState> post(const CollectiveDesc& d, const void* in, void* out, Marker ready) {
    auto m = std::make_shared<detail::Mail>();
    m->desc = d;
    m->src = in;
    m->dst = out;
    if constexpr (!std::is_empty_v<Marker>) {  // the copy may run later, on the peer's thread
      auto kept = std::make_shared<const Marker>(std::move(ready));
      m->ready = kept.get();
      m->keep = std::move(kept);
    }
    const int peer = d.root;
    const bool sending = d.kind == CollectiveKind::send;
    std::shared_ptr<detail::Mail> match;
    {
      std::lock_guard lock(g_->mutex);
      g_->check_usable(r_, d);
      auto& waiting = sending ? g_->recvs(r_, peer) : g_->sends(peer, r_);
      if (waiting.empty()) {
        (sending ? g_->sends(r_, peer) : g_->recvs(peer, r_)).push_back(m);
      } else {
        match = waiting.front();
        waiting.pop_front();
      }
    }
    if (match) {
      detail::Mail& snd = sending ? *m : *match;
      detail::Mail& rcv = sending ? *match : *m;
      std::string error;
      if (snd.desc.dtype != rcv.desc.dtype || snd.desc.count != rcv.desc.count)
        error = fmt::format("point-to-point mismatch on {}: rank {} {}, rank {} {}", g_->describe(),
                            g_->world_rank(sending ? r_ : peer), snd.desc.str(), g_->world_rank(sending ? peer : r_),
                            rcv.desc.str());
      else if (snd.desc.count > 0) {
        if constexpr (!std::is_empty_v<Marker>)
          for (const detail::Mail* mail : {&snd, &rcv}) channel_.after(*static_cast<const Marker*>(mail->ready));
        channel_.copy(rcv.dst, snd.src, static_cast<std::size_t>(snd.desc.count) * size_of(snd.desc.dtype));
        channel_.finish();
      }
      {
        std::lock_guard lock(g_->mutex);
        m->done = match->done = true;
        m->error = match->error = error;
        g_->slot(r_).history.push(d);
        g_->slot(peer).history.push(match->desc);
        g_->cv.notify_all();
      }
    }
    return std::make_shared<detail::MailWork>(g_, r_, m);
  }

  std::shared_ptr<detail::ThreadGroup> g_;
  int r_;
  stream_type stream_;  // the rank's own work (given to the groups split from this one)
  detail::SpaceChannel<Space> channel_;
  std::uint64_t seq_ = 0;
  std::unique_ptr<detail::Worker> worker_;  // last: joined before the group goes away
};

}  // namespace parallax
