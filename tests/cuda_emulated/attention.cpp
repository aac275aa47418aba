// The CUDA SIMT attention kernels (detail/attention_kernels.cuh), run by the SIMT emulator with the launcher's
// geometry and dynamic shared memory, against host::Attention: the causal forward (out and lse), the delta kernel
// (D = rowsum(dout o out)) and the backward's dq and dk / dv kernels from the forward's out and lse. Head dims below,
// at and above a warp's 32 lanes up to the kernels' maximum, and 0 (the forward still writes lse); sequence lengths
// that are not multiples of the 8-row block tiles or the 32-row streamed tiles; several (batch, head) pairs.
// (The tensor-core kernels are tested in flash_attention.cpp.)
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <parallax/backend/cuda/detail/attention_kernels.cuh>
#include <parallax/backend/cuda/detail/elementwise_kernels.cuh>
#include <parallax/backend/host/attention.hpp>
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
using px::test::emulated::reference_delta;
using px::test::emulated::sm_count;
using px::test::values;
using px::test::view;
using i64 = std::int64_t;

//! A SIMT attention kernel as cuda::detail::launch_attention launches it: (B * H) x (tiles of attn_warps rows)
//! blocks of attn_warps warps, `floats` of dynamic shared memory, the arguments followed by nt, tiles, dh, scale.
template <class... P, class... A>
void launch_attention(const char* name, void (*kernel)(P...), i64 heads, i64 nt, int dh, float scale,
                      std::size_t floats, A... args) {
  const i64 tiles = cd::attention_row_tiles(nt);
  simt::launch(name, kernel, dim3(static_cast<unsigned>(heads * tiles)), dim3(cd::attn_warps * 32),
               floats * sizeof(float), args..., nt, tiles, dh, scale);
}

//! Causal attention over `heads` = B * H heads of nt rows of dh features: the forward, then the backward from the
//! forward's out and lse (the host's, so both backwards start from the same bits).
template <class T>
void check_attention(i64 nb, i64 nh, i64 nt, i64 dh) {
  INFO("B " << nb << ", H " << nh << ", T " << nt << ", Dh " << dh);
  const i64 heads = nb * nh;
  const Shape s{nb, nh, nt, dh}, ls{nb, nh, nt};
  const float scale = dh > 0 ? 1.f / std::sqrt(float(dh)) : 1.f;
  const auto q = values<T>(s.numel(), 1, 2.f), k = values<T>(s.numel(), 2, 2.f), v = values<T>(s.numel(), 3);
  const auto dout = values<T>(s.numel(), 4);
  const px::host::Context ctx;
  std::vector<T> out(q.size());
  std::vector<float> lse(static_cast<std::size_t>(ls.numel()));
  px::host::Attention::attention_forward<T>(ctx, cview(q, s), cview(k, s), cview(v, s), view(out, s), view(lse, ls),
                                            scale);

  const int d = static_cast<int>(dh);
  Buffer<T> bq(q), bk(k), bv(v), bout = Buffer<T>::output(out.size());
  Buffer<float> blse = Buffer<float>::output(lse.size());
  launch_attention("attention_forward", cd::attention_forward_kernel<T>, heads, nt, d, scale,
                   cd::attention_forward_floats(d),
                   bq.data(), bk.data(), bv.data(), bout.data(), blse.data());
  check_close(bout.values(), out, "out");  // an online softmax: the host's values up to rounding
  check_close(blse.values(), lse, "lse");
  CHECK((bout.guards_intact() && blse.guards_intact()));
  if (dh == 0) return;  // the launcher runs no backward kernel then

  std::vector<T> dq(q.size()), dk(q.size()), dv(q.size());
  px::host::Attention::attention_backward<T>(ctx, cview(q, s), cview(k, s), cview(v, s), cview(out, s),
                                             cview(dout, s), cview(lse, ls), scale, view(dq, s), view(dk, s),
                                             view(dv, s));
  const std::vector<float> delta = reference_delta(out, dout, dh);

  Buffer<T> bo(out), bdout(dout);
  Buffer<float> bdelta = Buffer<float>::output(delta.size()), bhost_lse(lse);
  simt::launch("attention_delta", cd::attention_delta_kernel<T>, dim3(cd::elementwise_blocks(heads * nt, sm_count)),
               dim3(cd::elementwise_threads), 0, bo.data(), bdout.data(), bdelta.data(), heads * nt, d);
  CHECK(bit_differences(bdelta.values(), delta) == 0);
  CHECK(bdelta.guards_intact());

  Buffer<T> bdq = Buffer<T>::output(dq.size()), bdk = Buffer<T>::output(dk.size()), bdv = Buffer<T>::output(dv.size());
  const std::size_t backward_floats = cd::attention_backward_floats(d);
  launch_attention("attention_dq", cd::attention_dq_kernel<T>, heads, nt, d, scale, backward_floats, bq.data(),
                   bk.data(), bv.data(), bdout.data(), bhost_lse.data(), bdelta.data(), bdq.data());
  launch_attention("attention_dkdv", cd::attention_dkdv_kernel<T>, heads, nt, d, scale, backward_floats, bq.data(),
                   bk.data(), bv.data(), bdout.data(), bhost_lse.data(), bdelta.data(), bdk.data(), bdv.data());
  check_close(bdq.values(), dq, "dq");
  check_close(bdk.values(), dk, "dk");
  check_close(bdv.values(), dv, "dv");
  CHECK((bdq.guards_intact() && bdk.guards_intact() && bdv.guards_intact()));
}

}  // namespace

TEMPLATE_TEST_CASE("emulated CUDA SIMT attention equals host::Attention", "[simt][attention]", float, px::bf16) {
  check_attention<TestType>(2, 1, 9, 7);    // two heads; the second block tile has one query row
  check_attention<TestType>(1, 2, 12, 32);  // Dh of one full warp
  check_attention<TestType>(1, 1, 37, 45);  // two streamed tiles, the last of 5 rows; two features a lane
  check_attention<TestType>(1, 1, 70, 33);  // three streamed tiles: key blocks past the first query tile
  check_attention<TestType>(1, 1, 5, cd::attn_max_head_dim);
  check_attention<TestType>(1, 2, 6, 0);  // no features: lse = log(t + 1)
}

TEMPLATE_TEST_CASE("emulated CUDA attention delta equals dout . out", "[simt][attention]", float, px::bf16) {
  // More rows than the grid's 32 blocks of 256 threads: the grid-stride loop wraps.
  const i64 rows = 8300, dh = 3;
  const auto out = values<TestType>(rows * dh, 5), dout = values<TestType>(rows * dh, 6);
  const std::vector<float> want = reference_delta(out, dout, dh);
  Buffer<TestType> bo(out), bdout(dout);
  Buffer<float> delta = Buffer<float>::output(want.size());
  simt::launch("attention_delta", cd::attention_delta_kernel<TestType>, dim3(cd::elementwise_blocks(rows, sm_count)),
               dim3(cd::elementwise_threads), 0, bo.data(), bdout.data(), delta.data(), rows, static_cast<int>(dh));
  CHECK(bit_differences(delta.values(), want) == 0);
  CHECK(delta.guards_intact());
}
