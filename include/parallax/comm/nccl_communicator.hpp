// parallax/comm/nccl_communicator.hpp — NcclCommunicator: the Transport over NCCL, one rank per GPU.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <cuda_runtime_api.h>
#include <fmt/format.h>
#include <nccl.h>

#include "../backend/cuda/check.hpp"
#include "../backend/cuda/context.hpp"
#include "../backend/cuda/device.hpp"
#include "../backend/cuda/memory.hpp"
#include "../backend/cuda/stream.hpp"
#include "../error.hpp"
#include "collective.hpp"
#include "detail/nccl_comm.hpp"
#include "settings.hpp"
#include "transport.hpp"
#include "work.hpp"

namespace parallax {

//! Options of an `NcclCommunicator` (inherited by the groups split from it).
struct NcclOptions {
  //! Bound of every wait; unset: `PARALLAX_COMM_TIMEOUT` or 300 s. On expiry the communicator is aborted.
  std::optional<std::chrono::milliseconds> timeout{};
  //! Verify before each call that every rank issues the same one (an extra 32-byte exchange per call);
  //! unset: `debug_collectives_from_env()`. All ranks must agree.
  std::optional<bool> debug_collectives{};
  //! A stream whose queued work each call waits for on the GPU (the compute stream that produced the
  //! buffers); null: none, the caller orders the streams itself.
  cudaStream_t after = nullptr;
  //! The world group's name in messages.
  std::string label = "world";
  //! The rank threads of one `launch` (set by `launch`): when one of them fails, the others' waits end at
  //! once (the communicator is aborted) instead of at the timeout.
  std::shared_ptr<const detail::ThreadWorld> peers{};
};

//! Transport over NCCL for buffers in `cuda::Memory`: one rank per GPU, in one process (a thread per
//! GPU) or in one process per GPU. Calls are queued on the given communication stream (a group made by
//! `split` gets a stream of its own, so calls of different groups do not queue behind each other);
//! the returned Work waits for an event recorded
//! after the call, watching for NCCL errors, and after the timeout aborts the communicator and throws
//! naming the call, its sequence number, the group and the rank.
//! With `debug_collectives`, each call is first compared across the ranks (mismatches throw on every
//! rank with the same message as the thread transport's).
//!
//! Communicators are created in nonblocking mode, so initialisation and `split` are bounded by the
//! timeout too.
//! @code
//! cuda::Context ctx(rank);
//! ncclUniqueId id = ...;  // NcclCommunicator::make_unique_id() on rank 0, shared with the others
//! Communicator world(NcclCommunicator::create_world(rank, world_size, id, ctx));
//! world.all_reduce(grads.view(), ReduceOp::avg);
//! @endcode
class NcclCommunicator final : public Transport {
 public:
  //! Adopts `comm` (an initialised NCCL communicator of `members.size()` ranks; `members` are their world
  //! ranks) and queues calls on `stream` (on the communicator's device; it must outlive this object).
  NcclCommunicator(ncclComm_t comm, std::vector<int> members, std::string label, cudaStream_t stream,
                   NcclOptions options = {})
      : stream_(stream), options_(std::move(options)) {
    const auto timeout = options_.timeout.value_or(comm_timeout_from_env());
    debug_ = options_.debug_collectives.value_or(debug_collectives_from_env());
    int rank = -1, count = 0, device = -1;
    auto fail = [&](ncclResult_t r, const char* api) {
      const std::string why = detail::nccl_error_text(r, comm);
      (void)ncclCommAbort(comm);
      throw Error(fmt::format("NcclCommunicator: {} failed: {}", api, why));
    };
    if (const ncclResult_t r = ncclCommUserRank(comm, &rank); r != ncclSuccess) fail(r, "ncclCommUserRank");
    if (const ncclResult_t r = ncclCommCount(comm, &count); r != ncclSuccess) fail(r, "ncclCommCount");
    if (const ncclResult_t r = ncclCommCuDevice(comm, &device); r != ncclSuccess) fail(r, "ncclCommCuDevice");
    if (count != static_cast<int>(members.size())) {
      (void)ncclCommAbort(comm);
      throw Error(fmt::format("NcclCommunicator: the NCCL communicator has {} ranks but {} members were given", count,
                              members.size()));
    }
    c_ = std::make_shared<detail::NcclComm>(comm, device, rank, std::move(members), std::move(label), timeout,
                                            options_.peers);
    if (options_.after != nullptr) {
      cuda::DeviceGuard on(device);
      after_event_.emplace(cuda::Timing::off);
    }
  }

