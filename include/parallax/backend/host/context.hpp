// parallax/backend/host/context.hpp — host::Context, a rank's execution context on the host backend.
#pragma once


namespace parallax::host {

//! What a rank's kernels run on. On the host kernels run synchronously on the rank's thread.
class Context {
 public:
  explicit Context(int rank = 0) noexcept : rank_(rank) {}
  [[nodiscard]] int rank() const noexcept { return rank_; }
  //! Waits for the rank's queued work: host kernels are synchronous, so there is none.
  void synchronize() const noexcept {}

 private:
  int rank_;
};

}  // namespace parallax::host
