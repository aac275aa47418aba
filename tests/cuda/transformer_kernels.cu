// Tests for the CUDA backend's transformer kernels (parallax/backend/cuda/{elementwise,layernorm,activation,attention,
// head_layout,cross_entropy,embedding,gemm_epilogue}.cuh): each kernel against the host backend's on the same data
// (the batched sum of squares also against its per-piece loop), the cuBLASLt plans a context owns, its errors
// against the host's messages, and every nn and tp module built, run and compared on cuda::Backend. Tests tagged
// [gpu] skip themselves (with a warning) when there is no GPU; the instantiation check runs without one.
//
// Catch2 is not thread-safe: rank threads only record what they saw; the main thread asserts after `launch`.

#include <parallax/backend/cuda/backend.hpp>
#include <parallax/backend/host/backend.hpp>
#include <parallax/comm/launch.hpp>
#include <parallax/core/allocator.hpp>
#include <parallax/core/tensor.hpp>
#include <parallax/mesh/device_mesh.hpp>
#include <parallax/nn/causal_attention.hpp>
#include <parallax/nn/checkpoint.hpp>
#include <parallax/nn/cross_entropy.hpp>
#include <parallax/nn/embedding.hpp>
#include <parallax/nn/gelu.hpp>
#include <parallax/nn/layer_norm.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/residual.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/tp/column_parallel_linear.hpp>
#include <parallax/tp/parallel_attention.hpp>
#include <parallax/tp/parallel_mlp.hpp>
#include <parallax/tp/row_parallel_linear.hpp>
#include <parallax/tp/transformer_block.hpp>
#include <parallax/tp/vocab_parallel_cross_entropy.hpp>
#include <parallax/tp/vocab_parallel_embedding.hpp>

#include <catch2/catch.hpp>

#include "../support/gradcheck.hpp"
#include "../support/support.hpp"
#include "support.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <tuple>
#include <vector>

namespace {

namespace px = parallax;
namespace cu = parallax::cuda;
using px::bf16;
using px::MemoryCategory;
using px::Shape;
using px::View;
using px::test::bits_of;
using px::test::gpu::bit_differences;
using px::test::gpu::check_close;
using px::test::quarters;
using px::test::rtol;
using px::test::values;
using px::test::gpu::gpu_available;
using px::test::gpu::type_name;
using px::test::error_of;
using HB = px::host::Backend;
using CB = px::cuda::Backend;
using HMem = px::host::Memory;
using CMem = px::cuda::Memory;
using i32 = std::int32_t;
using i64 = std::int64_t;
template <class T>
using HV = View<T, HMem>;
template <class T>
using HCV = View<const T, HMem>;

static_assert(px::Backend<CB>, "cuda::Backend must model parallax::Backend");


// ---- device data -------------------------------------------------------------------------------------------------

// Device tensors of one test, with their accounting.
struct Device {
  px::MemoryStats stats;
  px::Allocator<CMem> alloc{stats, 0};

