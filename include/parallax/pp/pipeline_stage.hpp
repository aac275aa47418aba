// parallax/pp/pipeline_stage.hpp — PipelineStage<Schedule, Module>: runs one rank's share of a pipeline-parallel
// training step (its actions under a compile-time schedule, the activations and gradients between stages, the
// loss), and records when each action ran.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "../comm/communicator.hpp"
#include "../comm/work.hpp"
#include "../core/tensor.hpp"
#include "../error.hpp"
#include "../nn/loss_value.hpp"
#include "../nn/parameter.hpp"
#include "action.hpp"
#include "schedule.hpp"
#include "simulate.hpp"
#include "stage_module.hpp"
#include "trace.hpp"

namespace parallax::pp {

//! Options of a `PipelineStage`.
struct PipelineOptions {
  int microbatches = 1;              //!< m, the microbatches of every step (the schedule is checked for it)
  std::int32_t ignore_index = -100;  //!< targets not counted in the loss's mean (the loss module's ignore_index)
  bool record = true;                //!< record each action's start and end (`recording()`, `timeline()`)
};

//! What one `train_step` did, as this rank saw it.
struct StepResult {
  double loss = 0;          //!< the mean loss over every target token of the global batch: the same on every rank
  nn::LossValue total;      //!< its sum and token count (all microbatches of all DP x CP replicas)
  int peak_in_flight = 0;   //!< most (microbatch, chunk) forwards whose backward had not run yet, on this rank
  double seconds = 0;       //!< this rank's wall time of the step
};

namespace detail {

//! Keeps `buffers` alive until the process exits. A step that failed may leave sends and receives posted that a
//! peer can still complete, reading from or writing into their buffers, so those buffers are never freed.
inline void quarantine(std::shared_ptr<void> buffers) {
  static std::mutex mutex;
  static auto* kept = new std::vector<std::shared_ptr<void>>();  // never destroyed, on purpose
  const std::lock_guard lock(mutex);
  kept->push_back(std::move(buffers));
}

//! What a pipeline stage asks of its schedule, at run time: a `PipelineStage<S, M>`'s code is then compiled once
//! per module type `M`, however many schedules a program offers.
struct ScheduleRef {
  std::string type_name;  //!< `schedule_.type_name`
  int chunks = 1;         //!< `schedule_.chunks`
  int (*stage_of)(int rank, int chunk, int stages) = nullptr;
  std::vector<Action> (*actions)(int rank, ScheduleShape shape) = nullptr;
  void (*validate)(ScheduleShape shape) = nullptr;                          //!< `pp::validate<S>`
  Simulation (*simulate)(ScheduleShape shape, const Costs& costs) = nullptr;  //!< `pp::simulate<S>`

  template <Schedule S>
  [[nodiscard]] static ScheduleRef of() {
    return {S::type_name(), S::chunks, &S::stage_of, &S::actions, &pp::validate<S>, &pp::simulate<S>};
  }

  //! `pp::placement<S>(stage, stages)`.
  [[nodiscard]] Placement placement(int stage, int stages) const {
    for (int r = 0; r < stages; ++r)
      for (int c = 0; c < chunks; ++c)
        if (stage_of(r, c, stages) == stage) return {r, c};
    return {};
  }
};

}  // namespace detail

namespace detail {

//! The body of `PipelineStage<S, M>` (see there), its schedule a run-time `ScheduleRef`.
template <StageModule M>
class StageRunner {
 public:
  using module_type = M;
  using backend = typename M::backend;
  using value_type = typename M::value_type;
  using Memory = typename backend::Memory;
  using Microbatch = pp::Microbatch<Memory>;

  //! See `PipelineStage`'s constructor.
  template <class Mesh>
  StageRunner(Mesh& mesh, ScheduleRef schedule, std::vector<M> chunks, const PipelineOptions& o)
      : schedule_(std::move(schedule)),
        pp_(&mesh.pp()),
        dp_cp_(&mesh.dp_cp()),
        me_(mesh.pp_rank()),
        options_(o),
        shape_{mesh.pp_size(), o.microbatches, schedule_.chunks},
        chunks_(std::move(chunks)) {
    const int rank = mesh.rank();
    if (static_cast<int>(chunks_.size()) != schedule_.chunks)
      throw Error(fmt::format("{}: {} model chunks given, the schedule runs {} per rank", label(), chunks_.size(),
                              schedule_.chunks),
                  rank);
    try {
      schedule_.validate(shape_);
    } catch (const Error& e) {
      throw Error(fmt::format("{}: {}", label(), e.what()), rank);
    }
    plan();
  }