  //! A fresh NCCL unique id: create it on one rank and give it to every rank of the world before
  //! `create_world` (threads share it directly; processes send its 128 bytes, e.g. by TCP rendezvous).
  [[nodiscard]] static ncclUniqueId make_unique_id() {
    ncclUniqueId id;
    if (const ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess)
      throw Error(fmt::format("NcclCommunicator::make_unique_id: ncclGetUniqueId failed: {}",
                              detail::nccl_error_text(r, nullptr)));
    return id;
  }

  //! Joins world rank `rank` of `world_size` on the current device (each rank calls it, in its own
  //! thread or process, with the same `id`). Waits, bounded by the timeout, for all ranks to join.
  [[nodiscard]] static std::shared_ptr<NcclCommunicator> create_world(int rank, int world_size, const ncclUniqueId& id,
                                                                      cudaStream_t stream, NcclOptions options = {}) {
    if (world_size <= 0 || rank < 0 || rank >= world_size)
      throw Error(
          fmt::format("NcclCommunicator::create_world: rank {} is outside a world of size {}", rank, world_size), rank);
    const auto timeout = options.timeout.value_or(comm_timeout_from_env());
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclComm_t comm = nullptr;
    ncclResult_t r = ncclCommInitRankConfig(&comm, world_size, id, rank, &config);
    if (r == ncclInProgress || (r == ncclSuccess && comm != nullptr))
      r = detail::nccl_poll(comm, std::chrono::steady_clock::now() + timeout, options.peers.get());
    if (r == ncclInProgress && options.peers && options.peers->aborted()) {  // another rank thread failed
      (void)ncclCommAbort(comm);
      options.peers->throw_if_aborted(rank, "NcclCommunicator::create_world");
    }
    if (r != ncclSuccess) {
      const std::string why =
          r == ncclInProgress
              ? fmt::format("timed out after {} ms waiting for all {} ranks to join", timeout.count(), world_size)
              : detail::nccl_error_text(r, comm);
      if (comm != nullptr) (void)ncclCommAbort(comm);
      throw Error(fmt::format("NcclCommunicator::create_world: ncclCommInitRankConfig (rank {} of {}) on {}: {}", rank,
                              world_size, cuda::detail::current_device_str(), why),
                  rank, options.label, "init");
    }
    std::vector<int> members(static_cast<std::size_t>(world_size));
    for (int i = 0; i < world_size; ++i) members[static_cast<std::size_t>(i)] = i;
    std::string label = options.label;
    return std::make_shared<NcclCommunicator>(comm, std::move(members), std::move(label), stream, std::move(options));
  }

  //! `create_world` on `ctx`'s device and communication stream; each call first waits on the GPU for the
  //! work queued on `ctx`'s compute stream. `ctx` must outlive the communicator and the groups split from it.
  [[nodiscard]] static std::shared_ptr<NcclCommunicator> create_world(int rank, int world_size, const ncclUniqueId& id,
                                                                      const cuda::Context& ctx,
                                                                      NcclOptions options = {}) {
    ctx.make_current();
    if (options.after == nullptr) options.after = ctx.stream();
    return create_world(rank, world_size, id, ctx.comm_stream().get(), std::move(options));
  }

