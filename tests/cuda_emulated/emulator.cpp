// The SIMT emulator itself: launch geometry, barriers, shuffles, shared memory, and the faults it reports instead
// of hanging. The reductions tested are the backend's own (detail/block_reduce.cuh), compiled by the host compiler.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include <parallax/backend/cuda/detail/block_reduce.cuh>
#include <parallax/backend/cuda/detail/grid.cuh>

#include "simt.hpp"

namespace {

namespace cd = parallax::cuda::detail;
namespace simt = parallax::simt;

__global__ void iota_kernel(std::int64_t* out, std::int64_t n) {
  for (std::int64_t i = cd::grid_index(); i < n; i += cd::grid_stride()) out[i] = i;
}

__global__ void coordinates_kernel(unsigned* out) {
  const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  out[block * blockDim.x * blockDim.y * blockDim.z + thread] = block * 10000 + thread;
}

template <int Threads>
__global__ void block_sum_kernel(const float* x, float* out) {
  const float total = cd::block_all_reduce<Threads>(x[blockIdx.x * Threads + threadIdx.x], cd::SumOp{});
  out[blockIdx.x * Threads + threadIdx.x] = total;  // every thread's copy, to check they agree
}

__global__ void warp_max_kernel(const float* x, float* out) {
  out[threadIdx.x] = cd::warp_all_reduce(x[threadIdx.x], cd::MaxOp{});
}

__global__ void shuffle_kernel(int* out) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  out[threadIdx.x * 3 + 0] = __shfl_sync(0xffffffffu, lane * 7, 31 - lane);
  out[threadIdx.x * 3 + 1] = __shfl_down_sync(0xffffffffu, lane, 4);
  out[threadIdx.x * 3 + 2] = __shfl_xor_sync(0xffffffffu, lane, 5, 8);  // segments of 8 lanes
}

//! Reverses a block's values through dynamic shared memory.
__global__ void reverse_kernel(const float* x, float* y) {
  float* s = static_cast<float*>(parallax_simt_dynamic_shared());
  s[threadIdx.x] = x[blockIdx.x * blockDim.x + threadIdx.x];
  __syncthreads();
  y[blockIdx.x * blockDim.x + threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}

//! The same without the barrier: on a GPU a race, here the values read before they are written.
__global__ void racy_reverse_kernel(const float* x, float* y) {
  float* s = static_cast<float*>(parallax_simt_dynamic_shared());
  s[threadIdx.x] = x[threadIdx.x];
  y[threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}

__global__ void block_order_kernel(unsigned* order, unsigned* next) {
  if (threadIdx.x == 0) order[atomicAdd(next, 1u)] = blockIdx.x;
}

__global__ void divergent_barrier_kernel() {
  if (threadIdx.x < 16)
    __syncthreads();
  else
    __syncwarp();
}

__global__ void shuffle_after_exit_kernel(float* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.f, 1);
}

__global__ void early_exit_kernel(int* out) {
  if (threadIdx.x >= 40) return;  // exited threads no longer hold up __syncthreads (as on the hardware)
  __syncthreads();
  out[threadIdx.x] = 1;
}

}  // namespace

TEST_CASE("SIMT emulator: a grid-stride loop covers every index once, with fewer threads than elements", "[simt]") {
  std::vector<std::int64_t> out(1000, -1);
  simt::launch("iota", iota_kernel, dim3(3), dim3(64), 0, out.data(), std::int64_t{1000});
  std::vector<std::int64_t> expected(1000);
  std::iota(expected.begin(), expected.end(), std::int64_t{0});
  CHECK(out == expected);
}

TEST_CASE("SIMT emulator: 3-D grids and blocks give every thread its coordinates", "[simt]") {
  const dim3 grid(2, 3, 2), block(4, 2, 3);
  std::vector<unsigned> out(12 * 24, 0);
  simt::launch("coordinates", coordinates_kernel, grid, block, 0, out.data());
  for (unsigned b = 0; b < 12; ++b)
    for (unsigned t = 0; t < 24; ++t) CHECK(out[b * 24 + t] == b * 10000 + t);
}