  //! p, m and v.
  [[nodiscard]] const ScheduleShape& shape() const noexcept { return shape_; }
  //! This rank's position in the pipeline.
  [[nodiscard]] int pp_rank() const noexcept { return me_; }
  //! The virtual stage chunk `c` is.
  [[nodiscard]] int virtual_stage(int c) const { return schedule_.stage_of(me_, c, shape_.stages); }
  //! Chunk `c`'s module.
  [[nodiscard]] M& chunk(int c) { return chunks_.at(static_cast<std::size_t>(c)); }
  //! This rank's actions, in order.
  [[nodiscard]] std::vector<Action> actions() const {
    std::vector<Action> list;
    for (const TimedAction& a : timed_) list.push_back(a.action);
    return list;
  }

  //! Every chunk's parameters, chunk 0 first.
  [[nodiscard]] nn::ParameterList<value_type, Memory> parameters() {
    nn::ParameterList<value_type, Memory> all;
    for (M& c : chunks_) nn::append(all, c.parameters());
    return all;
  }

  //! Runs one training step over `mbs` (m microbatches, the same on every rank of the pipeline): every forward
  //! and backward of this rank, accumulating (+=) into the parameters' gradients the gradient of
  //! `loss_scale` x the mean loss over the global batch. Returns that mean loss (unscaled) on every rank.
  StepResult train_step(std::span<const Microbatch> mbs, float loss_scale = 1.f) {
    const auto started = std::chrono::steady_clock::now();
    check_microbatches(mbs);
    mbs_ = mbs;
    const double tokens = reduce(*dp_cp_, std::array<double, 1>{count_targets(mbs)})[0];
    scale_ = tokens > 0 ? static_cast<float>(loss_scale / tokens) : 0.f;
    loss_ = {};
    in_flight_ = peak_in_flight_ = 0;
    records_.clear();
    if (options_.record) {
      pp_->barrier();  // one origin for the whole pipeline's clocks
      origin_ = std::chrono::steady_clock::now();
    }
    auto transfers = std::make_shared<Transfers>(slot_count());
    try {
      io_ = transfers.get();
      gather_input_shapes();
      for (const TimedAction& a : timed_) run(a);
      finish();
      io_ = nullptr;
    } catch (...) {
      io_ = nullptr;
      for (auto& ctx : contexts_) ctx.reset();
      detail::quarantine(std::move(transfers));
      mbs_ = {};
      throw;
    }
    mbs_ = {};
    const auto sums = reduce(*dp_cp_, reduce(*pp_, std::array<double, 2>{loss_.sum, double(loss_.count)}));
    StepResult r;
    r.total = {sums[0], static_cast<std::int64_t>(sums[1])};
    if (r.total.count != static_cast<std::int64_t>(tokens))
      throw Error(fmt::format("{}: the loss counted {} target tokens, but {} targets differ from ignore_index {}; give "
                              "PipelineOptions the loss module's ignore_index",
                              label(), r.total.count, static_cast<std::int64_t>(tokens), options_.ignore_index),
                  pp_->world_rank());
    r.loss = r.total.mean();
    r.peak_in_flight = peak_in_flight_;
    if (options_.record) gather_records();
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    return r;
  }

  //! The last step's actions on every rank of this pipeline, with their times (empty unless `record`).
  [[nodiscard]] const Recording& recording() const noexcept { return recording_; }
  //! The last step's ASCII timeline, one line per pipeline rank (see `pp::timeline(const Recording&)`).
  [[nodiscard]] std::string timeline() const { return pp::timeline(recording_); }

 private:
  using Tensor = parallax::Tensor<value_type, Memory>;

  //! A message between virtual stages: the activation for `stage` or, `gradient`, the gradient for it.
  struct Message {
    bool gradient = false;
    int microbatch = 0;
    int stage = 0;  // the receiving virtual stage
  };

  //! A message this rank sends or receives in a step. Every rank of the pipeline orders all of them the same way:
  //! by the simulated end of the sending action (`pp::simulate` with unit costs), then the sender's pipeline rank.
  struct Transfer {
    std::pair<int, int> key;  // (time, sender)
    int peer = 0;             // the other pipeline rank
    bool sending = false;     // this rank sends it (else receives it)
    Message msg;
  };

