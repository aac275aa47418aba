// Tests for the head-layout kernels of parallax/backend/host/attention.hpp: split_qkv / merge_qkv and
// merge_heads / split_heads move elements between [T, B, S * H * Dh] and [B, H, T, Dh] exactly.
#include <parallax/backend/host/backend.hpp>

#include <catch2/catch.hpp>

#include "../support/support.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace px = parallax;
using px::bf16;
using px::fp16;
using px::Shape;
using Backend = px::host::Backend;
using Mem = px::host::Memory;
using px::test::bits_of;
using px::test::error_of;
using Catch::Matchers::Contains;
using i64 = std::int64_t;

namespace {

const px::host::Context ctx;

// Sizes with every dimension distinct, so a swapped index cannot go unnoticed.
constexpr i64 nt = 5, nb = 2, nh = 3, dh = 4;
const Shape heads_shape{nb, nh, nt, dh};

using parallax::test::cview;
using parallax::test::view;

// The value an element at flat index i holds: i mod 251, exact in every T (bf16 holds integers up to 256 exactly).
float tag(i64 i) { return static_cast<float>(i % 251); }

template <class T>
std::vector<T> tagged(i64 n) {
  std::vector<T> v;
  for (i64 i = 0; i < n; ++i) v.push_back(T(tag(i)));
  return v;
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (bits_of(a[i]) != bits_of(b[i])) return false;
  return true;
}

// Flat indices of [T, B, S * H * Dh] and [B, H, T, Dh].
i64 packed_at(i64 t, i64 b, i64 s, i64 h, i64 i, i64 sections) {
  return ((t * nb + b) * sections + s) * nh * dh + h * dh + i;
}
i64 head_at(i64 b, i64 h, i64 t, i64 i) { return ((b * nh + h) * nt + t) * dh + i; }

}  // namespace

TEMPLATE_TEST_CASE("split_qkv places q | k | v of each token in head-major [B, H, T, Dh]; merge_qkv inverts it",
                   "[backend][host][attention][layout]", float, bf16, fp16) {
  using T = TestType;
  const i64 n = heads_shape.numel();
  const Shape packed{nt, nb, 3 * nh * dh};
  auto qkv = tagged<T>(3 * n);
  std::vector<T> q(n), k(n), v(n);
  Backend::split_qkv(ctx, cview(qkv, packed), view(q, heads_shape), view(k, heads_shape), view(v, heads_shape));

  // Every element, against the index formula (values are tags of their packed index).
  const std::vector<T>* out[] = {&q, &k, &v};
  bool all = true;
  for (i64 t = 0; t < nt; ++t)
    for (i64 b = 0; b < nb; ++b)
      for (i64 s = 0; s < 3; ++s)
        for (i64 h = 0; h < nh; ++h)
          for (i64 i = 0; i < dh; ++i)
            all = all && float((*out[s])[head_at(b, h, t, i)]) == tag(packed_at(t, b, s, h, i, 3));
  CHECK(all);
  // A few positions written out: q[0,0,0,0] = qkv[0,0,0]; k[b=1,h=2,t=3,i=1] = qkv[3,1,HDh + 2Dh + 1];
  // v[b=0,h=1,t=4,i=3] = qkv[4,0,2HDh + Dh + 3].
  CHECK(float(q[0]) == 0.f);
  CHECK(float(k[head_at(1, 2, 3, 1)]) == tag((3 * nb + 1) * 3 * nh * dh + nh * dh + 2 * dh + 1));
  CHECK(float(v[head_at(0, 1, 4, 3)]) == tag((4 * nb + 0) * 3 * nh * dh + 2 * nh * dh + dh + 3));

  std::vector<T> back(3 * n, T(-1.f));
  Backend::merge_qkv(ctx, cview(q, heads_shape), cview(k, heads_shape), cview(v, heads_shape), view(back, packed));
  CHECK(same_bits(back, qkv));
}

