// parallax/backend/host/elementwise.hpp — host elementwise, cast and reduction kernels (fp32 math, fixed order).
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include <fmt/format.h>

#include "../../core/dtype.hpp"
#include "../../core/view.hpp"
#include "../../error.hpp"
#include "context.hpp"
#include "detail/kernel_args.hpp"
#include "memory.hpp"

namespace parallax::host {

namespace detail {
inline void same_size(const char* op, std::int64_t a, std::int64_t b) {
  if (a != b) throw Error(fmt::format("{}: operands have {} and {} elements", op, a, b));
}
}  // namespace detail

//! Elementwise kernels of the host backend. Reductions accumulate in fp64 in index order, so they are
//! bitwise repeatable.
struct Elementwise {
  template <FloatElement T>
  static void fill(const Context&, View<T, Memory> x, float value) {
    const T v(value);
    for (std::int64_t i = 0; i < x.numel(); ++i) x.data()[i] = v;
  }
  //! dst = src, any element type, the same number of elements (on a device backend: queued on the stream).
  template <Element T>
  static void copy(const Context&, View<const T, Memory> src, View<T, Memory> dst) {
    detail::same_size("copy", src.numel(), dst.numel());
    if (!src.empty()) Memory::copy(dst.data(), src.data(), src.bytes());
  }
  //! dst = src converted (rounding to nearest even for 16-bit types).
  template <FloatElement S, FloatElement D>
  static void cast(const Context&, View<const S, Memory> src, View<D, Memory> dst) {
    detail::same_size("cast", src.numel(), dst.numel());
    for (std::int64_t i = 0; i < src.numel(); ++i) dst.data()[i] = D(float(src.data()[i]));
  }
  //! x *= a.
  template <FloatElement T>
  static void scale(const Context&, View<T, Memory> x, float a) {
    for (std::int64_t i = 0; i < x.numel(); ++i) x.data()[i] = T(a * float(x.data()[i]));
  }
  //! y = a * x + b * y  (b == 0 ignores y's contents).
  template <FloatElement T, FloatElement S>
  static void axpby(const Context&, float a, View<const S, Memory> x, float b, View<T, Memory> y) {
    detail::same_size("axpby", x.numel(), y.numel());
    for (std::int64_t i = 0; i < x.numel(); ++i)
      y.data()[i] = T(a * float(x.data()[i]) + (b == 0.f ? 0.f : b * float(y.data()[i])));
  }
  //! y[n, :] += b for every row n of y [N, D]; b is [D].
  template <FloatElement T>
  static void add_bias(const Context&, detail::In<T> b, View<T, Memory> y) {
    detail::expect_rank("add_bias", "y", y.shape(), 2, "[N, D]");
    const std::int64_t n = y.shape()[0], d = y.shape()[1];
    detail::expect_shape("add_bias", "b", b.shape(), Shape{d});
    for (std::int64_t r = 0; r < n; ++r)
      for (std::int64_t j = 0; j < d; ++j) y.data()[r * d + j] = T(float(y.data()[r * d + j]) + float(b.data()[j]));
  }
  //! db[j] += sum_n dy[n, j] for dy [N, D] (the bias gradient). Column sums are formed in fp32 in row
  //! order and added once; db has dy's type or fp32.
  template <FloatElement T, FloatElement G>
  static void bias_grad(const Context&, View<const T, Memory> dy, View<G, Memory> db) {
    detail::expect_rank("bias_grad", "dy", dy.shape(), 2, "[N, D]");
    const std::int64_t n = dy.shape()[0], d = dy.shape()[1];
    detail::expect_shape("bias_grad", "db", db.shape(), Shape{d});
    std::vector<float> acc(static_cast<std::size_t>(d), 0.f);
    for (std::int64_t r = 0; r < n; ++r)
      for (std::int64_t j = 0; j < d; ++j) acc[static_cast<std::size_t>(j)] += float(dy.data()[r * d + j]);
    for (std::int64_t j = 0; j < d; ++j) db.data()[j] = G(float(db.data()[j]) + acc[static_cast<std::size_t>(j)]);
  }
  //! Sum of all elements.
  template <FloatElement T>
  [[nodiscard]] static double sum(const Context&, View<const T, Memory> x) {
    double s = 0;
    for (std::int64_t i = 0; i < x.numel(); ++i) s += double(float(x.data()[i]));
    return s;
  }
  //! Sum of squares (the square of the L2 norm).
  template <FloatElement T>
  [[nodiscard]] static double sum_squares(const Context&, View<const T, Memory> x) {
    double s = 0;
    for (std::int64_t i = 0; i < x.numel(); ++i) {
      const double v = float(x.data()[i]);
      s += v * v;
    }
    return s;
  }
  //! The sum of `sum_squares` over the pieces, added in list order (the squared L2 norm of a set of tensors, such
  //! as a model's gradients). Pieces may be empty; an empty list gives 0.
  template <FloatElement T>
  [[nodiscard]] static double sum_squares(const Context& ctx, std::span<const View<const T, Memory>> pieces) {
    double s = 0;
    for (const auto& piece : pieces) s += sum_squares(ctx, piece);
    return s;
  }
  //! Number of NaN or infinite elements.
  template <FloatElement T>
  [[nodiscard]] static std::int64_t count_nonfinite(const Context&, View<const T, Memory> x) {
    std::int64_t n = 0;
    for (std::int64_t i = 0; i < x.numel(); ++i) n += !std::isfinite(float(x.data()[i]));
    return n;
  }
};

}  // namespace parallax::host