  int rank() const noexcept override { return c_->rank(); }
  int size() const noexcept override { return c_->size(); }
  const std::vector<int>& members() const noexcept override { return c_->members(); }
  std::string_view memory_space() const noexcept override { return cuda::Memory::name; }
  const std::string& label() const noexcept override { return c_->label(); }
  //! The NCCL communicator (for calls parallax does not wrap); owned by this object.
  [[nodiscard]] ncclComm_t nccl_comm() const noexcept { return c_->get(); }
  //! The CUDA device and stream the calls run on.
  [[nodiscard]] int device() const noexcept { return c_->device(); }
  [[nodiscard]] cudaStream_t stream() const noexcept { return stream_; }

  Work start(CollectiveDesc d, const void* in, void* out, bool async) override {
    const bool p2p = d.kind == CollectiveKind::send || d.kind == CollectiveKind::recv;
    d.seq = p2p ? ++p2p_seq_ : ++seq_;
    if (d.kind == CollectiveKind::split)
      throw Error(fmt::format("NcclCommunicator::start: split #{} on {} goes through split()", d.seq, c_->describe()),
                  c_->world_rank(), c_->describe(), "split");
    c_->check_usable(d);
    cuda::DeviceGuard on(c_->device());
    if (debug_) p2p ? verify_pair(d) : verify(d);
    if (d.count == 0 && d.kind != CollectiveKind::barrier) return {};
    if (after_event_) {  // the buffers were produced on the compute stream
      after_event_->record(options_.after);
      after_event_->wait(stream_);
    }
    enqueue(d, in, out);
    cuda::Event done(cuda::Timing::off);
    done.record(stream_);
    auto work = std::make_shared<detail::NcclWork>(c_, std::move(done), d);
    if (!async) {
      work->wait();
      return {};
    }
    return Work(std::move(work));
  }

  std::shared_ptr<Transport> split(int color, int key, std::string label) override {
    CollectiveDesc d{CollectiveKind::split};
    d.seq = ++seq_;
    c_->check_usable(d);
    cuda::DeviceGuard on(c_->device());
    if (debug_) verify(d);
    // Every rank learns every rank's (color, key): the new group's members, ordered by (key, rank) as
    // ncclCommSplit orders them.
    const std::int32_t mine[2] = {color < 0 ? -1 : color, key};
    std::memcpy(c_->host_record(detail::NcclComm::mine), mine, sizeof mine);
    exchange(d);
    std::vector<int> group;
    std::vector<std::int32_t> keys(static_cast<std::size_t>(size()));
    for (int j = 0; j < size(); ++j) {
      std::int32_t theirs[2];
      std::memcpy(theirs, c_->host_record(detail::NcclComm::all) + static_cast<std::size_t>(j) * sizeof theirs,
                  sizeof theirs);
      keys[static_cast<std::size_t>(j)] = theirs[1];
      if (color >= 0 && theirs[0] == color) group.push_back(j);
    }
    const auto key_of = [&](int j) { return keys[static_cast<std::size_t>(j)]; };
    std::stable_sort(group.begin(), group.end(), [&](int a, int b) { return key_of(a) < key_of(b); });

    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclComm_t child = nullptr;
    try {
      c_->check_call(ncclCommSplit(c_->get(), color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &child, &config),
                     "ncclCommSplit", d);
    } catch (...) {
      if (child != nullptr) (void)ncclCommAbort(child);  // a nonblocking split may have made it already
      throw;
    }
    if (child != nullptr) {
      const ncclResult_t r =
          detail::nccl_poll(child, std::chrono::steady_clock::now() + c_->timeout(), c_->peers().get());
      if (r != ncclSuccess) {
        (void)ncclCommAbort(child);
        c_->check_peers(d);
        const std::string why = r == ncclInProgress ? fmt::format("did not finish within {} ms", c_->timeout().count())
                                                    : detail::nccl_error_text(r, child);
        c_->fail(fmt::format("split #{} on {}: ncclCommSplit: {}", d.seq, c_->describe(), why), d);
      }
    }
    if (color < 0) {
      if (child != nullptr) (void)ncclCommDestroy(child);
      return nullptr;
    }
    if (child == nullptr)
      c_->fail(fmt::format("split #{} on {}: ncclCommSplit gave no communicator for color {}", d.seq, c_->describe(),
                           color),
               d);
    std::vector<int> world;
    for (int j : group) world.push_back(c_->world_rank(j));
    NcclOptions options = options_;
    options.timeout = c_->timeout();
    options.debug_collectives = debug_;
    cuda::Stream stream;  // the new group's own, on this device (the DeviceGuard above)
    auto result =
        std::make_shared<NcclCommunicator>(child, std::move(world), std::move(label), stream.get(), std::move(options));
    result->own_stream_ = std::move(stream);
    return result;
  }

