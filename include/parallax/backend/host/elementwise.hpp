// parallax/backend/host/elementwise.hpp — host elementwise, cast and reduction kernels (fp32 math, fixed order).
#pragma once

#include <cmath>
#include <cstdint>

#include <fmt/format.h>

#include "../../core/dtype.hpp"
#include "../../core/view.hpp"
#include "../../error.hpp"
#include "context.hpp"
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
  //! Number of NaN or infinite elements.
  template <FloatElement T>
  [[nodiscard]] static std::int64_t count_nonfinite(const Context&, View<const T, Memory> x) {
    std::int64_t n = 0;
    for (std::int64_t i = 0; i < x.numel(); ++i) n += !std::isfinite(float(x.data()[i]));
    return n;
  }
};

}  // namespace parallax::host
