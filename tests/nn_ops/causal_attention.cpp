// CausalAttention: forward against a double-precision loop, dqkv against finite differences, heads are
// independent (a TP rank's core over its heads is a slice of the whole), bf16 against fp32, memory, errors.
#include <catch2/catch.hpp>

#include <parallax/nn/causal_attention.hpp>

#include "../support/gradcheck.hpp"
#include "../support/support.hpp"
#include "nn_ops.hpp"

#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace px = parallax;
using px::Shape;
using px::test::error_of;
using px::test::HostBackend;
using px::test::HostView;
using i64 = std::int64_t;
template <class T>
using Core = px::nn::CausalAttention<HostBackend, T>;

static_assert(px::nn::Layer<Core<float>>);
static_assert(px::nn::Layer<Core<px::bf16>>);

namespace {

constexpr i64 nt = 5, nb = 2, nh = 3, dh = 4;
const Shape qkv_shape{nt, nb, 3 * nh * dh};

// y [T, B, H * Dh] of causal attention over qkv [T, B, 3 * H * Dh], in double.
std::vector<double> reference(const std::vector<float>& qkv, i64 t_len, i64 b_len, i64 heads, i64 d) {
  const i64 width = 3 * heads * d;
  const auto at = [&](i64 t, i64 b, i64 part, i64 h, i64 i) {
    return double(qkv[static_cast<std::size_t>((t * b_len + b) * width + part * heads * d + h * d + i)]);
  };
  std::vector<double> y(static_cast<std::size_t>(t_len * b_len * heads * d));
  for (i64 b = 0; b < b_len; ++b)
    for (i64 h = 0; h < heads; ++h)
      for (i64 t = 0; t < t_len; ++t) {
        std::vector<double> s(static_cast<std::size_t>(t + 1));
        double m = -1e300, z = 0;
        for (i64 j = 0; j <= t; ++j) {
          double dot = 0;
          for (i64 i = 0; i < d; ++i) dot += at(t, b, 0, h, i) * at(j, b, 1, h, i);
          s[static_cast<std::size_t>(j)] = dot / std::sqrt(double(d));
          m = std::max(m, s[static_cast<std::size_t>(j)]);
        }
        for (double& v : s) z += (v = std::exp(v - m));
        for (i64 i = 0; i < d; ++i) {
          double acc = 0;
          for (i64 j = 0; j <= t; ++j) acc += s[static_cast<std::size_t>(j)] * at(j, b, 2, h, i);
          y[static_cast<std::size_t>((t * b_len + b) * heads * d + h * d + i)] = acc / z;
        }
      }
  return y;
}

// forward then backward_input(dy) of a core of storage T over fp32 values; returns {y, dqkv} as floats.
template <class T>
std::pair<std::vector<float>, std::vector<float>> run(px::Rank<HostBackend>& rank, i64 heads,
                                                      const std::vector<float>& qkv, Shape qs,
                                                      const std::vector<float>& dy) {
  Core<T> core(rank, heads, dh);
  const auto x = px::test::stored<T>(qkv), g = px::test::stored<T>(dy);
  typename Core<T>::Ctx ctx;
  auto y = core.forward(ctx, HostView<T>(x.data(), qs));
  auto dx = core.backward_input(ctx, HostView<T>(g.data(), y.shape()));
  core.backward_weight(ctx);
  return {px::test::floats(y.cview()), px::test::floats(dx.cview())};
}

}  // namespace

TEST_CASE("CausalAttention forward matches a double-precision loop", "[nn_ops][attention]") {
  const auto qkv = px::test::random_values(qkv_shape.numel(), 1, 2.f);
  std::vector<float> got;
  Shape ys;
  px::test::on_one_rank([&](px::Rank<HostBackend>& rank) {
    Core<float> core(rank, nh, dh);
    Core<float>::Ctx ctx;
    auto y = core.forward(ctx, HostView<float>(qkv.data(), qkv_shape));
    ys = y.shape();
    got = px::test::floats(y.cview());
  });
  CHECK(ys == Shape{nt, nb, nh * dh});
  const auto want = reference(qkv, nt, nb, nh, dh);
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) CHECK(got[i] == Approx(want[i]).epsilon(1e-5).margin(1e-6));
}

