// parallax/backend/cuda/stream.hpp — RAII CUDA streams and events (move-only; every failing call throws).
#pragma once

#include <utility>

#include <cuda_runtime_api.h>

#include "check.hpp"

namespace parallax::cuda {

class Event;

//! An owned, non-blocking CUDA stream on the device current at construction: it never synchronises
//! implicitly with the legacy default stream. Move-only.
//! @code
//! cuda::Stream s;
//! kernel<<<grid, block, 0, s.get()>>>(...);
//! s.synchronize();
//! @endcode
class Stream {
 public:
  //! @param priority lower numbers run first (`cudaDeviceGetStreamPriorityRange`); 0 is the default.
  explicit Stream(int priority = 0) {
    check(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, priority), "cudaStreamCreateWithPriority");
  }
  //! An empty stream (no CUDA call; `get()` is null), to move a real one into later.
  [[nodiscard]] static Stream null() noexcept { return Stream(Empty{}); }
  Stream(Stream&& o) noexcept : stream_(std::exchange(o.stream_, nullptr)) {}
  Stream& operator=(Stream&& o) noexcept {
    if (this != &o) {
      destroy();
      stream_ = std::exchange(o.stream_, nullptr);
    }
    return *this;
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream() { destroy(); }

  //! The raw handle (null for an empty or moved-from stream).
  [[nodiscard]] cudaStream_t get() const noexcept { return stream_; }
  //! Blocks until all work queued on the stream is done.
  void synchronize() const { check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }
  //! Whether all queued work is done (never blocks).
  [[nodiscard]] bool query() const {
    const cudaError_t status = cudaStreamQuery(stream_);
    if (status == cudaErrorNotReady) return false;
    check(status, "cudaStreamQuery");
    return true;
  }
  //! Work queued on this stream from now on waits until `event` (recorded on any stream) completes.
  inline void wait(const Event& event) const;

 private:
  struct Empty {};
  explicit Stream(Empty) noexcept {}
  void destroy() noexcept {
    if (stream_ != nullptr && cudaStreamDestroy(stream_) != cudaSuccess) (void)cudaGetLastError();
    stream_ = nullptr;
  }
  cudaStream_t stream_ = nullptr;
};

//! Whether an `Event` can measure time (`elapsed_ms`); events without timing are cheaper to record.
enum class Timing : bool { off = false, on = true };

//! An owned CUDA event: a marker in a stream that other streams and the host can wait for. Move-only.
//! @code
//! cuda::Event start, stop;
//! start.record(s);  ...;  stop.record(s);
//! stop.synchronize();
//! float ms = cuda::Event::elapsed_ms(start, stop);
//! @endcode
class Event {
 public:
  explicit Event(Timing timing = Timing::on) {
    check(cudaEventCreateWithFlags(&event_, timing == Timing::on ? cudaEventDefault : cudaEventDisableTiming),
          "cudaEventCreateWithFlags");
  }
  Event(Event&& o) noexcept : event_(std::exchange(o.event_, nullptr)) {}
  Event& operator=(Event&& o) noexcept {
    if (this != &o) {
      destroy();
      event_ = std::exchange(o.event_, nullptr);
    }
    return *this;
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  ~Event() { destroy(); }

  [[nodiscard]] cudaEvent_t get() const noexcept { return event_; }
  //! Marks the current end of `stream`'s queue.
  void record(cudaStream_t stream) { check(cudaEventRecord(event_, stream), "cudaEventRecord"); }
  void record(const Stream& stream) { record(stream.get()); }
  //! Makes work queued on `stream` from now on wait for this event (the host does not block).
  void wait(cudaStream_t stream) const { check(cudaStreamWaitEvent(stream, event_, 0), "cudaStreamWaitEvent"); }
  void wait(const Stream& stream) const { wait(stream.get()); }
  //! Blocks the host until the recorded work is done.
  void synchronize() const { check(cudaEventSynchronize(event_), "cudaEventSynchronize"); }
  //! Whether the recorded work is done (true for an event never recorded; never blocks).
  [[nodiscard]] bool query() const {
    const cudaError_t status = cudaEventQuery(event_);
    if (status == cudaErrorNotReady) return false;
    check(status, "cudaEventQuery");
    return true;
  }
  //! Milliseconds between two completed events, both created with `Timing::on`.
  [[nodiscard]] static float elapsed_ms(const Event& start, const Event& stop) {
    float ms = 0.f;
    check(cudaEventElapsedTime(&ms, start.event_, stop.event_), "cudaEventElapsedTime");
    return ms;
  }

 private:
  void destroy() noexcept {
    if (event_ != nullptr && cudaEventDestroy(event_) != cudaSuccess) (void)cudaGetLastError();
    event_ = nullptr;
  }
  cudaEvent_t event_ = nullptr;
};

inline void Stream::wait(const Event& event) const { event.wait(stream_); }

}  // namespace parallax::cuda