  //! A message being sent: its tensor stays alive until the receiver has taken it.
  struct Outgoing {
    Tensor payload;
    Work work;
  };

  //! Every buffer a step communicates through (quarantined whole when a step fails).
  struct Transfers {
    explicit Transfers(std::size_t slots) : arrived(slots), work(slots), present(slots, 0) {}
    std::vector<Tensor> arrived;         // by slot: handed over, or received or being received; not consumed
    std::vector<Work> work;              // by slot: the receive into `arrived[slot]`
    std::vector<unsigned char> present;  // by slot: whether `arrived[slot]` holds (or is receiving) the message
    std::vector<Outgoing> outgoing;
    std::size_t next = 0;  // the first of `transfers_` not issued yet
  };

  [[nodiscard]] std::string label() const { return fmt::format("PipelineStage<{}>", schedule_.type_name); }
  [[nodiscard]] int rank_id() const { return pp_->world_rank(); }
  [[nodiscard]] int total_stages() const noexcept { return shape_.virtual_stages(); }
  [[nodiscard]] std::size_t slot_count() const {
    return static_cast<std::size_t>(2 * shape_.microbatches * total_stages());
  }
  [[nodiscard]] std::size_t slot(const Message& msg) const {
    return static_cast<std::size_t>(((msg.gradient ? 1 : 0) * shape_.microbatches + msg.microbatch) * total_stages() +
                                    msg.stage);
  }
  [[nodiscard]] std::size_t context_slot(const Action& a) const {
    return static_cast<std::size_t>(a.chunk * shape_.microbatches + a.microbatch);
  }
  //! The rank and chunk of virtual stage `s`.
  [[nodiscard]] Placement at(int s) const { return schedule_.placement(s, shape_.stages); }

  //! The message action `a` of `rank` sends, if any: forwards send activations up, backwards gradients down.
  [[nodiscard]] std::optional<Message> sent_by(int rank, const Action& a) const {
    const int s = schedule_.stage_of(rank, a.chunk, shape_.stages);
    if (a.op == Op::forward && s + 1 < total_stages()) return Message{false, a.microbatch, s + 1};
    if ((a.op == Op::backward || a.op == Op::backward_input) && s > 0) return Message{true, a.microbatch, s - 1};
    return std::nullopt;
  }

  //! This rank's actions with their simulated times, and the messages it sends and receives in the step's order.
  void plan() {
    const Simulation sim = schedule_.simulate(shape_, {});
    timed_ = sim.ranks[static_cast<std::size_t>(me_)];
    for (int sender = 0; sender < shape_.stages; ++sender)
      for (const TimedAction& a : sim.ranks[static_cast<std::size_t>(sender)]) {
        const auto msg = sent_by(sender, a.action);
        if (!msg) continue;
        const int receiver = at(msg->stage).rank;
        if (receiver == sender || (sender != me_ && receiver != me_)) continue;
        transfers_.push_back({{a.end, sender}, sender == me_ ? receiver : sender, sender == me_, *msg});
      }
    std::ranges::sort(transfers_, {}, &Transfer::key);
    contexts_.resize(static_cast<std::size_t>(shape_.microbatches * schedule_.chunks));
  }

  void check_microbatches(std::span<const Microbatch> mbs) const {
    if (static_cast<int>(mbs.size()) != shape_.microbatches)
      throw Error(fmt::format("{}: train_step got {} microbatches, the stage was built for {}", label(), mbs.size(),
                              shape_.microbatches),
                  rank_id());
    for (std::size_t i = 0; i < mbs.size(); ++i) {
      const Shape& t = mbs[i].tokens.shape();
      if (t.rank() != 2 || mbs[i].targets.shape() != t)
        throw Error(fmt::format("{}: microbatch {} has tokens {} and targets {}; both must be [T, B]", label(), i, t,
                                mbs[i].targets.shape()),
                    rank_id());
    }
  }

  [[nodiscard]] double count_targets(std::span<const Microbatch> mbs) const {
    std::int64_t n = 0;
    for (const Microbatch& mb : mbs)
      for (std::int32_t t : to_vector(mb.targets)) n += t != options_.ignore_index ? 1 : 0;
    return double(n);
  }

