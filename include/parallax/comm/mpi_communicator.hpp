// parallax/comm/mpi_communicator.hpp — MpiCommunicator: a Transport over MPI, one rank per process, host memory.
// Also MpiEnvironment, which initialises and finalizes MPI for the process.
#pragma once

// Only MPI's C interface is used; skip the deprecated C++ bindings (faster to compile, no warnings).
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "../backend/host/memory.hpp"
#include "../core/dtype.hpp"
#include "../error.hpp"
#include "collective.hpp"
#include "detail/call_history.hpp"
#include "settings.hpp"
#include "transport.hpp"
#include "work.hpp"

namespace parallax {

namespace detail {

//! "MPI_ERR_TRUNCATE: message truncated" for an MPI error code.
[[nodiscard]] inline std::string mpi_error_string(int rc) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, buf, &len) != MPI_SUCCESS) return fmt::format("MPI error {}", rc);
  return std::string(buf, static_cast<std::size_t>(len));
}

}  // namespace detail

//! Initialises MPI for this process, if nobody has, and finalizes it when destroyed, if it initialised it.
//!
//! Requests `MPI_THREAD_MULTIPLE`, so that different communicators may be driven from different threads
//! where the library provides it (`thread_level()`); one communicator must be used by one thread at a time.
//! `MpiCommunicator::world()` calls `ensure()`, so a program that never names this type still gets MPI
//! initialised on first use and finalized at exit; a program that wants MPI finalized at a known point
//! (before other static destructors) declares one at the top of `main`.
//! @code
//! int main(int argc, char** argv) {
//!   parallax::MpiEnvironment mpi(&argc, &argv);
//!   auto world = parallax::MpiCommunicator::world();
//!   ...
//! }  // MPI_Finalize here
//! @endcode
class MpiEnvironment {
 public:
  explicit MpiEnvironment(int* argc = nullptr, char*** argv = nullptr) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) throw Error("MpiEnvironment: MPI was already finalized in this process; it cannot be initialised again");
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized) return;
    int provided = 0;
    const int rc = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
    if (rc != MPI_SUCCESS) throw Error(fmt::format("MpiEnvironment: MPI_Init_thread failed: {}", detail::mpi_error_string(rc)));
    owner_ = true;
  }
  MpiEnvironment(const MpiEnvironment&) = delete;
  MpiEnvironment& operator=(const MpiEnvironment&) = delete;
  //! Calls MPI_Finalize if this object initialised MPI and nobody finalized it since.
  ~MpiEnvironment() {
    if (!owner_) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }

  //! Whether this object initialised MPI (and will finalize it).
  [[nodiscard]] bool owner() const noexcept { return owner_; }

  //! Makes sure MPI is initialised: the first call in a process where nobody initialised MPI initialises it
  //! and finalizes it at exit (a function-local static).
  static void ensure() {
    static MpiEnvironment process_environment;
    (void)process_environment;
  }
  //! The thread support MPI provides (MPI_THREAD_SINGLE ... MPI_THREAD_MULTIPLE).
  [[nodiscard]] static int thread_level() {
    int level = MPI_THREAD_SINGLE;
    MPI_Query_thread(&level);
    return level;
  }
  //! Ends every process of the job: the way out after a communication timeout, which leaves an MPI
  //! operation that cannot be cancelled (MPI_Finalize might wait for it).
  [[noreturn]] static void abort(int code = 1) {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::abort();
  }

 private:
  bool owner_ = false;
};

namespace detail {

//! The MPI datatype that moves elements of `t` (16-bit floats travel as 16-bit unsigned integers).
[[nodiscard]] inline MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::f32: return MPI_FLOAT;
    case DType::bf16:
    case DType::f16: return MPI_UINT16_T;
    case DType::i32: return MPI_INT32_T;
    case DType::i64: return MPI_INT64_T;
    case DType::f64: return MPI_DOUBLE;
  }
  return MPI_DATATYPE_NULL;
}

