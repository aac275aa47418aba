// Tests for the CUDA backend (parallax/backend/cuda/*) and NcclCommunicator: GEMM and elementwise kernels
// against the host backend on the same data, memory accounting, streams and events, ThreadCommunicator over
// GPU memory, and NCCL groups. Tests tagged [gpu] skip themselves (with a warning) when there is no GPU.
//
// Catch2 is not thread-safe: rank threads only record what they saw; the main thread asserts after `launch`.

// fmt 9 turns its constexpr off under nvcc but keeps consteval format strings, which then fail to compile
// (fixed in fmt 10). Until the build sets this for CUDA sources, this test sets it itself; g++ uses 1 too.
#if defined(__NVCC__) && !defined(FMT_USE_CONSTEXPR)
#define FMT_USE_CONSTEXPR 1
#endif

#include <parallax/backend/cuda/backend.hpp>
#include <parallax/backend/host/backend.hpp>
#include <parallax/comm/launch.hpp>
#include <parallax/comm/nccl_communicator.hpp>
#include <parallax/core/allocator.hpp>
#include <parallax/core/tensor.hpp>

#include <catch2/catch.hpp>

#include "../support/support.hpp"
#include "support.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

using parallax::test::bits_of;
using parallax::test::gpu::gpu_available;
using parallax::test::gpu::type_name;

namespace {

namespace px = parallax;
namespace cu = parallax::cuda;
using px::bf16;
using px::fp16;
using px::MemoryCategory;
using px::ReduceOp;
using px::Shape;
using px::Trans;
using px::View;
using HB = px::host::Backend;
using CB = px::cuda::Backend;
using HMem = px::host::Memory;
using CMem = px::cuda::Memory;
using Catch::Matchers::Contains;

static_assert(px::Backend<CB>, "cuda::Backend must model parallax::Backend");
static_assert(px::MemorySpace<CMem> && px::MemorySpace<cu::PinnedMemory>);
static_assert(!CMem::host_accessible && cu::PinnedMemory::host_accessible);
static_assert(std::string_view(CB::name) == "cuda" && std::string_view(CMem::name) == "cuda");
static_assert(std::is_same_v<CB::Memory, CMem> && std::is_same_v<CB::Context, cu::Context>);
static_assert(std::is_nothrow_move_constructible_v<cu::Context> && !std::is_copy_constructible_v<cu::Context>);
static_assert(std::is_nothrow_move_constructible_v<cu::Stream> && !std::is_copy_constructible_v<cu::Stream>);
static_assert(std::is_nothrow_move_constructible_v<cu::Event> && !std::is_copy_constructible_v<cu::Event>);

template <class T>
constexpr bool is_half = std::is_same_v<T, bf16> || std::is_same_v<T, fp16>;


template <class T>
std::vector<T> random_values(std::int64_t n, std::uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<T> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = T(dist(rng));
  return v;
}


// Device tensors of one test, with their accounting.
struct DeviceBuffers {
  px::MemoryStats stats;
  px::Allocator<CMem> alloc{stats, 0};

  template <class T>
  px::Tensor<T, CMem> make(const std::vector<T>& values, Shape shape) {
    px::Tensor<T, CMem> t(alloc, shape, MemoryCategory::activations);
    px::copy_from(t.view(), std::span<const T>(values));
    return t;
  }
};

// --- GEMM -------------------------------------------------------------------------------------------------------

template <class T, class TC>
void compare_gemm(const cu::Context& ctx, Trans ta, Trans tb, std::int64_t m, std::int64_t n, std::int64_t k,
                  float alpha, float beta, bool nan_in_c = false) {
  INFO(type_name<T>() << " -> " << type_name<TC>() << " ta " << (ta == Trans::T ? 'T' : 'N') << " tb "
                      << (tb == Trans::T ? 'T' : 'N') << " m " << m << " n " << n << " k " << k << " alpha " << alpha
                      << " beta " << beta << (nan_in_c ? " (C holds NaN)" : ""));
  const auto seed =
      static_cast<std::uint32_t>(m * 1000003 + n * 1009 + k * 7 + (ta == Trans::T) * 2 + (tb == Trans::T));
  const Shape sa = ta == Trans::N ? Shape{m, k} : Shape{k, m};
  const Shape sb = tb == Trans::N ? Shape{k, n} : Shape{n, k};
  const auto a = random_values<T>(sa.numel(), seed);
  const auto b = random_values<T>(sb.numel(), seed + 1);
  auto c = random_values<TC>(m * n, seed + 2);
  if (nan_in_c)
    for (auto& x : c) x = TC(std::numeric_limits<float>::quiet_NaN());

  auto expected = c;
  px::host::Context host_ctx(0);
  HB::gemm(host_ctx, ta, tb, alpha, View<const T, HMem>(a.data(), sa), View<const T, HMem>(b.data(), sb), beta,
           View<TC, HMem>(expected.data(), Shape{m, n}));

  DeviceBuffers dev;
  auto da = dev.make(a, sa);
  auto db = dev.make(b, sb);
  auto dc = dev.make(c, Shape{m, n});
  CB::gemm(ctx, ta, tb, alpha, da.cview(), db.cview(), beta, dc.view());
  ctx.synchronize();
  const auto got = px::to_vector(dc.cview());

  const double tol = std::is_same_v<T, float> && std::is_same_v<TC, float> ? 1e-4 : 1e-2;
  std::int64_t bad = 0;
  double worst = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double want = float(expected[i]), have = float(got[i]);
    const double err = std::fabs(have - want) / std::max(1.0, std::fabs(want));
    if (!(err <= tol)) ++bad;
    if (!(err <= worst)) worst = err;
  }
  INFO("worst relative error " << worst);
  CHECK(bad == 0);
}