  //! The element-wise sum of `values` over `comm` (through the transport's memory space).
  template <std::size_t N>
  [[nodiscard]] std::array<double, N> reduce(Communicator& comm, std::array<double, N> values) const {
    if (comm.size() == 1) return values;
    parallax::Tensor<double, Memory> buf(rank().allocator(), Shape{std::int64_t{N}}, MemoryCategory::communication);
    copy_from(buf.view(), std::span<const double>(values));
    comm.all_reduce(buf.view());
    const auto out = to_vector(buf.cview());
    std::copy(out.begin(), out.end(), values.begin());
    return values;
  }

  [[nodiscard]] Rank<backend>& rank() const { return chunks_.front().rank(); }

  // --- running the actions --------------------------------------------------------------------------------------

  void run(const TimedAction& timed) {
    const Action& a = timed.action;
    progress();
    post_receives({timed.start, std::numeric_limits<int>::max()});  // every message sent before this action starts
    const int s = virtual_stage(a.chunk);
    M& chunk_module = chunks_[static_cast<std::size_t>(a.chunk)];
    auto& ctx = contexts_[context_slot(a)];
    const Microbatch& mb = mbs_[static_cast<std::size_t>(a.microbatch)];
    switch (a.op) {
      case Op::forward: {
        const Tensor x = s > 0 ? take({false, a.microbatch, s}) : Tensor{};
        ctx.emplace();
        const auto t0 = now();
        StageOutput<value_type, Memory> out = chunk_module.forward(*ctx, {x.cview(), mb.tokens, mb.targets});
        record(a, t0);
        peak_in_flight_ = std::max(peak_in_flight_, ++in_flight_);
        if (s + 1 < total_stages())
          deliver({false, a.microbatch, s + 1}, std::move(out.activation), timed.end);
        else
          loss_ += out.loss;
        break;
      }
      case Op::backward:
      case Op::backward_input: {
        const Tensor dy = s + 1 < total_stages() ? take({true, a.microbatch, s}) : Tensor{};
        const auto t0 = now();
        Tensor dx = chunk_module.backward_input(*ctx, dy.cview(), scale_);
        if (a.op == Op::backward) chunk_module.backward_weight(*ctx);
        record(a, t0);
        --in_flight_;
        if (a.op == Op::backward) ctx.reset();
        if (s > 0) deliver({true, a.microbatch, s - 1}, std::move(dx), timed.end);
        break;
      }
      case Op::backward_weight: {
        const auto t0 = now();
        chunk_module.backward_weight(*ctx);
        record(a, t0);
        ctx.reset();
        break;
      }
    }
  }

  //! Hands `t`, made by an action that ended at simulated time `time`, to the virtual stage `msg.stage`: kept here
  //! when this rank holds it, else sent to its rank in the step's order. Its shape is checked first, against the
  //! receiving stage's input shape, so a mismatch is an error naming both stages on the rank that made it.
  void deliver(const Message& msg, Tensor t, int time) {
    const int from = msg.gradient ? msg.stage + 1 : msg.stage - 1;
    if (const Shape& want = expected_shape(msg); t.shape() != want)
      throw Error(fmt::format("pipeline stage {} expects {} {} but stage {} sent {}", msg.stage,
                              msg.gradient ? "gradients" : "activations", want, from, t.shape()),
                  rank_id());
    const int to = at(msg.stage).rank;
    if (to == me_) {
      io_->arrived[slot(msg)] = std::move(t);
      io_->present[slot(msg)] = 1;
      return;
    }
    post_receives({time, me_});
    const Transfer* x = io_->next < transfers_.size() ? &transfers_[io_->next] : nullptr;
    if (x == nullptr || !x->sending || x->msg.gradient != msg.gradient || x->msg.microbatch != msg.microbatch ||
        x->msg.stage != msg.stage)
      throw Error(fmt::format("{}: {} of microbatch {} for virtual stage {} is not the next message of the step's "
                              "order (schedule bug)",
                              label(), msg.gradient ? "the gradient" : "the activation", msg.microbatch, msg.stage),
                  rank_id());
    ++io_->next;
    Outgoing& out = io_->outgoing.emplace_back();
    out.payload = std::move(t);
    out.work = pp_->send_async(out.payload.cview(), to);
  }

