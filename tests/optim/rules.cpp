// Tests for parallax/optim/{rule,sgd,adam}.hpp and the host optimizer kernels: SGD, Adam and AdamW against
// double-precision reference loops and PyTorch, fp32/bf16/fp16 gradients, grad_scale, concepts, bad inputs.
#include <catch2/catch.hpp>

#include <parallax/backend/host/backend.hpp>
#include <parallax/optim/adam.hpp>
#include <parallax/optim/sgd.hpp>

#include "../support/support.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <string_view>
#include <type_traits>
#include <vector>

namespace px = parallax;
namespace optim = parallax::optim;
using Backend = px::host::Backend;
using HostView = px::View<float, px::host::Memory>;
using Catch::Matchers::Contains;
using px::bf16;
using px::fp16;
using px::test::bits_of;
using px::test::cview;
using px::test::error_of;
using px::test::view;

namespace {

const px::host::Context ctx(0);

// --- concepts --------------------------------------------------------------------------------------------------------
struct NoStateCount {
  struct Hyper {
    float lr = 0;
  };
  static constexpr std::string_view name = "x";
};
struct HyperWithoutLr {
  struct Hyper {
    float rate = 0;
  };
  static constexpr std::string_view name = "x";
  static int state_count(const Hyper&) { return 0; }
};
struct NoStep {
  struct Hyper {
    float lr = 0;
  };
  static constexpr std::string_view name = "x";
  static int state_count(const Hyper&) { return 0; }
};

static_assert(optim::Rule<optim::SGD> && optim::Rule<optim::Adam> && optim::Rule<optim::AdamW>);
static_assert(optim::RuleFor<optim::AdamW, Backend, bf16> && optim::RuleFor<optim::Adam, Backend, fp16> &&
              optim::RuleFor<optim::SGD, Backend, float>);
static_assert(!optim::Rule<NoStateCount> && !optim::Rule<HyperWithoutLr> && !optim::Rule<int>);
static_assert(optim::Rule<NoStep> && !optim::RuleFor<NoStep, Backend, float>);
static_assert(!optim::RuleFor<optim::SGD, Backend, double>);  // gradients are float, bf16 or fp16
static_assert(!std::is_same_v<optim::Adam::Hyper, optim::AdamW::Hyper>);

// --- double-precision references (PyTorch's formulas) ----------------------------------------------------------------
struct SgdRef {
  double momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false;
  void step(std::vector<double>& w, std::vector<double>& buf, const std::vector<double>& g, double lr,
            std::int64_t t) const {
    for (std::size_t i = 0; i < w.size(); ++i) {
      double d = g[i] + weight_decay * w[i];
      if (momentum != 0) {
        buf[i] = t == 1 ? d : momentum * buf[i] + (1 - dampening) * d;
        d = nesterov ? d + momentum * buf[i] : buf[i];
      }
      w[i] -= lr * d;
    }
  }
};

struct AdamRef {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  bool decoupled = false;
  void step(std::vector<double>& w, std::vector<double>& m, std::vector<double>& v, const std::vector<double>& g,
            double lr, std::int64_t t) const {
    const double bc1 = 1 - std::pow(beta1, double(t)), bc2 = 1 - std::pow(beta2, double(t));
    for (std::size_t i = 0; i < w.size(); ++i) {
      double d = g[i];
      if (decoupled)
        w[i] *= 1 - lr * weight_decay;
      else
        d += weight_decay * w[i];
      m[i] = beta1 * m[i] + (1 - beta1) * d;
      v[i] = beta2 * v[i] + (1 - beta2) * d * d;
      w[i] -= lr / bc1 * m[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + eps);
    }
  }
};

//! The reference of rule R with hyperparameters h (the same float values, in double).
template <class R>
auto ref_of(const typename R::Hyper& h) {
  if constexpr (std::is_same_v<R, optim::SGD>)
    return SgdRef{
        .momentum = h.momentum, .dampening = h.dampening, .weight_decay = h.weight_decay, .nesterov = h.nesterov};
  else
    return AdamRef{.beta1 = h.beta1,
                   .beta2 = h.beta2,
                   .eps = h.eps,
                   .weight_decay = h.weight_decay,
                   .decoupled = std::is_same_v<R, optim::AdamW>};
}

std::vector<HostView> views_of(std::vector<std::vector<float>>& state) {
  std::vector<HostView> v;
  for (auto& s : state) v.push_back(view(s));
  return v;
}

//! Largest |got - want| / (1 + |want|) over the master weight and the state after `steps` updates of
//! `R` with gradients stored as G times `1 / grad_scale`, against the double reference.
template <class R, class G>
double max_error_vs_reference(const typename R::Hyper& h, int steps, float grad_scale) {
  constexpr std::size_t n = 301;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> master(n);
  for (auto& x : master) x = normal(rng);
  std::vector<std::vector<float>> state(static_cast<std::size_t>(R::state_count(h)), std::vector<float>(n, 0.f));
  const auto state_views = views_of(state);

  std::vector<double> w(master.begin(), master.end()), a(n, 0.0), b(n, 0.0);
  const auto ref = ref_of<R>(h);

  double err = 0;
  for (int t = 1; t <= steps; ++t) {
    std::vector<G> grad(n);
    std::vector<double> g(n);
    for (std::size_t i = 0; i < n; ++i) {
      grad[i] = G(normal(rng) / grad_scale);               // stored scaled, rounded to G
      g[i] = double(float(grad[i])) * double(grad_scale);  // what the update must see
    }
    const float lr = h.lr / float(t);  // a decaying schedule
    R::template step<Backend, G>(ctx, h, {.step = t, .lr = lr, .grad_scale = grad_scale}, view(master), cview(grad),
                                 std::span<const HostView>(state_views));
    if constexpr (std::is_same_v<R, optim::SGD>)
      ref.step(w, a, g, double(lr), t);
    else
      ref.step(w, a, b, g, double(lr), t);
  }
  const auto track = [&err](float got, double want) {
    err = std::max(err, std::abs(got - want) / (1 + std::abs(want)));
  };
  const std::vector<double>* want_state[] = {&a, &b};
  for (std::size_t i = 0; i < n; ++i) track(master[i], w[i]);
  for (std::size_t k = 0; k < state.size(); ++k)
    for (std::size_t i = 0; i < n; ++i) track(state[k][i], (*want_state[k])[i]);
  return err;
}

}  // namespace