//! User-defined MPI reduction of 16-bit floats: converts both operands to fp32, combines, rounds once.
template <class T, ReduceOp Op>
inline void mpi_half_op(void* in, void* inout, int* len, MPI_Datatype*) {
  const T* a = static_cast<const T*>(in);
  T* b = static_cast<T*>(inout);
  for (int i = 0; i < *len; ++i) {
    const float x = static_cast<float>(a[i]), y = static_cast<float>(b[i]);
    if constexpr (Op == ReduceOp::max) b[i] = T(std::max(y, x));
    else if constexpr (Op == ReduceOp::min) b[i] = T(std::min(y, x));
    else b[i] = T(x + y);
  }
}

//! The six user ops for bf16/fp16 x sum/max/min, created once after MPI_Init (MPI_Finalize frees them).
struct MpiHalfOps {
  std::array<std::array<MPI_Op, 3>, 2> op{};  // [bf16, fp16][sum, max, min]

  static const MpiHalfOps& get() {
    static const MpiHalfOps ops = [] {
      MpiHalfOps o;
      auto make = [](MPI_User_function* f) {
        MPI_Op op = MPI_OP_NULL;
        const int rc = MPI_Op_create(f, /*commute=*/1, &op);
        if (rc != MPI_SUCCESS) throw Error(fmt::format("MpiCommunicator: MPI_Op_create failed: {}", mpi_error_string(rc)));
        return op;
      };
      o.op[0] = {make(&mpi_half_op<bf16, ReduceOp::sum>), make(&mpi_half_op<bf16, ReduceOp::max>),
                 make(&mpi_half_op<bf16, ReduceOp::min>)};
      o.op[1] = {make(&mpi_half_op<fp16, ReduceOp::sum>), make(&mpi_half_op<fp16, ReduceOp::max>),
                 make(&mpi_half_op<fp16, ReduceOp::min>)};
      return o;
    }();
    return ops;
  }
};

//! The MPI op for `op` on elements of `t`; `avg` reduces with the sum (the division follows completion).
[[nodiscard]] inline MPI_Op mpi_op(DType t, ReduceOp op) {
  const int k = op == ReduceOp::max ? 1 : op == ReduceOp::min ? 2 : 0;
  if (t == DType::bf16 || t == DType::f16) return MpiHalfOps::get().op[t == DType::bf16 ? 0 : 1][static_cast<std::size_t>(k)];
  return k == 1 ? MPI_MAX : k == 2 ? MPI_MIN : MPI_SUM;
}

//! p[i] /= n for i in [0, count), as the host reduction computes `avg`: fp32 for 16-bit floats (rounded
//! once), integer division (truncating) for integers.
inline void divide_in_place(DType t, void* p, std::int64_t count, int n) {
  dispatch(t, [&]<class T>(std::type_identity<T>) {
    using Acc = std::conditional_t<std::is_same_v<T, bf16> || std::is_same_v<T, fp16>, float, T>;
    T* x = static_cast<T*>(p);
    for (std::int64_t i = 0; i < count; ++i) x[i] = T(static_cast<Acc>(static_cast<Acc>(x[i]) / static_cast<Acc>(n)));
  });
}

//! One pass of MPI_Test over the unfinished requests; true when none is left. Keeps each request's status
//! and the first error; a request that failed counts as finished.
inline bool mpi_test_all(MPI_Request* req, MPI_Status* status, int n, int& error) {
  bool done = true;
  for (int i = 0; i < n; ++i) {
    if (req[i] == MPI_REQUEST_NULL) continue;
    int flag = 0;
    const int rc = MPI_Test(&req[i], &flag, &status[i]);
    if (rc != MPI_SUCCESS) {
      if (error == MPI_SUCCESS) error = rc;
      req[i] = MPI_REQUEST_NULL;  // MPI released it with the error
    } else if (!flag) {
      done = false;
    }
  }
  return done;
}

//! Polls until every request finished (true) or `deadline` passed (false): yields first, then sleeps
//! briefly, so ranks sharing cores leave each other time; MPI progresses inside MPI_Test.
inline bool mpi_poll_until(MPI_Request* req, MPI_Status* status, int n, int& error,
                           std::chrono::steady_clock::time_point deadline) {
  for (int spins = 0; !mpi_test_all(req, status, n, error); ++spins) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    if (spins < 200) std::this_thread::yield();
    else std::this_thread::sleep_for(std::chrono::microseconds(spins < 2000 ? 20 : 200));
  }
  return true;
}