  //! Posts, in the step's order, the receives of the messages ordered before `key` (time, sender); reaching a send
  //! of this rank not made yet is a schedule bug. Posting them early lets a sender finish, and every rank posting
  //! in one order lets transports that run a group's calls one after another (NCCL on a stream) never deadlock.
  void post_receives(std::pair<int, int> key) {
    for (; io_->next < transfers_.size() && transfers_[io_->next].key < key; ++io_->next) {
      const Transfer& x = transfers_[io_->next];
      if (x.sending)
        throw Error(fmt::format("{}: {} of microbatch {} for virtual stage {} was due before simulated time {} but not "
                                "made (schedule bug)",
                                label(), x.msg.gradient ? "the gradient" : "the activation", x.msg.microbatch,
                                x.msg.stage, key.first),
                    rank_id());
      const std::size_t k = slot(x.msg);
      io_->arrived[k] = Tensor(rank().allocator(), expected_shape(x.msg), MemoryCategory::activations);
      io_->work[k] = pp_->recv_async(io_->arrived[k].view(), x.peer);
      io_->present[k] = 1;
    }
  }

  //! The tensor of `msg`, waiting for its receive when it is remote.
  [[nodiscard]] Tensor take(const Message& msg) {
    const std::size_t k = slot(msg);
    if (!io_->present[k])
      throw Error(fmt::format("{}: {} of microbatch {} for virtual stage {} was never handed over (schedule bug)",
                              label(), msg.gradient ? "the gradient" : "the activation", msg.microbatch, msg.stage),
                  rank_id());
    io_->work[k].wait();
    io_->present[k] = 0;
    return std::move(io_->arrived[k]);
  }

  //! Drops the sends that completed (their tensors freed early), without waiting.
  void progress() {
    std::erase_if(io_->outgoing, [](const Outgoing& o) { return o.work.ready(); });
  }

  //! Waits for every send; every message of the step was issued.
  void finish() {
    for (Outgoing& o : io_->outgoing) o.work.wait();
    io_->outgoing.clear();
    if (io_->next != transfers_.size())
      throw Error(fmt::format("{}: {} of the step's {} messages were issued (schedule bug)", label(), io_->next,
                              transfers_.size()),
                  rank_id());
  }

  //! The shape virtual stage `msg.stage` takes `msg` in: an activation is its input; a gradient is the shape of the
  //! activation it sent, the next stage's input.
  [[nodiscard]] const Shape& expected_shape(const Message& msg) const {
    const int s = msg.gradient ? msg.stage + 1 : msg.stage;
    return input_shapes_[static_cast<std::size_t>(s * shape_.microbatches + msg.microbatch)];
  }

  //! Every virtual stage's input shape for every microbatch of the step, as its module says (`input_shape`),
  //! gathered over the pipeline (one small all-gather per step): each rank then knows every message's shape before
  //! it arrives, and checks what it sends.
  void gather_input_shapes() {
    constexpr int fields = 1 + Shape::max_rank;
    const int m = shape_.microbatches, v = schedule_.chunks;
    std::vector<std::int64_t> mine;
    for (int c = 0; c < v; ++c)
      for (int j = 0; j < m; ++j) {
        const Shape& tokens = mbs_[static_cast<std::size_t>(j)].tokens.shape();
        const Shape sh = chunks_[static_cast<std::size_t>(c)].input_shape(tokens);
        mine.push_back(sh.rank());
        for (int i = 0; i < Shape::max_rank; ++i) mine.push_back(i < sh.rank() ? sh[i] : 0);
      }
    const std::vector<std::int64_t> all = gather_over_pipeline(mine);
    input_shapes_.assign(static_cast<std::size_t>(total_stages() * m), Shape{});
    const std::int64_t* f = all.data();
    for (int r = 0; r < shape_.stages; ++r)
      for (int c = 0; c < v; ++c)
        for (int j = 0; j < m; ++j, f += fields) {
          Shape sh;
          for (std::int64_t i = 0; i < f[0]; ++i) sh = append_dim(sh, f[1 + i]);
          const int s = schedule_.stage_of(r, c, shape_.stages);
          input_shapes_[static_cast<std::size_t>(s * m + j)] = sh;
        }
  }

