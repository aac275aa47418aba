// parallax/comm/thread_communicator.hpp — ThreadCommunicator: ranks are threads of one process, zero-copy.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <string_view>
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

//! How the thread transport reduces buffers in memory space `Space`: host-accessible spaces reduce on
//! the calling thread; device spaces specialise this next to their kernels.
template <MemorySpace Space>
struct SpaceReduce {
  static_assert(Space::host_accessible,
                "ThreadCommunicator: this memory space is not host-accessible; include the backend header that "
                "specialises parallax::detail::SpaceReduce for it");
  static void run(DType t, void* out, const void* const* in, int n, std::int64_t count, ReduceOp op) {
    reduce_buffers(t, out, in, n, count, op);
  }
  //! Optional: the reduction written into each of `outs[0..n_out)` in one pass (lets all_reduce push
  //! its slice to every rank instead of having every rank pull it afterwards).
  static void run_to(DType t, void* const* outs, int n_out, const void* const* in, int n, std::int64_t count,
                     ReduceOp op) {
    reduce_buffers(t, outs, n_out, in, n, count, op);
  }
};

//! Whether `SpaceReduce<Space>` can write one reduction into several buffers.
template <class Space>
concept PushReduce = requires(DType t, void* const* outs, const void* const* in, std::int64_t c, ReduceOp op) {
  SpaceReduce<Space>::run_to(t, outs, 1, in, 1, c, op);
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
//! device memory of one GPU shared by several ranks).
//!
//! Zero-copy: ranks read each other's buffers directly. An all-reduce of n bytes on N ranks has rank r
//! reduce slice r of every buffer (in rank order, so results are bitwise repeatable) and write the result
//! into slice r of every buffer in the same pass (host memory; device spaces copy the other N-1 reduced
//! slices after a barrier instead): about n bytes read and n written per rank, no root, no global lock.
//! Every collective starts by exchanging its description, so mismatched calls are always detected, at no cost.
//! Async calls run in issue order on a per-group communication thread.
template <MemorySpace Space>
class ThreadCommunicator final : public Transport {
 public:
  ThreadCommunicator(std::shared_ptr<detail::ThreadGroup> group, int rank) : g_(std::move(group)), r_(rank) {}

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
    if (d.kind == CollectiveKind::send || d.kind == CollectiveKind::recv) {
      Work w(post(d, in, out));
      if (!async) w.wait();
      return w;
    }
    d.seq = ++seq_;
    if (async || (worker_ && worker_->busy())) {
      if (!worker_) worker_ = std::make_unique<detail::Worker>();
      Work w(worker_->submit([this, d, in, out] { run(d, in, out); }));
      if (!async) w.wait();
      return w;
    }
    run(d, in, out);
    return {};
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
      result = std::make_shared<ThreadCommunicator>(std::move(child), me);
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

  // One collective, on the calling thread (inline or the worker).
  void run(const CollectiveDesc& d, const void* in, void* out) {
    refuse_if_broken(d);
    auto& s = g_->slot(r_);
    s.desc = d;
    s.in = in;
    s.out = out;
    const int n = size();
    g_->arrive_and_wait(r_, d);
    g_->check_same_call(r_);
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
        if constexpr (detail::PushReduce<Space>) {
          // One pass: the slice, once reduced, is written straight into every rank's buffer (nobody else
          // touches slice r of any buffer), so each rank reads and writes its slice of n buffers once.
          if (d.kind == CollectiveKind::all_reduce) {
            std::vector<void*> outs(static_cast<std::size_t>(n));
            for (int j = 0; j < n; ++j) outs[static_cast<std::size_t>(j)] = atm(g_->slot(j).out, b);
            if (e > b) detail::SpaceReduce<Space>::run_to(d.dtype, outs.data(), n, ins.data(), n, e - b, d.op);
            break;
          }
        }
        void* dst = d.kind == CollectiveKind::all_reduce ? out : g_->slot(d.root).out;
        if (e > b) detail::SpaceReduce<Space>::run(d.dtype, atm(dst, b), ins.data(), n, e - b, d.op);
        g_->arrive_and_wait(r_, d);
        if (d.kind == CollectiveKind::all_reduce)
          for (int j = 0; j < n; ++j) {
            const auto [bj, ej] = detail::chunk(d.count, n, j);
            if (j != r_ && ej > bj) Space::copy(atm(out, bj), at(g_->slot(j).out, bj), bytes(ej - bj));
          }
        break;
      }
      case CollectiveKind::reduce_scatter: {
        for (int j = 0; j < n; ++j) ins[static_cast<std::size_t>(j)] = at(g_->slot(j).in, r_ * d.count);
        if (d.count > 0) detail::SpaceReduce<Space>::run(d.dtype, out, ins.data(), n, d.count, d.op);
        break;
      }
      case CollectiveKind::all_gather:
        for (int j = 0; j < n; ++j) {
          void* dst = atm(out, j * d.count);
          if (d.count > 0 && dst != g_->slot(j).in) Space::copy(dst, g_->slot(j).in, bytes(d.count));
        }
        break;
      case CollectiveKind::broadcast:
        if (r_ != d.root && d.count > 0) Space::copy(out, g_->slot(d.root).out, bytes(d.count));
        break;
      default:  // barrier
        break;
    }
    g_->arrive_and_wait(r_, d);  // nobody returns (and frees a buffer) while others still read it
    g_->record(r_, d);
  }

  // Posts a send or receive; the second of a matching pair copies the data.
  std::shared_ptr<detail::WorkState> post(const CollectiveDesc& d, const void* in, void* out) {
    auto m = std::make_shared<detail::Mail>();
    m->desc = d;
    m->src = in;
    m->dst = out;
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
      else if (snd.desc.count > 0)
        Space::copy(rcv.dst, snd.src, static_cast<std::size_t>(snd.desc.count) * size_of(snd.desc.dtype));
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
  std::uint64_t seq_ = 0;
  std::unique_ptr<detail::Worker> worker_;  // last: joined before the group goes away
};

}  // namespace parallax
