// Tests for the tensor-core path of the CUDA attention core (parallax/backend/cuda/flash_attention.cuh, taken by
// cuda::Attention for bf16/fp16 with head dim 64 or 128): forward out and lse and backward dq, dk, dv (the
// gradient of the fused qkv, head by head) against the host backend for bf16 and fp16, head dims 64 and 128,
// sequence lengths 1 to 1024 (ragged last tiles); the same bits run to run; the dispatch (the tensor-core kernels
// are the ones cuda::Attention ran); and the SIMT kernels still taking fp32, other head dims and unaligned
// operands. Tests tagged [gpu] skip themselves (with a warning) when there is no GPU.
//
// Tolerances, relative to max |host result| (see check_close): bf16 2e-2 and fp16 5e-3 for out, dq, dk, dv (the
// tensor-core path rounds P and dS to the storage type before their products, as FlashAttention-2 does, and the
// result to one storage ulp: 2^-7 relative for bf16, 2^-10 for fp16); 1e-4 for lse (fp32 throughout).

#include <parallax/backend/cuda/backend.hpp>
#include <parallax/backend/host/backend.hpp>
#include <parallax/core/allocator.hpp>
#include <parallax/core/tensor.hpp>

#include <catch2/catch.hpp>

#include "../support/gradcheck.hpp"
#include "../support/support.hpp"
#include "support.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace {

namespace px = parallax;
namespace cu = parallax::cuda;
using px::bf16;
using px::fp16;
using px::MemoryCategory;
using px::Shape;
using px::View;
using px::test::bits_of;
using px::test::gpu::bit_differences;
using px::test::gpu::check_close;
using px::test::flash_rtol;
using px::test::lse_rtol;
using px::test::gpu::gpu_available;
using px::test::gpu::type_name;
using HB = px::host::Backend;
using CB = px::cuda::Backend;
using HMem = px::host::Memory;
using CMem = px::cuda::Memory;
using i64 = std::int64_t;




// ---- problems ----------------------------------------------------------------------------------------------------

struct Problem {
  i64 b, h, t, dh;
  [[nodiscard]] Shape heads() const { return Shape{b, h, t, dh}; }
  [[nodiscard]] Shape rows() const { return Shape{b, h, t}; }
};

template <class T>
struct Inputs {
  std::vector<T> q, k, v, dout;
};

// Deterministic values stored as T: q, k in [-2, 2) (so the softmax is far from uniform), v, dout in [-1, 1).
template <class T>
Inputs<T> inputs_of(const Problem& p) {
  auto make = [&](std::uint64_t seed, float scale) {
    std::vector<T> out;
    for (float x : px::test::random_values(p.heads().numel(), seed, scale)) out.push_back(T(x));
    return out;
  };
  return {make(21, 2.f), make(22, 2.f), make(23, 1.f), make(24, 1.f)};
}

template <class T>
struct Result {
  std::vector<T> out, dq, dk, dv;
  std::vector<float> lse;
};

template <class T>
Result<T> on_host(const Problem& p, const Inputs<T>& in, float scale) {
  const px::host::Context hctx(0);
  const Shape s = p.heads(), sl = p.rows();
  auto c = [&](const std::vector<T>& v) { return View<const T, HMem>(v.data(), s); };
  Result<T> r{std::vector<T>(in.q.size()), std::vector<T>(in.q.size()), std::vector<T>(in.q.size()),
              std::vector<T>(in.q.size()), std::vector<float>(static_cast<std::size_t>(sl.numel()))};
  HB::attention_forward(hctx, c(in.q), c(in.k), c(in.v), View<T, HMem>(r.out.data(), s),
                        View<float, HMem>(r.lse.data(), sl), scale);
  HB::attention_backward(hctx, c(in.q), c(in.k), c(in.v), c(r.out), c(in.dout),
                         View<const float, HMem>(r.lse.data(), sl), scale, View<T, HMem>(r.dq.data(), s),
                         View<T, HMem>(r.dk.data(), s), View<T, HMem>(r.dv.data(), s));
  return r;
}