TEST_CASE("SIMT emulator: the backend's block and warp reductions", "[simt]") {
  std::vector<float> x(3 * 256);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(static_cast<float>(i)) * 3.f;
  std::vector<float> out(x.size(), NAN);
  simt::launch("block_sum", block_sum_kernel<256>, dim3(3), dim3(256), 0, x.data(), out.data());
  for (int b = 0; b < 3; ++b) {
    double expected = 0;
    for (int t = 0; t < 256; ++t) expected += x[static_cast<std::size_t>(b * 256 + t)];
    for (int t = 0; t < 256; ++t) {
      const float got = out[static_cast<std::size_t>(b * 256 + t)];
      CHECK(got == out[static_cast<std::size_t>(b * 256)]);  // bit for bit the same in every thread
      CHECK(std::abs(got - expected) < 1e-4);
    }
  }

  std::vector<float> y(64), max(64, NAN);
  for (std::size_t i = 0; i < y.size(); ++i) y[i] = static_cast<float>((i * 37) % 64);
  simt::launch("warp_max", warp_max_kernel, dim3(1), dim3(64), 0, y.data(), max.data());
  for (std::size_t i = 0; i < 64; ++i) CHECK(max[i] == (i < 32 ? *std::max_element(y.begin(), y.begin() + 32)
                                                               : *std::max_element(y.begin() + 32, y.end())));
}

TEST_CASE("SIMT emulator: shuffles follow CUDA's lane rules", "[simt]") {
  std::vector<int> out(64 * 3, -1);
  simt::launch("shuffle", shuffle_kernel, dim3(1), dim3(64), 0, out.data());
  for (int t = 0; t < 64; ++t) {
    const int lane = t % 32;
    CHECK(out[static_cast<std::size_t>(t * 3 + 0)] == (31 - lane) * 7);
    CHECK(out[static_cast<std::size_t>(t * 3 + 1)] == (lane + 4 < 32 ? lane + 4 : lane));
    CHECK(out[static_cast<std::size_t>(t * 3 + 2)] == (lane ^ 5));
  }
}

TEST_CASE("SIMT emulator: dynamic shared memory, and a missing __syncthreads shows", "[simt]") {
  std::vector<float> x(2 * 96), y(x.size(), 0.f);
  std::iota(x.begin(), x.end(), 1.f);
  simt::launch("reverse", reverse_kernel, dim3(2), dim3(96), 96 * sizeof(float), x.data(), y.data());
  for (std::size_t b = 0; b < 2; ++b)
    for (std::size_t t = 0; t < 96; ++t) CHECK(y[b * 96 + t] == x[b * 96 + 95 - t]);

  // Without the barrier, the first thread reads shared memory no thread has written yet: NaN (0xff bytes).
  std::vector<float> z(96, 0.f);
  simt::launch("racy_reverse", racy_reverse_kernel, dim3(1), dim3(96), 96 * sizeof(float), x.data(), z.data());
  CHECK(std::isnan(z[0]));
}

TEST_CASE("SIMT emulator: blocks run in a shuffled order", "[simt]") {
  std::vector<unsigned> order(16, 99);
  unsigned next = 0;
  simt::launch("block_order", block_order_kernel, dim3(16), dim3(32), 0, order.data(), &next);
  CHECK(next == 16);
  std::vector<unsigned> sorted = order;
  std::sort(sorted.begin(), sorted.end());
  std::vector<unsigned> identity(16);
  std::iota(identity.begin(), identity.end(), 0u);
  CHECK(sorted == identity);
  CHECK(order != identity);
}

TEST_CASE("SIMT emulator: barriers that cannot complete are errors, not hangs", "[simt]") {
  CHECK_THROWS_WITH(simt::launch("divergent", divergent_barrier_kernel, dim3(1), dim3(32), 0),
                    Catch::Contains("kernel 'divergent' block (0, 0, 0) can never go on") &&
                        Catch::Contains("__syncthreads") && Catch::Contains("__syncwarp"));
  std::vector<float> out(32);
  CHECK_THROWS_WITH(simt::launch("after_exit", shuffle_after_exit_kernel, dim3(1), dim3(32), 0, out.data()),
                    Catch::Contains("kernel 'after_exit'") && Catch::Contains("lane 3 of its warp has exited"));
  CHECK_THROWS_WITH(simt::launch("bad", iota_kernel, dim3(1), dim3(2048), 0, nullptr, std::int64_t{0}),
                    Catch::Contains("invalid launch") && Catch::Contains("block (2048, 1, 1)"));

  std::vector<int> ones(64, 0);
  simt::launch("early_exit", early_exit_kernel, dim3(1), dim3(64), 0, ones.data());
  CHECK(std::accumulate(ones.begin(), ones.end(), 0) == 40);
}
