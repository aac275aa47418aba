// Tests for parallax/comm/communicator.hpp: which calls reach the transport. In a group of one, in-place calls
// and barriers return at once (TP 1 and DP 1 cost nothing); everything else is passed on unchanged.
#include <parallax/backend/host/memory.hpp>
#include <parallax/comm/communicator.hpp>

#include <catch2/catch.hpp>

#include <memory>
#include <string>
#include <vector>

namespace {

namespace px = parallax;
using px::CollectiveKind;
using px::Shape;
using px::View;
using Mem = px::host::Memory;

//! A transport of `size` ranks (this one rank 0) that records the kinds of the calls it is given.
class Recorder final : public px::Transport {
 public:
  explicit Recorder(int size) : members_(static_cast<std::size_t>(size)) {}
  int rank() const noexcept override { return 0; }
  int size() const noexcept override { return static_cast<int>(members_.size()); }
  const std::vector<int>& members() const noexcept override { return members_; }
  std::string_view memory_space() const noexcept override { return Mem::name; }
  const std::string& label() const noexcept override { return label_; }
  px::Work start(px::CollectiveDesc d, const void*, void*, bool) override {
    calls.push_back(d.kind);
    return {};
  }
  std::shared_ptr<px::Transport> split(int, int, std::string) override { return nullptr; }

  std::vector<CollectiveKind> calls;

 private:
  std::vector<int> members_;
  std::string label_ = "world";
};

}  // namespace

TEST_CASE("Communicator: in a group of one, in-place calls and barriers never reach the transport",
          "[comm][communicator]") {
  auto one = std::make_shared<Recorder>(1);
  px::Communicator solo(one);
  std::vector<float> a(4, 1.f), b(4, 0.f);
  View<float, Mem> x(a.data(), Shape{4}), y(b.data(), Shape{4});
  solo.all_reduce(x, px::ReduceOp::avg);
  solo.broadcast(x, 0);
  solo.reduce(x, px::ReduceOp::max, 0);
  solo.all_gather(View<const float, Mem>(x), x);       // output is the input: nothing to copy
  solo.reduce_scatter(View<const float, Mem>(x), x);
  solo.barrier();
  px::Work w = solo.all_reduce_async(x);
  CHECK(w.ready());
  CHECK(one->calls.empty());
  CHECK(a == std::vector<float>(4, 1.f));

  // Out of place, the data has to move: the transport copies it.
  solo.all_gather(View<const float, Mem>(x), y);
  solo.reduce_scatter(View<const float, Mem>(x), y);
  CHECK(one->calls == std::vector{CollectiveKind::all_gather, CollectiveKind::reduce_scatter});

  // Groups of two get every call.
  auto two = std::make_shared<Recorder>(2);
  px::Communicator pair(two);
  std::vector<float> c(8);
  View<float, Mem> z(c.data(), Shape{8});
  pair.all_reduce(z);
  pair.barrier();
  pair.broadcast(z, 1);
  CHECK(two->calls == std::vector{CollectiveKind::all_reduce, CollectiveKind::barrier, CollectiveKind::broadcast});
}
