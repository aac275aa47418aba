// Tests for the ordering protocol of parallax/comm/thread_communicator.hpp's `detail::SpaceChannel`, the hook a
// device memory space uses to run the thread transport's reductions and copies asynchronously (cuda:
// backend/cuda/thread_channel.cuh). Here a fake device space emulates streams on the host: a rank's "kernels" stay
// queued on its stream until something waits for them, and the channel's own operations stay queued until
// `finish()`. A transport that forgot to wait for a rank's marker would read that rank's stale input; one that
// forgot `finish()` before a barrier would let other ranks read stale results. Every collective and send/recv is
// checked that way, on 4 ranks.
//
// Catch2 is not thread-safe: rank threads only record what they saw; the main thread asserts after they join.
#include <parallax/backend/host/memory.hpp>
#include <parallax/comm/communicator.hpp>
#include <parallax/comm/detail/thread_world.hpp>
#include <parallax/comm/thread_communicator.hpp>

#include <catch2/catch.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

namespace px = parallax;

//! Host memory under another name: a "device" whose work is queued on fake streams.
struct FakeDevice : px::host::Memory {
  static constexpr const char* name = "fake_device";
  static constexpr bool host_accessible = false;
};

//! A stream: operations run only when something waits for them.
class FakeStream {
 public:
  void launch(std::function<void()> op) {
    std::lock_guard lock(mutex_);
    queued_.push_back(std::move(op));
  }
  //! How many operations were ever launched (an event recorded now completes when that many have run).
  [[nodiscard]] std::size_t position() {
    std::lock_guard lock(mutex_);
    return ran_ + queued_.size();
  }
  void run_until(std::size_t position) {
    std::lock_guard lock(mutex_);
    while (ran_ < position && !queued_.empty()) {
      queued_.front()();
      queued_.pop_front();
      ++ran_;
    }
  }
  void synchronize() { run_until(position()); }

 private:
  std::mutex mutex_;
  std::deque<std::function<void()>> queued_;
  std::size_t ran_ = 0;
};

}  // namespace

//! The fake device's channel: waiting for a marker runs the marked rank's queued work (the event completes);
//! reductions and copies are queued and run at `finish()`.
template <>
class parallax::detail::SpaceChannel<FakeDevice> {
 public:
  using stream_type = FakeStream*;
  struct Mark {
    FakeStream* stream;
    std::size_t position;
  };
  using marker = std::shared_ptr<const Mark>;

  explicit SpaceChannel(FakeStream* compute = nullptr) : compute_(compute) {}
  [[nodiscard]] marker mark() const { return std::make_shared<const Mark>(Mark{compute_, compute_->position()}); }
  void after(const marker& m) { m->stream->run_until(m->position); }
  void reduce(DType t, void* out, const void* const* in, int n, std::int64_t count, ReduceOp op) {
    reduce_to(t, &out, 1, in, n, count, op);
  }
  void reduce_to(DType t, void* const* outs, int n_out, const void* const* in, int n, std::int64_t count,
                 ReduceOp op) {
    std::vector<void*> o(outs, outs + n_out);
    std::vector<const void*> i(in, in + n);
    queued_.push_back([=] { reduce_buffers(t, o.data(), n_out, i.data(), n, count, op); });
  }
  void copy(void* dst, const void* src, std::size_t bytes) {
    queued_.push_back([=] { std::memcpy(dst, src, bytes); });
  }
  void finish() {
    for (auto& op : queued_) op();
    queued_.clear();
  }

 private:
  FakeStream* compute_;
  std::vector<std::function<void()>> queued_;
};

namespace {

using View = px::View<float, FakeDevice>;
using CView = px::View<const float, FakeDevice>;

//! Queues "a kernel" writing f(i) into x on `stream`.
template <class F>
void fill_later(FakeStream& stream, std::vector<float>& x, F f) {
  stream.launch([&x, f] {
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = f(static_cast<int>(i));
  });
}

}  // namespace

