// tests/tp/parity.hpp — helpers of the tensor-parallel tests: test data, host-side slicing of the reference
// tensors into what each rank holds, and the comparison of gathered results with the single-rank reference.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include <parallax/backend/host/backend.hpp>
#include <parallax/comm/launch.hpp>
#include <parallax/core/bf16.hpp>
#include <parallax/mesh/device_mesh.hpp>
#include <parallax/nn/parameter.hpp>
#include <parallax/tp/gather.hpp>

#include "../support/gradcheck.hpp"

namespace parallax::test::tp {

using B = host::Backend;
using Mem = host::Memory;
//! TP from the world size.
using Mesh = DeviceMesh<1, 1, dynamic>;
template <class T>
using CView = View<const T, Mem>;

//! Sequence length and batch of the parity tests: T divides by every TP tested (1, 2, 3, 4).
inline constexpr std::int64_t seq = 12, batch = 2;

//! Tolerance of a result against the single-rank reference: max |a - b| <= tol * max |b|.
template <class T>
inline constexpr double tolerance = std::is_same_v<T, float> ? 1e-5 : 1e-2;

//! Deterministic values in [-1, 1) stored as T.
template <class T>
std::vector<T> values(std::int64_t n, std::uint64_t seed) {
  std::vector<T> out;
  for (float v : random_values(n, seed)) out.push_back(T(v));
  return out;
}

//! A tensor's elements as floats.
template <class T>
std::vector<float> floats(CView<T> v) {
  std::vector<float> out;
  for (std::int64_t i = 0; i < v.numel(); ++i) out.push_back(float(v.data()[i]));
  return out;
}
template <class T>
std::vector<float> floats(const std::vector<T>& v) {
  return floats(CView<T>(v.data(), Shape{static_cast<std::int64_t>(v.size())}));
}

//! Columns [begin, begin + width) of the row-major matrix `m` with `cols` columns.
template <class V>
V columns(const V& m, std::int64_t cols, std::int64_t begin, std::int64_t width) {
  V out;
  for (std::int64_t r = 0; r < static_cast<std::int64_t>(m.size()) / cols; ++r)
    out.insert(out.end(), m.begin() + r * cols + begin, m.begin() + r * cols + begin + width);
  return out;
}

//! Rows [begin, begin + count) of `m`, whose rows hold `len` elements.
template <class V>
V rows(const V& m, std::int64_t len, std::int64_t begin, std::int64_t count) {
  return V(m.begin() + begin * len, m.begin() + (begin + count) * len);
}

//! The matrices `pieces` [N, w_i] side by side: [N, sum w_i].
template <class V>
V join_columns(const std::vector<V>& pieces, std::int64_t n) {
  V out;
  for (std::int64_t r = 0; r < n; ++r)
    for (const auto& p : pieces) {
      const auto w = static_cast<std::int64_t>(p.size()) / n;
      out.insert(out.end(), p.begin() + r * w, p.begin() + (r + 1) * w);
    }
  return out;
}

//! The columns that TP rank `index` of `parts` holds of the matrix `m` with `cols` columns made of `blocks`
//! equal blocks: its piece of every block, side by side (what a column-parallel layer's output holds).
template <class V>
V shard_columns(const V& m, std::int64_t cols, int blocks, int parts, int index) {
  const std::int64_t piece = cols / blocks / parts;
  std::vector<V> pieces;
  for (int b = 0; b < blocks; ++b) pieces.push_back(columns(m, cols, b * (cols / blocks) + index * piece, piece));
  return join_columns(pieces, static_cast<std::int64_t>(m.size()) / cols);
}

//! The vectors `pieces` one after the other.
inline std::vector<float> join_rows(const std::vector<std::vector<float>>& pieces) {
  std::vector<float> out;
  for (const auto& p : pieces) out.insert(out.end(), p.begin(), p.end());
  return out;
}

//! Sets every parameter to its slice of a global tensor drawn from its name (uniform in [-1, 1)), so biases
//! are non-zero and a sharded parameter equals the slice of the reference's by its spec.
template <class T>
void test_init(const nn::ParameterList<T, Mem>& params) {
  for (auto* p : params) init_shard(p->value(), p->spec(), init::uniform(-1.f, 1.f, nn::seed_for(1234, p->name())));
}

//! What one rank (or the reference) produced: outputs and input gradients per microbatch, and the
//! gathered gradient (and value) of every parameter, by name.
struct Record {
  std::vector<std::vector<float>> y, dx;
  std::vector<std::string> names;
  std::vector<std::vector<float>> grads, values;
};

//! Appends the gathered gradient and value of every parameter (collective over each parameter's group).
template <class T>
void record_parameters(Mesh& mesh, const nn::ParameterList<T, Mem>& params, Record& rec) {
  for (auto* p : params) {
    rec.names.push_back(p->name());
    rec.grads.push_back(floats(parallax::tp::gather_gradient(mesh, *p)));
    rec.values.push_back(floats(parallax::tp::gather_parameter(mesh, *p)));
  }
}

//! max |a - b| / max |b|, or infinity when the sizes differ.
inline double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(double(a[i]) - double(b[i])));
    scale = std::max(scale, std::abs(double(b[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

//! Checks `got` against `want` within the tolerance of T.
template <class T>
void check_close(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  INFO(what << ": " << got.size() << " vs " << want.size() << " elements");
  CHECK(relative_error(got, want) <= tolerance<T>);
}

//! Checks the ranks' input gradients of microbatch `mb` against `want`: under sequence parallelism their
//! sequence shards one after the other, otherwise every rank's (summed over TP) gradient.
template <class T>
void check_dx(const std::vector<Record>& ranks, const std::vector<float>& want, bool sp, std::size_t mb = 0) {
  std::vector<std::vector<float>> shards;
  for (const auto& rec : ranks) shards.push_back(rec.dx[mb]);
  if (sp)
    check_close<T>(join_rows(shards), want, "dx (sequence shards)");
  else
    for (const auto& dx : shards) check_close<T>(dx, want, "dx");
}

//! Checks every rank's gathered parameters (names, values and gradients) against the reference's.
template <class T>
void check_parameters(const std::vector<Record>& ranks, const Record& ref) {
  for (std::size_t r = 0; r < ranks.size(); ++r) {
    INFO("rank " << r);
    REQUIRE(ranks[r].names == ref.names);
    for (std::size_t i = 0; i < ref.names.size(); ++i) {
      CHECK(ranks[r].values[i] == ref.values[i]);
      check_close<T>(ranks[r].grads[i], ref.grads[i], ref.names[i] + " gradient");
    }
  }
}

//! The message of the `parallax::Error` that `f` throws, or "(no error)"; safe on rank threads.
template <class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace parallax::test::tp