template <class T, class TC>
void compare_gemm_all(const cu::Context& ctx) {
  for (Trans ta : {Trans::N, Trans::T})
    for (Trans tb : {Trans::N, Trans::T}) {
      compare_gemm<T, TC>(ctx, ta, tb, 1, 1, 1, 1.f, 0.f);
      compare_gemm<T, TC>(ctx, ta, tb, 37, 45, 29, 0.75f, 0.5f);
      compare_gemm<T, TC>(ctx, ta, tb, 128, 96, 200, 1.f, 0.f, /*nan_in_c=*/true);
      compare_gemm<T, TC>(ctx, ta, tb, 64, 33, 0, 1.f, 0.5f);  // k = 0: C = beta C
      compare_gemm<T, TC>(ctx, ta, tb, 64, 33, 0, 1.f, 0.f, /*nan_in_c=*/true);
    }
}

// --- Elementwise ------------------------------------------------------------------------------------------------

// Elementwise results equal the host backend's bitwise (same fp32 math, no fused multiply-add).
template <class T>
void compare_elementwise(const cu::Context& ctx, std::int64_t n) {
  INFO(type_name<T>() << " n " << n);
  px::host::Context hctx(0);
  DeviceBuffers dev;
  const Shape s{n};
  const auto x = random_values<T>(n, 11 + static_cast<std::uint32_t>(n), -3.f, 3.f);
  const auto y = random_values<T>(n, 12 + static_cast<std::uint32_t>(n), -3.f, 3.f);
  auto same_bits = [](const std::vector<T>& got, const std::vector<T>& want) {
    std::int64_t bad = 0;
    for (std::size_t i = 0; i < got.size(); ++i) bad += bits_of(got[i]) != bits_of(want[i]);
    return bad;
  };

  {  // fill
    std::vector<T> h(static_cast<std::size_t>(n));
    auto d = dev.make(h, s);
    HB::fill(hctx, View<T, HMem>(h.data(), s), 0.1f);
    CB::fill(ctx, d.view(), 0.1f);
    CHECK(same_bits(px::to_vector(d.cview()), h) == 0);
  }
  {  // scale
    auto h = x;
    auto d = dev.make(x, s);
    HB::scale(hctx, View<T, HMem>(h.data(), s), -1.7f);
    CB::scale(ctx, d.view(), -1.7f);
    CHECK(same_bits(px::to_vector(d.cview()), h) == 0);
  }
  for (float b : {0.f, 0.5f}) {  // axpby, same type and from fp32
    INFO("axpby b " << b);
    auto h = y;
    auto d = dev.make(y, s);
    auto dx = dev.make(x, s);
    HB::axpby(hctx, 1.3f, View<const T, HMem>(x.data(), s), b, View<T, HMem>(h.data(), s));
    CB::axpby(ctx, 1.3f, dx.cview(), b, d.view());
    CHECK(same_bits(px::to_vector(d.cview()), h) == 0);

    const auto xf = random_values<float>(n, 13, -3.f, 3.f);
    auto dxf = dev.make(xf, s);
    HB::axpby(hctx, 0.25f, View<const float, HMem>(xf.data(), s), b, View<T, HMem>(h.data(), s));
    CB::axpby(ctx, 0.25f, dxf.cview(), b, d.view());
    CHECK(same_bits(px::to_vector(d.cview()), h) == 0);
  }
  {  // cast to each type
    auto dx = dev.make(x, s);
    auto cast_to = [&]<class D>(D*) {
      std::vector<D> h(static_cast<std::size_t>(n));
      auto d = dev.make(h, s);
      HB::cast(hctx, View<const T, HMem>(x.data(), s), View<D, HMem>(h.data(), s));
      CB::cast(ctx, dx.cview(), d.view());
      std::int64_t bad = 0;
      const auto got = px::to_vector(d.cview());
      for (std::size_t i = 0; i < got.size(); ++i) bad += bits_of(got[i]) != bits_of(h[i]);
      INFO("cast to " << type_name<D>());
      CHECK(bad == 0);
    };
    cast_to(static_cast<float*>(nullptr));
    cast_to(static_cast<bf16*>(nullptr));
    cast_to(static_cast<fp16*>(nullptr));
  }
  {  // reductions: fp64 accumulation in another order than the host's; repeatable bit for bit
    auto dx = dev.make(x, s);
    const View<const T, HMem> hx(x.data(), s);
    const double sum = CB::sum(ctx, dx.cview()), sumsq = CB::sum_squares(ctx, dx.cview());
    CHECK(sum == Approx(HB::sum(hctx, hx)).margin(1e-9).epsilon(1e-12));
    CHECK(sumsq == Approx(HB::sum_squares(hctx, hx)).margin(1e-9).epsilon(1e-12));
    const double again = CB::sum(ctx, dx.cview());
    CHECK(std::memcmp(&sum, &again, sizeof sum) == 0);
    CHECK(CB::count_nonfinite(ctx, dx.cview()) == 0);

    if (n >= 3) {
      auto odd = x;
      odd[0] = T(std::numeric_limits<float>::quiet_NaN());
      odd[static_cast<std::size_t>(n / 2)] = T(std::numeric_limits<float>::infinity());
      odd[static_cast<std::size_t>(n - 1)] = T(-std::numeric_limits<float>::infinity());
      auto dodd = dev.make(odd, s);
      CHECK(CB::count_nonfinite(ctx, dodd.cview()) == HB::count_nonfinite(hctx, View<const T, HMem>(odd.data(), s)));
      CHECK(CB::count_nonfinite(ctx, dodd.cview()) == 3);
    }
  }
}

}  // namespace