TEST_CASE("ThreadCommunicator orders device work: after each rank's queued kernels, finished before the barrier",
          "[comm][thread][channel]") {
  constexpr int n = 4;
  constexpr int count = 1000;  // all_reduce slices of 250
  auto world = std::make_shared<px::detail::ThreadWorld>(n, std::chrono::seconds(60));
  std::vector<int> members{0, 1, 2, 3};
  auto group = px::ThreadCommunicator<FakeDevice>::make_group(world, members, "world");
  std::vector<FakeStream> streams(n);
  std::vector<std::vector<std::string>> wrong(n);
  std::vector<std::string> errors(n);

  auto body = [&](int r) {
    try {
      FakeStream& mine = streams[static_cast<std::size_t>(r)];
      px::Communicator comm(std::make_shared<px::ThreadCommunicator<FakeDevice>>(group, r, &mine));
      auto expect = [&](const char* what, const std::vector<float>& got, auto want) {
        mine.synchronize();  // the rank reads on the host: its stream first
        for (std::size_t i = 0; i < got.size(); ++i)
          if (got[i] != want(static_cast<int>(i))) {
            wrong[static_cast<std::size_t>(r)].push_back(
                std::string(what) + ": element " + std::to_string(i) + " is " + std::to_string(got[i]));
            return;
          }
      };
      std::vector<float> x(count, 0.f), gathered(4 * count, 0.f), scattered(count / 4, 0.f);

      fill_later(mine, x, [r](int) { return float(r + 1); });
      comm.all_reduce(View(x.data(), px::Shape{count}));
      expect("all_reduce", x, [](int) { return 10.f; });

      fill_later(mine, x, [r](int i) { return float(r * 1000 + i); });
      comm.reduce(View(x.data(), px::Shape{count}), px::ReduceOp::max, 2);
      expect("reduce", x, [r](int i) { return r == 2 ? float(3000 + i) : float(r * 1000 + i); });

      fill_later(mine, x, [r](int i) { return float(r * 1000 + i); });
      comm.all_gather(CView(x.data(), px::Shape{count}), View(gathered.data(), px::Shape{4 * count}));
      expect("all_gather", gathered, [](int i) { return float(i); });

      fill_later(mine, x, [r](int i) { return float((r + 1) * i); });
      comm.reduce_scatter(CView(x.data(), px::Shape{count}), View(scattered.data(), px::Shape{count / 4}));
      expect("reduce_scatter", scattered, [=](int i) { return float(10 * (r * (count / 4) + i)); });

      fill_later(mine, x, [r](int i) { return float(r * 7 + i); });
      comm.broadcast(View(x.data(), px::Shape{count}), 3);
      expect("broadcast", x, [](int i) { return float(21 + i); });

      // Async: marked when issued; the rank's stream goes on meanwhile.
      fill_later(mine, x, [r](int) { return float(r); });
      px::Work w = comm.all_reduce_async(View(x.data(), px::Shape{count}));
      std::vector<float> other(8, 0.f);
      fill_later(mine, other, [](int) { return 5.f; });
      w.wait();
      expect("all_reduce_async", x, [](int) { return 6.f; });
      expect("work after an async call", other, [](int) { return 5.f; });

      // Send/recv around the ring: the copy, by whichever of the pair comes second, waits for the sender's kernel.
      std::vector<float> out(count, 0.f), in(count, 0.f);
      fill_later(mine, out, [r](int i) { return float(r * 100 + i); });
      px::Work s = comm.send_async(CView(out.data(), px::Shape{count}), (r + 1) % n);
      comm.recv(View(in.data(), px::Shape{count}), (r + n - 1) % n);
      s.wait();
      expect("send/recv", in, [=](int i) { return float(((r + n - 1) % n) * 100 + i); });
    } catch (const std::exception& e) {
      errors[static_cast<std::size_t>(r)] = e.what();
      world->abort(r, e.what());
    }
  };
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) threads.emplace_back(body, r);
  for (auto& t : threads) t.join();
  for (int r = 0; r < n; ++r) {
    INFO("rank " << r);
    CHECK(errors[static_cast<std::size_t>(r)].empty());
    CHECK(wrong[static_cast<std::size_t>(r)] == std::vector<std::string>{});
  }
}