// Device operands of one problem, each in its own allocation and viewed `offset` elements past its start (a
// nonzero offset leaves them unaligned for cp.async).
template <class T>
struct DeviceOperands {
  px::MemoryStats stats;
  px::Allocator<CMem> alloc{stats, 0};
  Shape shape;
  i64 offset;
  std::vector<px::Tensor<T, CMem>> tensors;

  DeviceOperands(Shape s, i64 off) : shape(s), offset(off) {}

  View<T, CMem> add(const std::vector<T>& values) {
    std::vector<T> padded(static_cast<std::size_t>(offset), T(0.f));
    padded.insert(padded.end(), values.begin(), values.end());
    auto& t = tensors.emplace_back(alloc, Shape{static_cast<i64>(padded.size())}, MemoryCategory::activations);
    px::copy_from(t.view(), std::span<const T>(padded));
    return View<T, CMem>(t.data() + offset, shape);
  }
  View<T, CMem> zeros() { return add(std::vector<T>(static_cast<std::size_t>(shape.numel()), T(0.f))); }
};

// Forward then backward through cuda::Attention, the operands `offset` elements past their allocations' starts.
template <class T>
Result<T> on_gpu(const cu::Context& ctx, const Problem& p, const Inputs<T>& in, float scale, i64 offset = 0) {
  DeviceOperands<T> d(p.heads(), offset);
  auto q = d.add(in.q), k = d.add(in.k), v = d.add(in.v), dout = d.add(in.dout);
  auto out = d.zeros(), dq = d.zeros(), dk = d.zeros(), dv = d.zeros();
  px::Tensor<float, CMem> lse(d.alloc, p.rows(), MemoryCategory::activations);
  CB::attention_forward(ctx, q, k, v, out, lse.view(), scale);
  CB::attention_backward(ctx, q, k, v, out, dout, lse.cview(), scale, dq, dk, dv);
  return {px::to_vector(out), px::to_vector(dq), px::to_vector(dk), px::to_vector(dv), px::to_vector(lse.cview())};
}

template <class T>
void compare(const Result<T>& got, const Result<T>& want, double rtol) {
  check_close(got.out, want.out, rtol, "attention out");
  check_close(got.lse, want.lse, lse_rtol, "attention lse");
  check_close(got.dq, want.dq, rtol, "attention dq");
  check_close(got.dk, want.dk, rtol, "attention dk");
  check_close(got.dv, want.dv, rtol, "attention dv");
}

template <class T>
void check_same_bits(const Result<T>& a, const Result<T>& b) {
  CHECK(bit_differences(a.out, b.out) == 0);
  CHECK(bit_differences(a.lse, b.lse) == 0);
  CHECK(bit_differences(a.dq, b.dq) == 0);
  CHECK(bit_differences(a.dk, b.dk) == 0);
  CHECK(bit_differences(a.dv, b.dv) == 0);
}

// The tensor-core path against the host, and run twice for the same bits.
template <class T>
void compare_flash(const cu::Context& ctx, const Problem& p) {
  INFO(type_name<T>() << " B " << p.b << " H " << p.h << " T " << p.t << " Dh " << p.dh);
  const float scale = 1.f / std::sqrt(static_cast<float>(p.dh));
  const auto in = inputs_of<T>(p);
  const auto got = on_gpu(ctx, p, in, scale);
  compare(got, on_host(p, in, scale), flash_rtol<T>);
  check_same_bits(on_gpu(ctx, p, in, scale), got);
}

// A problem the SIMT kernels take (fp32, another head dim, or unaligned operands) against the host.
template <class T>
void compare_simt(const cu::Context& ctx, const Problem& p, i64 offset) {
  INFO(type_name<T>() << " B " << p.b << " H " << p.h << " T " << p.t << " Dh " << p.dh << " offset " << offset);
  const float scale = 1.f / std::sqrt(static_cast<float>(p.dh));
  const auto in = inputs_of<T>(p);
  const auto got = on_gpu(ctx, p, in, scale, offset);
  compare(got, on_host(p, in, scale), px::test::rtol<T>);
  check_same_bits(on_gpu(ctx, p, in, scale, offset), got);
}

}  // namespace

