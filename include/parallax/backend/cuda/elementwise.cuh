// parallax/backend/cuda/elementwise.cuh — elementwise, cast and reduction kernels like host::Elementwise (nvcc).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>

#include <cuda_runtime.h>
#include <fmt/format.h>

#include "../../core/dtype.hpp"
#include "../../core/view.hpp"
#include "../../error.hpp"
#include "check.hpp"
#include "context.hpp"
#include "detail/column_sum.cuh"
#include "detail/elementwise_kernels.cuh"
#include "detail/kernel_args.hpp"
#include "detail/scratch.hpp"
#include "memory.hpp"

namespace parallax::cuda {

namespace detail {

static_assert((reduce_max_blocks + 1) * sizeof(double) <= reduce_scratch_bytes,
              "cuda::Elementwise: the context's reduction scratch is too small for the partial sums");

inline void same_size(const char* op, std::int64_t a, std::int64_t b) {
  if (a != b) throw Error(fmt::format("{}: operands have {} and {} elements", op, a, b));
}

//! Blocks of an elementwise grid-stride launch over `n` elements: enough to fill the GPU, no more.
[[nodiscard]] inline unsigned elementwise_blocks(const Context& ctx, std::int64_t n) {
  return elementwise_blocks(n, ctx.sm_count());
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