  template <class T>
  px::Tensor<T, CMem> make(const std::vector<T>& v, Shape shape) {
    px::Tensor<T, CMem> t(alloc, shape, MemoryCategory::activations);
    px::copy_from(t.view(), std::span<const T>(v));
    return t;
  }
  template <class T>
  px::Tensor<T, CMem> zeros(Shape shape) {
    return px::Tensor<T, CMem>(alloc, shape, MemoryCategory::activations);
  }
};

template <class T>
std::vector<T> host_of(const px::Tensor<T, CMem>& t) {
  return px::to_vector(t.cview());
}

template <class T>
HV<T> hv(std::vector<T>& v, Shape s) {
  return {v.data(), s};
}
template <class T>
HCV<T> hcv(const std::vector<T>& v, Shape s) {
  return {v.data(), s};
}

// ---- elementwise: add_bias, bias_grad --------------------------------------------------------------------------

template <class T, class G>
void compare_bias(const cu::Context& ctx, i64 n, i64 d, bool exact_sums) {
  INFO(type_name<T>() << " -> " << type_name<G>() << " N " << n << " D " << d);
  const px::host::Context hctx(0);
  Device dev;
  const Shape s{n, d};
  auto y = values<T>(n * d, 1), b = values<T>(d, 2);
  const auto dy = exact_sums ? quarters<T>(n * d, 3) : values<T>(n * d, 3);
  auto db = exact_sums ? quarters<G>(d, 4) : values<G>(d, 4);
  auto y_d = dev.make(y, s), b_d = dev.make(b, Shape{d}), dy_d = dev.make(dy, s);
  auto db_d = dev.make(db, Shape{d});

  HB::add_bias(hctx, hcv(b, Shape{d}), hv(y, s));
  CB::add_bias(ctx, b_d.cview(), y_d.view());
  CHECK(bit_differences(host_of(y_d), y) == 0);  // one fp32 add per element

  HB::bias_grad(hctx, hcv(dy, s), hv(db, Shape{d}));
  CB::bias_grad(ctx, dy_d.cview(), db_d.view());
  if (exact_sums)
    CHECK(bit_differences(host_of(db_d), db) == 0);
  else
    check_close(host_of(db_d), db, "bias_grad");
}

// ---- elementwise: batched sum_squares ----------------------------------------------------------------------------

// The batched sum of squares over pieces of many sizes (empty ones, one element, one past the 1024-block limit of
// the first pass, rows of one tensor) against the per-piece CUDA loop (bitwise: the same reductions, added in the
// same order) and against the host's batched op (1e-12 relative: another order of fp64 additions).
template <class T>
void compare_sum_squares(const cu::Context& ctx) {
  INFO(type_name<T>());
  const px::host::Context hctx(0);
  Device dev;
  std::vector<std::vector<T>> data;
  std::vector<px::Tensor<T, CMem>> tensors;
  std::uint64_t seed = 200;
  for (const auto& [n, scale] : {std::pair{i64{1000}, 1e3f}, std::pair{i64{0}, 1.f}, std::pair{i64{1}, 3.f},
                                 std::pair{i64{37}, 1e-3f}, std::pair{i64{2'100'000}, 1.f}, std::pair{i64{0}, 1.f},
                                 std::pair{i64{65536}, 1e-6f}}) {
    data.push_back(values<T>(n, seed++, scale));
    tensors.push_back(dev.make(data.back(), Shape{n}));
  }
  std::vector<View<const T, CMem>> pieces;
  std::vector<HCV<T>> host_pieces;
  for (std::size_t i = 0; i < data.size(); ++i) {
    pieces.push_back(tensors[i].cview());
    host_pieces.push_back(hcv(data[i], Shape{static_cast<i64>(data[i].size())}));
  }
  // Rows of one tensor, as the optimizer passes its bucket slices.
  const auto rows = tensors[0].cview().reshape(Shape{100, 10});
  for (auto [lo, hi] : {std::pair{i64{0}, i64{3}}, std::pair{i64{3}, i64{3}}, std::pair{i64{3}, i64{100}}}) {
    pieces.push_back(rows.rows(lo, hi));
    host_pieces.push_back(hcv(data[0], Shape{100, 10}).rows(lo, hi));
  }

  double loop = 0;
  for (const auto& p : pieces) loop += CB::sum_squares(ctx, p);
  const double batched = CB::sum_squares(ctx, std::span<const View<const T, CMem>>(pieces));
  CHECK(std::bit_cast<std::uint64_t>(batched) == std::bit_cast<std::uint64_t>(loop));
  const double host = HB::sum_squares(hctx, std::span<const HCV<T>>(host_pieces));
  CHECK(batched == Approx(host).epsilon(1e-12));
  CHECK(batched > 0);

  CHECK(CB::sum_squares(ctx, std::span<const View<const T, CMem>>()) == 0.0);
  const std::vector<View<const T, CMem>> empties{tensors[1].cview(), tensors[5].cview(), rows.rows(3, 3)};
  CHECK(CB::sum_squares(ctx, std::span<const View<const T, CMem>>(empties)) == 0.0);

  // A NaN in any piece makes the total NaN.
  auto bad = dev.make(std::vector<T>{T(1.f), T(std::numeric_limits<float>::quiet_NaN())}, Shape{2});
  pieces.push_back(bad.cview());
  CHECK(std::isnan(CB::sum_squares(ctx, std::span<const View<const T, CMem>>(pieces))));
}

// ---- layernorm ---------------------------------------------------------------------------------------------------

template <class T, class G>
void compare_layernorm(const cu::Context& ctx, i64 n, i64 d) {
  INFO(type_name<T>() << " grads " << type_name<G>() << " N " << n << " D " << d);
  const px::host::Context hctx(0);
  Device dev;
  const Shape s{n, d}, sd{d}, sn{n};
  const auto x = values<T>(n * d, 11, 3.f), gamma = values<T>(d, 12), beta = values<T>(d, 13);
  const auto dy = values<T>(n * d, 14);
  std::vector<T> y(x.size());
  std::vector<float> mean(static_cast<std::size_t>(n)), rstd(static_cast<std::size_t>(n));
  HB::layernorm_forward(hctx, hcv(x, s), hcv(gamma, sd), hcv(beta, sd), 1e-5f, hv(y, s), hv(mean, sn), hv(rstd, sn));
  auto x_d = dev.make(x, s), gamma_d = dev.make(gamma, sd), beta_d = dev.make(beta, sd), dy_d = dev.make(dy, s);
  auto y_d = dev.zeros<T>(s);
  auto mean_d = dev.zeros<float>(sn), rstd_d = dev.zeros<float>(sn);
  CB::layernorm_forward(ctx, x_d.cview(), gamma_d.cview(), beta_d.cview(), 1e-5f, y_d.view(), mean_d.view(),
                        rstd_d.view());
  check_close(host_of(y_d), y, "layernorm y");
  check_close(host_of(mean_d), mean, "layernorm mean");
  check_close(host_of(rstd_d), rstd, "layernorm rstd");

  std::vector<T> dx(x.size());
  auto dg = values<G>(d, 15), db = values<G>(d, 16);
  const auto dg0 = dg, db0 = db;
  HB::layernorm_backward<T, G>(hctx, hcv(dy, s), hcv(x, s), hcv(gamma, sd), hcv(mean, sn), hcv(rstd, sn), hv(dx, s),
                               hv(dg, sd), hv(db, sd));
  auto dx_d = dev.zeros<T>(s);
  auto dg_d = dev.make(dg0, sd), db_d = dev.make(db0, sd);
  CB::layernorm_backward<T, G>(ctx, dy_d.cview(), x_d.cview(), gamma_d.cview(), mean_d.cview(), rstd_d.cview(),
                               dx_d.view(), dg_d.view(), db_d.view());
  const auto dx_got = host_of(dx_d);
  const auto dg_got = host_of(dg_d), db_got = host_of(db_d);
  check_close(dx_got, dx, "layernorm dx");
  check_close(dg_got, dg, "layernorm dgamma");
  check_close(db_got, db, "layernorm dbeta");

  // Split into backward_input and backward_weight ({} skips an output), dx over dy: the same bits again.
  auto dy_alias = dev.make(dy, s);
  CB::layernorm_backward<T, G>(ctx, dy_alias.cview(), x_d.cview(), gamma_d.cview(), mean_d.cview(), rstd_d.cview(),
                               dy_alias.view(), {}, {});
  CHECK(bit_differences(host_of(dy_alias), dx_got) == 0);
  auto dg2 = dev.make(dg0, sd), db2 = dev.make(db0, sd);
  CB::layernorm_backward<T, G>(ctx, dy_d.cview(), x_d.cview(), gamma_d.cview(), mean_d.cview(), rstd_d.cview(), {},
                               dg2.view(), {});
  CB::layernorm_backward<T, G>(ctx, dy_d.cview(), x_d.cview(), gamma_d.cview(), mean_d.cview(), rstd_d.cview(), {},
                               {}, db2.view());
  CHECK(bit_differences(host_of(dg2), dg_got) == 0);
  CHECK(bit_differences(host_of(db2), db_got) == 0);
}

// ---- attention ---------------------------------------------------------------------------------------------------

template <class T>
void compare_attention(const cu::Context& ctx, i64 b, i64 h, i64 t, i64 dh) {
  INFO(type_name<T>() << " B " << b << " H " << h << " T " << t << " Dh " << dh);
  const px::host::Context hctx(0);
  Device dev;
  const Shape s{b, h, t, dh}, sl{b, h, t};
  const i64 n = s.numel();
  const auto q = values<T>(n, 21, 2.f), k = values<T>(n, 22, 2.f), v = values<T>(n, 23), dout = values<T>(n, 24);
  const float scale = 1.f / std::sqrt(static_cast<float>(dh));
  std::vector<T> out(q.size()), dq(q.size()), dk(q.size()), dv(q.size());
  std::vector<float> lse(static_cast<std::size_t>(sl.numel()));
  HB::attention_forward(hctx, hcv(q, s), hcv(k, s), hcv(v, s), hv(out, s), hv(lse, sl), scale);
  HB::attention_backward(hctx, hcv(q, s), hcv(k, s), hcv(v, s), hcv(out, s), hcv(dout, s), hcv(lse, sl), scale,
                         hv(dq, s), hv(dk, s), hv(dv, s));

  auto q_d = dev.make(q, s), k_d = dev.make(k, s), v_d = dev.make(v, s), dout_d = dev.make(dout, s);
  auto out_d = dev.zeros<T>(s), dq_d = dev.zeros<T>(s), dk_d = dev.zeros<T>(s), dv_d = dev.zeros<T>(s);
  auto lse_d = dev.zeros<float>(sl);
  CB::attention_forward(ctx, q_d.cview(), k_d.cview(), v_d.cview(), out_d.view(), lse_d.view(), scale);
  check_close(host_of(out_d), out, "attention out");
  check_close(host_of(lse_d), lse, "attention lse");
  CB::attention_backward(ctx, q_d.cview(), k_d.cview(), v_d.cview(), out_d.cview(), dout_d.cview(), lse_d.cview(),
                         scale, dq_d.view(), dk_d.view(), dv_d.view());
  const auto dq_got = host_of(dq_d), dk_got = host_of(dk_d), dv_got = host_of(dv_d);
  check_close(dq_got, dq, "attention dq");
  check_close(dk_got, dk, "attention dk");
  check_close(dv_got, dv, "attention dv");

  CB::attention_backward(ctx, q_d.cview(), k_d.cview(), v_d.cview(), out_d.cview(), dout_d.cview(), lse_d.cview(),
                         scale, dq_d.view(), dk_d.view(), dv_d.view());
  CHECK(bit_differences(host_of(dq_d), dq_got) == 0);  // deterministic: no atomics
  CHECK(bit_differences(host_of(dk_d), dk_got) == 0);
  CHECK(bit_differences(host_of(dv_d), dv_got) == 0);
}

// ---- head layout ---------------------------------------------------------------------------------------------------

template <class T>
void compare_head_layout(const cu::Context& ctx, i64 b, i64 h, i64 t, i64 dh) {
  INFO(type_name<T>() << " B " << b << " H " << h << " T " << t << " Dh " << dh);
  const px::host::Context hctx(0);
  Device dev;
  const Shape s{b, h, t, dh}, packed3{t, b, 3 * h * dh}, packed1{t, b, h * dh};
  const auto qkv = values<T>(packed3.numel(), 31), o = values<T>(s.numel(), 32);
  std::vector<T> q(o.size()), k(o.size()), v(o.size()), merged(o.size());
  HB::split_qkv(hctx, hcv(qkv, packed3), hv(q, s), hv(k, s), hv(v, s));
  HB::merge_heads(hctx, hcv(o, s), hv(merged, packed1));

  auto qkv_d = dev.make(qkv, packed3), o_d = dev.make(o, s);
  auto q_d = dev.zeros<T>(s), k_d = dev.zeros<T>(s), v_d = dev.zeros<T>(s), merged_d = dev.zeros<T>(packed1);
  CB::split_qkv(ctx, qkv_d.cview(), q_d.view(), k_d.view(), v_d.view());
  CHECK(bit_differences(host_of(q_d), q) == 0);
  CHECK(bit_differences(host_of(k_d), k) == 0);
  CHECK(bit_differences(host_of(v_d), v) == 0);
  auto back_d = dev.zeros<T>(packed3);
  CB::merge_qkv(ctx, q_d.cview(), k_d.cview(), v_d.cview(), back_d.view());
  CHECK(bit_differences(host_of(back_d), qkv) == 0);

  CB::merge_heads(ctx, o_d.cview(), merged_d.view());
  CHECK(bit_differences(host_of(merged_d), merged) == 0);
  auto split_d = dev.zeros<T>(s);
  CB::split_heads(ctx, merged_d.cview(), split_d.view());
  CHECK(bit_differences(host_of(split_d), o) == 0);
}

// ---- cross-entropy -------------------------------------------------------------------------------------------------

constexpr i32 ignore = -100;

// A random value r in [-1, 1) as an index in [0, v).
i32 index_in(float r, i64 v) {
  return static_cast<i32>(std::min<i64>(v - 1, static_cast<i64>((r + 1.f) * 0.5f * static_cast<float>(v))));
}

// Targets in [0, v), every 5th ignored.
std::vector<i32> targets_of(i64 n, i64 v, std::uint64_t seed) {
  std::vector<i32> y;
  const auto r = px::test::random_values(n, seed);
  for (i64 i = 0; i < n; ++i) y.push_back(i % 5 == 2 ? ignore : index_in(r[static_cast<std::size_t>(i)], v));
  return y;
}

// Columns [begin, end) of the row-major [n, v] matrix m.
template <class T>
std::vector<T> columns(const std::vector<T>& m, i64 n, i64 v, i64 begin, i64 end) {
  std::vector<T> out;
  for (i64 r = 0; r < n; ++r)
    for (i64 j = begin; j < end; ++j) out.push_back(m[static_cast<std::size_t>(r * v + j)]);
  return out;
}

template <class T>
void compare_cross_entropy(const cu::Context& ctx, i64 n, i64 v) {
  INFO(type_name<T>() << " N " << n << " V " << v);
  const px::host::Context hctx(0);
  Device dev;
  const Shape s{n, v}, sn{n};
  const auto z = values<T>(n * v, 41, 4.f);
  const auto y = targets_of(n, v, 42);
  std::vector<float> losses(static_cast<std::size_t>(n)), lse(losses.size());
  const i64 count = HB::cross_entropy_forward(hctx, hcv(z, s), hcv(y, sn), ignore, hv(losses, sn), hv(lse, sn));
  std::vector<T> dz(z.size());
  HB::cross_entropy_backward(hctx, hcv(z, s), hcv(y, sn), hcv(lse, sn), ignore, 0.5f, hv(dz, s));

  auto z_d = dev.make(z, s);
  auto y_d = dev.make(y, sn);
  auto losses_d = dev.zeros<float>(sn), lse_d = dev.zeros<float>(sn);
  CHECK(CB::cross_entropy_forward(ctx, z_d.cview(), y_d.cview(), ignore, losses_d.view(), lse_d.view()) == count);
  check_close(host_of(losses_d), losses, "cross-entropy losses");
  check_close(host_of(lse_d), lse, "cross-entropy lse");
  CB::cross_entropy_backward(ctx, z_d.cview(), y_d.cview(), lse_d.cview(), ignore, 0.5f, z_d.view());  // in place
  check_close(host_of(z_d), dz, "cross-entropy dlogits");

  // Vocabulary-parallel pieces on two column shards, from the host's global max, sum and target logit.
  const i64 vb = v / 3;
  std::vector<float> gmax(losses.size()), gsum(losses.size(), 0.f), gzy(losses.size(), 0.f);
  std::vector<float> part(losses.size());
  for (auto [begin, end] : {std::pair{i64{0}, vb}, std::pair{vb, v}}) {
    INFO("shard [" << begin << ", " << end << ")");
    const Shape ss{n, end - begin};
    const auto zs = columns(z, n, v, begin, end);
    auto zs_d = dev.make(zs, ss);
    auto out_d = dev.zeros<float>(sn);
    HB::row_max(hctx, hcv(zs, ss), hv(part, sn));
    CB::row_max(ctx, zs_d.cview(), out_d.view());
    CHECK(bit_differences(host_of(out_d), part) == 0);  // a max is exact
    for (std::size_t i = 0; i < part.size(); ++i) gmax[i] = begin == 0 ? part[i] : std::max(gmax[i], part[i]);
  }
  for (auto [begin, end] : {std::pair{i64{0}, vb}, std::pair{vb, v}}) {
    INFO("shard [" << begin << ", " << end << ")");
    const Shape ss{n, end - begin};
    const auto zs = columns(z, n, v, begin, end);
    auto zs_d = dev.make(zs, ss);
    auto gmax_d = dev.make(gmax, sn);
    auto out_d = dev.zeros<float>(sn);
    HB::sum_exp_shifted(hctx, hcv(zs, ss), hcv(gmax, sn), hv(part, sn));
    CB::sum_exp_shifted(ctx, zs_d.cview(), gmax_d.cview(), out_d.view());
    check_close(host_of(out_d), part, "sum_exp_shifted");
    for (std::size_t i = 0; i < part.size(); ++i) gsum[i] += part[i];
    HB::target_logit(hctx, hcv(zs, ss), hcv(y, sn), begin, ignore, hv(part, sn));
    CB::target_logit(ctx, zs_d.cview(), y_d.cview(), begin, ignore, out_d.view());
    CHECK(bit_differences(host_of(out_d), part) == 0);  // a copy
    for (std::size_t i = 0; i < part.size(); ++i) gzy[i] += part[i];

    std::vector<T> dzs(zs.size());
    HB::cross_entropy_backward(hctx, hcv(zs, ss), hcv(y, sn), hcv(lse, sn), ignore, 0.25f, hv(dzs, ss), begin);
    auto lse_host_d = dev.make(lse, sn);
    CB::cross_entropy_backward(ctx, zs_d.cview(), y_d.cview(), lse_host_d.cview(), ignore, 0.25f, zs_d.view(), begin);
    check_close(host_of(zs_d), dzs, "cross_entropy_backward on a shard");
  }
  std::vector<float> closs(losses.size()), clse(losses.size());
  const i64 ccount = HB::cross_entropy_combine(hctx, hcv(gmax, sn), hcv(gsum, sn), hcv(gzy, sn), hcv(y, sn), ignore,
                                               hv(closs, sn), hv(clse, sn));
  auto gmax_d = dev.make(gmax, sn), gsum_d = dev.make(gsum, sn), gzy_d = dev.make(gzy, sn);
  CHECK(CB::cross_entropy_combine(ctx, gmax_d.cview(), gsum_d.cview(), gzy_d.cview(), y_d.cview(), ignore,
                                  losses_d.view(), lse_d.view()) == ccount);
  CHECK(ccount == count);
  check_close(host_of(losses_d), closs, "cross_entropy_combine losses");
  check_close(host_of(lse_d), clse, "cross_entropy_combine lse");
}

// ---- embedding -----------------------------------------------------------------------------------------------------

// n ids in [0, v) with many repeats (a quarter of them the same id).
std::vector<i32> ids_of(i64 n, i64 v, std::uint64_t seed) {
  std::vector<i32> ids;
  const auto r = px::test::random_values(n, seed);
  for (i64 i = 0; i < n; ++i)
    ids.push_back(i % 4 == 1 ? static_cast<i32>(v / 2) : index_in(r[static_cast<std::size_t>(i)], v));
  return ids;
}

template <class T, class G>
void compare_embedding(const cu::Context& ctx, i64 n, i64 v, i64 d) {
  INFO(type_name<T>() << " grads " << type_name<G>() << " N " << n << " V " << v << " D " << d);
  const px::host::Context hctx(0);
  Device dev;
  const Shape sn{n}, so{n, d}, st{v, d};
  const auto ids = ids_of(n, v, 51);
  const auto table = values<T>(v * d, 52), dout = values<T>(n * d, 53);
  auto ids_d = dev.make(ids, sn);
  auto table_d = dev.make(table, st), dout_d = dev.make(dout, so);

  std::vector<T> out(static_cast<std::size_t>(n * d));
  HB::embedding_forward(hctx, hcv(ids, sn), hcv(table, st), hv(out, so));
  auto out_d = dev.zeros<T>(so);
  CB::embedding_forward(ctx, ids_d.cview(), table_d.cview(), out_d.view());
  CHECK(bit_differences(host_of(out_d), out) == 0);

  // Repeated ids are summed in position order in fp32 on both: the same bits.
  auto dtable = values<G>(v * d, 54);
  auto dtable_d = dev.make(dtable, st);
  HB::embedding_backward(hctx, hcv(ids, sn), hcv(dout, so), hv(dtable, st));
  CB::embedding_backward(ctx, ids_d.cview(), dout_d.cview(), dtable_d.view());
  CHECK(bit_differences(host_of(dtable_d), dtable) == 0);

  // A shard: rows [vb, vb + vl) of the table.
  const i64 vb = v / 4, vl = v / 2;
  const Shape ss{vl, d};
  const std::vector<T> shard(table.begin() + vb * d, table.begin() + (vb + vl) * d);
  auto shard_d = dev.make(shard, ss);
  HB::embedding_forward(hctx, hcv(ids, sn), hcv(shard, ss), hv(out, so), vb, v);
  CB::embedding_forward(ctx, ids_d.cview(), shard_d.cview(), out_d.view(), vb, v);
  CHECK(bit_differences(host_of(out_d), out) == 0);
  auto dshard = values<G>(vl * d, 55);
  auto dshard_d = dev.make(dshard, ss);
  HB::embedding_backward(hctx, hcv(ids, sn), hcv(dout, so), hv(dshard, ss), vb);
  CB::embedding_backward(ctx, ids_d.cview(), dout_d.cview(), dshard_d.view(), vb);
  CHECK(bit_differences(host_of(dshard_d), dshard) == 0);
}

// ---- fused GEMM epilogues and residual + LayerNorm -----------------------------------------------------------------

// The stored shape of a GEMM operand that is [rows, cols] after op().
Shape stored_shape(px::Trans t, i64 rows, i64 cols) {
  return t == px::Trans::N ? Shape{rows, cols} : Shape{cols, rows};
}

// gemm_bias_act with every epilogue (bias or not, identity or GELU, pre-activation saved or not), gemm_dgelu and
// gemm_bias_grad on the GPU against the host's. n a multiple of 8 takes cuBLASLt's epilogues (16-bit types); other
// n, and fp32 GELU without TF32, the unfused fallback. `offset` starts every operand that many elements into its
// buffer (misaligned for cuBLASLt's heuristics).
template <class T>
void compare_gemm_epilogue(const cu::Context& ctx, px::Trans ta, px::Trans tb, i64 m, i64 n, i64 k, i64 offset) {
  INFO(type_name<T>() << " A " << (ta == px::Trans::T ? "T" : "N") << " B " << (tb == px::Trans::T ? "T" : "N")
                      << " m " << m << " n " << n << " k " << k << " offset " << offset);
  const px::host::Context hctx(0);
  Device dev;
  const Shape sa = stored_shape(ta, m, k), sb = stored_shape(tb, k, n), sc{m, n}, sn{n};
  const auto a = values<T>(m * k, 81, 2.f), b = values<T>(k * n, 82), bias = values<T>(n, 83);
  // Device buffers with `offset` elements in front; the views start after them.
  auto padded = [&](const std::vector<T>& v) {
    std::vector<T> p(static_cast<std::size_t>(offset), T(0.f));
    p.insert(p.end(), v.begin(), v.end());
    return dev.make(p, Shape{static_cast<i64>(p.size())});
  };
  auto tail = [&](const px::Tensor<T, CMem>& t, Shape s) { return View<T, CMem>(t.data() + offset, s); };
  auto a_d = padded(a), b_d = padded(b), bias_d = padded(bias);
  const std::vector<T> zeros(static_cast<std::size_t>(m * n));
  auto c_d = padded(zeros), pre_d = padded(zeros);
  auto from_device = [&](const px::Tensor<T, CMem>& t) {
    const auto all = host_of(t);
    return std::vector<T>(all.begin() + offset, all.end());
  };
  for (bool with_bias : {false, true})
    for (px::Activation act : {px::Activation::none, px::Activation::gelu})
      for (bool with_pre : {false, true}) {
        INFO("bias " << with_bias << " gelu " << (act == px::Activation::gelu) << " pre " << with_pre);
        std::vector<T> c(static_cast<std::size_t>(m * n)), pre(c.size());
        HB::gemm_bias_act(hctx, ta, tb, hcv(a, sa), hcv(b, sb), with_bias ? hcv(bias, sn) : HCV<T>{}, act, hv(c, sc),
                          with_pre ? hv(pre, sc) : HV<T>{});
        CB::gemm_bias_act(ctx, ta, tb, View<const T, CMem>(tail(a_d, sa)), View<const T, CMem>(tail(b_d, sb)),
                          with_bias ? View<const T, CMem>(tail(bias_d, sn)) : View<const T, CMem>{}, act, tail(c_d, sc),
                          with_pre ? tail(pre_d, sc) : View<T, CMem>{});
        check_close(from_device(c_d), c, "gemm_bias_act C");
        if (with_pre) check_close(from_device(pre_d), pre, "gemm_bias_act pre");
      }

  const auto pre = values<T>(m * n, 84, 3.f);
  auto pre_in = padded(pre);
  std::vector<T> dg(static_cast<std::size_t>(m * n));
  HB::gemm_dgelu(hctx, ta, tb, hcv(a, sa), hcv(b, sb), hcv(pre, sc), hv(dg, sc));
  CB::gemm_dgelu(ctx, ta, tb, View<const T, CMem>(tail(a_d, sa)), View<const T, CMem>(tail(b_d, sb)),
                 View<const T, CMem>(tail(pre_in, sc)), tail(c_d, sc));
  check_close(from_device(c_d), dg, "gemm_dgelu C");
}

// dW [m, n] += dY^T X with db [m] += column sums of dY [k, m]: BGRADB on the GPU, gemm + bias_grad on the host.
template <class T, class G>
void compare_gemm_bias_grad(const cu::Context& ctx, px::Trans tb, i64 m, i64 n, i64 k, float beta) {
  INFO(type_name<T>() << " grads " << type_name<G>() << " B " << (tb == px::Trans::T ? "T" : "N") << " m " << m
                      << " n " << n << " k " << k << " beta " << beta);
  const px::host::Context hctx(0);
  Device dev;
  const Shape sa{k, m}, sb = stored_shape(tb, k, n), sc{m, n}, sm{m};
  const auto a = values<T>(k * m, 85), b = values<T>(k * n, 86);
  auto c = values<T>(m * n, 87);
  auto db = values<G>(m, 88);
  auto a_d = dev.make(a, sa), b_d = dev.make(b, sb), c_d = dev.make(c, sc);
  auto db_d = dev.make(db, sm);
  HB::gemm_bias_grad(hctx, px::Trans::T, tb, 1.f, hcv(a, sa), hcv(b, sb), beta, hv(c, sc), hv(db, sm));
  CB::gemm_bias_grad(ctx, px::Trans::T, tb, 1.f, a_d.cview(), b_d.cview(), beta, c_d.view(), db_d.view());
  check_close(host_of(c_d), c, "gemm_bias_grad dW");
  check_close(host_of(db_d), db, "gemm_bias_grad db");
}

template <class T>
void compare_add_layernorm(const cu::Context& ctx, i64 n, i64 d) {
  INFO(type_name<T>() << " N " << n << " D " << d);
  const px::host::Context hctx(0);
  Device dev;
  const Shape s{n, d}, sd{d}, sn{n};
  const auto x = values<T>(n * d, 91, 3.f), r = values<T>(n * d, 92), gamma = values<T>(d, 93),
             beta = values<T>(d, 94), dy = values<T>(n * d, 95), dres = values<T>(n * d, 96);
  std::vector<T> sum(x.size()), y(x.size()), dx(x.size());
  std::vector<float> mean(static_cast<std::size_t>(n)), rstd(mean.size());
  HB::add_layernorm_forward(hctx, hcv(x, s), hcv(r, s), hcv(gamma, sd), hcv(beta, sd), 1e-5f, hv(sum, s), hv(y, s),
                            hv(mean, sn), hv(rstd, sn));
  HB::add_layernorm_backward(hctx, hcv(dy, s), hcv(sum, s), hcv(gamma, sd), hcv(mean, sn), hcv(rstd, sn),
                             hcv(dres, s), hv(dx, s));
  auto x_d = dev.make(x, s), r_d = dev.make(r, s), gamma_d = dev.make(gamma, sd), beta_d = dev.make(beta, sd);
  auto dy_d = dev.make(dy, s), dres_d = dev.make(dres, s);
  auto sum_d = dev.zeros<T>(s), y_d = dev.zeros<T>(s), dx_d = dev.zeros<T>(s);
  auto mean_d = dev.zeros<float>(sn), rstd_d = dev.zeros<float>(sn);
  CB::add_layernorm_forward(ctx, x_d.cview(), r_d.cview(), gamma_d.cview(), beta_d.cview(), 1e-5f, sum_d.view(),
                            y_d.view(), mean_d.view(), rstd_d.view());
  CHECK(bit_differences(host_of(sum_d), sum) == 0);  // one fp32 add, rounded once
  check_close(host_of(y_d), y, "add_layernorm y");
  check_close(host_of(mean_d), mean, "add_layernorm mean");
  check_close(host_of(rstd_d), rstd, "add_layernorm rstd");
  CB::add_layernorm_backward(ctx, dy_d.cview(), sum_d.cview(), gamma_d.cview(), mean_d.cview(), rstd_d.cview(),
                             dres_d.cview(), dx_d.view());
  const auto dx_got = host_of(dx_d);
  check_close(dx_got, dx, "add_layernorm dx");
  // The same as the unfused LayerNorm on the GPU, and dx may alias dres.
  auto y2_d = dev.zeros<T>(s);
  CB::layernorm_forward(ctx, sum_d.cview(), gamma_d.cview(), beta_d.cview(), 1e-5f, y2_d.view(), mean_d.view(),
                        rstd_d.view());
  CHECK(bit_differences(host_of(y2_d), host_of(y_d)) == 0);
  CB::add_layernorm_backward(ctx, dy_d.cview(), sum_d.cview(), gamma_d.cview(), mean_d.cview(), rstd_d.cview(),
                             dres_d.cview(), dres_d.view());
  CHECK(bit_differences(host_of(dres_d), dx_got) == 0);
}

// ---- modules -------------------------------------------------------------------------------------------------------

using Mesh = px::DeviceMesh<1, 1, px::dynamic>;  // TP = the world size

constexpr i64 seq = 8, batch = 2, dim = 16, heads = 2, hidden = 32, vocab = 24;

// What one rank's modules produced, in a fixed order, as floats.
struct ModuleRun {
  std::vector<std::vector<float>> tensors;
  std::vector<double> losses;