TEST_CASE("cuda flash attention matches the host backend", "[gpu][cuda][attention][flash]") {
  if (!gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cu::Context ctx(0);
  // T 1 (a single key), 17 (one ragged tile), 64 (one exact key tile, half a query tile), 200 (ragged in every
  // kernel's tiles), 1024 (GPT-2's context: many steps, the double buffers cycling).
  for (i64 dh : {64, 128})
    for (i64 t : {1, 17, 64, 200, 1024}) {
      compare_flash<bf16>(ctx, Problem{2, 3, t, dh});
      compare_flash<fp16>(ctx, Problem{2, 3, t, dh});
    }
}

TEST_CASE("cuda::Attention runs the tensor-core kernels for bf16 and fp16 at head dims 64 and 128",
          "[gpu][cuda][attention][flash]") {
  if (!gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cu::Context ctx(0);
  auto run = [&]<class T>(T*, i64 dh) {
    const Problem p{1, 2, 150, dh};
    INFO(type_name<T>() << " Dh " << dh);
    const float scale = 1.f / std::sqrt(static_cast<float>(dh));
    const auto in = inputs_of<T>(p);
    const auto via_attention = on_gpu(ctx, p, in, scale);
    DeviceOperands<T> d(p.heads(), 0);
    auto q = d.add(in.q), k = d.add(in.k), v = d.add(in.v), dout = d.add(in.dout);
    auto out = d.zeros(), dq = d.zeros(), dk = d.zeros(), dv = d.zeros();
    px::Tensor<float, CMem> lse(d.alloc, p.rows(), MemoryCategory::activations),
        delta(d.alloc, p.rows(), MemoryCategory::activations);
    const i64 heads = p.b * p.h;
    cu::detail::flash_attention_forward(ctx, q.data(), k.data(), v.data(), out.data(), lse.data(), heads, p.t, dh,
                                        scale, "test");
    CHECK(bit_differences(px::to_vector(out), via_attention.out) == 0);
    CHECK(bit_differences(px::to_vector(lse.cview()), via_attention.lse) == 0);
    cu::detail::attention_delta_kernel<<<1, 256, 0, ctx.stream()>>>(out.data(), dout.data(), delta.data(), heads * p.t,
                                                                    static_cast<int>(dh));
    cu::check_launch("attention_delta_kernel");
    cu::detail::flash_attention_backward(ctx, q.data(), k.data(), v.data(), dout.data(), lse.data(), delta.data(),
                                         dq.data(), dk.data(), dv.data(), heads, p.t, dh, scale, "test");
    CHECK(bit_differences(px::to_vector(dq), via_attention.dq) == 0);
    CHECK(bit_differences(px::to_vector(dk), via_attention.dk) == 0);
    CHECK(bit_differences(px::to_vector(dv), via_attention.dv) == 0);
  };
  run(static_cast<bf16*>(nullptr), 64);
  run(static_cast<fp16*>(nullptr), 128);
}

TEST_CASE("cuda attention keeps the SIMT kernels for fp32, other head dims and unaligned operands",
          "[gpu][cuda][attention]") {
  if (!gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cu::Context ctx(0);
  compare_simt<float>(ctx, Problem{2, 3, 77, 64}, 0);   // fp32: no tensor-core path
  compare_simt<bf16>(ctx, Problem{2, 2, 70, 32}, 0);    // head dim 32
  compare_simt<fp16>(ctx, Problem{1, 2, 45, 96}, 0);    // head dim 96
  compare_simt<bf16>(ctx, Problem{2, 3, 77, 64}, 1);    // 2 bytes past 16-byte alignment
  compare_simt<fp16>(ctx, Problem{1, 2, 130, 128}, 4);  // 8 bytes past
}

TEST_CASE("flash_eligible takes head dims 64 and 128 with 16-byte aligned operands only", "[cuda][attention]") {
  alignas(16) static const bf16 buf[16] = {};
  CHECK(cu::detail::flash_eligible(64, buf, buf + 8));
  CHECK(cu::detail::flash_eligible(128, buf));
  CHECK_FALSE(cu::detail::flash_eligible(32, buf));
  CHECK_FALSE(cu::detail::flash_eligible(96, buf));
  CHECK_FALSE(cu::detail::flash_eligible(256, buf));
  CHECK_FALSE(cu::detail::flash_eligible(64, buf, buf + 1));
  CHECK_FALSE(cu::detail::flash_eligible(128, buf + 4, buf));
}
