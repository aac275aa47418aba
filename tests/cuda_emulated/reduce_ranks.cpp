// The thread transport's reduction kernel over ranks sharing a GPU (detail/reduce_ranks_kernels.cuh), run by the
// SIMT emulator with the launch of SpaceChannel<cuda::Memory>::reduce_to, against the host transport's
// reduce_buffers (comm/detail/host_reduce.hpp), which it promises to equal bitwise: every ReduceOp on every element
// type, NaNs and signed zeros in the floats (max and min pick as std::max and std::min), one rank to the most a
// launch takes, several outputs, and outputs aliasing the inputs (an all-reduce in place).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include <parallax/backend/cuda/detail/reduce_ranks_kernels.cuh>
#include <parallax/comm/detail/host_reduce.hpp>
#include <parallax/core/bf16.hpp>
#include <parallax/core/fp16.hpp>

#include "support.hpp"

namespace {

namespace px = parallax;
namespace cd = parallax::cuda::detail;
namespace simt = parallax::simt;
using px::ReduceOp;
using px::test::emulated::Buffer;
using px::test::emulated::sm_count;
using i64 = std::int64_t;

//! Rank r's buffer: integers in [-1000, 1000), or floats in [-4, 4), those of ranks 0 to 2 with a NaN, infinities
//! and signed zeros at positions that differ between them (the other ranks' leave most sums finite).
template <class T>
std::vector<T> rank_values(i64 count, int r) {
  const auto seed = static_cast<std::uint64_t>(40 + r);
  std::vector<T> x;
  if constexpr (std::is_integral_v<T>) {
    for (const float v : px::test::random_values(count, seed, 1000.f)) x.push_back(static_cast<T>(v));
  } else {
    for (const float v : px::test::random_values(count, seed, 4.f)) x.push_back(T(v));
    const float specials[] = {NAN, INFINITY, -INFINITY, 0.f, -0.f};
    for (i64 i = r; i < count && r < 3; i += 7) x[static_cast<std::size_t>(i)] = T(specials[(i + r) % 5]);
  }
  return x;
}

//! Whether two buffers agree bit for bit, except that a NaN matches any NaN: which NaN an addition of two yields
//! depends on the order of its operands in the instruction (which the host compiler may swap), and a GPU's are
//! canonical.
template <class T>
bool same_results(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if constexpr (!std::is_integral_v<T>)
      if (std::isnan(static_cast<double>(a[i])) && std::isnan(static_cast<double>(b[i]))) continue;
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) return false;
  }
  return true;
}

//! An output buffer before the kernel writes it: NaN, or for integers their largest value.
template <class T>
Buffer<T> unwritten(std::size_t n) {
  if constexpr (std::is_integral_v<T>)
    return Buffer<T>(std::vector<T>(n, std::numeric_limits<T>::max()));
  else
    return Buffer<T>::output(n);
}

//! n ranks' buffers reduced into n_out outputs; in place, output k is rank k's buffer (n_out <= n).
template <class T>
void check_reduce_ranks(int n, int n_out, bool in_place, i64 count, ReduceOp op) {
  INFO(n << " ranks, " << n_out << " outputs" << (in_place ? " in place" : "") << ", " << count << " elements, "
         << px::name(op));
  std::vector<std::vector<T>> inputs;
  for (int r = 0; r < n; ++r) inputs.push_back(rank_values<T>(count, r));
  std::vector<T> want(static_cast<std::size_t>(count));
  std::vector<const T*> in;
  for (const auto& x : inputs) in.push_back(x.data());
  px::detail::reduce_buffers(want.data(), in.data(), n, count, op);

  std::vector<Buffer<T>> ranks, outs;
  for (const auto& x : inputs) ranks.emplace_back(x);
  if (!in_place)
    for (int k = 0; k < n_out; ++k) outs.push_back(unwritten<T>(want.size()));
  std::vector<Buffer<T>>& results = in_place ? ranks : outs;
  cd::RankPointers p{};
  for (int r = 0; r < n; ++r) p.in[r] = ranks[static_cast<std::size_t>(r)].data();
  for (int k = 0; k < n_out; ++k) p.out[k] = results[static_cast<std::size_t>(k)].data();
  simt::launch("reduce_ranks", cd::reduce_ranks_kernel<T>, dim3(cd::reduce_ranks_blocks(count, sm_count)),
               dim3(cd::reduce_ranks_threads), 0, p, n_out, n, count, op);

  for (int k = 0; k < n_out; ++k) {
    INFO("output " << k);
    CHECK(same_results(results[static_cast<std::size_t>(k)].values(), want));
  }
  for (int r = in_place ? n_out : n; r < n; ++r) {
    INFO("rank " << r << "'s buffer, an input only");
    CHECK(same_results(ranks[static_cast<std::size_t>(r)].values(), inputs[static_cast<std::size_t>(r)]));
  }
  CHECK(std::all_of(ranks.begin(), ranks.end(), [](const Buffer<T>& b) { return b.guards_intact(); }));
  CHECK(std::all_of(outs.begin(), outs.end(), [](const Buffer<T>& b) { return b.guards_intact(); }));
}

}  // namespace

TEMPLATE_TEST_CASE("emulated CUDA rank reduction equals the host transport's reduce_buffers", "[simt][reduce_ranks]",
                   float, px::bf16, px::fp16, double, std::int32_t, std::int64_t) {
  for (const ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max, ReduceOp::min}) {
    check_reduce_ranks<TestType>(1, 1, false, 1, op);
    check_reduce_ranks<TestType>(3, 1, false, 37, op);
    check_reduce_ranks<TestType>(5, 2, false, 300, op);
    check_reduce_ranks<TestType>(3, 2, true, 300, op);  // the last rank's buffer is an input only
    // More elements than the 32 blocks' threads of the emulated GPU: the grid-stride loop wraps.
    check_reduce_ranks<TestType>(4, 4, true, 9000, op);
    check_reduce_ranks<TestType>(cd::max_reduce_ranks, cd::max_reduce_ranks, true, 40, op);
  }
}