TEST_CASE("Rules name themselves, count their state and default as PyTorch", "[optim][rules]") {
  CHECK(optim::SGD::name == "sgd");
  CHECK(optim::Adam::name == "adam");
  CHECK(optim::AdamW::name == "adamw");
  CHECK(optim::SGD::state_count({}) == 0);
  CHECK(optim::SGD::state_count({.momentum = 0.9f}) == 1);
  CHECK(optim::Adam::state_count({}) == 2);
  CHECK(optim::AdamW::state_count({}) == 2);
  const optim::AdamW::Hyper w{.lr = 3e-4f, .weight_decay = 0.1f};
  CHECK(w.beta1 == 0.9f);
  CHECK(w.beta2 == 0.999f);
  CHECK(w.eps == 1e-8f);
  CHECK(optim::AdamW::Hyper{}.weight_decay == 0.01f);
  CHECK(optim::Adam::Hyper{}.weight_decay == 0.f);
  CHECK(optim::Adam::Hyper{}.lr == 1e-3f);
  CHECK(optim::SGD::Hyper{}.lr == 1e-3f);
}

TEMPLATE_TEST_CASE("SGD matches a double-precision reference", "[optim][rules][sgd]", float, bf16, fp16) {
  const float scale = 1.f / 512;  // gradients stored 512x larger, as after loss scaling
  SECTION("plain") { CHECK(max_error_vs_reference<optim::SGD, TestType>({.lr = 0.1f}, 6, scale) < 1e-6); }
  SECTION("momentum and weight decay") {
    CHECK(max_error_vs_reference<optim::SGD, TestType>({.lr = 0.1f, .momentum = 0.9f, .weight_decay = 0.01f}, 6,
                                                       scale) < 2e-6);
  }
  SECTION("Nesterov") {
    CHECK(max_error_vs_reference<optim::SGD, TestType>(
              {.lr = 0.1f, .momentum = 0.9f, .weight_decay = 0.01f, .nesterov = true}, 6, scale) < 2e-6);
  }
  SECTION("dampening (buf = g on the first step)") {
    CHECK(max_error_vs_reference<optim::SGD, TestType>({.lr = 0.1f, .momentum = 0.8f, .dampening = 0.3f}, 6, 1.f) <
          2e-6);
  }
}

TEMPLATE_TEST_CASE("Adam and AdamW match a double-precision reference", "[optim][rules][adam]", float, bf16, fp16) {
  const float scale = 1.f / 512;
  SECTION("Adam, L2 weight decay") {
    CHECK(max_error_vs_reference<optim::Adam, TestType>({.lr = 1e-2f, .weight_decay = 0.1f}, 6, scale) < 2e-6);
  }
  SECTION("Adam, other betas and eps, no scaling") {
    CHECK(max_error_vs_reference<optim::Adam, TestType>({.lr = 1e-2f, .beta1 = 0.8f, .beta2 = 0.95f, .eps = 1e-3f}, 6,
                                                        1.f) < 2e-6);
  }
  SECTION("AdamW, decoupled weight decay") {
    CHECK(max_error_vs_reference<optim::AdamW, TestType>({.lr = 1e-2f, .weight_decay = 0.1f}, 6, scale) < 2e-6);
  }
}

