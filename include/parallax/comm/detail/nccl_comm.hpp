// parallax/comm/detail/nccl_comm.hpp — an owned NCCL communicator with bounded waits, abort, and its Work handle.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <cuda_runtime_api.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nccl.h>

#include "../../backend/cuda/check.hpp"
#include "../../backend/cuda/device.hpp"
#include "../../backend/cuda/stream.hpp"
#include "../../core/dtype.hpp"
#include "../../error.hpp"
#include "../collective.hpp"
#include "../work.hpp"
#include "thread_world.hpp"

namespace parallax::detail {

[[nodiscard]] constexpr ncclDataType_t nccl_type(DType t) noexcept {
  switch (t) {
    case DType::f32: return ncclFloat32;
    case DType::bf16: return ncclBfloat16;
    case DType::f16: return ncclFloat16;
    case DType::i32: return ncclInt32;
    case DType::i64: return ncclInt64;
    case DType::f64: return ncclFloat64;
  }
  return ncclFloat32;
}

[[nodiscard]] constexpr ncclRedOp_t nccl_op(ReduceOp op) noexcept {
  switch (op) {
    case ReduceOp::sum: return ncclSum;
    case ReduceOp::avg: return ncclAvg;
    case ReduceOp::max: return ncclMax;
    case ReduceOp::min: return ncclMin;
  }
  return ncclSum;
}

//! A `CollectiveDesc` as a fixed 32-byte record, exchanged between ranks to verify calls.
struct NcclCallRecord {
  std::int32_t kind, dtype, op, root;
  std::int64_t count;
  std::uint64_t seq;

  [[nodiscard]] static NcclCallRecord of(const CollectiveDesc& d) noexcept {
    return {static_cast<std::int32_t>(d.kind), static_cast<std::int32_t>(d.dtype), static_cast<std::int32_t>(d.op),
            d.root,                            d.count,                            d.seq};
  }
  [[nodiscard]] CollectiveDesc desc() const noexcept {
    CollectiveDesc d;
    d.kind = static_cast<CollectiveKind>(kind);
    d.dtype = static_cast<DType>(dtype);
    d.count = count;
    d.op = static_cast<ReduceOp>(op);
    d.root = root;
    d.seq = seq;
    return d;
  }
};
static_assert(sizeof(NcclCallRecord) == 32 && std::is_trivially_copyable_v<NcclCallRecord>);

//! Polls with a short sleep that grows from a yield to 1 ms, so short calls return quickly and long
//! waits do not spin a core.
class PollBackoff {
 public:
  void pause() {
    if (n_ < 64) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(n_ < 1024 ? std::chrono::microseconds(50) : std::chrono::microseconds(1000));
    }
    ++n_;
  }

 private:
  int n_ = 0;
};

//! Waits while a nonblocking NCCL communicator is in progress (init, split, a call being enqueued);
//! returns its state, still `ncclInProgress` if `deadline` passed or `peers` (the rank threads of this
//! process, when `launch` made them) were aborted because one of them failed.
[[nodiscard]] inline ncclResult_t nccl_poll(ncclComm_t comm, std::chrono::steady_clock::time_point deadline,
                                            const ThreadWorld* peers = nullptr) {
  PollBackoff backoff;
  for (;;) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm, &state);
    if (r != ncclSuccess) return r;
    if (state != ncclInProgress || std::chrono::steady_clock::now() >= deadline || (peers && peers->aborted()))
      return state;
    backoff.pause();
  }
}

//! "invalid usage (run with NCCL_DEBUG=WARN for details): <NCCL's last error>".
[[nodiscard]] inline std::string nccl_error_text(ncclResult_t r, ncclComm_t comm) {
  const char* last = ncclGetLastError(comm);
  return last != nullptr && *last != '\0' ? fmt::format("{} ({})", ncclGetErrorString(r), last)
                                          : std::string(ncclGetErrorString(r));
}

//! One NCCL communicator (nonblocking mode) and the small buffers its checks use, shared by the
//! `NcclCommunicator` and its outstanding Works. Every wait is bounded by the timeout; on timeout or
//! an asynchronous error the communicator is aborted (which releases this rank's stuck kernels) and
//! the group becomes unusable. When the ranks are threads of one `launch` (`peers`), a wait also ends as
//! soon as another rank failed: the communicator is aborted and the wait throws `PeerFailure`.
class NcclComm {
 public:
  //! Bytes of device and of pinned host scratch for `size` ranks: a barrier word, this rank's record,
  //! a peer's record, then one record per rank.
  static constexpr std::size_t scratch_bytes(int size) noexcept {
    return 3 * sizeof(NcclCallRecord) + static_cast<std::size_t>(size) * sizeof(NcclCallRecord);
  }