  template <class T, class S>
  void record(View<T, S> v) {
    const auto h = px::to_vector(v);
    tensors.emplace_back(h.begin(), h.end());
  }
  template <class P>
  void record_grads(const P& params) {
    for (auto* p : params) record(p->grad());
  }
};

template <class B, class T>
px::nn::TensorOf<B, T> input(px::Rank<B>& rank, Shape s, std::uint64_t seed) {
  px::nn::TensorOf<B, T> t(rank.allocator(), s, MemoryCategory::activations);
  const auto v = values<T>(s.numel(), seed);
  px::copy_from(t.view(), std::span<const T>(v));
  return t;
}

template <class B>
px::nn::TensorOf<B, i32> int_input(px::Rank<B>& rank, const std::vector<i32>& v, Shape s) {
  px::nn::TensorOf<B, i32> t(rank.allocator(), s, MemoryCategory::activations);
  px::copy_from(t.view(), std::span<const i32>(v));
  return t;
}

// forward, backward_input, backward_weight of a layer on x [x_shape] and a random dy; records y, dx and the grads.
template <class B, class T, class L>
void run_layer(px::Rank<B>& rank, L& layer, Shape x_shape, std::uint64_t seed, ModuleRun& run) {
  typename L::Ctx ctx;
  auto x = input<B, T>(rank, x_shape, seed);
  auto y = layer.forward(ctx, x.cview());
  auto dy = input<B, T>(rank, y.shape(), seed + 1);
  auto dx = layer.backward_input(ctx, dy.cview());
  layer.backward_weight(ctx);
  run.record(y.cview());
  run.record(dx.cview());
  run.record_grads(layer.parameters());
}

// Every nn and tp module once on this rank (TP = the world size), with backend B and storage T. Instantiating it
// for cuda::Backend compiles every kernel call the modules make.
template <class B, class T>
ModuleRun run_modules(px::Rank<B>& rank) {
  namespace nn = px::nn;
  namespace tp = px::tp;
  using LN = nn::LayerNorm<B, T>;
  using Fc = nn::Linear<B, T>;
  using Act = nn::GELU<B, T>;
  Mesh mesh(rank);
  const i64 tpn = mesh.tp_size();
  ModuleRun run;

  nn::Checkpoint<nn::Residual<nn::Sequential<LN, Fc, Act, Fc>>> mlp(
      "mlp", LN(rank, dim, {.name = "ln"}), Fc(rank, dim, hidden, {.name = "fc1"}), Act(rank),
      Fc(rank, hidden, dim, {.name = "fc2"}));
  run_layer<B, T>(rank, mlp, Shape{seq, batch, dim}, 1, run);

  nn::Sequential attn("attn", Fc(rank, dim, 3 * dim, {.name = "qkv"}),
                      nn::CausalAttention<B, T>(rank, heads, dim / heads), Fc(rank, dim, dim, {.name = "proj"}));
  run_layer<B, T>(rank, attn, Shape{seq, batch, dim}, 3, run);

  std::vector<i32> ids = ids_of(seq * batch, vocab, 5), targets = targets_of(seq * batch, vocab, 6);
  const Shape tokens{seq, batch};
  auto ids_t = int_input(rank, ids, tokens), targets_t = int_input(rank, targets, tokens);
  {
    nn::Embedding<B, T> emb(rank, vocab, seq, dim);
    typename nn::Embedding<B, T>::Ctx ctx;
    auto y = emb.forward(ctx, ids_t.cview());
    auto dy = input<B, T>(rank, y.shape(), 7);
    emb.backward_input(ctx, dy.cview());
    emb.backward_weight(ctx);
    run.record(y.cview());
    run.record_grads(emb.parameters());
  }
  {
    nn::CrossEntropyLoss<B, T> ce(rank);
    typename nn::CrossEntropyLoss<B, T>::Ctx ctx;
    auto logits = input<B, T>(rank, Shape{seq, batch, vocab}, 8);
    const nn::LossValue l = ce.forward(ctx, logits.cview(), targets_t.cview());
    auto dz = ce.backward_input(ctx, 1.f / static_cast<float>(l.count));
    ce.backward_weight(ctx);
    run.losses.push_back(l.sum);
    run.losses.push_back(static_cast<double>(l.count));
    run.record(dz.cview());
  }

  tp::ColumnParallelLinear<Mesh, B, T> column(mesh, dim, hidden, {.name = "column"});
  run_layer<B, T>(rank, column, Shape{seq, batch, dim}, 9, run);
  tp::RowParallelLinear<Mesh, B, T> row(mesh, hidden, dim, {.name = "row"});
  run_layer<B, T>(rank, row, Shape{seq, batch, hidden / tpn}, 11, run);
  tp::ParallelMLP<Mesh, B, T> pmlp(mesh, dim, hidden);
  run_layer<B, T>(rank, pmlp, Shape{seq, batch, dim}, 13, run);
  Fc fused(rank, dim, hidden, {.activation = px::Activation::gelu, .name = "fused"});
  run_layer<B, T>(rank, fused, Shape{seq, batch, dim}, 21, run);
  tp::TransformerBlock<Mesh, B, T> block(mesh, dim, heads, {.sequence_parallel = tpn > 1, .name = "block"});
  run_layer<B, T>(rank, block, Shape{seq / tpn, batch, dim}, 23, run);
  tp::ParallelAttention<Mesh, B, T> pattn(mesh, dim, heads);
  run_layer<B, T>(rank, pattn, Shape{seq, batch, dim}, 15, run);
  {
    tp::VocabParallelEmbedding<Mesh, B, T> emb(mesh, vocab, seq, dim);
    typename decltype(emb)::Ctx ctx;
    auto y = emb.forward(ctx, ids_t.cview());
    auto dy = input<B, T>(rank, y.shape(), 17);
    emb.backward_input(ctx, dy.cview());
    emb.backward_weight(ctx);
    run.record(y.cview());
    run.record_grads(emb.parameters());
  }
  {
    tp::VocabParallelCrossEntropy<Mesh, B, T> ce(mesh, vocab);
    typename decltype(ce)::Ctx ctx;
    auto logits = input<B, T>(rank, Shape{seq, batch, vocab / tpn}, 19 + static_cast<std::uint64_t>(mesh.tp_rank()));
    const nn::LossValue l = ce.forward(ctx, logits.cview(), targets_t.cview());
    auto dz = ce.backward_input(ctx, 1.f / static_cast<float>(l.count));
    ce.backward_weight(ctx);
    run.losses.push_back(l.sum);
    run.losses.push_back(static_cast<double>(l.count));
    run.record(dz.cview());
  }
  return run;
}

template <class B, class T>
std::vector<ModuleRun> run_world(int ranks) {
  std::vector<ModuleRun> runs(static_cast<std::size_t>(ranks));
  px::launch<B>(ranks, [&](px::Rank<B>& rank) { runs[static_cast<std::size_t>(rank.id())] = run_modules<B, T>(rank); });
  return runs;
}

template <class T>
void compare_modules(int ranks) {
  INFO(type_name<T>() << ", TP " << ranks);
  const auto want = run_world<HB, T>(ranks), got = run_world<CB, T>(ranks);
  for (int r = 0; r < ranks; ++r) {
    INFO("rank " << r);
    const auto& w = want[static_cast<std::size_t>(r)];
    const auto& g = got[static_cast<std::size_t>(r)];
    REQUIRE(g.tensors.size() == w.tensors.size());
    for (std::size_t i = 0; i < w.tensors.size(); ++i)
      check_close(g.tensors[i], w.tensors[i], rtol<T>, "module tensor #" + std::to_string(i));
    REQUIRE(g.losses.size() == w.losses.size());
    for (std::size_t i = 0; i < w.losses.size(); ++i) CHECK(g.losses[i] == Approx(w.losses[i]).epsilon(rtol<T>));
  }
}

}  // namespace