TEST_CASE("AdamW differs from Adam exactly by the decoupled decay", "[optim][rules][adam]") {
  const std::vector<float> w0{0.5f, -1.f, 2.f, 0.25f, -3.f};
  const std::vector<bf16> grad{bf16(0.1f), bf16(-0.2f), bf16(0.3f), bf16(4.f), bf16(-5.f)};
  const float lr = 0.05f, wd = 0.2f;
  for (std::int64_t t : {1, 7}) {
    // AdamW with decay ...
    auto w_adamw = w0;
    std::vector<std::vector<float>> s1(2, std::vector<float>(5, 0.01f));
    const auto v1 = views_of(s1);
    optim::AdamW::step<Backend, bf16>(ctx, {.weight_decay = wd}, {.step = t, .lr = lr}, view(w_adamw), cview(grad),
                                      std::span<const HostView>(v1));
    // ... equals Adam without decay on the weight first multiplied by 1 - lr * wd, bit for bit.
    auto w_adam = w0;
    for (auto& x : w_adam) x *= 1.f - lr * wd;
    std::vector<std::vector<float>> s2(2, std::vector<float>(5, 0.01f));
    const auto v2 = views_of(s2);
    optim::Adam::step<Backend, bf16>(ctx, {.weight_decay = 0}, {.step = t, .lr = lr}, view(w_adam), cview(grad),
                                     std::span<const HostView>(v2));
    for (std::size_t i = 0; i < w0.size(); ++i) {
      CHECK(bits_of(w_adamw[i]) == bits_of(w_adam[i]));
      CHECK(bits_of(s1[0][i]) == bits_of(s2[0][i]));
      CHECK(bits_of(s1[1][i]) == bits_of(s2[1][i]));
    }
    // Without weight decay the two rules are the same update.
    auto a = w0, b = w0;
    std::vector<std::vector<float>> sa(2, std::vector<float>(5, 0.f)), sb(2, std::vector<float>(5, 0.f));
    const auto va = views_of(sa), vb = views_of(sb);
    optim::AdamW::step<Backend, bf16>(ctx, {.weight_decay = 0}, {.step = t, .lr = lr}, view(a), cview(grad),
                                      std::span<const HostView>(va));
    optim::Adam::step<Backend, bf16>(ctx, {}, {.step = t, .lr = lr}, view(b), cview(grad),
                                     std::span<const HostView>(vb));
    for (std::size_t i = 0; i < w0.size(); ++i) CHECK(bits_of(a[i]) == bits_of(b[i]));
  }
}