  NcclComm(ncclComm_t comm, int device, int rank, std::vector<int> members, std::string label,
           std::chrono::milliseconds timeout, std::shared_ptr<const ThreadWorld> peers = nullptr)
      : comm_(comm), device_(device), rank_(rank), members_(std::move(members)), label_(std::move(label)),
        timeout_(timeout), peers_(std::move(peers)) {
    cuda::DeviceGuard on(device_);
    const std::size_t bytes = scratch_bytes(size());
    try {
      cuda::check(cudaMalloc(&device_scratch_, bytes), "cudaMalloc (NCCL scratch)");
      cuda::check(cudaMallocHost(&host_scratch_, bytes), "cudaMallocHost (NCCL scratch)");
      cuda::check(cudaMemset(device_scratch_, 0, bytes), "cudaMemset (NCCL scratch)");
    } catch (...) {
      release();
      throw;
    }
  }
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;
  ~NcclComm() { release(); }

  [[nodiscard]] ncclComm_t get() const noexcept { return comm_; }
  [[nodiscard]] int device() const noexcept { return device_; }
  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int size() const noexcept { return static_cast<int>(members_.size()); }
  [[nodiscard]] const std::vector<int>& members() const noexcept { return members_; }
  [[nodiscard]] const std::string& label() const noexcept { return label_; }
  [[nodiscard]] std::chrono::milliseconds timeout() const noexcept { return timeout_; }
  [[nodiscard]] int world_rank(int r) const { return members_[static_cast<std::size_t>(r)]; }
  [[nodiscard]] int world_rank() const { return world_rank(rank_); }
  //! "tp group {4,5}".
  [[nodiscard]] std::string describe() const {
    return fmt::format("{} group {{{}}}", label_, fmt::join(members_, ","));
  }
  [[nodiscard]] bool broken() const noexcept { return broken_.load(std::memory_order_acquire); }
  //! The rank threads this communicator's rank belongs to (null outside `launch`).
  [[nodiscard]] const std::shared_ptr<const ThreadWorld>& peers() const noexcept { return peers_; }

  //! Scratch: a float for barriers, this rank's record, a peer's record, one record per rank.
  [[nodiscard]] float* barrier_word() const noexcept { return static_cast<float*>(device_scratch_); }
  [[nodiscard]] std::byte* device_record(int slot) const noexcept {
    return static_cast<std::byte*>(device_scratch_) + (1 + slot) * sizeof(NcclCallRecord);
  }
  [[nodiscard]] std::byte* host_record(int slot) const noexcept {
    return static_cast<std::byte*>(host_scratch_) + (1 + slot) * sizeof(NcclCallRecord);
  }
  static constexpr int mine = 0, peer = 1, all = 2;  // record slots; `all` holds size() records

  //! Throws `Error` for call `d` on this rank, marking the group unusable.
  [[noreturn]] void fail(const std::string& message, const CollectiveDesc& d) {
    broken_.store(true, std::memory_order_release);
    throw Error(message, world_rank(), describe(), std::string(name(d.kind)));
  }
  //! Throws if an earlier timeout, error or mismatch made the group unusable.
  void check_usable(const CollectiveDesc& d) {
    if (broken())
      throw Error(fmt::format("{} on {}: the group is unusable after an earlier timeout, error or mismatch", d.str(),
                              describe()),
                  world_rank(), describe(), std::string(name(d.kind)));
  }

  //! If another rank thread of this `launch` failed: aborts the communicator and throws `PeerFailure` for `d`.
  void check_peers(const CollectiveDesc& d) {
    if (!peers_ || !peers_->aborted()) return;
    abort();
    peers_->throw_if_aborted(world_rank(), fmt::format("{} #{} on {}", d.str(), d.seq, describe()));
  }

  //! Checks the result of an NCCL call made for `d`; waits (bounded) while a nonblocking call is still
  //! being enqueued.
  void check_call(ncclResult_t r, const char* api, const CollectiveDesc& d) {
    if (r == ncclSuccess) return;
    if (r == ncclInProgress) r = nccl_poll(comm_, std::chrono::steady_clock::now() + timeout_, peers_.get());
    if (r == ncclSuccess) return;
    check_peers(d);
    const std::string what = r == ncclInProgress
                                 ? fmt::format("{} did not finish within {} ms", api, timeout_.count())
                                 : fmt::format("{} failed: {}", api, nccl_error_text(r, comm_));
    abort();
    fail(fmt::format("{} #{} on {}: {}; the NCCL communicator was aborted", d.str(), d.seq, describe(), what), d);
  }

