// parallax/comm/work.hpp — Work, the handle of an asynchronous communication call.
#pragma once

#include <memory>
#include <utility>

namespace parallax {

namespace detail {
//! What a transport gives back for a call in flight.
class WorkState {
 public:
  virtual ~WorkState() = default;
  //! Blocks until the call finished; rethrows its error. Bounded by the transport's timeout.
  virtual void wait() = 0;
  //! Whether the call finished (never blocks).
  [[nodiscard]] virtual bool ready() = 0;
};
}  // namespace detail

//! Handle of an asynchronous collective or point-to-point call. The buffers it was given must stay
//! alive and untouched until `wait()` returns. A default-constructed Work is already complete.
//! @code
//! Work w = comm.all_reduce_async(grads);   // reduction runs while backward continues
//! ...
//! w.wait();
//! @endcode
class Work {
 public:
  Work() = default;
  explicit Work(std::shared_ptr<detail::WorkState> state) : state_(std::move(state)) {}

  //! Waits for completion and rethrows the call's `parallax::Error`, if any. Idempotent.
  void wait() {
    if (state_) {
      auto s = std::move(state_);
      s->wait();
    }
  }
  [[nodiscard]] bool ready() const { return !state_ || state_->ready(); }

 private:
  std::shared_ptr<detail::WorkState> state_;
};

}  // namespace parallax