// PyTorch 1.13, fp32 (the parameter group's lr set before each step):
//   import torch
//   w0 = [0.5, -1.0, 2.0, 0.25]
//   grads = [[0.5, -0.25, 1.5, -2.0], [-0.75, 0.125, 0.5, 1.0], [0.25, 0.375, -1.25, 0.0625]]
//   def run(make, lrs):
//       p = torch.nn.Parameter(torch.tensor(w0)); opt = make([p])
//       for g, lr in zip(grads, lrs):
//           for group in opt.param_groups: group['lr'] = lr
//           p.grad = torch.tensor(g); opt.step()
//       return p.tolist()
//   sgd_lrs, adam_lrs = [0.1, 0.05, 0.02], [1e-2, 5e-3, 2e-3]
//   run(lambda ps: torch.optim.SGD(ps, lr=1), sgd_lrs)
//   run(lambda ps: torch.optim.SGD(ps, lr=1, momentum=0.9, weight_decay=0.01), sgd_lrs)
//   run(lambda ps: torch.optim.SGD(ps, lr=1, momentum=0.9, weight_decay=0.01, nesterov=True), sgd_lrs)
//   run(lambda ps: torch.optim.SGD(ps, lr=1, momentum=0.9, dampening=0.5), sgd_lrs)
//   run(lambda ps: torch.optim.Adam(ps, lr=1, weight_decay=0.1), adam_lrs)
//   run(lambda ps: torch.optim.AdamW(ps, lr=1, weight_decay=0.1), adam_lrs)
TEMPLATE_TEST_CASE("Rules match PyTorch on a tiny case", "[optim][rules][pytorch]", float, bf16) {
  const std::vector<float> w0{0.5f, -1.f, 2.f, 0.25f};
  const std::vector<std::vector<float>> grads{
      {0.5f, -0.25f, 1.5f, -2.f}, {-0.75f, 0.125f, 0.5f, 1.f}, {0.25f, 0.375f, -1.25f, 0.0625f}};
  // Stored 1024x larger (exact in bf16) and unscaled by grad_scale, as under loss scaling.
  const auto run = [&]<class R>(R, const typename R::Hyper& h, const std::vector<float>& lrs) {
    auto w = w0;
    std::vector<std::vector<float>> state(static_cast<std::size_t>(R::state_count(h)), std::vector<float>(4, 0.f));
    const auto sv = views_of(state);
    for (std::int64_t t = 1; t <= 3; ++t) {
      std::vector<TestType> g;
      for (float x : grads[static_cast<std::size_t>(t - 1)]) g.push_back(TestType(x * 1024.f));
      R::template step<Backend, TestType>(
          ctx, h, {.step = t, .lr = lrs[static_cast<std::size_t>(t - 1)], .grad_scale = 1.f / 1024}, view(w), cview(g),
          std::span<const HostView>(sv));
    }
    return w;
  };
  const auto expect = [](const std::vector<float>& got, const std::vector<float>& torch) {
    for (std::size_t i = 0; i < got.size(); ++i) CHECK(got[i] == Approx(torch[i]).epsilon(1e-6));
  };
  const std::vector<float> sgd_lrs{0.1f, 0.05f, 0.02f}, adam_lrs{1e-2f, 5e-3f, 2e-3f};
  expect(run(optim::SGD{}, {}, sgd_lrs), {0.482499987f, -0.988750041f, 1.85000002f, 0.398749977f});
  expect(run(optim::SGD{}, {.momentum = 0.9f, .weight_decay = 0.01f}, sgd_lrs),
         {0.46419552f, -0.97323209f, 1.74436867f, 0.502343297f});
  expect(run(optim::SGD{}, {.momentum = 0.9f, .weight_decay = 0.01f, .nesterov = true}, sgd_lrs),
         {0.449512601f, -0.963010728f, 1.61686742f, 0.625038683f});
  expect(run(optim::SGD{}, {.momentum = 0.9f, .dampening = 0.5f}, sgd_lrs),
         {0.442399979f, -0.967700005f, 1.75370002f, 0.53777498f});
  expect(run(optim::Adam{}, {.weight_decay = 0.1f}, adam_lrs),
         {0.490705758f, -0.986981094f, 1.98490977f, 0.261594236f});
  expect(run(optim::AdamW{}, {.weight_decay = 0.1f}, adam_lrs), {0.490422994f, -0.987755179f, 1.98199093f, 0.2612755f});
}

TEST_CASE("Host optimizer kernels compute the documented update", "[optim][rules][host]") {
  // One element by hand: SGD with momentum 0.5, wd 0.25, grad_scale 0.5: g = 0.5*4 + 0.25*2 = 2.5,
  // buf = 0.5*1 + 2.5 = 3, Nesterov g = 2.5 + 0.5*3 = 4, w = 2 - 0.5*4 = 0.
  std::vector<float> w{2.f}, buf{1.f};
  const std::vector<fp16> g{fp16(4.f)};
  Backend::sgd_step(
      ctx, px::SgdArgs{.lr = 0.5f, .momentum = 0.5f, .weight_decay = 0.25f, .nesterov = true, .grad_scale = 0.5f},
      view(w), cview(g), view(buf));
  CHECK(buf[0] == 3.f);
  CHECK(w[0] == 0.f);
  // Adam, step 1 with zero moments: m = 0.1 g, v = 0.001 g^2, so the step is lr * g / (|g| + eps') = lr * sign(g).
  std::vector<float> w2{1.f, 1.f}, m(2, 0.f), v(2, 0.f);
  const std::vector<float> g2{3.f, -0.5f};
  Backend::adam_step(
      ctx, px::AdamArgs{.lr = 0.25f, .eps = 0.f, .bias_correction1 = 1.f - 0.9f, .bias_correction2 = 1.f - 0.999f},
      view(w2), cview(g2), view(m), view(v));
  CHECK(w2[0] == Approx(0.75f).epsilon(1e-6));
  CHECK(w2[1] == Approx(1.25f).epsilon(1e-6));
  // Empty tensors are a no-op.
  std::vector<float> none;
  Backend::adam_step(ctx, px::AdamArgs{}, view(none), cview(none), view(none), view(none));
  Backend::sgd_step(ctx, px::SgdArgs{.momentum = 0.9f}, view(none), cview(none), HostView{});
}