  //! Blocks until `done` (recorded after the call) completes, watching NCCL's asynchronous errors;
  //! after the timeout aborts the communicator and throws naming the call, the group and the rank.
  void wait(const cuda::Event& done, const CollectiveDesc& d) {
    const auto start = std::chrono::steady_clock::now();
    PollBackoff backoff;
    for (;;) {
      check_usable(d);
      check_peers(d);
      const cudaError_t q = cudaEventQuery(done.get());
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) {
        (void)cudaGetLastError();
        abort();
        fail(fmt::format("{} #{} on {} failed on the GPU: {} ({})", d.str(), d.seq, describe(), cudaGetErrorString(q),
                         cudaGetErrorName(q)),
             d);
      }
      ncclResult_t state = ncclSuccess;
      if (ncclCommGetAsyncError(comm_, &state) == ncclSuccess && state != ncclSuccess && state != ncclInProgress) {
        const std::string why = nccl_error_text(state, comm_);
        abort();
        fail(fmt::format("{} #{} on {} failed: NCCL reports {}; the NCCL communicator was aborted", d.str(), d.seq,
                         describe(), why),
             d);
      }
      if (std::chrono::steady_clock::now() - start >= timeout_) {
        abort();
        fail(fmt::format("{} #{} on {} timed out after {} ms: the NCCL communicator was aborted (another rank did not "
                         "issue this call, issued a different one, or failed)",
                         d.str(), d.seq, describe(), timeout_.count()),
             d);
      }
      backoff.pause();
    }
  }

  //! Aborts the communicator (its kernels stop) and marks the group unusable. Idempotent.
  void abort() noexcept {
    broken_.store(true, std::memory_order_release);
    std::lock_guard lock(mutex_);
    if (comm_ != nullptr) {
      (void)ncclCommAbort(comm_);
      comm_ = nullptr;
    }
  }

 private:
  // Finalizes and destroys the communicator (aborting it if that does not finish in time), then frees
  // the scratch. Never throws.
  void release() noexcept {
    try {
      cuda::DeviceGuard on(device_);
      {
        std::lock_guard lock(mutex_);
        if (comm_ != nullptr) {
          // While this rank unwinds from an error its peers may never match what is queued: abort, do not wait.
          bool clean = !broken() && std::uncaught_exceptions() == 0;
          if (clean) {
            ncclResult_t r = ncclCommFinalize(comm_);
            if (r == ncclInProgress) r = nccl_poll(comm_, std::chrono::steady_clock::now() + timeout_, peers_.get());
            clean = r == ncclSuccess;
          }
          (void)(clean ? ncclCommDestroy(comm_) : ncclCommAbort(comm_));
          comm_ = nullptr;
        }
      }
      if (device_scratch_ != nullptr) (void)cudaFree(device_scratch_);
      if (host_scratch_ != nullptr) (void)cudaFreeHost(host_scratch_);
      (void)cudaGetLastError();
    } catch (...) {
    }
    device_scratch_ = host_scratch_ = nullptr;
  }

  ncclComm_t comm_;
  int device_;
  int rank_;
  std::vector<int> members_;
  std::string label_;
  std::chrono::milliseconds timeout_;
  std::shared_ptr<const ThreadWorld> peers_;
  std::atomic<bool> broken_{false};
  std::mutex mutex_;  // guards comm_ against abort racing with destruction
  void* device_scratch_ = nullptr;
  void* host_scratch_ = nullptr;
};

//! The Work of an NCCL call: an event recorded on the communication stream after it.
class NcclWork final : public WorkState {
 public:
  NcclWork(std::shared_ptr<NcclComm> comm, cuda::Event done, CollectiveDesc desc)
      : comm_(std::move(comm)), done_(std::move(done)), desc_(desc) {}
  void wait() override { comm_->wait(done_, desc_); }
  bool ready() override {
    if (comm_->broken()) return true;  // wait() reports why
    const cudaError_t q = cudaEventQuery(done_.get());
    if (q == cudaErrorNotReady) return false;
    if (q != cudaSuccess) (void)cudaGetLastError();
    return true;
  }

 private:
  std::shared_ptr<NcclComm> comm_;
  cuda::Event done_;
  CollectiveDesc desc_;
};

}  // namespace parallax::detail