 private:
  void enqueue(const CollectiveDesc& d, const void* in, void* out) {
    const ncclComm_t comm = c_->get();
    const auto n = static_cast<std::size_t>(d.count);
    const ncclDataType_t t = detail::nccl_type(d.dtype);
    const ncclRedOp_t op = detail::nccl_op(d.op);
    switch (d.kind) {
      case CollectiveKind::all_reduce:
        c_->check_call(ncclAllReduce(in, out, n, t, op, comm, stream_), "ncclAllReduce", d);
        break;
      case CollectiveKind::reduce_scatter:
        c_->check_call(ncclReduceScatter(in, out, n, t, op, comm, stream_), "ncclReduceScatter", d);
        break;
      case CollectiveKind::all_gather:
        c_->check_call(ncclAllGather(in, out, n, t, comm, stream_), "ncclAllGather", d);
        break;
      case CollectiveKind::broadcast:
        c_->check_call(ncclBroadcast(in, out, n, t, d.root, comm, stream_), "ncclBroadcast", d);
        break;
      case CollectiveKind::reduce:
        c_->check_call(ncclReduce(in, out, n, t, op, d.root, comm, stream_), "ncclReduce", d);
        break;
      case CollectiveKind::send:
        c_->check_call(ncclSend(in, n, t, d.root, comm, stream_), "ncclSend", d);
        break;
      case CollectiveKind::recv:
        c_->check_call(ncclRecv(out, n, t, d.root, comm, stream_), "ncclRecv", d);
        break;
      case CollectiveKind::barrier:
        c_->check_call(ncclAllReduce(c_->barrier_word(), c_->barrier_word(), 1, ncclFloat32, ncclSum, comm, stream_),
                       "ncclAllReduce (barrier)", d);
        break;
      case CollectiveKind::split: break;  // handled by split()
    }
  }

  // Gathers host record slot `mine` of every rank into host slot `all`, in rank order; waits for it (bounded).
  void exchange(const CollectiveDesc& d) {
    constexpr std::size_t record = sizeof(detail::NcclCallRecord);
    cuda::check(cudaMemcpyAsync(c_->device_record(detail::NcclComm::mine), c_->host_record(detail::NcclComm::mine),
                                record, cudaMemcpyHostToDevice, stream_),
                "NcclCommunicator (cudaMemcpyAsync)");
    c_->check_call(ncclAllGather(c_->device_record(detail::NcclComm::mine), c_->device_record(detail::NcclComm::all),
                                 record, ncclUint8, c_->get(), stream_),
                   "ncclAllGather (call check)", d);
    cuda::check(cudaMemcpyAsync(c_->host_record(detail::NcclComm::all), c_->device_record(detail::NcclComm::all),
                                record * static_cast<std::size_t>(size()), cudaMemcpyDeviceToHost, stream_),
                "NcclCommunicator (cudaMemcpyAsync)");
    cuda::Event done(cuda::Timing::off);
    done.record(stream_);
    c_->wait(done, d);
  }