//! "all_reduce(bf16, 4096, sum) #57" (collectives carry a sequence number, point-to-point calls do not).
[[nodiscard]] inline std::string mpi_what(const CollectiveDesc& d) {
  return d.seq ? fmt::format("{} #{}", d.str(), d.seq) : d.str();
}

//! The nonblocking MPI function behind each kind of call, for error messages.
[[nodiscard]] constexpr const char* mpi_call(CollectiveKind k) noexcept {
  switch (k) {
    case CollectiveKind::all_reduce: return "MPI_Iallreduce";
    case CollectiveKind::reduce_scatter: return "MPI_Ireduce_scatter_block";
    case CollectiveKind::all_gather: return "MPI_Iallgather";
    case CollectiveKind::broadcast: return "MPI_Ibcast";
    case CollectiveKind::reduce: return "MPI_Ireduce";
    case CollectiveKind::barrier: return "MPI_Ibarrier";
    case CollectiveKind::split: return "MPI_Comm_split";
    case CollectiveKind::send: return "MPI_Isend";
    case CollectiveKind::recv: return "MPI_Irecv";
  }
  return "MPI";
}

//! The state one MPI group shares between its communicator and the calls in flight on it.
struct MpiGroup {
  MPI_Comm comm = MPI_COMM_NULL;   // the calls themselves
  MPI_Comm check = MPI_COMM_NULL;  // call descriptions (checking layer, split) and send/recv headers
  int rank = 0;
  int size = 0;
  std::vector<int> members;  // world ranks in group-rank order
  std::string label;
  std::chrono::milliseconds timeout{};
  bool checking = false;
  bool broken = false;  // after a timeout, a mismatch or an MPI error
  std::uint64_t seq = 0;
  CallHistory history;

  MpiGroup() = default;
  MpiGroup(const MpiGroup&) = delete;
  MpiGroup& operator=(const MpiGroup&) = delete;
  ~MpiGroup() {
    int finalized = 1;
    MPI_Finalized(&finalized);
    if (finalized) return;
    if (check != MPI_COMM_NULL) MPI_Comm_free(&check);  // calls still in flight complete normally
    if (comm != MPI_COMM_NULL) MPI_Comm_free(&comm);
  }

  [[nodiscard]] int world_rank(int r) const { return members[static_cast<std::size_t>(r)]; }
  //! "world group {0,1,2,3}".
  [[nodiscard]] std::string describe() const { return fmt::format("{} group {{{}}}", label, fmt::join(members, ",")); }
  [[nodiscard]] Error error(const CollectiveDesc& d, const std::string& message) const {
    return Error(message, members.empty() ? -1 : world_rank(rank), describe(), std::string(name(d.kind)));
  }
  //! Throws (and marks the group unusable) when an MPI call failed.
  void check_mpi(int rc, const CollectiveDesc& d, const char* call) {
    if (rc == MPI_SUCCESS) return;
    broken = true;
    throw error(d, fmt::format("{} on {}: {} failed: {}", mpi_what(d), describe(), call, mpi_error_string(rc)));
  }
  [[nodiscard]] Error timed_out(const CollectiveDesc& d, const char* stage) {
    broken = true;
    return error(d, fmt::format("{} on {} timed out after {} ms{}; last completed: {}; a timed-out MPI operation "
                                "cannot be cancelled, so this process should exit",
                                mpi_what(d), describe(), timeout.count(), stage, history.last()));
  }
};

//! A call in flight on an `MpiGroup`: its requests, polled by `wait()` until done or the group's timeout.
class MpiWork final : public WorkState {
 public:
  //! What MPI may still touch while the call is in flight. Leaked, not freed, if the call timed out.
  struct Pending {
    std::array<MPI_Request, 2> req{MPI_REQUEST_NULL, MPI_REQUEST_NULL};  // [0] the data, [1] a send/recv header
    std::array<MPI_Status, 2> status{};
    int n = 0;
    int error = MPI_SUCCESS;
    std::array<std::int64_t, 2> header{};  // {dtype, count} of a checked send, or what a checked recv got
  };

  MpiWork(std::shared_ptr<MpiGroup> g, const CollectiveDesc& d, void* out, std::unique_ptr<Pending> p)
      : g_(std::move(g)), d_(d), out_(out), p_(std::move(p)) {}
  MpiWork(const MpiWork&) = delete;
  MpiWork& operator=(const MpiWork&) = delete;