TEST_CASE("CausalAttention dqkv matches finite differences", "[nn_ops][attention][gradcheck]") {
  std::vector<px::test::GradError> errs;
  px::test::on_one_rank([&](px::Rank<HostBackend>& rank) {
    Core<float> core(rank, nh, dh, {.name = "h.0.attn.core"});
    errs = px::test::gradcheck(core, px::test::random_values(qkv_shape.numel(), 2, 1.5f), qkv_shape,
                               {.max_points = 90});
  });
  REQUIRE(errs.size() == 1);  // dx only: no parameters
  INFO(errs[0].str());
  CHECK(errs[0].what == "h.0.attn.core dx");
  CHECK(errs[0].ok());
}

TEST_CASE("CausalAttention heads are independent: a core over some heads computes their slice",
          "[nn_ops][attention][tp]") {
  // Two TP ranks, each with H/2 heads: rank r's qkv holds heads [r H/2, (r+1) H/2) of each of q, k, v.
  constexpr i64 heads = 4, half = heads / 2;
  const Shape whole{nt, nb, 3 * heads * dh}, part{nt, nb, 3 * half * dh};
  const auto qkv = px::test::random_values(whole.numel(), 3, 2.f);
  const auto dy = px::test::random_values(nt * nb * heads * dh, 4);
  std::vector<float> y, dqkv, y_part[2], dqkv_part[2];
  px::test::on_one_rank([&](px::Rank<HostBackend>& rank) {
    std::tie(y, dqkv) = run<float>(rank, heads, qkv, whole, dy);
    for (int r = 0; r < 2; ++r) {
      std::vector<float> x, g;
      for (i64 row = 0; row < nt * nb; ++row) {
        for (i64 p = 0; p < 3; ++p) {
          const auto from = qkv.begin() + row * 3 * heads * dh + p * heads * dh + r * half * dh;
          x.insert(x.end(), from, from + half * dh);
        }
        const auto from = dy.begin() + row * heads * dh + r * half * dh;
        g.insert(g.end(), from, from + half * dh);
      }
      std::tie(y_part[r], dqkv_part[r]) = run<float>(rank, half, x, part, g);
    }
  });
  bool same = true;
  for (i64 row = 0; row < nt * nb; ++row)
    for (int r = 0; r < 2; ++r)
      for (i64 i = 0; i < half * dh; ++i) {
        same = same && y[row * heads * dh + r * half * dh + i] == y_part[r][row * half * dh + i];
        for (i64 p = 0; p < 3; ++p)
          same = same && dqkv[row * 3 * heads * dh + p * heads * dh + r * half * dh + i] ==
                             dqkv_part[r][row * 3 * half * dh + p * half * dh + i];
      }
  CHECK(same);
}

TEST_CASE("CausalAttention in bf16 is within 1e-2 of fp32", "[nn_ops][attention][bf16]") {
  // The inputs are bf16 values, so both runs see the same numbers and only storage rounding differs.
  const auto qkv = px::test::rounded<px::bf16>(px::test::random_values(qkv_shape.numel(), 5, 2.f));
  const auto dy = px::test::rounded<px::bf16>(px::test::random_values(nt * nb * nh * dh, 6));
  std::pair<std::vector<float>, std::vector<float>> f32, b16;
  px::test::on_one_rank([&](px::Rank<HostBackend>& rank) {
    f32 = run<float>(rank, nh, qkv, qkv_shape, dy);
    b16 = run<px::bf16>(rank, nh, qkv, qkv_shape, dy);
  });
  CHECK(px::test::relative_diff(b16.first, f32.first) < 1e-2);
  CHECK(px::test::relative_diff(b16.second, f32.second) < 1e-2);
}