// --- Without a GPU too ------------------------------------------------------------------------------------------

TEST_CASE("cuda: errors name the call, the reason and the device", "[cuda]") {
  CHECK(CB::device_count() >= 0);
  CHECK_THROWS_WITH(cu::check(cudaErrorInvalidValue, "cudaFoo"),
                    Contains("cudaFoo: invalid argument (cudaErrorInvalidValue) on "));
  CHECK_THROWS_WITH(cu::check(CUBLAS_STATUS_NOT_SUPPORTED, "cublasGemmEx"),
                    Contains("cublasGemmEx: ") && Contains("(CUBLAS_STATUS_NOT_SUPPORTED)"));
  CHECK_NOTHROW(cu::check(cudaSuccess, "cudaFoo"));
  CHECK_THROWS_WITH(cu::Context(-1), Contains("cuda::Context: rank -1 is negative"));
  if (!gpu_available()) {
    CHECK_THROWS_WITH(cu::Context(3), Contains("cuda::Context: no CUDA device is available") && Contains("(rank 3)"));
    CHECK_THROWS_AS(CMem::allocate(64), px::Error);  // not nullptr: that would read as "out of memory"
  } else {
    CHECK_NOTHROW(cu::check_launch("nothing"));  // without a driver it reports the failed initialisation
  }
}

// --- GPU --------------------------------------------------------------------------------------------------------

