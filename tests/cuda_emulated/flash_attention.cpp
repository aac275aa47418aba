// The tensor-core flash-attention kernels (detail/flash_attention_kernels.cuh), run by the SIMT emulator with the
// launchers' grids, blocks and shared memory and their PTX carried out by the emulator's ptx.cuh (cp.async groups,
// ldmatrix, mma.sync m16n8k16), against host::Attention: the forward (out, lse), then dq and dk / dv from the host's
// out and lse. bf16 and fp16, head dims 64 and 128; sequence lengths of one row, of part of a tile, and past the
// first query tile and several key steps, so the causal masks, the skipped steps and the zero-filled rows all run.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <parallax/backend/cuda/detail/flash_attention_kernels.cuh>
#include <parallax/backend/host/attention.hpp>
#include <parallax/core/bf16.hpp>
#include <parallax/core/fp16.hpp>

#include "support.hpp"

namespace {

namespace px = parallax;
namespace cd = parallax::cuda::detail;
namespace simt = parallax::simt;
using px::Shape;
using px::test::check_close;
using px::test::cview;
using px::test::flash_rtol;
using px::test::lse_rtol;
using px::test::emulated::Buffer;
using px::test::emulated::reference_delta;
using px::test::values;
using px::test::view;
using i64 = std::int64_t;

//! A flash kernel as cuda::detail::launch_with_smem launches it for `heads` heads of nt rows under `tiling`.
template <class... P, class... A>
void launch_flash(const char* name, void (*kernel)(P...), const cd::FlashTiling& tiling, int smem, i64 heads, i64 nt,
                  A... args) {
  simt::launch(name, kernel, dim3(static_cast<unsigned>(heads * cd::flash_tiles(nt, tiling.rows()))),
               dim3(static_cast<unsigned>(tiling.threads())), static_cast<std::size_t>(smem), args...);
}

template <class T, int Dh>
void check_flash(i64 heads, i64 nt) {
  INFO("heads " << heads << ", T " << nt << ", Dh " << Dh);
  const Shape s{1, heads, nt, Dh}, ls{1, heads, nt};
  const float scale = 1.f / std::sqrt(float(Dh));
  const auto q = values<T>(s.numel(), 1, 2.f), k = values<T>(s.numel(), 2, 2.f), v = values<T>(s.numel(), 3);
  const auto dout = values<T>(s.numel(), 4);
  const px::host::Context ctx;
  std::vector<T> out(q.size()), dq(q.size()), dk(q.size()), dv(q.size());
  std::vector<float> lse(static_cast<std::size_t>(ls.numel()));
  px::host::Attention::attention_forward<T>(ctx, cview(q, s), cview(k, s), cview(v, s), view(out, s), view(lse, ls),
                                            scale);
  px::host::Attention::attention_backward<T>(ctx, cview(q, s), cview(k, s), cview(v, s), cview(out, s),
                                             cview(dout, s), cview(lse, ls), scale, view(dq, s), view(dk, s),
                                             view(dv, s));

  Buffer<T> bq(q), bk(k), bv(v), bout = Buffer<T>::output(out.size());
  Buffer<float> blse = Buffer<float>::output(lse.size());
  launch_flash("flash_forward", cd::flash_forward_kernel<T, Dh>, cd::flash_forward_tiling<Dh>,
               cd::flash_forward_smem<Dh>, heads, nt, bq.data(), bk.data(), bv.data(), bout.data(), blse.data(), heads,
               nt, scale * cd::flash_log2e);
  check_close(bout.values(), out, flash_rtol<T>, "out");
  check_close(blse.values(), lse, lse_rtol, "lse");
  CHECK((bout.guards_intact() && blse.guards_intact()));

  // The backward from the host forward's out and lse, and D = rowsum(dout o out) (the SIMT delta kernel's result).
  const std::vector<float> delta = reference_delta(out, dout, Dh);
  Buffer<T> bdout(dout), bdq = Buffer<T>::output(dq.size()), bdk = Buffer<T>::output(dk.size()),
                         bdv = Buffer<T>::output(dv.size());
  Buffer<float> bhost_lse(lse), bdelta(delta);
  launch_flash("flash_dq", cd::flash_dq_kernel<T, Dh>, cd::flash_dq_tiling<Dh>, cd::flash_dq_smem<Dh>, heads, nt,
               bq.data(), bk.data(), bv.data(), bdout.data(), bhost_lse.data(), bdelta.data(), bdq.data(), heads, nt,
               scale, scale * cd::flash_log2e);
  launch_flash("flash_dkdv", cd::flash_dkdv_kernel<T, Dh>, cd::flash_dkdv_tiling<Dh>, cd::flash_dkdv_smem<Dh>, heads,
               nt, bq.data(), bk.data(), bv.data(), bdout.data(), bhost_lse.data(), bdelta.data(), bdk.data(),
               bdv.data(), heads, nt, scale, scale * cd::flash_log2e);
  check_close(bdq.values(), dq, flash_rtol<T>, "dq");
  check_close(bdk.values(), dk, flash_rtol<T>, "dk");
  check_close(bdv.values(), dv, flash_rtol<T>, "dv");
  CHECK((bdq.guards_intact() && bdk.guards_intact() && bdv.guards_intact()));
}

}  // namespace

TEMPLATE_TEST_CASE("emulated CUDA flash attention (tensor cores) equals host::Attention, head dim 64",
                   "[simt][flash]", px::bf16, px::fp16) {
  check_flash<TestType, 64>(2, 1);   // one row per head: every tile but the first row zero-filled
  check_flash<TestType, 64>(1, 130); // two query tiles, three key steps, the last of 2 rows
}

TEMPLATE_TEST_CASE("emulated CUDA flash attention (tensor cores) equals host::Attention, head dim 128",
                   "[simt][flash]", px::bf16, px::fp16) {
  check_flash<TestType, 128>(2, 45);  // dk / dv stream 32 queries a step at Dh 128: two steps
}