TEMPLATE_TEST_CASE("merge_heads joins [B, H, T, Dh] into [T, B, H * Dh]; split_heads inverts it",
                   "[backend][host][attention][layout]", float, bf16, fp16) {
  using T = TestType;
  const i64 n = heads_shape.numel();
  const Shape packed{nt, nb, nh * dh};
  auto o = tagged<T>(n);
  std::vector<T> out(n);
  Backend::merge_heads(ctx, cview(o, heads_shape), view(out, packed));

  bool all = true;
  for (i64 t = 0; t < nt; ++t)
    for (i64 b = 0; b < nb; ++b)
      for (i64 h = 0; h < nh; ++h)
        for (i64 i = 0; i < dh; ++i) all = all && float(out[packed_at(t, b, 0, h, i, 1)]) == tag(head_at(b, h, t, i));
  CHECK(all);
  // out[t=2, b=1, h=1, i=0] = o[1, 1, 2, 0]; the last element of out is the last of head H-1 at t = T-1, b = B-1.
  CHECK(float(out[(2 * nb + 1) * nh * dh + 1 * dh + 0]) == tag(((1 * nh + 1) * nt + 2) * dh));
  CHECK(float(out.back()) == tag(n - 1));

  std::vector<T> back(n, T(-1.f));
  Backend::split_heads(ctx, cview(out, packed), view(back, heads_shape));
  CHECK(same_bits(back, o));
}

TEST_CASE("head-layout kernels handle a single head and an empty batch", "[backend][host][attention][layout]") {
  // One head and one batch entry: [T, 1, Dh] and [1, 1, T, Dh] hold the same elements in the same order.
  auto o = tagged<float>(3 * 2);
  std::vector<float> out(6);
  Backend::merge_heads(ctx, cview(o, {1, 1, 3, 2}), view(out, {3, 1, 2}));
  CHECK(out == o);
  // An empty batch is a no-op.
  std::vector<float> none;
  Backend::split_qkv(ctx, cview(none, {4, 0, 6}), view(none, {0, 1, 4, 2}), view(none, {0, 1, 4, 2}),
                     view(none, {0, 1, 4, 2}));
  SUCCEED();
}

TEST_CASE("head-layout kernels reject mismatched shapes, naming the kernel and the shapes",
          "[backend][host][attention][layout][errors]") {
  std::vector<float> buf(3 * heads_shape.numel());
  auto h = [&](Shape s) { return view(buf, s); };
  auto c = [&](Shape s) { return cview(buf, s); };
  const Shape hs = heads_shape;
  std::vector<std::string> msgs;
  // qkv's last dimension is not 3 * H * Dh.
  msgs.push_back(error_of([&] { Backend::split_qkv(ctx, c({nt, nb, 2 * nh * dh}), h(hs), h(hs), h(hs)); }));
  // k differs from q.
  const Shape packed{nt, nb, 3 * nh * dh};
  msgs.push_back(error_of([&] { Backend::split_qkv(ctx, c(packed), h(hs), h({nb, nh, nt, 2}), h(hs)); }));
  // q is not rank 4.
  msgs.push_back(error_of([&] { Backend::merge_qkv(ctx, c({nb, nh, nt * dh}), c(hs), c(hs), h(packed)); }));
  // T and B swapped in the packed tensor.
  msgs.push_back(error_of([&] { Backend::merge_heads(ctx, c(hs), h({nb, nt, nh * dh})); }));
  msgs.push_back(error_of([&] { Backend::split_heads(ctx, c({nt, nb, nh * dh + 1}), h(hs)); }));
  REQUIRE(msgs.size() == 5);
  CHECK_THAT(msgs[0], Contains("split_qkv: qkv has shape [5, 2, 24], expected [5, 2, 36]"));
  CHECK_THAT(msgs[1], Contains("split_qkv: k has shape [2, 3, 5, 2], expected [2, 3, 5, 4]"));
  CHECK_THAT(msgs[2], Contains("merge_qkv: dq has shape [2, 3, 20], expected [B, H, T, Dh]"));
  CHECK_THAT(msgs[3], Contains("merge_heads: out has shape [2, 5, 12], expected [5, 2, 12]"));
  CHECK_THAT(msgs[4], Contains("split_heads: dout has shape [5, 2, 13], expected [5, 2, 12]"));
}
