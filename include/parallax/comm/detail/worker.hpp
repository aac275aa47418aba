// parallax/comm/detail/worker.hpp — a rank's communication thread for one group: runs async calls in issue order.
#pragma once

#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "../work.hpp"

namespace parallax::detail {

//! Completion of a job run by a `Worker`.
class JobState final : public WorkState {
 public:
  void finish(std::exception_ptr e) {
    {
      std::lock_guard l(m_);
      error_ = std::move(e);
      done_ = true;
    }
    cv_.notify_all();
  }
  void wait() override {
    std::unique_lock l(m_);
    cv_.wait(l, [&] { return done_; });  // bounded: the job's own waits time out
    if (error_) std::rethrow_exception(error_);
  }
  bool ready() override {
    std::lock_guard l(m_);
    return done_;
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
};

//! One thread that runs submitted jobs in FIFO order (the analogue of a communication stream).
class Worker {
 public:
  Worker() : thread_([this] { loop(); }) {}
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ~Worker() {
    {
      std::lock_guard l(m_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  std::shared_ptr<JobState> submit(std::function<void()> job) {
    auto state = std::make_shared<JobState>();
    {
      std::lock_guard l(m_);
      ++pending_;
      queue_.push_back({std::move(job), state});
    }
    cv_.notify_all();
    return state;
  }
  //! Whether jobs are queued or running (a blocking call must then queue behind them to keep order).
  [[nodiscard]] bool busy() {
    std::lock_guard l(m_);
    return pending_ > 0;
  }

 private:
  struct Item {
    std::function<void()> job;
    std::shared_ptr<JobState> state;
  };
  void loop() {
    for (;;) {
      Item item;
      {
        std::unique_lock l(m_);
        cv_.wait(l, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        item = std::move(queue_.front());
        queue_.pop_front();
      }
      std::exception_ptr error;
      try {
        item.job();
      } catch (...) {
        error = std::current_exception();
      }
      {
        std::lock_guard l(m_);
        --pending_;
      }
      item.state->finish(error);
    }
  }

  std::mutex m_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  int pending_ = 0;
  bool stop_ = false;
  std::thread thread_;  // last: starts after the members it uses exist
};

}  // namespace parallax::detail