  //! A Work dropped without `wait()` is completed here (bounded by the timeout; its errors are lost).
  ~MpiWork() override {
    if (p_ && !timed_out_) {
      try {
        finish();
      } catch (...) {
      }
    }
    if (p_) (void)p_.release();  // timed out: MPI may still write into it
  }

  void wait() override {
    if (p_) finish();
  }
  bool ready() override { return !p_ || mpi_test_all(p_->req.data(), p_->status.data(), p_->n, p_->error); }

 private:
  void finish() {
    const auto deadline = std::chrono::steady_clock::now() + g_->timeout;
    if (!mpi_poll_until(p_->req.data(), p_->status.data(), p_->n, p_->error, deadline)) {
      timed_out_ = true;
      throw g_->timed_out(d_, "");
    }
    const std::unique_ptr<Pending> p = std::move(p_);
    if (d_.kind == CollectiveKind::recv) {
      if (p->n == 2) {  // checked: compare with the header the sender sent alongside
        CollectiveDesc sent{CollectiveKind::send, static_cast<DType>(p->header[0]), p->header[1], ReduceOp::sum, g_->rank};
        if (sent.dtype != d_.dtype || sent.count != d_.count)
          throw g_->error(d_, fmt::format("point-to-point mismatch on {}: rank {} {}, rank {} {}", g_->describe(),
                                          g_->world_rank(d_.root), sent.str(), g_->world_rank(g_->rank), d_.str()));
      }
      g_->check_mpi(p->error, d_, "MPI_Irecv");
      int got = 0;
      MPI_Get_count(&p->status[0], mpi_type(d_.dtype), &got);
      if (got != d_.count)
        throw g_->error(d_, fmt::format("{} on {}: rank {} sent {} elements, {} expected", d_.str(), g_->describe(),
                                        g_->world_rank(d_.root), got, d_.count));
    } else {
      g_->check_mpi(p->error, d_, mpi_call(d_.kind));
    }
    const bool reduces = d_.kind == CollectiveKind::all_reduce || d_.kind == CollectiveKind::reduce_scatter ||
                         (d_.kind == CollectiveKind::reduce && g_->rank == d_.root);
    if (reduces && d_.op == ReduceOp::avg && d_.count > 0) divide_in_place(d_.dtype, out_, d_.count, g_->size);
    g_->history.push(d_);
  }

  std::shared_ptr<MpiGroup> g_;
  CollectiveDesc d_;
  void* out_;
  std::unique_ptr<Pending> p_;  // null once finished
  bool timed_out_ = false;
};

}  // namespace detail

//! Transport over MPI: one rank per process, buffers in host memory (`host::Memory`).
//!
//! Every call is nonblocking MPI (MPI_Iallreduce, MPI_Ireduce_scatter_block, MPI_Iallgather, MPI_Ibcast,
//! MPI_Ireduce, MPI_Isend/MPI_Irecv, MPI_Ibarrier); `wait()` polls MPI_Test until the call is done or the
//! timeout (`PARALLAX_COMM_TIMEOUT`, `set_timeout`) passes, then throws `parallax::Error` naming the call,
//! its sequence number, the group, the rank and the rank's last completed call. A timed-out MPI operation
//! cannot be cancelled: the group is unusable afterwards and the process should exit
//! (`MpiEnvironment::abort()`).
//!
//! Reductions: 16-bit floats use user-defined MPI ops that add (or compare) each pair in fp32 and round to
//! 16 bits after each pairwise step; unlike `ThreadCommunicator`, which rounds once, results may differ from
//! it in the last bit. `avg` reduces with the sum and divides by the group size (integer division for
//! integers). MPI combines pairwise in an order its algorithm chooses; results are bitwise repeatable from
//! run to run as long as the MPI library picks the same deterministic algorithm (Open MPI's tuned and
//! libnbc components do for a fixed message size and group size), and every rank of an all_reduce gets
//! the same bits.
//!
//! Checking layer (`PARALLAX_DEBUG_COLLECTIVES`, debug builds, or `set_checking(true)`; every rank of a
//! group must agree): before each collective the ranks all-gather its description on a second
//! communicator, and if any differ every rank throws the same message listing what each called:
//! `collective #57 on world group {0,1,2,3}: mismatched calls: rank 0 all_reduce(bf16, 4096, sum), rank 1
//! all_gather(bf16, 2048)`. With checking on, starting a collective waits until every rank has started it
//! (bounded by the timeout), and each send carries a small header so that the receiver names a type or
//! size mismatch. Unchecked, a receive still reports a count that differs from what was sent.
//!
//! Send/recv use one tag, so the n-th send to a peer meets that peer's n-th recv from us (MPI keeps order).
//! A communicator is driven by one thread at a time.
//! @code
//! parallax::MpiEnvironment mpi(&argc, &argv);
//! Communicator world(MpiCommunicator::world());
//! world.all_reduce(grads.view(), ReduceOp::avg);
//! auto pair = world.split(world.rank() / 2, world.rank(), "pair");
//! @endcode
class MpiCommunicator final : public Transport {
 public:
  //! Internal: use `world()` and `split()`.
  explicit MpiCommunicator(std::shared_ptr<detail::MpiGroup> group) : g_(std::move(group)) {}

