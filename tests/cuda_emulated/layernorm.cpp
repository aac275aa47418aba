// The CUDA LayerNorm kernels (detail/layernorm_kernels.cuh), run by the SIMT emulator with the launcher's geometry,
// against host::LayerNorm: forward with and without the fused residual add, the input gradient with and without the
// residual gradient, and dgamma / dbeta through the deterministic column sums. Row counts that leave a block's warps
// idle and widths below, at and above a warp's 32 lanes.
#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include <parallax/backend/cuda/detail/layernorm_kernels.cuh>
#include <parallax/backend/host/layernorm.hpp>
#include <parallax/core/bf16.hpp>

#include "support.hpp"

namespace {

namespace px = parallax;
namespace cd = parallax::cuda::detail;
namespace simt = parallax::simt;
using px::Shape;
using px::test::bit_differences;
using px::test::check_close;
using px::test::cview;
using px::test::emulated::Buffer;
using px::test::values;
using px::test::view;
using i64 = std::int64_t;

template <class T>
void check_forward(i64 n, i64 d, bool residual) {
  INFO("n " << n << ", d " << d << (residual ? ", with the residual add" : ""));
  const auto x = values<T>(n * d, 1, 2.f), r = values<T>(n * d, 2), gamma = values<T>(d, 3), beta = values<T>(d, 4);
  const px::host::Context ctx;
  std::vector<T> sum(static_cast<std::size_t>(n * d)), y(sum.size());
  std::vector<float> mean(static_cast<std::size_t>(n)), rstd(mean.size());
  if (residual)
    px::host::LayerNorm::add_layernorm_forward<T>(ctx, cview(x, {n, d}), cview(r, {n, d}), cview(gamma, {d}),
                                                  cview(beta, {d}), 1e-5f, view(sum, {n, d}), view(y, {n, d}),
                                                  view(mean, {n}), view(rstd, {n}));
  else
    px::host::LayerNorm::layernorm_forward<T>(ctx, cview(x, {n, d}), cview(gamma, {d}), cview(beta, {d}), 1e-5f,
                                              view(y, {n, d}), view(mean, {n}), view(rstd, {n}));

  Buffer<T> dx(x), dr(r), dg(gamma), db(beta), dsum = Buffer<T>::output(sum.size()), dy = Buffer<T>::output(y.size());
  Buffer<float> dmean = Buffer<float>::output(mean.size()), drstd = Buffer<float>::output(rstd.size());
  simt::launch("layernorm_forward", cd::layernorm_forward_kernel<T>, dim3(cd::layernorm_blocks(n)),
               dim3(cd::layernorm_warps * 32), 0, dx.data(), residual ? dr.data() : nullptr,
               residual ? dsum.data() : nullptr, dg.data(), db.data(), 1e-5f, dy.data(), dmean.data(), drstd.data(),
               n, d);
  if (residual) CHECK(bit_differences(dsum.values(), sum) == 0);  // one fp32 add, rounded once, per element
  check_close(dy.values(), y, "y");
  check_close(dmean.values(), mean, "mean");
  check_close(drstd.values(), rstd, "rstd");
  CHECK((dsum.guards_intact() && dy.guards_intact() && dmean.guards_intact() && drstd.guards_intact()));
}

template <class T>
void check_backward(i64 n, i64 d, bool residual) {
  INFO("n " << n << ", d " << d << (residual ? ", with the residual gradient" : ""));
  const auto x = values<T>(n * d, 5, 2.f), gamma = values<T>(d, 6), dyv = values<T>(n * d, 7),
             dres = values<T>(n * d, 8);
  const auto beta = values<T>(d, 9);
  const px::host::Context ctx;
  std::vector<T> y(static_cast<std::size_t>(n * d));
  std::vector<float> mean(static_cast<std::size_t>(n)), rstd(mean.size());
  px::host::LayerNorm::layernorm_forward<T>(ctx, cview(x, {n, d}), cview(gamma, {d}), cview(beta, {d}), 1e-5f,
                                            view(y, {n, d}), view(mean, {n}), view(rstd, {n}));
  // dgamma and dbeta accumulate: both start from values already there.
  std::vector<T> dx(y.size()), dgamma = values<T>(d, 10), dbeta = values<T>(d, 11);
  const std::vector<T> dgamma0 = dgamma, dbeta0 = dbeta;
  if (residual)
    px::host::LayerNorm::add_layernorm_backward<T>(ctx, cview(dyv, {n, d}), cview(x, {n, d}), cview(gamma, {d}),
                                                   cview(mean, {n}), cview(rstd, {n}), cview(dres, {n, d}),
                                                   view(dx, {n, d}));
  px::host::LayerNorm::layernorm_backward<T>(ctx, cview(dyv, {n, d}), cview(x, {n, d}), cview(gamma, {d}),
                                             cview(mean, {n}), cview(rstd, {n}),
                                             residual ? px::View<T, px::host::Memory>{} : view(dx, {n, d}),
                                             view(dgamma, {d}), view(dbeta, {d}));

  Buffer<T> bdy(dyv), bx(x), bg(gamma), bres(dres), bdx = Buffer<T>::output(dx.size());
  Buffer<float> bmean(mean), brstd(rstd);
  simt::launch("layernorm_backward_dx", cd::layernorm_backward_dx_kernel<T>, dim3(cd::layernorm_blocks(n)),
               dim3(cd::layernorm_warps * 32), 0, bdy.data(), bx.data(), bg.data(), bmean.data(), brstd.data(),
               residual ? bres.data() : nullptr, bdx.data(), n, d);
  check_close(bdx.values(), dx, "dx");

  Buffer<T> bdg(dgamma0), bdb(dbeta0);
  px::test::emulated::column_sums<2>(cd::LayerNormGradTerm<T>{bdy.data(), bx.data(), bmean.data(), brstd.data(), d}, n,
                                     d, cd::ColumnOutputs<T, 2>{{bdg.data(), bdb.data()}});
  check_close(bdg.values(), dgamma, "dgamma");
  check_close(bdb.values(), dbeta, "dbeta");
  CHECK((bdx.guards_intact() && bdg.guards_intact() && bdb.guards_intact()));
}

}  // namespace

TEMPLATE_TEST_CASE("emulated CUDA LayerNorm forward equals host::LayerNorm", "[simt][layernorm]", float, px::bf16) {
  for (const auto& [n, d] : {std::pair<i64, i64>{1, 7}, {13, 32}, {37, 200}, {9, 768}})
    for (const bool residual : {false, true}) check_forward<TestType>(n, d, residual);
}

TEMPLATE_TEST_CASE("emulated CUDA LayerNorm backward equals host::LayerNorm", "[simt][layernorm]", float, px::bf16) {
  // 150 rows: three chunks of the column sums' 64 rows, the last one short.
  for (const auto& [n, d] : {std::pair<i64, i64>{1, 7}, {13, 32}, {150, 45}, {9, 768}})
    for (const bool residual : {false, true}) check_backward<TestType>(n, d, residual);
}
