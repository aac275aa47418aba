// parallax/comm/detail/thread_group.hpp — the rendezvous shared by the rank threads of one group.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "../../error.hpp"
#include "../collective.hpp"
#include "call_history.hpp"
#include "thread_world.hpp"

namespace parallax::detail {

//! A posted send or receive waiting for its match.
struct Mail {
  CollectiveDesc desc;
  const void* src = nullptr;  // send side
  void* dst = nullptr;        // recv side
  const void* ready = nullptr;       // the poster's marker (`SpaceChannel<Space>::marker`), where it has one
  std::shared_ptr<const void> keep;  // owns `ready` until the copy is done
  bool done = false;
  std::string error;
};

//! State shared by the N rank threads of one group: per-rank slots, a generation barrier with timeout
//! and abort, and point-to-point mailboxes. The group's mutex guards only the bookkeeping; data moves
//! outside it, each rank on its own slice.
class ThreadGroup : public Waitable {
 public:
  struct Slot {
    CollectiveDesc desc;
    const void* in = nullptr;
    void* out = nullptr;
    const void* ready = nullptr;  // the call's marker (`SpaceChannel<Space>::marker`), valid during the call
    std::uint64_t arrivals = 0;
    CallHistory history;
    int color = 0, key = 0;
    std::shared_ptr<ThreadGroup> child;
  };

  ThreadGroup(std::shared_ptr<ThreadWorld> world, std::vector<int> members, std::string label)
      : world_(std::move(world)),
        members_(std::move(members)),
        label_(std::move(label)),
        slots_(members_.size()),
        sends_(members_.size() * members_.size()),
        recvs_(members_.size() * members_.size()) {}

  static std::shared_ptr<ThreadGroup> create(std::shared_ptr<ThreadWorld> world, std::vector<int> members,
                                             std::string label) {
    auto g = std::make_shared<ThreadGroup>(world, std::move(members), std::move(label));
    world->enroll(g);
    return g;
  }

  [[nodiscard]] int size() const noexcept { return static_cast<int>(members_.size()); }
  [[nodiscard]] const std::vector<int>& members() const noexcept { return members_; }
  [[nodiscard]] const std::string& label() const noexcept { return label_; }
  [[nodiscard]] ThreadWorld& world() const noexcept { return *world_; }
  [[nodiscard]] const std::shared_ptr<ThreadWorld>& world_ptr() const noexcept { return world_; }
  [[nodiscard]] Slot& slot(int r) noexcept { return slots_[static_cast<std::size_t>(r)]; }
  [[nodiscard]] std::string describe() const { return fmt::format("{} group {{{}}}", label_, fmt::join(members_, ",")); }
  [[nodiscard]] int world_rank(int r) const { return members_[static_cast<std::size_t>(r)]; }

  //! Waits until every rank of the group arrived. `what` describes the call for error messages.
  void arrive_and_wait(int r, const CollectiveDesc& what) {
    std::unique_lock lock(mutex);
    check_usable(r, what);
    const std::uint64_t gen = generation_;
    ++slot(r).arrivals;
    if (++arrived_ == size()) {
      arrived_ = 0;
      ++generation_;
      cv.notify_all();
      return;
    }
    wait_until(lock, r, what, [&] { return generation_ != gen; }, [&] {
      std::vector<int> missing, here;
      for (int j = 0; j < size(); ++j) (slot(j).arrivals < slot(r).arrivals ? missing : here).push_back(j);
      std::string last;
      for (int j : missing) last += fmt::format("; rank {} last completed {}", world_rank(j), slot(j).history.last());
      return fmt::format("ranks {{{}}} have not arrived (arrived: {{{}}}){}", fmt::join(to_world(missing), ","),
                         fmt::join(to_world(here), ","), last);
    });
  }

  //! Adds a completed call to rank r's history.
  void record(int r, const CollectiveDesc& d) {
    std::lock_guard lock(mutex);
    slot(r).history.push(d);
  }

  //! Blocks (with the group's timeout and the world's abort) until `ready()`; `missing()` explains a timeout.
  template <class Ready, class Missing>
  void wait_until(std::unique_lock<std::mutex>& lock, int r, const CollectiveDesc& what, Ready ready, Missing missing) {
    const auto deadline = std::chrono::steady_clock::now() + world_->timeout();
    while (!ready()) {
      if (world_->aborted()) {
        lock.unlock();
        world_->throw_if_aborted(world_rank(r), fmt::format("{} #{} on {}", what.str(), what.seq, describe()));
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        const std::string why = fmt::format("{} #{} on {} timed out after {} ms: {}", what.str(), what.seq,
                                            describe(), world_->timeout().count(), missing());
        break_with(why);
        throw Error(why, world_rank(r), describe(), std::string(name(what.kind)));
      }
      cv.wait_until(lock, std::min(deadline, std::chrono::steady_clock::now() + std::chrono::milliseconds(200)));
    }
  }

  //! After the first barrier of a collective: every rank's call must match; otherwise every rank throws
  //! the same message listing what each called.
  void check_same_call(int r) {
    const CollectiveDesc& d0 = slot(0).desc;
    bool same = true;
    for (int j = 1; j < size(); ++j) same = same && slot(j).desc.same_call(d0);
    if (same) return;
    std::string calls;
    for (int j = 0; j < size(); ++j)
      calls += fmt::format("{}rank {} {}", j ? ", " : "", world_rank(j), slot(j).desc.str());
    const std::string why = fmt::format("collective #{} on {}: mismatched calls: {}", d0.seq, describe(), calls);
    {
      std::lock_guard l(mutex);
      break_with(why);
    }
    throw Error(why, world_rank(r), describe(), std::string(name(slot(r).desc.kind)));
  }

  //! Point-to-point queues: sends posted from `src` to `dst` (group ranks) and receives waiting for them.
  std::deque<std::shared_ptr<Mail>>& sends(int src, int dst) { return sends_[index(src, dst)]; }
  std::deque<std::shared_ptr<Mail>>& recvs(int src, int dst) { return recvs_[index(src, dst)]; }

  void check_usable(int r, const CollectiveDesc& what) const {
    if (broken_)
      throw Error(fmt::format("{} on {}: the group is unusable after an earlier timeout or mismatch: {}", what.str(),
                              describe(), broken_why_),
                  world_rank(r), describe(), std::string(name(what.kind)));
  }

 private:
  // Marks the group unusable, keeping the first reason (under `mutex`).
  void break_with(const std::string& why) {
    if (!broken_) broken_why_ = why;
    broken_ = true;
  }

  std::size_t index(int src, int dst) const { return static_cast<std::size_t>(src * size() + dst); }
  std::vector<int> to_world(const std::vector<int>& rs) const {
    std::vector<int> w;
    for (int j : rs) w.push_back(world_rank(j));
    return w;
  }

  std::shared_ptr<ThreadWorld> world_;
  std::vector<int> members_;
  std::string label_;
  std::vector<Slot> slots_;
  std::vector<std::deque<std::shared_ptr<Mail>>> sends_, recvs_;
  int arrived_ = 0;
  std::uint64_t generation_ = 0;
  bool broken_ = false;
  std::string broken_why_;  // the first failure that broke the group
};

}  // namespace parallax::detail