  //! All processes of the job (a duplicate of MPI_COMM_WORLD), initialising MPI if needed. Collective.
  [[nodiscard]] static std::shared_ptr<MpiCommunicator> world(std::string label = "world") {
    MpiEnvironment::ensure();
    MPI_Comm c = MPI_COMM_NULL;
    const int rc = MPI_Comm_dup(MPI_COMM_WORLD, &c);
    if (rc != MPI_SUCCESS) throw Error(fmt::format("MpiCommunicator::world: MPI_Comm_dup failed: {}", detail::mpi_error_string(rc)));
    return std::make_shared<MpiCommunicator>(make_group(c, std::move(label), comm_timeout_from_env(), debug_collectives_from_env()));
  }

  int rank() const noexcept override { return g_->rank; }
  int size() const noexcept override { return g_->size; }
  const std::vector<int>& members() const noexcept override { return g_->members; }
  std::string_view memory_space() const noexcept override { return host::Memory::name; }
  const std::string& label() const noexcept override { return g_->label; }
  //! The MPI communicator the calls run on (for interoperating with other MPI code).
  [[nodiscard]] MPI_Comm native() const noexcept { return g_->comm; }

  //! How long a wait may take before it throws; inherited by groups split from this one.
  [[nodiscard]] std::chrono::milliseconds timeout() const noexcept { return g_->timeout; }
  void set_timeout(std::chrono::milliseconds t) {
    if (t.count() <= 0) throw Error(fmt::format("MpiCommunicator::set_timeout: {} ms is not positive", t.count()));
    g_->timeout = t;
  }
  //! Whether collectives are verified before they run; every rank of the group must set the same.
  [[nodiscard]] bool checking() const noexcept { return g_->checking; }
  void set_checking(bool on) noexcept { g_->checking = on; }

  Work start(CollectiveDesc d, const void* in, void* out, bool async) override {
    const bool p2p = d.kind == CollectiveKind::send || d.kind == CollectiveKind::recv;
    if (d.kind == CollectiveKind::split)
      throw g_->error(d, fmt::format("split on {}: call split(), not start()", g_->describe()));
    if (!p2p) d.seq = ++g_->seq;
    check_usable(d);
    if (d.count < 0 || d.count > INT_MAX)
      throw g_->error(d, fmt::format("{} on {}: count {} is outside MPI's range [0, {}]", detail::mpi_what(d), g_->describe(),
                                     d.count, INT_MAX));
    if (!p2p && g_->checking) check_same_call(d, exchange(d, 0, 0));
    auto p = std::make_unique<detail::MpiWork::Pending>();
    post(d, in, out, *p);
    auto w = std::make_shared<detail::MpiWork>(g_, d, out, std::move(p));
    if (!async) {
      w->wait();
      return {};
    }
    return Work(std::move(w));
  }