  //! Every pipeline rank's `mine` (of equal lengths), concatenated in rank order (through the transport's memory).
  [[nodiscard]] std::vector<std::int64_t> gather_over_pipeline(const std::vector<std::int64_t>& mine) const {
    if (shape_.stages == 1) return mine;
    const auto n = static_cast<std::int64_t>(mine.size());
    parallax::Tensor<std::int64_t, Memory> in(rank().allocator(), Shape{n}, MemoryCategory::communication);
    parallax::Tensor<std::int64_t, Memory> out(rank().allocator(), Shape{n * shape_.stages},
                                               MemoryCategory::communication);
    copy_from(in.view(), std::span<const std::int64_t>(mine));
    pp_->all_gather(in.cview(), out.view());
    return to_vector(out.cview());
  }

  [[nodiscard]] static Shape append_dim(const Shape& s, std::int64_t d) {
    switch (s.rank()) {
      case 0: return Shape{d};
      case 1: return Shape{s[0], d};
      case 2: return Shape{s[0], s[1], d};
      default: return Shape{s[0], s[1], s[2], d};
    }
  }

  // --- recording -----------------------------------------------------------------------------------------------

  [[nodiscard]] std::chrono::steady_clock::time_point now() const { return std::chrono::steady_clock::now(); }

  //! Nanoseconds of the steady clock since its epoch.
  [[nodiscard]] static std::int64_t ns(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  }

  void record(const Action& a, std::chrono::steady_clock::time_point start) {
    if (options_.record) records_.push_back({a, ns(start), ns(now())});
  }

  //! Every pipeline rank's records, gathered over `mesh.pp()` into `recording_` (every rank has as many actions),
  //! with times from the step's start. Ranks whose clocks agree (threads or processes of one machine: their
  //! barrier exits lie within `shared_clock_ns`) keep one origin, so causality shows exactly; others (other
  //! machines) each count from their own exit of the step's barrier.
  void gather_records() {
    constexpr std::int64_t fields = 5, shared_clock_ns = 10'000'000;
    const auto n = static_cast<std::int64_t>(records_.size());
    const std::int64_t block = 1 + n * fields;  // the barrier exit, then the records
    std::vector<std::int64_t> mine{ns(origin_)};
    for (const ActionRecord& r : records_)
      mine.insert(mine.end(), {static_cast<std::int64_t>(r.action.op), r.action.microbatch, r.action.chunk, r.start_ns,
                               r.end_ns});
    const std::vector<std::int64_t> all = gather_over_pipeline(mine);
    std::int64_t first = all[0], last = all[0];
    for (int r = 0; r < shape_.stages; ++r) {
      first = std::min(first, all[static_cast<std::size_t>(r * block)]);
      last = std::max(last, all[static_cast<std::size_t>(r * block)]);
    }
    recording_ = {schedule_.type_name, shape_, {}};
    for (int r = 0; r < shape_.stages; ++r) {
      const std::int64_t* f = all.data() + r * block;
      const std::int64_t origin = last - first < shared_clock_ns ? first : f[0];
      auto& rank_records = recording_.ranks.emplace_back();
      for (++f; f < all.data() + (r + 1) * block; f += fields)
        rank_records.push_back(
            {{static_cast<Op>(f[0]), static_cast<int>(f[1]), static_cast<int>(f[2])}, f[3] - origin, f[4] - origin});
    }
  }