// --- Without a GPU ----------------------------------------------------------------------------------------------

TEST_CASE("cuda: every nn and tp module compiles for cuda::Backend", "[cuda][modules]") {
  // Taking the addresses instantiates run_modules, so every B:: call of every module is compiled for the CUDA
  // backend in fp32 and bf16; [gpu] below runs them.
  ModuleRun (*f32)(px::Rank<CB>&) = &run_modules<CB, float>;
  ModuleRun (*b16)(px::Rank<CB>&) = &run_modules<CB, bf16>;
  CHECK(f32 != nullptr);
  CHECK(b16 != nullptr);
}

// --- GPU --------------------------------------------------------------------------------------------------------

TEST_CASE("cuda add_bias and bias_grad match the host backend", "[gpu][cuda][elementwise]") {
  if (!gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cu::Context ctx(0);
  for (auto [n, d] : {std::pair{i64{0}, i64{5}}, std::pair{i64{1}, i64{1}}, std::pair{i64{1000}, i64{37}},
                      std::pair{i64{3000}, i64{130}}}) {
    compare_bias<float, float>(ctx, n, d, false);
    compare_bias<bf16, bf16>(ctx, n, d, false);
    compare_bias<bf16, float>(ctx, n, d, false);
  }
  // More rows than 64 per chunk x 1024 chunks, on values whose sums are exact in any order: the same bits.
  compare_bias<float, float>(ctx, 70001, 3, true);
  compare_bias<bf16, float>(ctx, 70001, 3, true);

  const px::host::Context hctx(0);
  Device dev;
  std::vector<float> h(20);
  auto y = dev.make(h, Shape{4, 5});
  auto b4 = dev.make(std::vector<float>(4), Shape{4});
  CHECK(error_of([&] { CB::add_bias(ctx, b4.cview(), y.view()); }) ==
        error_of([&] { HB::add_bias(hctx, hcv(h, Shape{4}), hv(h, Shape{4, 5})); }));
  CHECK(error_of([&] { CB::bias_grad(ctx, y.cview(), b4.view()); }) ==
        error_of([&] { HB::bias_grad(hctx, hcv(h, Shape{4, 5}), hv(h, Shape{4})); }));
  CHECK(error_of([&] { CB::bias_grad(ctx, y.cview().flatten(), b4.view()); }) ==
        error_of([&] { HB::bias_grad(hctx, hcv(h, Shape{20}), hv(h, Shape{4})); }));
}

TEST_CASE("cuda batched sum_squares equals the per-piece loop bitwise and the host", "[gpu][cuda][elementwise]") {
  if (!gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cu::Context ctx(0);
  compare_sum_squares<float>(ctx);
  compare_sum_squares<bf16>(ctx);
}

TEST_CASE("cuda layernorm matches the host backend", "[gpu][cuda][layernorm]") {
  if (!gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cu::Context ctx(0);
  for (auto [n, d] : {std::pair{i64{77}, i64{300}}, std::pair{i64{5}, i64{1024}}, std::pair{i64{1}, i64{1}},
                      std::pair{i64{600}, i64{33}}}) {
    compare_layernorm<float, float>(ctx, n, d);
    compare_layernorm<bf16, bf16>(ctx, n, d);
    compare_layernorm<bf16, float>(ctx, n, d);
  }

  const px::host::Context hctx(0);
  Device dev;
  std::vector<float> h(12);
  auto x = dev.make(h, Shape{3, 4});
  auto g3 = dev.make(std::vector<float>(3), Shape{3});
  auto g4 = dev.make(std::vector<float>(4), Shape{4});
  auto stats = dev.make(std::vector<float>(3), Shape{3});
  CHECK(error_of([&] {
          CB::layernorm_forward(ctx, x.cview(), g3.cview(), g4.cview(), 1e-5f, x.view(), stats.view(), stats.view());
        }) == error_of([&] {
          HB::layernorm_forward(hctx, hcv(h, Shape{3, 4}), hcv(h, Shape{3}), hcv(h, Shape{4}), 1e-5f,
                                hv(h, Shape{3, 4}), hv(h, Shape{3}), hv(h, Shape{3}));
        }));
  CHECK(error_of([&] {
          CB::layernorm_backward<float, float>(ctx, x.cview(), x.cview(), g4.cview(), stats.cview(), stats.cview(), {},
                                               g3.view(), {});
        }) == error_of([&] {
          HB::layernorm_backward<float, float>(hctx, hcv(h, Shape{3, 4}), hcv(h, Shape{3, 4}), hcv(h, Shape{4}),
                                               hcv(h, Shape{3}), hcv(h, Shape{3}), {}, hv(h, Shape{3}), {});
        }));
}

TEST_CASE("cuda gelu matches the host backend", "[gpu][cuda][activation]") {
  if (!gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cu::Context ctx(0);
  const px::host::Context hctx(0);
  auto run = [&]<class T>(T*) {
    INFO(type_name<T>());
    Device dev;
    const Shape s{7, 3, 129};
    const auto x = values<T>(s.numel(), 61, 5.f), dy = values<T>(s.numel(), 62);
    std::vector<T> y(x.size()), dx(x.size());
    HB::gelu_forward(hctx, hcv(x, s), hv(y, s));
    HB::gelu_backward(hctx, hcv(x, s), hcv(dy, s), hv(dx, s));
    auto x_d = dev.make(x, s), y_d = dev.zeros<T>(s), dy_d = dev.make(dy, s), dx_d = dev.zeros<T>(s);
    CB::gelu_forward(ctx, x_d.cview(), y_d.view());
    check_close(host_of(y_d), y, "gelu y");
    CB::gelu_backward(ctx, x_d.cview(), dy_d.cview(), dx_d.view());
    check_close(host_of(dx_d), dx, "gelu dx");
    CB::gelu_backward(ctx, x_d.cview(), dy_d.cview(), dy_d.view());  // dx may alias dy
    CHECK(bit_differences(host_of(dy_d), host_of(dx_d)) == 0);
    CB::gelu_forward(ctx, x_d.cview(), x_d.view());  // y may alias x
    CHECK(bit_differences(host_of(x_d), host_of(y_d)) == 0);
  };
  run(static_cast<float*>(nullptr));
  run(static_cast<bf16*>(nullptr));

  Device dev;
  std::vector<float> h(6);
  auto a = dev.make(h, Shape{2, 3});
  auto b = dev.make(h, Shape{3, 2});
  CHECK(error_of([&] { CB::gelu_forward(ctx, a.cview(), b.view()); }) ==
        error_of([&] { HB::gelu_forward(hctx, hcv(h, Shape{2, 3}), hv(h, Shape{3, 2})); }));
  CHECK(error_of([&] { CB::gelu_backward(ctx, a.cview(), a.cview(), b.view()); }) ==
        error_of([&] { HB::gelu_backward(hctx, hcv(h, Shape{2, 3}), hcv(h, Shape{2, 3}), hv(h, Shape{3, 2})); }));
}

TEST_CASE("cuda fused GEMM epilogues match the host backend", "[gpu][cuda][gemm]") {
  if (!gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cu::Context ctx(0);
  using px::Trans;
  for (Trans ta : {Trans::N, Trans::T})
    for (Trans tb : {Trans::N, Trans::T}) {
      compare_gemm_epilogue<bf16>(ctx, ta, tb, 40, 64, 24, 0);   // cuBLASLt epilogues
      compare_gemm_epilogue<float>(ctx, ta, tb, 40, 64, 24, 0);  // bias through cuBLASLt, GELU unfused (no TF32)
    }
  compare_gemm_epilogue<bf16>(ctx, Trans::N, Trans::T, 33, 30, 17, 0);  // n not a multiple of 8: unfused
  compare_gemm_epilogue<bf16>(ctx, Trans::N, Trans::T, 32, 64, 16, 1);  // misaligned operands
  compare_gemm_epilogue<bf16>(ctx, Trans::N, Trans::T, 1, 8, 1, 0);
  compare_gemm_epilogue<float>(ctx, Trans::N, Trans::N, 3, 5, 0, 0);    // k = 0: the bias (and GELU of it) only
  for (Trans tb : {Trans::N, Trans::T})
    for (float beta : {0.f, 1.f}) {
      compare_gemm_bias_grad<bf16, bf16>(ctx, tb, 48, 32, 64, beta);
      compare_gemm_bias_grad<bf16, float>(ctx, tb, 48, 32, 64, beta);
      compare_gemm_bias_grad<float, float>(ctx, tb, 40, 24, 100, beta);
    }
  compare_gemm_bias_grad<bf16, bf16>(ctx, Trans::N, 5, 3, 7, 1.f);

  // A second call of a planned shape queries nothing and gives the same bits.
  Device dev;
  const Shape sx{64, 32}, sw{96, 32}, sy{64, 96};
  auto x = dev.make(values<bf16>(sx.numel(), 97), sx), w = dev.make(values<bf16>(sw.numel(), 98), sw);
  auto b = dev.make(values<bf16>(96, 99), Shape{96});
  auto y1 = dev.zeros<bf16>(sy), y2 = dev.zeros<bf16>(sy), pre = dev.zeros<bf16>(sy);
  CB::gemm_bias_act(ctx, px::Trans::N, px::Trans::T, x.cview(), w.cview(), b.cview(), px::Activation::gelu, y1.view(),
                    pre.view());
  const std::size_t plans = ctx.lt_plans().size();
  CHECK(plans > 0);
  CB::gemm_bias_act(ctx, px::Trans::N, px::Trans::T, x.cview(), w.cview(), b.cview(), px::Activation::gelu, y2.view(),
                    pre.view());
  CHECK(ctx.lt_plans().size() == plans);
  CHECK(bit_differences(host_of(y1), host_of(y2)) == 0);

  // The plans belong to the context: another one on this thread starts with none and plans for itself; a moved
  // context takes its plans along, and the moved-from one is destroyed cleanly.
  {
    cu::Context other(0);
    CHECK(other.lt_plans().empty());
    auto y3 = dev.zeros<bf16>(sy);
    CB::gemm_bias_act(other, px::Trans::N, px::Trans::T, x.cview(), w.cview(), b.cview(), px::Activation::gelu,
                      y3.view(), pre.view());
    other.synchronize();
    CHECK(other.lt_plans().size() == 1);
    CHECK(ctx.lt_plans().size() == plans);
    CHECK(bit_differences(host_of(y1), host_of(y3)) == 0);
    cu::Context moved(std::move(other));
    CHECK(moved.lt_plans().size() == 1);
  }
  CHECK(ctx.lt_plans().size() == plans);

  // The argument errors are the host's.
  const px::host::Context hctx(0);
  std::vector<float> h(64);
  auto d = dev.make(h, Shape{64});
  auto dv = [&](Shape s) { return View<float, CMem>(d.data(), s); };
  auto hvs = [&](Shape s) { return HV<float>(h.data(), s); };
  const auto gelu = px::Activation::gelu;
  CHECK(error_of([&] {
          CB::gemm_bias_act(ctx, Trans::N, Trans::T, dv({2, 3}), dv({4, 3}), dv({3}), gelu, dv({2, 4}));
        }) == error_of([&] {
          HB::gemm_bias_act(hctx, Trans::N, Trans::T, hvs({2, 3}), hvs({4, 3}), hvs({3}), gelu, hvs({2, 4}));
        }));
  CHECK(error_of([&] { CB::gemm_dgelu(ctx, Trans::N, Trans::N, dv({2, 3}), dv({3, 4}), dv({8}), dv({2, 4})); }) ==
        error_of([&] { HB::gemm_dgelu(hctx, Trans::N, Trans::N, hvs({2, 3}), hvs({3, 4}), hvs({8}), hvs({2, 4})); }));
  CHECK(error_of([&] {
          CB::gemm_bias_grad(ctx, Trans::N, Trans::N, 1.f, dv({2, 3}), dv({3, 4}), 1.f, dv({2, 4}), dv({2}));
        }) == error_of([&] {
          HB::gemm_bias_grad(hctx, Trans::N, Trans::N, 1.f, hvs({2, 3}), hvs({3, 4}), 1.f, hvs({2, 4}), hvs({2}));
        }));
}

TEST_CASE("cuda residual add + layernorm matches the host backend", "[gpu][cuda][layernorm]") {
  if (!gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cu::Context ctx(0);
  for (auto [n, d] : {std::pair{i64{77}, i64{300}}, std::pair{i64{5}, i64{768}}, std::pair{i64{1}, i64{1}}}) {
    compare_add_layernorm<float>(ctx, n, d);
    compare_add_layernorm<bf16>(ctx, n, d);
  }
  const px::host::Context hctx(0);
  Device dev;
  std::vector<float> h(12);
  auto x = dev.make(h, Shape{3, 4});
  auto g4 = dev.make(std::vector<float>(4), Shape{4});
  auto stats = dev.make(std::vector<float>(3), Shape{3});
  const auto flat = x.view().flatten();
  CHECK(error_of([&] {
          CB::add_layernorm_forward(ctx, x.cview(), flat, g4.cview(), g4.cview(), 1e-5f, x.view(), x.view(),
                                    stats.view(), stats.view());
        }) == error_of([&] {
          HB::add_layernorm_forward(hctx, hcv(h, Shape{3, 4}), hcv(h, Shape{12}), hcv(h, Shape{4}), hcv(h, Shape{4}),
                                    1e-5f, hv(h, Shape{3, 4}), hv(h, Shape{3, 4}), hv(h, Shape{3}), hv(h, Shape{3}));
        }));
  CHECK(error_of([&] {
          CB::add_layernorm_backward(ctx, x.cview(), x.cview(), g4.cview(), stats.cview(), stats.cview(), flat,
                                     x.view());
        }) == error_of([&] {
          HB::add_layernorm_backward(hctx, hcv(h, Shape{3, 4}), hcv(h, Shape{3, 4}), hcv(h, Shape{4}),
                                     hcv(h, Shape{3}), hcv(h, Shape{3}), hcv(h, Shape{12}), hv(h, Shape{3, 4}));
        }));
}

TEST_CASE("cuda attention matches the host backend", "[gpu][cuda][attention]") {
  if (!gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cu::Context ctx(0);
  // T not a multiple of the 8-row block or the 32-row tile, head dims from 8 to 256 (over 48 KiB of shared memory).
  for (auto [b, h, t, dh] : {std::tuple{i64{2}, i64{3}, i64{77}, i64{64}}, std::tuple{i64{1}, i64{2}, i64{33}, i64{16}},
                             std::tuple{i64{1}, i64{1}, i64{1}, i64{8}}, std::tuple{i64{2}, i64{1}, i64{40}, i64{100}},
                             std::tuple{i64{1}, i64{1}, i64{70}, i64{256}}}) {
    compare_attention<float>(ctx, b, h, t, dh);
    compare_attention<bf16>(ctx, b, h, t, dh);
  }

  const px::host::Context hctx(0);
  Device dev;
  std::vector<float> hq(2 * 3 * 4), hl(2 * 3);
  auto q = dev.make(hq, Shape{1, 2, 3, 4});
  auto bad = dev.make(hq, Shape{1, 2, 4, 3});
  auto lse = dev.make(hl, Shape{1, 2, 3});
  const float sc = 0.5f;
  CHECK(error_of([&] { CB::attention_forward(ctx, q.cview(), bad.cview(), q.cview(), q.view(), lse.view(), sc); }) ==
        error_of([&] {
          HB::attention_forward(hctx, hcv(hq, Shape{1, 2, 3, 4}), hcv(hq, Shape{1, 2, 4, 3}),
                                hcv(hq, Shape{1, 2, 3, 4}), hv(hq, Shape{1, 2, 3, 4}), hv(hl, Shape{1, 2, 3}), sc);
        }));
  CHECK(error_of([&] {
          CB::attention_backward(ctx, q.cview(), q.cview(), q.cview(), q.cview(), q.cview(), lse.cview(), sc, q.view(),
                                 q.view(), bad.view());
        }) == error_of([&] {
          const Shape s{1, 2, 3, 4};
          HB::attention_backward(hctx, hcv(hq, s), hcv(hq, s), hcv(hq, s), hcv(hq, s), hcv(hq, s),
                                 hcv(hl, Shape{1, 2, 3}), sc, hv(hq, s), hv(hq, s), hv(hq, Shape{1, 2, 4, 3}));
        }));
  auto wide = dev.make(std::vector<float>(257), Shape{1, 1, 1, 257});
  auto lse1 = dev.make(std::vector<float>(1), Shape{1, 1, 1});
  CHECK(error_of([&] {
          CB::attention_forward(ctx, wide.cview(), wide.cview(), wide.cview(), wide.view(), lse1.view(), sc);
        }) == "attention_forward: head dim 257 exceeds 256, the most the CUDA attention kernels take");
}

TEST_CASE("cuda head layout copies match the host backend", "[gpu][cuda][attention]") {
  if (!gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cu::Context ctx(0);
  compare_head_layout<float>(ctx, 2, 3, 5, 4);
  compare_head_layout<bf16>(ctx, 3, 2, 7, 33);
  compare_head_layout<float>(ctx, 1, 1, 1, 1);
  compare_head_layout<bf16>(ctx, 2, 12, 64, 64);  // GPT-2's heads: 16-byte chunks
  compare_head_layout<bf16>(ctx, 2, 4, 9, 128);

  const px::host::Context hctx(0);
  Device dev;
  std::vector<float> h(2 * 3 * 5 * 4 * 3);
  auto heads = dev.make(std::vector<float>(120), Shape{2, 3, 5, 4});
  auto packed = dev.make(std::vector<float>(350), Shape{5, 2, 35});
  CHECK(error_of([&] { CB::split_qkv(ctx, packed.cview(), heads.view(), heads.view(), heads.view()); }) ==
        error_of([&] {
          HB::split_qkv(hctx, hcv(h, Shape{5, 2, 35}), hv(h, Shape{2, 3, 5, 4}), hv(h, Shape{2, 3, 5, 4}),
                        hv(h, Shape{2, 3, 5, 4}));
        }));
  CHECK(error_of([&] { CB::merge_heads(ctx, heads.cview(), packed.view()); }) ==
        error_of([&] { HB::merge_heads(hctx, hcv(h, Shape{2, 3, 5, 4}), hv(h, Shape{5, 2, 35})); }));
}

TEST_CASE("cuda cross-entropy matches the host backend", "[gpu][cuda][cross_entropy]") {
  if (!gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cu::Context ctx(0);
  for (auto [n, v] : {std::pair{i64{37}, i64{1000}}, std::pair{i64{300}, i64{3}}, std::pair{i64{6}, i64{50257}}}) {
    compare_cross_entropy<float>(ctx, n, v);
    compare_cross_entropy<bf16>(ctx, n, v);
  }

  // Invalid targets: the first one is named, as on the host.
  const px::host::Context hctx(0);
  Device dev;
  const i64 n = 6, v = 10;
  const Shape s{n, v}, sn{n};
  const auto z = values<float>(n * v, 71);
  std::vector<float> out(static_cast<std::size_t>(n)), dz(z.size());
  auto z_d = dev.make(z, s), out_d = dev.zeros<float>(sn), out2_d = dev.zeros<float>(sn);
  for (const std::vector<i32>& y : {std::vector<i32>{1, 2, ignore, 10, 4, 11}, std::vector<i32>{0, -3, 1, -1, 2, 3}}) {
    INFO("targets " << y[1] << ", " << y[3]);
    auto y_d = dev.make(y, sn);
    const auto device_forward = [&] {
      (void)CB::cross_entropy_forward(ctx, z_d.cview(), y_d.cview(), ignore, out_d.view(), out2_d.view());
    };
    const auto host_forward = [&] {
      (void)HB::cross_entropy_forward(hctx, hcv(z, s), hcv(y, sn), ignore, hv(out, sn), hv(out, sn));
    };
    CHECK(error_of(device_forward) == error_of(host_forward));
    if (y[1] >= 0) continue;  // the backward and target_logit check the lower bound only
    const auto device_backward = [&] {
      CB::cross_entropy_backward(ctx, z_d.cview(), y_d.cview(), out_d.cview(), ignore, 1.f, z_d.view());
    };
    const auto host_backward = [&] {
      HB::cross_entropy_backward(hctx, hcv(z, s), hcv(y, sn), hcv(out, sn), ignore, 1.f, hv(dz, s));
    };
    CHECK(error_of(device_backward) == error_of(host_backward));
    CHECK(error_of([&] { CB::target_logit(ctx, z_d.cview(), y_d.cview(), 0, ignore, out_d.view()); }) ==
          error_of([&] { HB::target_logit(hctx, hcv(z, s), hcv(y, sn), 0, ignore, hv(out, sn)); }));
  }
  auto out5 = dev.zeros<float>(Shape{5});
  CHECK(error_of([&] { CB::row_max(ctx, z_d.cview(), out5.view()); }) ==
        error_of([&] { HB::row_max(hctx, hcv(z, s), hv(out, Shape{5})); }));
}

TEST_CASE("cuda embedding matches the host backend", "[gpu][cuda][embedding]") {
  if (!gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cu::Context ctx(0);
  compare_embedding<float, float>(ctx, 200, 50, 33);
  compare_embedding<bf16, bf16>(ctx, 200, 50, 33);
  compare_embedding<bf16, float>(ctx, 1000, 8, 300);
  compare_embedding<float, float>(ctx, 5, 4, 1);

  const px::host::Context hctx(0);
  Device dev;
  // Position ids on the stream, and a stream-ordered copy of them: equal to the host's.
  for (const auto& [n, first, batch] : {std::tuple<i64, i64, i64>{12, 0, 3}, {4096 * 8, 7, 8}, {5, 2, 1}}) {
    std::vector<i32> want(static_cast<std::size_t>(n));
    HB::position_ids(hctx, hv(want, Shape{n}), first, batch);
    auto got = dev.zeros<i32>(Shape{n}), copied = dev.zeros<i32>(Shape{n});
    CB::position_ids(ctx, got.view(), first, batch);
    CB::copy(ctx, got.cview(), copied.view());
    CHECK(px::to_vector(got.cview()) == want);
    CHECK(px::to_vector(copied.cview()) == want);
  }
  {
    auto ids12 = dev.zeros<i32>(Shape{12});
    CHECK(error_of([&] { CB::position_ids(ctx, ids12.view(), 0, 5); }) ==
          error_of([&] {
            std::vector<i32> h(12);
            HB::position_ids(hctx, hv(h, Shape{12}), 0, 5);
          }));
  }
  const std::vector<i32> ids{3, 1, 12, 0, -1};
  const std::vector<float> table(10 * 4);
  std::vector<float> out(5 * 4);
  auto ids_d = dev.make(ids, Shape{5});
  auto table_d = dev.make(table, Shape{10, 4}), out_d = dev.zeros<float>(Shape{5, 4});
  CHECK(error_of([&] { CB::embedding_forward(ctx, ids_d.cview(), table_d.cview(), out_d.view()); }) ==
        error_of([&] {
          HB::embedding_forward(hctx, hcv(ids, Shape{5}), hcv(table, Shape{10, 4}), hv(out, Shape{5, 4}));
        }));
  CHECK(error_of([&] { CB::embedding_forward(ctx, ids_d.cview(), table_d.cview(), out_d.view(), 5, 13); }) ==
        error_of([&] {
          HB::embedding_forward(hctx, hcv(ids, Shape{5}), hcv(table, Shape{10, 4}), hv(out, Shape{5, 4}), 5, 13);
        }));
  CHECK(error_of([&] { CB::embedding_forward(ctx, ids_d.cview(), table_d.cview(), out_d.view(), 0, 20); }) ==
        error_of([&] {
          HB::embedding_forward(hctx, hcv(ids, Shape{5}), hcv(table, Shape{10, 4}), hv(out, Shape{5, 4}), 0, 20);
        }));
  CHECK(error_of([&] { CB::embedding_backward(ctx, ids_d.cview(), out_d.cview(), table_d.view().flatten()); }) ==
        error_of([&] {
          std::vector<float> g(40);
          HB::embedding_backward(hctx, hcv(ids, Shape{5}), hcv(out, Shape{5, 4}), hv(g, Shape{40}));
        }));
}

TEST_CASE("cuda: every nn and tp module on cuda::Backend matches host::Backend", "[gpu][cuda][modules]") {
  if (!gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  for (int ranks : {1, 2}) {  // TP 2: two rank threads sharing the GPU
    compare_modules<float>(ranks);
    compare_modules<bf16>(ranks);
  }
}