  std::shared_ptr<Transport> split(int color, int key, std::string label) override {
    return split_mpi(color, key, std::move(label));
  }
  //! `split` with the concrete type (to reach `set_timeout`, `set_checking`, `native`).
  [[nodiscard]] std::shared_ptr<MpiCommunicator> split_mpi(int color, int key, std::string label) {
    CollectiveDesc d{CollectiveKind::split};
    d.seq = ++g_->seq;
    check_usable(d);
    // Always exchanged first, so a rank that never calls split times out instead of hanging MPI_Comm_split.
    check_same_call(d, exchange(d, color, key));
    MPI_Comm c = MPI_COMM_NULL;
    g_->check_mpi(MPI_Comm_split(g_->comm, color < 0 ? MPI_UNDEFINED : color, key, &c), d, "MPI_Comm_split");
    g_->history.push(d);
    if (c == MPI_COMM_NULL) return nullptr;
    return std::make_shared<MpiCommunicator>(make_group(c, std::move(label), g_->timeout, g_->checking));
  }

 private:
  using Record = std::array<std::int64_t, 8>;  // kind, dtype, count, op, root, seq, color, key

  // Takes ownership of `c`: error handler, a duplicate for descriptions, members as world ranks.
  static std::shared_ptr<detail::MpiGroup> make_group(MPI_Comm c, std::string label, std::chrono::milliseconds timeout,
                                                      bool checking) {
    auto g = std::make_shared<detail::MpiGroup>();
    g->comm = c;
    g->label = std::move(label);
    g->timeout = timeout;
    g->checking = checking;
    auto ok = [&](int rc, const char* call) {
      if (rc != MPI_SUCCESS)
        throw Error(fmt::format("MpiCommunicator: {} failed for group {}: {}", call, g->label, detail::mpi_error_string(rc)));
    };
    ok(MPI_Comm_set_errhandler(c, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    ok(MPI_Comm_dup(c, &g->check), "MPI_Comm_dup");
    ok(MPI_Comm_rank(c, &g->rank), "MPI_Comm_rank");
    ok(MPI_Comm_size(c, &g->size), "MPI_Comm_size");
    MPI_Group mine = MPI_GROUP_NULL, world = MPI_GROUP_NULL;
    ok(MPI_Comm_group(c, &mine), "MPI_Comm_group");
    ok(MPI_Comm_group(MPI_COMM_WORLD, &world), "MPI_Comm_group");
    std::vector<int> ranks(static_cast<std::size_t>(g->size));
    for (int i = 0; i < g->size; ++i) ranks[static_cast<std::size_t>(i)] = i;
    g->members.resize(ranks.size());
    const int rc = MPI_Group_translate_ranks(mine, g->size, ranks.data(), world, g->members.data());
    MPI_Group_free(&mine);
    MPI_Group_free(&world);
    ok(rc, "MPI_Group_translate_ranks");
    return g;
  }

  void check_usable(const CollectiveDesc& d) const {
    if (g_->broken)
      throw g_->error(d, fmt::format("{} on {}: the group is unusable after an earlier timeout, mismatch or MPI error",
                                     d.str(), g_->describe()));
  }

  // All ranks' records of this call, through a nonblocking all-gather on the description communicator.
  std::vector<Record> exchange(const CollectiveDesc& d, int color, int key) {
    struct Buffers {
      Record mine;
      std::vector<Record> all;
      MPI_Request req = MPI_REQUEST_NULL;
      MPI_Status status{};
      int error = MPI_SUCCESS;
    };
    auto b = std::make_unique<Buffers>();
    b->mine = {static_cast<std::int64_t>(d.kind), static_cast<std::int64_t>(d.dtype), d.count,
               static_cast<std::int64_t>(d.op), d.root, static_cast<std::int64_t>(d.seq), color, key};
    b->all.resize(static_cast<std::size_t>(g_->size));
    g_->check_mpi(MPI_Iallgather(b->mine.data(), 8, MPI_INT64_T, b->all.data(), 8, MPI_INT64_T, g_->check, &b->req), d,
                  "MPI_Iallgather (call descriptions)");
    const auto deadline = std::chrono::steady_clock::now() + g_->timeout;
    if (!detail::mpi_poll_until(&b->req, &b->status, 1, b->error, deadline)) {
      (void)b.release();  // MPI may still write into it
      throw g_->timed_out(d, " while exchanging call descriptions (a rank has not made this call)");
    }
    g_->check_mpi(b->error, d, "MPI_Iallgather (call descriptions)");
    return std::move(b->all);
  }

  // Every rank throws the same message when the records differ.
  void check_same_call(const CollectiveDesc& d, const std::vector<Record>& all) {
    auto desc = [](const Record& r) {
      CollectiveDesc c{static_cast<CollectiveKind>(r[0]), static_cast<DType>(r[1]), r[2], static_cast<ReduceOp>(r[3]),
                       static_cast<int>(r[4]), static_cast<std::uint64_t>(r[5])};
      return c;
    };
    const CollectiveDesc d0 = desc(all.front());
    bool same = true;
    for (const Record& r : all) same = same && desc(r).same_call(d0);
    if (same) return;
    std::string calls;
    for (int j = 0; j < g_->size; ++j)
      calls += fmt::format("{}rank {} {}", j ? ", " : "", g_->world_rank(j), desc(all[static_cast<std::size_t>(j)]).str());
    g_->broken = true;
    throw g_->error(d, fmt::format("collective #{} on {}: mismatched calls: {}", d0.seq, g_->describe(), calls));
  }

  // Posts the nonblocking MPI call(s) of `d` into `p`.
  void post(const CollectiveDesc& d, const void* in, void* out, detail::MpiWork::Pending& p) {
    const MPI_Datatype t = detail::mpi_type(d.dtype);
    const int n = static_cast<int>(d.count);
    const auto bytes = static_cast<std::size_t>(d.count) * size_of(d.dtype);
    MPI_Comm c = g_->comm;
    MPI_Request* r = &p.req[0];
    p.n = 1;
    switch (d.kind) {
      case CollectiveKind::all_reduce:
        g_->check_mpi(MPI_Iallreduce(in == out ? MPI_IN_PLACE : in, out, n, t, detail::mpi_op(d.dtype, d.op), c, r), d,
                      "MPI_Iallreduce");
        break;
      case CollectiveKind::reduce_scatter:  // in == out: the result lands at the front of the input
        g_->check_mpi(MPI_Ireduce_scatter_block(in == out ? MPI_IN_PLACE : in, out, n, t, detail::mpi_op(d.dtype, d.op), c, r),
                      d, "MPI_Ireduce_scatter_block");
        break;
      case CollectiveKind::all_gather: {
        const bool in_place = in != nullptr && in == static_cast<const std::byte*>(out) + bytes * static_cast<std::size_t>(g_->rank);
        g_->check_mpi(MPI_Iallgather(in_place ? MPI_IN_PLACE : in, n, t, out, n, t, c, r), d, "MPI_Iallgather");
        break;
      }
      case CollectiveKind::broadcast:
        if (g_->rank == d.root && in != out && bytes > 0) std::memcpy(out, in, bytes);
        g_->check_mpi(MPI_Ibcast(out, n, t, d.root, c, r), d, "MPI_Ibcast");
        break;
      case CollectiveKind::reduce: {
        const bool root = g_->rank == d.root;
        g_->check_mpi(MPI_Ireduce(root && in == out ? MPI_IN_PLACE : in, root ? out : nullptr, n, t,
                                  detail::mpi_op(d.dtype, d.op), d.root, c, r),
                      d, "MPI_Ireduce");
        break;
      }
      case CollectiveKind::barrier: g_->check_mpi(MPI_Ibarrier(c, r), d, "MPI_Ibarrier"); break;
      case CollectiveKind::send:
        g_->check_mpi(MPI_Isend(in, n, t, d.root, tag, c, r), d, "MPI_Isend");
        if (g_->checking) {
          p.header = {static_cast<std::int64_t>(d.dtype), d.count};
          p.n = 2;
          g_->check_mpi(MPI_Isend(p.header.data(), 2, MPI_INT64_T, d.root, tag, g_->check, &p.req[1]), d, "MPI_Isend (header)");
        }
        break;
      case CollectiveKind::recv:
        g_->check_mpi(MPI_Irecv(out, n, t, d.root, tag, c, r), d, "MPI_Irecv");
        if (g_->checking) {
          p.n = 2;
          g_->check_mpi(MPI_Irecv(p.header.data(), 2, MPI_INT64_T, d.root, tag, g_->check, &p.req[1]), d, "MPI_Irecv (header)");
        }
        break;
      case CollectiveKind::split: break;  // handled by split()
    }
  }

  static constexpr int tag = 0;  // one tag: MPI's non-overtaking rule matches sends and recvs by order

  std::shared_ptr<detail::MpiGroup> g_;
};

}  // namespace parallax