  ScheduleRef schedule_;
  Communicator* pp_;
  Communicator* dp_cp_;
  int me_;
  PipelineOptions options_;
  ScheduleShape shape_;
  std::vector<M> chunks_;
  std::vector<TimedAction> timed_;  // this rank's actions with their simulated times (unit costs), in order
  std::vector<Transfer> transfers_;  // this rank's sends and receives of a step, in the step's order
  std::vector<Shape> input_shapes_;  // by (virtual stage, microbatch), gathered each step
  std::vector<std::optional<typename M::Ctx>> contexts_;  // by (chunk, microbatch), from forward to backward
  // The step in progress.
  std::span<const Microbatch> mbs_;
  Transfers* io_ = nullptr;
  float scale_ = 0;
  nn::LossValue loss_;
  int in_flight_ = 0, peak_in_flight_ = 0;
  std::chrono::steady_clock::time_point origin_{};
  std::vector<ActionRecord> records_;
  Recording recording_;
};

}  // namespace detail

//! One rank's share of a pipeline-parallel training step under schedule `S`: this rank's `S::chunks` model
//! chunks (chunk c is virtual stage `S::stage_of(pp_rank, c, p)`), run in the order `S::actions` gives.
//!
//! Per step (`train_step`, on every rank of the mesh with the same microbatches):
//!   - counts the global batch's target tokens (not `ignore_index`) over DP x CP, so the last virtual stage
//!     backpropagates the gradient of the global mean (a DP reduction then sums);
//!   - runs each action: a forward takes the previous virtual stage's activation, a backward the next one's
//!     gradient. Between ranks they travel over `mesh.pp()`, only the tensor: every stage's input shapes are
//!     all-gathered at the step's start, and the sender checks what it sends (a mismatch names both stages).
//!     Every rank issues the step's sends and receives in one order, by the schedule's unit-cost simulation (end of
//!     the sending action, then sender), receives early and sends asynchronously: transports that run a group's
//!     calls one after another (NCCL on a stream) cannot deadlock, and schedules whose two directions interleave
//!     (ZB-V) work, early messages held. Between chunks of one rank (interleaved, V-shape) the tensor is handed
//!     over without communication;
//!   - keeps one module context per (microbatch, chunk) between its forward and its backward and frees it after
//!     the backward (after backward_weight in split schedules);
//!   - returns the mean loss, reduced over the pipeline and DP x CP so every rank returns the same number.
//!
//! Data parallelism, ZeRO and tensor parallelism compose without help from the stage: TP lives inside the chunk
//! modules; an `optim::ShardedOptimizer` over `parameters()` with `accumulation = m` reduces each gradient bucket
//! after its m-th gradient (the last backward of the step). Activation checkpointing is the chunk modules'
//! (`nn::Checkpoint`, `TransformerBlockOptions::checkpoint`). ZeRO-3 works, but with several buckets per stage
//! each bucket is gathered again for every microbatch (m times the traffic); see docs/pipeline-parallel.md.
//!
//! Every check that can fail before communication does so on every rank alike: the chunk count, the schedule
//! for m (`pp::validate`), the microbatches' shapes.
//! @tparam S a `pp::Schedule` (`GPipe`, `OneFOneB`, `Interleaved1F1B<V>`, `ZeroBubbleH1`, `ZeroBubbleV`)
//! @tparam M a `pp::StageModule`
//! @code
//! pp::PipelineStage<pp::OneFOneB, GptStage> stage(mesh, GptStage(mesh, mesh.pp_rank(), ...), {.microbatches = 8});
//! optim::ShardedOptimizer<optim::AdamW, optim::Zero<1>, Mesh, B> opt(mesh, stage.parameters(), {.lr = 3e-4f},
//!                                                                   {.accumulation = 8});
//! pp::StepResult r = stage.train_step(microbatches);   // r.loss on every rank
//! opt.step();
//! fmt::print("{}", stage.timeline());
//! @endcode
template <Schedule S, StageModule M>
class PipelineStage : public detail::StageRunner<M> {
 public:
  using schedule = S;

  //! This rank's stage of the pipeline over `mesh` (a `DeviceMesh`: its `pp()` group carries the activations,
  //! `dp_cp()` sums the token count and the loss), running `chunks`, `S::chunks` of them, chunk c being virtual
  //! stage `S::stage_of(mesh.pp_rank(), c, mesh.pp_size())`. Not collective. Throws, alike on every rank, for a
  //! wrong number of chunks or an m the schedule cannot run on `mesh.pp_size()` stages (`pp::validate`'s error).
  //! The chunks are moved in and keep their addresses from then on (build an optimizer from `parameters()`).
  template <class Mesh>
  PipelineStage(Mesh& mesh, std::vector<M> chunks, const PipelineOptions& o)
      : detail::StageRunner<M>(mesh, detail::ScheduleRef::of<S>(), std::move(chunks), o) {}

  //! The stage of a schedule with one chunk per rank, running `chunk`.
  template <class Mesh>
    requires(S::chunks == 1)
  PipelineStage(Mesh& mesh, M chunk, const PipelineOptions& o) : PipelineStage(mesh, one(std::move(chunk)), o) {}

 private:
  static std::vector<M> one(M chunk) {
    std::vector<M> v;
    v.push_back(std::move(chunk));
    return v;
  }
};

}  // namespace parallax::pp

namespace parallax {
using pp::PipelineOptions;  // the names users write: parallax::PipelineStage<parallax::OneFOneB, Stage>
using pp::PipelineStage;
using pp::StageModule;
}  // namespace parallax