TEST_CASE("CausalAttention frees everything it saved by the end of backward_input", "[nn_ops][attention][memory]") {
  std::int64_t after_forward = -1, after_backward = -1, after_weight = -1, peak = -1;
  px::test::on_one_rank([&](px::Rank<HostBackend>& rank) {
    Core<float> core(rank, nh, dh);
    const auto qkv = px::test::random_values(qkv_shape.numel(), 7);
    Core<float>::Ctx ctx;
    auto y = core.forward(ctx, HostView<float>(qkv.data(), qkv_shape));
    after_forward = static_cast<std::int64_t>(rank.memory().live(px::MemoryCategory::activations));
    y.reset();  // the caller's output is the caller's
    auto dqkv = core.backward_input(ctx, HostView<float>(qkv.data(), Shape{nt, nb, nh * dh}));
    after_backward = static_cast<std::int64_t>(rank.memory().live(px::MemoryCategory::activations));
    core.backward_weight(ctx);
    dqkv.reset();
    after_weight = static_cast<std::int64_t>(rank.memory().live(px::MemoryCategory::activations));
    peak = static_cast<std::int64_t>(rank.memory().peak(px::MemoryCategory::activations));
  });
  const i64 heads_bytes = nb * nh * nt * dh * 4, lse_bytes = nb * nh * nt * 4;
  CHECK(after_forward == 4 * heads_bytes + lse_bytes + heads_bytes);  // q, k, v, o, lse, and y
  CHECK(after_backward == 3 * heads_bytes);                           // dqkv only
  CHECK(after_weight == 0);
  CHECK(peak == 4 * heads_bytes + lse_bytes + 4 * heads_bytes);       // saved + d_o, dq, dk, dv
}

TEST_CASE("CausalAttention rejects bad shapes, bad sizes and passes out of order", "[nn_ops][attention][errors]") {
  std::vector<std::string> msgs;
  px::test::on_one_rank([&](px::Rank<HostBackend>& rank) {
    msgs.push_back(error_of([&] { Core<float>(rank, 0, dh); }));
    Core<float> core(rank, nh, dh, {.name = "core"});
    std::vector<float> buf(static_cast<std::size_t>(qkv_shape.numel()));
    const HostView<float> qkv(buf.data(), qkv_shape), dy(buf.data(), Shape{nt, nb, nh * dh});
    Core<float>::Ctx fresh, bad, ok;
    msgs.push_back(error_of([&] { (void)core.backward_input(fresh, dy); }));
    msgs.push_back(error_of([&] { core.backward_weight(fresh); }));
    msgs.push_back(error_of([&] { (void)core.forward(bad, HostView<float>(buf.data(), Shape{nt, nb, 2 * nh * dh})); }));
    const HostView<float> flat(buf.data(), Shape{nt * nb, 3 * nh * dh});
    msgs.push_back(error_of([&] { (void)core.forward(fresh, flat); }));
    (void)core.forward(ok, qkv);
    msgs.push_back(error_of([&] { (void)core.forward(ok, qkv); }));
    const HostView<float> swapped(buf.data(), Shape{nb, nt, nh * dh});
    msgs.push_back(error_of([&] { (void)core.backward_input(ok, swapped); }));
  });
  REQUIRE(msgs.size() == 7);
  CHECK_THAT(msgs[0], Catch::Contains("CausalAttention 'attn_core': 0 heads of 4 features, both must be positive"));
  CHECK_THAT(msgs[1],
             Catch::Contains("CausalAttention 'core': backward_input called on a context whose forward has not run"));
  CHECK_THAT(msgs[2], Catch::Contains("backward_weight called on a context whose backward_input has not run"));
  CHECK_THAT(msgs[3], Catch::Contains("qkv [5, 2, 24] is not [T, B, 3 * 3 heads * 4] = [T, B, 36]"));
  CHECK_THAT(msgs[4], Catch::Contains("qkv [10, 36] is not [T, B, 3 * 3 heads * 4]"));
  CHECK_THAT(msgs[5], Catch::Contains("forward already ran"));
  CHECK_THAT(msgs[6], Catch::Contains("backward_input got dy [2, 5, 12], the forward's output was [5, 2, 12]"));
}