TEST_CASE("cuda gemm: every transpose and type matches the host backend", "[gpu][cuda][gemm]") {
  if (!gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cu::Context ctx(0);
  compare_gemm_all<float, float>(ctx);
  compare_gemm_all<bf16, bf16>(ctx);
  compare_gemm_all<bf16, float>(ctx);
  compare_gemm_all<fp16, fp16>(ctx);
  compare_gemm_all<fp16, float>(ctx);

  DeviceBuffers dev;
  auto a = dev.make(std::vector<float>(6), Shape{2, 3});
  auto c = dev.make(std::vector<float>(4), Shape{2, 2});
  CHECK_THROWS_WITH(CB::gemm(ctx, Trans::N, Trans::N, 1.f, a.cview(), a.cview(), 0.f, c.view()),
                    Contains("gemm: op(A) is [2, 3], op(B) is [2, 3]"));
}

TEST_CASE("cuda gemm: TF32 only when the context allows it", "[gpu][cuda][gemm]") {
  if (!gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  CHECK_FALSE(cu::Context(0).allow_tf32());
  cu::Context tf32(0, cu::ContextOptions{.allow_tf32 = true});
  CHECK(tf32.allow_tf32());
  // Inputs 1 + 2^-12 are not representable in TF32 (10 mantissa bits): full fp32 keeps them.
  const float v = 1.f + 0x1p-12f;
  DeviceBuffers dev;
  auto a = dev.make(std::vector<float>(64, v), Shape{8, 8});
  auto c = dev.make(std::vector<float>(64, 0.f), Shape{8, 8});
  cu::Context fp32(0);
  CB::gemm(fp32, Trans::N, Trans::N, 1.f, a.cview(), a.cview(), 0.f, c.view());
  fp32.synchronize();
  CHECK(px::to_vector(c.cview())[0] == Approx(8.0 * double(v) * double(v)).epsilon(1e-6));
}

TEST_CASE("cuda elementwise kernels match the host backend", "[gpu][cuda][elementwise]") {
  if (!gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cu::Context ctx(0);
  for (std::int64_t n : {std::int64_t{0}, std::int64_t{1}, std::int64_t{1000}, std::int64_t{(1 << 20) + 3}}) {
    compare_elementwise<float>(ctx, n);
    compare_elementwise<bf16>(ctx, n);
    compare_elementwise<fp16>(ctx, n);
  }
  DeviceBuffers dev;
  auto a = dev.make(std::vector<float>(3), Shape{3});
  auto b = dev.make(std::vector<float>(4), Shape{4});
  CHECK_THROWS_WITH(CB::axpby(ctx, 1.f, a.cview(), 1.f, b.view()), Contains("axpby: operands have 3 and 4 elements"));
}

TEST_CASE("cuda memory: accounting, copies and out-of-memory", "[gpu][cuda][memory]") {
  if (!gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cu::Context ctx(0);
  px::MemoryStats stats;
  px::Allocator<CMem> alloc(stats, 0);
  {
    px::Tensor<float, CMem> t(alloc, Shape{1000}, MemoryCategory::parameters);
    CHECK(stats.live(MemoryCategory::parameters) == 4000);
    const auto zeros = px::to_vector(t.cview());
    CHECK(std::all_of(zeros.begin(), zeros.end(), [](float x) { return x == 0.f; }));

    std::vector<float> values(1000);
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = float(i) * 0.5f;
    px::copy_from(t.view(), std::span<const float>(values));
    px::Tensor<float, CMem> u(alloc, Shape{1000}, MemoryCategory::gradients);
    CB::fill(ctx, u.view(), 7.f);  // queued on the compute stream; the copy below must come after it
    px::copy(u.view(), t.cview());
    CHECK(px::to_vector(u.cview()) == values);
    CMem::zero(u.data(), u.bytes());
    CHECK(px::to_vector(u.cview()) == std::vector<float>(1000, 0.f));
    CHECK(stats.live_total() == 8000);
  }
  CHECK(stats.live_total() == 0);
  CHECK(stats.peak(MemoryCategory::parameters) == 4000);
  CHECK(stats.peak_total() == 8000);

  CHECK(CMem::allocate(std::size_t{1} << 60) == nullptr);
  CHECK_THROWS_WITH(alloc.allocate(std::size_t{1} << 60, MemoryCategory::optimizer),
                    Contains("Allocator: cuda could not allocate"));
  CHECK(stats.live_total() == 0);

  px::MemoryStats pstats;
  px::Allocator<cu::PinnedMemory> palloc(pstats, 0);
  px::Tensor<float, cu::PinnedMemory> p(palloc, Shape{16}, MemoryCategory::optimizer);
  p(3) = 2.5f;
  CHECK(p(3) == 2.5f);
  CHECK(pstats.live(MemoryCategory::optimizer) == 64);
}

TEST_CASE("cuda streams and events", "[gpu][cuda][stream]") {
  if (!gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cu::Context ctx(0);
  CHECK(ctx.device() == 0);
  CHECK(ctx.sm_count() > 0);
  CHECK(ctx.cublas() != nullptr);
  CHECK(ctx.cublaslt() != nullptr);
  CHECK(ctx.compute_stream().get() != ctx.comm_stream().get());

  void* buffer = CMem::allocate(std::size_t{64} << 20);
  REQUIRE(buffer != nullptr);
  cu::Stream s, s2;
  cu::Event start, stop, off(cu::Timing::off);
  start.record(s);
  cu::check(cudaMemsetAsync(buffer, 1, std::size_t{64} << 20, s.get()), "cudaMemsetAsync");
  stop.record(s);
  stop.wait(s2);  // s2 runs after the memset
  cu::check(cudaMemsetAsync(buffer, 0, 1024, s2.get()), "cudaMemsetAsync");
  off.record(s2);
  off.synchronize();
  CHECK(off.query());
  CHECK(stop.query());
  CHECK(s.query());
  CHECK(cu::Event::elapsed_ms(start, stop) >= 0.f);
  CHECK_THROWS_AS(cu::Event::elapsed_ms(off, off), px::Error);  // no timing on that one
  s.synchronize();
  s2.synchronize();

  cu::Stream moved = std::move(s);
  CHECK(s.get() == nullptr);
  CHECK(moved.get() != nullptr);
  cu::Context other = std::move(ctx);
  CHECK(other.cublas() != nullptr);
  other.synchronize();
  CMem::deallocate(buffer, std::size_t{64} << 20);
}

TEST_CASE("cuda: ThreadCommunicator over GPU memory, 4 ranks on one GPU", "[gpu][cuda][comm]") {
  if (!gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  constexpr int n = 4;
  constexpr std::int64_t count = 1003, chunk = 6, gathered = 5;
  std::vector<std::vector<float>> reduced(n), avg(n), gathers(n), scattered(n);
  std::vector<std::vector<bf16>> half(n);
  std::vector<int> threads(n);
  px::launch<CB>(n, [&](px::Rank<CB>& rank) {
    const int r = rank.id();
    const auto at = [](int i) { return static_cast<std::size_t>(i); };
    auto& ctx = rank.context();
    auto& alloc = rank.allocator();
    auto& world = rank.world();

    // all_reduce of a kernel's output: the transport must wait for the rank's compute stream.
    px::Tensor<float, CMem> x(alloc, Shape{count}, MemoryCategory::communication);
    CB::fill(ctx, x.view(), float(r + 1));
    world.all_reduce(x.view(), ReduceOp::sum);
    reduced[at(r)] = px::to_vector(x.cview());

    std::vector<float> mine(count);
    for (std::int64_t i = 0; i < count; ++i) mine[static_cast<std::size_t>(i)] = float(r * 1000 + i % 97) * 0.5f;
    px::copy_from(x.view(), std::span<const float>(mine));
    world.all_reduce(x.view(), ReduceOp::avg);
    avg[at(r)] = px::to_vector(x.cview());

    px::Tensor<bf16, CMem> h(alloc, Shape{count}, MemoryCategory::communication);
    CB::fill(ctx, h.view(), 0.25f * float(r));
    world.all_reduce(h.view(), ReduceOp::max);
    half[at(r)] = px::to_vector(h.cview());

    std::vector<float> in(gathered);
    for (std::int64_t i = 0; i < gathered; ++i) in[static_cast<std::size_t>(i)] = float(r * 10 + i);
    px::Tensor<float, CMem> gin(alloc, Shape{gathered}, MemoryCategory::communication);
    px::Tensor<float, CMem> gout(alloc, Shape{gathered * n}, MemoryCategory::communication);
    px::copy_from(gin.view(), std::span<const float>(in));
    world.all_gather(gin.cview(), gout.view());
    gathers[at(r)] = px::to_vector(gout.cview());

    std::vector<float> full(chunk * n);
    for (std::int64_t i = 0; i < chunk * n; ++i) full[static_cast<std::size_t>(i)] = float(r + 1) * float(i);
    px::Tensor<float, CMem> sin(alloc, Shape{chunk * n}, MemoryCategory::communication);
    px::Tensor<float, CMem> sout(alloc, Shape{chunk}, MemoryCategory::communication);
    px::copy_from(sin.view(), std::span<const float>(full));
    world.reduce_scatter(sin.cview(), sout.view(), ReduceOp::sum);
    scattered[at(r)] = px::to_vector(sout.cview());
    threads[at(r)] = dynamic_cast<px::ThreadCommunicator<CMem>*>(&world.transport()) != nullptr;
  }, {.transport = px::LaunchTransport::threads});  // on a machine with 4 GPUs the default would be NCCL

  for (int r = 0; r < n; ++r) {
    INFO("rank " << r);
    CHECK(threads[static_cast<std::size_t>(r)] == 1);
    CHECK(reduced[static_cast<std::size_t>(r)] == std::vector<float>(count, 10.f));  // 1 + 2 + 3 + 4
    std::vector<float> want_avg(count);
    for (std::int64_t i = 0; i < count; ++i) {
      float s = 0.f;
      for (int j = 0; j < n; ++j) s += float(j * 1000 + i % 97) * 0.5f;
      want_avg[static_cast<std::size_t>(i)] = s / float(n);
    }
    CHECK(avg[static_cast<std::size_t>(r)] == want_avg);
    const auto& hm = half[static_cast<std::size_t>(r)];
    CHECK(std::all_of(hm.begin(), hm.end(), [](bf16 v) { return float(v) == 0.75f; }));
    std::vector<float> want_gather;
    for (int j = 0; j < n; ++j)
      for (std::int64_t i = 0; i < gathered; ++i) want_gather.push_back(float(j * 10 + i));
    CHECK(gathers[static_cast<std::size_t>(r)] == want_gather);
    std::vector<float> want_scatter(chunk);
    for (std::int64_t i = 0; i < chunk; ++i) want_scatter[static_cast<std::size_t>(i)] = 10.f * float(r * chunk + i);
    CHECK(scattered[static_cast<std::size_t>(r)] == want_scatter);
  }
}

TEST_CASE("NcclCommunicator: every call on a one-rank world", "[gpu][nccl]") {
  if (!gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cu::Context ctx(0);
  px::NcclOptions options;
  options.debug_collectives = true;
  options.timeout = std::chrono::seconds(60);
  const ncclUniqueId id = px::NcclCommunicator::make_unique_id();
  px::Communicator world(px::NcclCommunicator::create_world(0, 1, id, ctx, options));
  CHECK(world.size() == 1);
  CHECK(world.rank() == 0);
  CHECK(world.describe() == "world group {0}");
  CHECK(world.transport().memory_space() == "cuda");

  DeviceBuffers dev;
  auto x = dev.make(std::vector<float>(100, 0.f), Shape{100});
  CB::fill(ctx, x.view(), 3.f);  // on the compute stream: the call waits for it on the GPU
  world.all_reduce(x.view(), ReduceOp::sum);
  CHECK(px::to_vector(x.cview()) == std::vector<float>(100, 3.f));
  world.all_reduce(x.view(), ReduceOp::avg);
  world.broadcast(x.view(), 0);
  world.reduce(x.view(), ReduceOp::max, 0);
  CHECK(px::to_vector(x.cview()) == std::vector<float>(100, 3.f));

  auto out = dev.make(std::vector<float>(100, 0.f), Shape{100});
  world.all_gather(x.cview(), out.view());
  world.reduce_scatter(x.cview(), out.view(), ReduceOp::sum);
  CHECK(px::to_vector(out.cview()) == std::vector<float>(100, 3.f));

  auto i64 = dev.make(std::vector<std::int64_t>(8, 5), Shape{8});
  px::Work w = world.all_reduce_async(i64.view(), ReduceOp::sum);
  w.wait();
  CHECK(w.ready());
  CHECK(px::to_vector(i64.cview()) == std::vector<std::int64_t>(8, 5));
  world.barrier();

  px::Communicator solo = world.split(0, 0, "solo");
  REQUIRE(solo.valid());
  CHECK(solo.describe() == "solo group {0}");
  solo.all_reduce(x.view(), ReduceOp::sum);
  CHECK_FALSE(world.split(-1, 0, "none").valid());
}

TEST_CASE("NcclCommunicator: two GPUs, one thread each, and a mismatch named on both", "[gpu][nccl][multi-gpu]") {
  if (CB::device_count() < 2) {
    WARN("fewer than 2 GPUs: skipped");
    return;
  }
  const ncclUniqueId id = px::NcclCommunicator::make_unique_id();
  std::vector<std::vector<float>> sums(2);
  std::vector<std::string> errors(2);
  auto body = [&](int r) {
    try {
      cu::Context ctx(r);
      px::NcclOptions options;
      options.debug_collectives = true;
      options.timeout = std::chrono::seconds(60);
      px::Communicator world(px::NcclCommunicator::create_world(r, 2, id, ctx, options));
      DeviceBuffers dev;
      auto x = dev.make(std::vector<float>(64, float(r + 1)), Shape{64});
      world.all_reduce(x.view(), ReduceOp::sum);
      sums[static_cast<std::size_t>(r)] = px::to_vector(x.cview());
      auto y = dev.make(std::vector<float>(64, 0.f), Shape{64});
      if (r == 0) world.send(x.cview(), 1);
      else world.recv(y.view(), 0);
      auto g = dev.make(std::vector<float>(128, 0.f), Shape{128});
      if (r == 0) world.all_reduce(x.view(), ReduceOp::sum);
      else world.all_gather(x.cview(), g.view());
    } catch (const std::exception& e) {
      errors[static_cast<std::size_t>(r)] = e.what();
    }
  };
  std::thread t0(body, 0), t1(body, 1);
  t0.join();
  t1.join();
  for (int r = 0; r < 2; ++r) {
    INFO("rank " << r);
    CHECK(sums[static_cast<std::size_t>(r)] == std::vector<float>(64, 3.f));
    CHECK_THAT(errors[static_cast<std::size_t>(r)],
               Contains("collective #2 on world group {0,1}: mismatched calls: rank 0 all_reduce(fp32, 64, sum), "
                        "rank 1 all_gather(fp32, 64)"));
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// launch<cuda::Backend>: NCCL when every rank has a GPU of its own, the thread transport when ranks share one.

namespace {

//! What a rank of `launch<cuda::Backend>` saw of its world: the transport, an all-reduce, a split group's stream.
struct LaunchSeen {
  std::string transport;
  std::vector<float> sum;
  bool own_stream = false;  // NCCL: the split group queues on a stream other than the world's
};

LaunchSeen see_world(px::Rank<CB>& rank) {
  LaunchSeen seen;
  auto& world = rank.world();
  auto* nccl = dynamic_cast<px::NcclCommunicator*>(&world.transport());
  seen.transport = nccl ? "nccl" : dynamic_cast<px::ThreadCommunicator<CMem>*>(&world.transport()) ? "threads" : "?";
  px::Tensor<float, CMem> x(rank.allocator(), Shape{257}, MemoryCategory::communication);
  CB::fill(rank.context(), x.view(), float(rank.id() + 1));  // on the compute stream: the call must wait for it
  world.all_reduce(x.view(), ReduceOp::sum);
  px::Communicator half = world.split(rank.id() % 2, rank.id(), "half");
  half.all_reduce(x.view(), ReduceOp::sum);
  seen.sum = px::to_vector(x.cview());
  if (nccl) seen.own_stream = dynamic_cast<px::NcclCommunicator&>(half.transport()).stream() != nccl->stream();
  return seen;
}

}  // namespace

TEST_CASE("launch<cuda::Backend>: an NCCL world when ranks have GPUs of their own, threads for one rank, when asked "
          "or when ranks share",
          "[gpu][cuda][nccl][launch]") {
  if (!gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  const int gpus = CB::device_count();
  using px::LaunchTransport;
  for (const auto transport : {LaunchTransport::automatic, LaunchTransport::nccl, LaunchTransport::threads}) {
    for (const int n : {1, 2, gpus + 1}) {
      const bool nccl =
          transport == LaunchTransport::nccl || (transport == LaunchTransport::automatic && n > 1 && n <= gpus);
      if (transport == LaunchTransport::nccl && n > gpus) continue;  // an error, below
      INFO(px::name(transport) << ", " << n << " ranks on " << gpus << " GPUs");
      std::vector<LaunchSeen> seen(static_cast<std::size_t>(n));
      px::launch<CB>(n, [&](px::Rank<CB>& rank) { seen[static_cast<std::size_t>(rank.id())] = see_world(rank); },
                     {.timeout = std::chrono::seconds(60), .transport = transport});
      const float all = float(n * (n + 1) / 2);
      for (int r = 0; r < n; ++r) {
        const auto& s = seen[static_cast<std::size_t>(r)];
        CHECK(s.transport == (nccl ? "nccl" : "threads"));
        float half = 0.f;  // the ranks of r's parity, each holding `all` after the world's all-reduce
        for (int j = r % 2; j < n; j += 2) half += all;
        CHECK(s.sum == std::vector<float>(257, half));
        CHECK(s.own_stream == nccl);
      }
    }
  }
  const auto too_many = px::test::error_of([&] {
    px::launch<CB>(gpus + 1, [](px::Rank<CB>&) {}, {.transport = LaunchTransport::nccl});
  });
  CHECK_THAT(too_many, Contains(fmt::format("launch: LaunchTransport::nccl needs one GPU per rank: {} ranks, {} GPUs",
                                            gpus + 1, gpus)));
}

TEST_CASE("launch<cuda::Backend> over NCCL: a failing rank releases the others at once", "[gpu][nccl][multi-gpu]") {
  if (CB::device_count() < 2) {
    WARN("fewer than 2 GPUs: skipped");
    return;
  }
  const auto start = std::chrono::steady_clock::now();
  std::string error;
  try {
    px::launch<CB>(2, [](px::Rank<CB>& rank) {
      px::Tensor<float, CMem> x(rank.allocator(), Shape{64}, MemoryCategory::communication);
      if (rank.id() == 1) throw px::Error("rank 1 gives up", 1);
      rank.world().all_reduce(x.view(), ReduceOp::sum);  // rank 0 waits here for a rank that never comes
    }, {.timeout = std::chrono::seconds(120)});
  } catch (const px::Error& e) {
    error = e.what();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK_THAT(error, Contains("launch: rank 1 failed: rank 1 gives up"));
  CHECK(seconds < 60);  // released by the abort, not by the 120 s timeout
}

// ---------------------------------------------------------------------------------------------------------------------
// The rank's memory cache (core/caching_allocator.hpp over cuda::Memory): tensors, kernel temporaries, streams.

TEST_CASE("cuda: a rank's tensors and kernel temporaries come from its stream-ordered memory cache",
          "[gpu][cuda][memory]") {
  if (!gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  struct Seen {
    bool wired = false, reused = false, zeroed = false, other_stream_waits = false, other_stream_after = false;
    std::size_t reserved = 0, live = 0, workspace_live = 0, workspace_after = 1, workspace_peak = 0;
  } seen;
  px::launch<CB>(1, [&](px::Rank<CB>& rank) {
    cu::Context& ctx = rank.context();
    auto& cache = ctx.memory_cache();
    seen.wired = rank.allocator().cache() == &cache && cache.reporting_to() == &rank.memory();
    void* first = nullptr;
    {
      px::Tensor<float, CMem> t(rank.allocator(), Shape{1000}, MemoryCategory::activations);
      px::copy_from(t.view(), std::span<const float>(std::vector<float>(1000, 7.f)));
      first = t.data();
    }
    // The reused block is zeroed in stream order (a memset queued on the compute stream, no device-wide wait).
    px::Tensor<float, CMem> u(rank.allocator(), Shape{1000}, MemoryCategory::activations);
    seen.reused = u.data() == first;
    seen.zeroed = px::to_vector(u.cview()) == std::vector<float>(1000, 0.f);
    seen.reserved = rank.memory().reserved();
    seen.live = rank.memory().live_total();
    {
      cu::detail::Scratch<float> s(ctx, 1000, "test scratch");
      seen.workspace_live = rank.memory().live(MemoryCategory::workspace);
    }
    seen.workspace_after = rank.memory().live(MemoryCategory::workspace);
    seen.workspace_peak = rank.memory().peak(MemoryCategory::workspace);

    // Hold the compute stream for 200 ms behind a host function on another stream, and free a block there.
    ctx.synchronize();
    cu::Stream gate;
    cu::check(cudaLaunchHostFunc(gate.get(), [](void*) { std::this_thread::sleep_for(std::chrono::milliseconds(200)); },
                                 nullptr),
              "cudaLaunchHostFunc");
    cu::Event gated(cu::Timing::off);
    gated.record(gate);
    ctx.compute_stream().wait(gated);
    void* p = cache.allocate(4096, "probe");
    cache.deallocate(p);
    void* q = cache.allocate(4096, ctx.comm_stream().get(), "probe");
    seen.other_stream_waits = q != p;
    cache.deallocate(q);
    ctx.synchronize();
    void* r = cache.allocate(4096, ctx.comm_stream().get(), "probe");
    seen.other_stream_after = r == p;
    cache.deallocate(r);
  });
  CHECK(seen.wired);
  CHECK(seen.reused);
  CHECK(seen.zeroed);
  CHECK(seen.reserved == px::CachingAllocator<CMem>::small_segment);
  CHECK(seen.live == 4000);
  CHECK(seen.workspace_live == 4000);
  CHECK(seen.workspace_after == 0);
  CHECK(seen.workspace_peak == 4000);
  CHECK(seen.other_stream_waits);
  CHECK(seen.other_stream_after);
}

TEST_CASE("cuda: on a rank's thread, host copies wait for the rank's compute stream only (HostOrder)",
          "[gpu][cuda][memory]") {
  if (!gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  // Another stream of the device is held by a host function until the rank thread has copied: with a device-wide
  // drain (what copies do without a HostOrder) the copies would wait for it, and it would run into its 10 s bound.
  struct Gate {
    std::atomic<bool> open{false};
    bool opened_in_time = false;
  } gate;
  struct Seen {
    bool ordered = false, zeroed = false, in_rank = false;
  } seen;
  px::launch<CB>(1, [&](px::Rank<CB>& rank) {
    cu::Context& ctx = rank.context();
    seen.in_rank = cu::HostOrder::current() != nullptr && cu::HostOrder::current()->stream() == ctx.stream();
    cu::Stream held;
    cu::check(cudaLaunchHostFunc(held.get(),
                                 [](void* p) {
                                   auto& g = *static_cast<Gate*>(p);
                                   const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
                                   while (!g.open.load() && std::chrono::steady_clock::now() < until)
                                     std::this_thread::sleep_for(std::chrono::milliseconds(1));
                                   g.opened_in_time = g.open.load();
                                 },
                                 &gate),
              "cudaLaunchHostFunc");
    px::Tensor<float, CMem> x(rank.allocator(), Shape{256}, MemoryCategory::activations);
    std::vector<float> in(256), out(256, -1.f);
    for (std::size_t i = 0; i < in.size(); ++i) in[i] = float(i);
    CMem::upload(x.data(), in.data(), in.size() * sizeof(float));
    CMem::download(out.data(), x.data(), out.size() * sizeof(float));
    seen.ordered = out == in;
    CMem::zero_on(x.data(), 64 * sizeof(float), ctx.stream());  // queued on the compute stream: the copy sees it
    CMem::download(out.data(), x.data(), out.size() * sizeof(float));
    seen.zeroed = out[63] == 0.f && out[64] == 64.f;
    gate.open = true;
    held.synchronize();
  });
  CHECK(seen.in_rank);
  CHECK(seen.ordered);
  CHECK(seen.zeroed);
  CHECK(gate.opened_in_time);  // the copies did not wait for the held stream
  CHECK(cu::HostOrder::current() == nullptr);  // the main thread holds none
}
