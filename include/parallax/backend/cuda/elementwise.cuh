// parallax/backend/cuda/elementwise.cuh — elementwise, cast and reduction kernels like host::Elementwise (nvcc).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>

#include <cuda_runtime.h>
#include <fmt/format.h>

#include "../../config.hpp"
#include "../../core/detail/float_bits.hpp"
#include "../../core/dtype.hpp"
#include "../../core/view.hpp"
#include "../../error.hpp"
#include "check.hpp"
#include "context.hpp"
#include "detail/block_reduce.cuh"
#include "detail/column_sum.cuh"
#include "detail/grid.cuh"
#include "detail/kernel_args.hpp"
#include "detail/scratch.hpp"
#include "memory.hpp"

namespace parallax::cuda {

namespace detail {

inline constexpr int elementwise_threads = 256;
inline constexpr int reduce_threads = 256;
inline constexpr int reduce_max_blocks = 1024;
static_assert((reduce_max_blocks + 1) * sizeof(double) <= reduce_scratch_bytes,
              "cuda::Elementwise: the context's reduction scratch is too small for the partial sums");

inline void same_size(const char* op, std::int64_t a, std::int64_t b) {
  if (a != b) throw Error(fmt::format("{}: operands have {} and {} elements", op, a, b));
}

//! Blocks of an elementwise grid-stride launch over `n` elements: enough to fill the GPU, no more.
[[nodiscard]] inline unsigned elementwise_blocks(const Context& ctx, std::int64_t n) {
  const std::int64_t wanted = (n + elementwise_threads - 1) / elementwise_threads;
  return static_cast<unsigned>(std::min<std::int64_t>(wanted, std::int64_t{ctx.sm_count()} * 16));
}

//! Blocks of the first reduction pass. It depends on `n` only (not on the GPU), so a reduction of a given
//! size always adds in the same order: the result is bitwise repeatable.
[[nodiscard]] inline unsigned reduce_blocks(std::int64_t n) {
  const std::int64_t wanted = (n + reduce_threads * 8 - 1) / (reduce_threads * 8);
  return static_cast<unsigned>(std::clamp<std::int64_t>(wanted, 1, reduce_max_blocks));
}

template <class T>
__global__ void fill_kernel(T* x, std::int64_t n, T value) {
  for (std::int64_t i = grid_index(); i < n; i += grid_stride())
    x[i] = value;
}

template <class S, class D>
__global__ void cast_kernel(const S* src, D* dst, std::int64_t n) {
  for (std::int64_t i = grid_index(); i < n; i += grid_stride())
    dst[i] = D(float(src[i]));
}

template <class T>
__global__ void scale_kernel(T* x, std::int64_t n, float a) {
  for (std::int64_t i = grid_index(); i < n; i += grid_stride())
    x[i] = T(__fmul_rn(a, float(x[i])));
}

// Separate multiplies and adds (no fused multiply-add), so fp32 results equal the host backend's bitwise.
template <class T, class S>
__global__ void axpby_kernel(float a, const S* x, float b, T* y, std::int64_t n) {
  for (std::int64_t i = grid_index(); i < n; i += grid_stride()) {
    const float ax = __fmul_rn(a, float(x[i]));
    y[i] = T(__fadd_rn(ax, b == 0.f ? 0.f : __fmul_rn(b, float(y[i]))));
  }
}

//! y[i] += b[i % d] over the n elements of y [n / d, d].
template <class T>
__global__ void add_bias_kernel(const T* b, T* y, std::int64_t n, std::int64_t d) {
  for (std::int64_t i = grid_index(); i < n; i += grid_stride()) y[i] = T(float(y[i]) + float(b[i % d]));
}

//! The term of a bias gradient: dy[r, c].
template <class T>
struct BiasGradTerm {
  const T* dy;
  std::int64_t d;
  __device__ void operator()(std::int64_t r, std::int64_t c, float* acc) const { acc[0] += float(dy[r * d + c]); }
};

//! What a reduction adds up per element.
struct SumTerm {
  template <class T>
  __device__ double operator()(T v) const { return double(float(v)); }
};
struct SquareTerm {
  template <class T>
  __device__ double operator()(T v) const {
    const double d = float(v);
    return d * d;
  }
};
struct NonfiniteTerm {
  template <class T>
  __device__ unsigned long long operator()(T v) const {
    return (parallax::detail::float_to_bits(float(v)) & 0x7f800000u) == 0x7f800000u ? 1ull : 0ull;
  }
};

//! Pass 1: block b writes the sum of `term` over its grid-stride share of x to partial[b].
template <class Acc, class T, class Term>
__global__ void __launch_bounds__(reduce_threads)
    reduce_partial_kernel(const T* x, std::int64_t n, Acc* partial, Term term) {
  Acc acc{0};
  for (std::int64_t i = grid_index(); i < n; i += grid_stride())
    acc += term(x[i]);
  acc = block_all_reduce<reduce_threads>(acc, SumOp{});
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

//! Pass 2: one block adds the partial sums.
template <class Acc>
__global__ void __launch_bounds__(reduce_threads) reduce_final_kernel(const Acc* partial, int count, Acc* out) {
  Acc acc{0};
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = block_all_reduce<reduce_threads>(acc, SumOp{});
  if (threadIdx.x == 0) *out = acc;
}

//! Adds x[0..n) in index order on one thread: the per-piece results of a batched reduction, added like the host's
//! loop over the pieces.
template <class Acc>
__global__ void sum_in_order_kernel(const Acc* x, int n, Acc* out) {
  Acc s{0};
  for (int i = 0; i < n; ++i) s += x[i];
  *out = s;
}

//! Queues both passes on the compute stream, the result going to the device slot `out` (n > 0; the context's
//! reduction scratch holds the partial sums, so one reduction's passes follow the previous one's on the stream).
template <class Acc, class T, class Term>
void reduce_to(const Context& ctx, const T* x, std::int64_t n, Term term, Acc* out, const char* what) {
  const unsigned blocks = reduce_blocks(n);
  Acc* partial = static_cast<Acc*>(ctx.reduce_scratch());
  reduce_partial_kernel<Acc><<<blocks, reduce_threads, 0, ctx.stream()>>>(x, n, partial, term);
  check_launch(what);
  reduce_final_kernel<Acc><<<1, reduce_threads, 0, ctx.stream()>>>(partial, static_cast<int>(blocks), out);
  check_launch(what);
}

//! Copies the device value `result` into the context's pinned result slot, waits for the compute stream (the one
//! host synchronization of a reduction) and returns it.
template <class Acc>
[[nodiscard]] Acc read_back(const Context& ctx, const Acc* result, const char* what) {
  check(cudaMemcpyAsync(ctx.reduce_result(), result, sizeof(Acc), cudaMemcpyDeviceToHost, ctx.stream()), what);
  check(cudaStreamSynchronize(ctx.stream()), what);
  Acc value;
  std::memcpy(&value, ctx.reduce_result(), sizeof(Acc));
  return value;
}

//! Runs both passes on the compute stream and returns the result (waits for the stream).
template <class Acc, class T, class Term>
[[nodiscard]] Acc reduce(const Context& ctx, const T* x, std::int64_t n, Term term, const char* what) {
  if (n == 0) return Acc{0};
  Acc* total = static_cast<Acc*>(ctx.reduce_scratch()) + reduce_max_blocks;
  reduce_to<Acc>(ctx, x, n, term, total, what);
  return read_back(ctx, total, what);
}

}  // namespace detail

//! Elementwise kernels of the CUDA backend, queued on the context's compute stream (asynchronous, except
//! reductions, which wait for their result). Same functions and fp32 math as `host::Elementwise`;
//! reductions accumulate in fp64 in an order fixed by the size, so they are bitwise repeatable.
struct Elementwise {
  template <FloatElement T>
  static void fill(const Context& ctx, View<T, Memory> x, float value) {
    if (x.empty()) return;
    const unsigned blocks = detail::elementwise_blocks(ctx, x.numel());
    detail::fill_kernel<<<blocks, detail::elementwise_threads, 0, ctx.stream()>>>(x.data(), x.numel(), T(value));
    check_launch("cuda::Elementwise::fill");
  }
  //! dst = src, any element type, the same number of elements: a device-to-device copy queued on the compute stream
  //! (`parallax::copy` of two views waits for the whole device instead).
  template <Element T>
  static void copy(const Context& ctx, View<const T, Memory> src, View<T, Memory> dst) {
    detail::same_size("copy", src.numel(), dst.numel());
    if (src.empty()) return;
    check(cudaMemcpyAsync(dst.data(), src.data(), src.bytes(), cudaMemcpyDeviceToDevice, ctx.stream()),
          "cuda::Elementwise::copy (cudaMemcpyAsync)");
  }
  //! dst = src converted (rounding to nearest even for 16-bit types).
  template <FloatElement S, FloatElement D>
  static void cast(const Context& ctx, View<const S, Memory> src, View<D, Memory> dst) {
    detail::same_size("cast", src.numel(), dst.numel());
    if (src.empty()) return;
    const unsigned blocks = detail::elementwise_blocks(ctx, src.numel());
    detail::cast_kernel<<<blocks, detail::elementwise_threads, 0, ctx.stream()>>>(src.data(), dst.data(), src.numel());
    check_launch("cuda::Elementwise::cast");
  }
  //! x *= a.
  template <FloatElement T>
  static void scale(const Context& ctx, View<T, Memory> x, float a) {
    if (x.empty()) return;
    const unsigned blocks = detail::elementwise_blocks(ctx, x.numel());
    detail::scale_kernel<<<blocks, detail::elementwise_threads, 0, ctx.stream()>>>(x.data(), x.numel(), a);
    check_launch("cuda::Elementwise::scale");
  }
  //! y = a * x + b * y  (b == 0 ignores y's contents).
  template <FloatElement T, FloatElement S>
  static void axpby(const Context& ctx, float a, View<const S, Memory> x, float b, View<T, Memory> y) {
    detail::same_size("axpby", x.numel(), y.numel());
    if (x.empty()) return;
    const unsigned blocks = detail::elementwise_blocks(ctx, x.numel());
    detail::axpby_kernel<<<blocks, detail::elementwise_threads, 0, ctx.stream()>>>(a, x.data(), b, y.data(), x.numel());
    check_launch("cuda::Elementwise::axpby");
  }
  //! y[n, :] += b for every row n of y [N, D]; b is [D].
  template <FloatElement T>
  static void add_bias(const Context& ctx, detail::In<T> b, View<T, Memory> y) {
    detail::expect_rank("add_bias", "y", y.shape(), 2, "[N, D]");
    const std::int64_t d = y.shape()[1];
    detail::expect_shape("add_bias", "b", b.shape(), Shape{d});
    if (y.empty()) return;
    const unsigned blocks = detail::elementwise_blocks(ctx, y.numel());
    detail::add_bias_kernel<<<blocks, detail::elementwise_threads, 0, ctx.stream()>>>(b.data(), y.data(), y.numel(), d);
    check_launch("cuda::Elementwise::add_bias");
  }
  //! db[j] += sum_n dy[n, j] for dy [N, D] (the bias gradient). Column sums are formed in fp32 (per-block
  //! partial sums, then a second kernel: an order fixed by N, no atomics) and added once; db has dy's type or fp32.
  template <FloatElement T, FloatElement G>
  static void bias_grad(const Context& ctx, View<const T, Memory> dy, View<G, Memory> db) {
    detail::expect_rank("bias_grad", "dy", dy.shape(), 2, "[N, D]");
    const std::int64_t n = dy.shape()[0], d = dy.shape()[1];
    detail::expect_shape("bias_grad", "db", db.shape(), Shape{d});
    detail::column_sums<1>(ctx, detail::BiasGradTerm<T>{dy.data(), d}, n, d, detail::ColumnOutputs<G, 1>{{db.data()}},
                           "cuda::Elementwise::bias_grad");
  }
  //! Sum of all elements.
  template <FloatElement T>
  [[nodiscard]] static double sum(const Context& ctx, View<const T, Memory> x) {
    return detail::reduce<double>(ctx, x.data(), x.numel(), detail::SumTerm{}, "cuda::Elementwise::sum");
  }
  //! Sum of squares (the square of the L2 norm).
  template <FloatElement T>
  [[nodiscard]] static double sum_squares(const Context& ctx, View<const T, Memory> x) {
    return detail::reduce<double>(ctx, x.data(), x.numel(), detail::SquareTerm{}, "cuda::Elementwise::sum_squares");
  }
  //! The sum of `sum_squares` over the pieces, added in list order: bitwise the host-side loop over the single-view
  //! op, with one host synchronization in all. Each non-empty piece's two passes write its fp64 sum to a device
  //! array (stream-ordered scratch from the rank's memory cache, counted as workspace), one thread adds the array in
  //! order, and the total is read back once. Pieces may be empty; an empty list (or only empty pieces) gives 0
  //! without touching the GPU.
  template <FloatElement T>
  [[nodiscard]] static double sum_squares(const Context& ctx, std::span<const View<const T, Memory>> pieces) {
    constexpr const char* what = "cuda::Elementwise::sum_squares";
    const auto count = static_cast<std::size_t>(
        std::count_if(pieces.begin(), pieces.end(), [](const auto& piece) { return !piece.empty(); }));
    if (count == 0) return 0;
    detail::Scratch<double> sums(ctx, count + 1, what);  // one slot per non-empty piece, then the total
    std::size_t i = 0;
    for (const auto& piece : pieces)
      if (!piece.empty())
        detail::reduce_to<double>(ctx, piece.data(), piece.numel(), detail::SquareTerm{}, sums.get() + i++, what);
    detail::sum_in_order_kernel<double><<<1, 1, 0, ctx.stream()>>>(sums.get(), static_cast<int>(count),
                                                                   sums.get() + count);
    check_launch(what);
    return detail::read_back(ctx, sums.get() + count, what);
  }
  //! Number of NaN or infinite elements.
  template <FloatElement T>
  [[nodiscard]] static std::int64_t count_nonfinite(const Context& ctx, View<const T, Memory> x) {
    return static_cast<std::int64_t>(detail::reduce<unsigned long long>(ctx, x.data(), x.numel(),
                                                                        detail::NonfiniteTerm{},
                                                                        "cuda::Elementwise::count_nonfinite"));
  }
};

}  // namespace parallax::cuda