  // Debug mode: every rank's record of this collective must describe the same call.
  void verify(const CollectiveDesc& d) {
    const auto rec = detail::NcclCallRecord::of(d);
    std::memcpy(c_->host_record(detail::NcclComm::mine), &rec, sizeof rec);
    exchange(d);
    std::vector<CollectiveDesc> calls(static_cast<std::size_t>(size()));
    for (int j = 0; j < size(); ++j) {
      detail::NcclCallRecord r;
      std::memcpy(&r, c_->host_record(detail::NcclComm::all) + static_cast<std::size_t>(j) * sizeof r, sizeof r);
      calls[static_cast<std::size_t>(j)] = r.desc();
    }
    bool same = true;
    for (const auto& c : calls) same = same && c.same_call(calls[0]);
    if (same) return;
    std::string list;
    for (int j = 0; j < size(); ++j)
      list += fmt::format("{}rank {} {}", j ? ", " : "", c_->world_rank(j), calls[static_cast<std::size_t>(j)].str());
    c_->fail(fmt::format("collective #{} on {}: mismatched calls: {}", calls[0].seq, c_->describe(), list), d);
  }

  // Debug mode for send/recv: the two ranks swap records; the peer must post the matching call.
  void verify_pair(const CollectiveDesc& d) {
    constexpr std::size_t record = sizeof(detail::NcclCallRecord);
    const auto rec = detail::NcclCallRecord::of(d);
    std::memcpy(c_->host_record(detail::NcclComm::mine), &rec, sizeof rec);
    cuda::check(cudaMemcpyAsync(c_->device_record(detail::NcclComm::mine), c_->host_record(detail::NcclComm::mine),
                                record, cudaMemcpyHostToDevice, stream_),
                "NcclCommunicator (cudaMemcpyAsync)");
    c_->check_call(ncclGroupStart(), "ncclGroupStart", d);
    c_->check_call(ncclSend(c_->device_record(detail::NcclComm::mine), record, ncclUint8, d.root, c_->get(), stream_),
                   "ncclSend (call check)", d);
    c_->check_call(ncclRecv(c_->device_record(detail::NcclComm::peer), record, ncclUint8, d.root, c_->get(), stream_),
                   "ncclRecv (call check)", d);
    c_->check_call(ncclGroupEnd(), "ncclGroupEnd", d);
    cuda::check(cudaMemcpyAsync(c_->host_record(detail::NcclComm::peer), c_->device_record(detail::NcclComm::peer),
                                record, cudaMemcpyDeviceToHost, stream_),
                "NcclCommunicator (cudaMemcpyAsync)");
    cuda::Event done(cuda::Timing::off);
    done.record(stream_);
    c_->wait(done, d);
    detail::NcclCallRecord r;
    std::memcpy(&r, c_->host_record(detail::NcclComm::peer), sizeof r);
    const CollectiveDesc theirs = r.desc();
    const bool sending = d.kind == CollectiveKind::send;
    const CollectiveKind expected = sending ? CollectiveKind::recv : CollectiveKind::send;
    if (theirs.kind == expected && theirs.dtype == d.dtype && theirs.count == d.count && theirs.root == rank()) return;
    const int me = c_->world_rank(), peer = c_->world_rank(d.root);
    c_->fail(sending ? fmt::format("point-to-point mismatch on {}: rank {} {}, rank {} {}", c_->describe(), me, d.str(),
                                   peer, theirs.str())
                     : fmt::format("point-to-point mismatch on {}: rank {} {}, rank {} {}", c_->describe(), peer,
                                   theirs.str(), me, d.str()),
             d);
  }

  cuda::Stream own_stream_{cuda::Stream::null()};  // a split group's stream (declared first: destroyed last)
  std::shared_ptr<detail::NcclComm> c_;
  cudaStream_t stream_;
  NcclOptions options_;
  bool debug_ = false;
  std::optional<cuda::Event> after_event_;
  std::uint64_t seq_ = 0;      // collectives (and splits), as in the thread transport
  std::uint64_t p2p_seq_ = 0;  // sends and receives
};

}  // namespace parallax
