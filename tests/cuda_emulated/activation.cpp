// The CUDA GELU kernels (detail/activation_kernels.cuh) against host::Activation, in place and not, and the unfused
// epilogue of a GEMM with a bias and GELU (detail/gemm_epilogue_kernels.cuh) against host::GemmEpilogue::gemm_bias_act:
// every combination of bias, GELU and saved pre-activation the launcher runs it for, on the plain GEMM's output.
// Run by the SIMT emulator with the launchers' geometry; sizes of one element, below a block, not a multiple of it,
// and above the grid's threads (the grid-stride loops wrap).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include <parallax/backend/cuda/detail/activation_kernels.cuh>
#include <parallax/backend/cuda/detail/elementwise_kernels.cuh>
#include <parallax/backend/cuda/detail/gemm_epilogue_kernels.cuh>
#include <parallax/backend/host/activation.hpp>
#include <parallax/backend/host/gemm.hpp>
#include <parallax/backend/host/gemm_epilogue.hpp>
#include <parallax/core/bf16.hpp>

#include "support.hpp"

namespace {

namespace px = parallax;
namespace cd = parallax::cuda::detail;
namespace simt = parallax::simt;
using px::Trans;
using px::test::bit_differences;
using px::test::check_close;
using px::test::cview;
using px::test::emulated::Buffer;
using px::test::emulated::sm_count;
using px::test::values;
using px::test::view;
using i64 = std::int64_t;

//! y = gelu(x), into a separate buffer or in place (`y` may alias `x`).
template <class T>
void check_gelu_forward(i64 n, bool in_place) {
  INFO("n " << n << (in_place ? ", in place" : ""));
  const std::vector<T> x = values<T>(n, 1, 5.f);
  std::vector<T> want(x.size());
  const px::host::Context ctx;
  px::host::Activation::gelu_forward(ctx, cview(x), view(want));
  Buffer<T> bx(x), by = Buffer<T>::output(x.size());
  Buffer<T>& out = in_place ? bx : by;
  simt::launch("gelu_forward", cd::gelu_forward_kernel<T>, dim3(cd::elementwise_blocks(n, sm_count)),
               dim3(cd::elementwise_threads), 0, bx.data(), out.data(), n);
  check_close(out.values(), want, "y");
  CHECK((bx.guards_intact() && by.guards_intact()));
}

//! dx = dy gelu'(x), into a separate buffer or over dy (`dx` may alias `dy`, as gemm_dgelu's fallback runs it).
template <class T>
void check_gelu_backward(i64 n, bool over_dy) {
  INFO("n " << n << (over_dy ? ", over dy" : ""));
  const std::vector<T> x = values<T>(n, 2, 5.f), dy = values<T>(n, 3);
  std::vector<T> want(x.size());
  const px::host::Context ctx;
  px::host::Activation::gelu_backward(ctx, cview(x), cview(dy), view(want));
  Buffer<T> bx(x), bdy(dy), bdx = Buffer<T>::output(x.size());
  Buffer<T>& out = over_dy ? bdy : bdx;
  simt::launch("gelu_backward", cd::gelu_backward_kernel<T>, dim3(cd::elementwise_blocks(n, sm_count)),
               dim3(cd::elementwise_threads), 0, bx.data(), bdy.data(), out.data(), n);
  check_close(out.values(), want, "dx");
  CHECK((bx.guards_intact() && bdy.guards_intact() && bdx.guards_intact()));
}

//! The unfused path of cuda::GemmEpilogue::gemm_bias_act: the plain GEMM product = a b [m, n] in fp32 (here the
//! host's), then the epilogue kernel, against host::GemmEpilogue::gemm_bias_act, which also rounds the fp32 product
//! plus bias, and its GELU, to T once: the same bits.
template <class T>
void check_bias_act(i64 m, i64 n, i64 k, bool bias, bool gelu, bool pre) {
  INFO("m " << m << ", n " << n << ", k " << k << (bias ? ", bias" : "") << (gelu ? ", gelu" : "")
            << (pre ? ", pre" : ""));
  const std::vector<T> a = values<T>(m * k, 4, 2.f), b = values<T>(k * n, 5), bv = values<T>(n, 6);
  const px::host::Context ctx;
  std::vector<T> want(static_cast<std::size_t>(m * n)), want_pre(want.size());
  std::vector<float> product(want.size());
  const px::View<const T, px::host::Memory> no_bias{};
  px::host::GemmEpilogue::gemm_bias_act(ctx, Trans::N, Trans::N, cview(a, {m, k}), cview(b, {k, n}),
                                        bias ? cview(bv, {n}) : no_bias,
                                        gelu ? px::Activation::gelu : px::Activation::none, view(want, {m, n}),
                                        pre ? view(want_pre, {m, n}) : px::View<T, px::host::Memory>{});
  px::host::Gemm::gemm(ctx, Trans::N, Trans::N, 1.f, cview(a, {m, k}), cview(b, {k, n}), 0.f, view(product, {m, n}));

  Buffer<float> bproduct(product);
  Buffer<T> c = Buffer<T>::output(want.size()), bb(bv), bpre = Buffer<T>::output(want.size());
  simt::launch("bias_act", cd::bias_act_kernel<T>, dim3(cd::elementwise_blocks(m * n, sm_count)),
               dim3(cd::elementwise_threads), 0, bproduct.data(), c.data(), bias ? bb.data() : nullptr,
               pre ? bpre.data() : nullptr, gelu, m * n, n);
  CHECK(bit_differences(c.values(), want) == 0);
  if (pre) CHECK(bit_differences(bpre.values(), want_pre) == 0);
  CHECK((bproduct.guards_intact() && c.guards_intact() && bpre.guards_intact()));
}

}  // namespace

TEMPLATE_TEST_CASE("emulated CUDA GELU equals host::Activation", "[simt][activation]", float, px::bf16) {
  for (const i64 n : {1, 37, 256, 1000, 9000})
    for (const bool alias : {false, true}) {
      check_gelu_forward<TestType>(n, alias);
      check_gelu_backward<TestType>(n, alias);
    }
}

TEMPLATE_TEST_CASE("emulated CUDA GEMM bias/GELU epilogue equals host::GemmEpilogue::gemm_bias_act",
                   "[simt][activation]", float, px::bf16) {
  // The launcher runs the kernel unless there is nothing to apply (no bias, no GELU, no pre-activation).
  for (const auto& [m, n, k] : {std::tuple<i64, i64, i64>{1, 7, 3}, {13, 32, 5}, {37, 45, 4}, {300, 33, 2}})
    for (const bool bias : {false, true})
      for (const bool gelu : {false, true})
        for (const bool pre : {false, true})
          if (bias || gelu || pre) check_bias_act<TestType>(m, n, k, bias, gelu, pre);
}