TEST_CASE("Rules and kernels reject bad input", "[optim][rules][errors]") {
  std::vector<float> w(4, 1.f), s0(4, 0.f), s1(4, 0.f), short_state(3, 0.f);
  const std::vector<bf16> g(4, bf16(1.f)), g3(3, bf16(1.f));
  std::vector<HostView> two{view(s0), view(s1)}, one{view(s0)}, bad{view(s0), view(short_state)};
  const auto adam = [&](const optim::AdamW::Hyper& h, const optim::StepInfo& info, const std::vector<bf16>& grad,
                        const std::vector<HostView>& st) {
    optim::AdamW::step<Backend, bf16>(ctx, h, info, view(w), cview(grad), std::span<const HostView>(st));
  };
  const auto sgd = [&](const optim::SGD::Hyper& h, const optim::StepInfo& info, const std::vector<HostView>& st) {
    optim::SGD::step<Backend, bf16>(ctx, h, info, view(w), cview(g), std::span<const HostView>(st));
  };
  const optim::StepInfo ok{.step = 1, .lr = 0.1f};

  CHECK_THAT(error_of([&] { adam({}, ok, g3, two); }), Contains("adam_step: grad has 3 elements, master has 4"));
  CHECK_THAT(error_of([&] { adam({}, ok, g, bad); }), Contains("adam_step: v has 3 elements, master has 4"));
  CHECK_THAT(error_of([&] { adam({}, ok, g, one); }), Contains("AdamW: got 1 state tensors, expected 2 (rank 0)"));
  CHECK_THAT(error_of([&] { adam({}, {.step = 0, .lr = 0.1f}, g, two); }), Contains("AdamW: step 0 is not 1-based"));
  CHECK_THAT(error_of([&] { adam({}, {.step = 1, .lr = -1.f}, g, two); }),
             Contains("AdamW: step lr -1 is not finite and >= 0"));
  CHECK_THAT(error_of([&] { adam({}, {.step = 1, .lr = 0.1f, .grad_scale = INFINITY}, g, two); }),
             Contains("AdamW: grad_scale inf is not finite"));
  CHECK_THAT(error_of([&] { adam({.beta2 = 1.f}, ok, g, two); }), Contains("AdamW: betas (0.9, 1) are not in [0, 1)"));
  CHECK_THAT(error_of([&] { adam({.weight_decay = -0.1f}, ok, g, two); }),
             Contains("AdamW: weight_decay -0.1 is not finite and >= 0"));
  CHECK_THAT(error_of([] { optim::Adam::check({.eps = NAN}); }), Contains("Adam: eps nan is not finite and >= 0"));

  CHECK_THAT(error_of([&] { sgd({.momentum = 0.9f}, ok, {}); }), Contains("SGD: got 0 state tensors, expected 1"));
  CHECK_THAT(error_of([&] { sgd({}, ok, one); }), Contains("SGD: got 1 state tensors, expected 0"));
  CHECK_THAT(error_of([&] { sgd({.nesterov = true}, ok, {}); }),
             Contains("SGD: Nesterov momentum needs momentum > 0 and dampening 0, got momentum 0, dampening 0"));
  CHECK_THAT(error_of([&] { sgd({.momentum = 0.9f, .dampening = 0.1f, .nesterov = true}, ok, one); }),
             Contains("dampening 0.1"));
  CHECK_THAT(error_of([&] { sgd({.momentum = -0.9f}, ok, {}); }),
             Contains("SGD: momentum -0.9 is not finite and >= 0"));
  CHECK_THAT(error_of([&] { sgd({.dampening = 2.f}, ok, {}); }), Contains("SGD: dampening 2 is not in [0, 1]"));
  CHECK_THAT(error_of([] { optim::SGD::check({.lr = -1.f}); }), Contains("SGD: lr -1 is not finite and >= 0"));

  // The kernels check their operands themselves.
  CHECK_THAT(error_of([&] { Backend::sgd_step(ctx, px::SgdArgs{.momentum = 0.9f}, view(w), cview(g), HostView{}); }),
             Contains("sgd_step: momentum buffer has 0 elements, master has 4"));
  CHECK_THAT(error_of([&] { Backend::sgd_step(ctx, px::SgdArgs{}, view(w), cview(g), view(s0)); }),
             Contains("sgd_step: a momentum buffer of 4 elements is given but momentum is 0"));
  CHECK_THAT(error_of([&] {
               Backend::adam_step(ctx, px::AdamArgs{.bias_correction1 = 0.f}, view(w), cview(g), view(s0), view(s1));
             }),
             Contains("adam_step: bias corrections 0 and 1 must be > 0"));
}
