// parallax/core/shape.hpp — row-major shapes of up to four dimensions.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include <fmt/format.h>

#include "../error.hpp"

namespace parallax {

//! A row-major shape of rank 0 to 4 (rank 0 is a scalar with one element).
//!
//! @code
//! Shape s{4, 1024};      // 4 rows of 1024
//! s.numel() == 4096; s[1] == 1024; s.stride(0) == 1024;
//! @endcode
class Shape {
 public:
  static constexpr int max_rank = 4;

  constexpr Shape() = default;
  Shape(std::initializer_list<std::int64_t> dims) {
    if (dims.size() > max_rank)
      throw Error(fmt::format("Shape: rank {} exceeds the maximum of {}", dims.size(), max_rank));
    for (std::int64_t d : dims) {
      if (d < 0) throw Error(fmt::format("Shape: dimension {} is {}, must be >= 0", rank_, d));
      dims_[static_cast<std::size_t>(rank_++)] = d;
    }
  }

  [[nodiscard]] constexpr int rank() const noexcept { return rank_; }
  [[nodiscard]] constexpr std::int64_t operator[](int i) const { return dims_[static_cast<std::size_t>(i)]; }
  //! Dimension i with a checked index.
  [[nodiscard]] std::int64_t dim(int i) const {
    if (i < 0 || i >= rank_) throw Error(fmt::format("Shape::dim: index {} out of range for rank {} shape {}", i, rank_, str()));
    return dims_[static_cast<std::size_t>(i)];
  }
  [[nodiscard]] constexpr std::int64_t numel() const noexcept {
    std::int64_t n = 1;
    for (int i = 0; i < rank_; ++i) n *= dims_[static_cast<std::size_t>(i)];
    return n;
  }
  //! Elements between consecutive indices of dimension i (row-major).
  [[nodiscard]] constexpr std::int64_t stride(int i) const noexcept {
    std::int64_t s = 1;
    for (int j = i + 1; j < rank_; ++j) s *= dims_[static_cast<std::size_t>(j)];
    return s;
  }
  //! The same shape with dimension i replaced by n.
  [[nodiscard]] Shape with(int i, std::int64_t n) const {
    (void)dim(i);
    if (n < 0) throw Error(fmt::format("Shape::with: dimension {} would be {}, must be >= 0", i, n));
    Shape s = *this;
    s.dims_[static_cast<std::size_t>(i)] = n;
    return s;
  }
  friend constexpr bool operator==(const Shape& a, const Shape& b) noexcept {
    if (a.rank_ != b.rank_) return false;
    for (int i = 0; i < a.rank_; ++i)
      if (a.dims_[static_cast<std::size_t>(i)] != b.dims_[static_cast<std::size_t>(i)]) return false;
    return true;
  }
  //! "[4, 1024]".
  [[nodiscard]] std::string str() const {
    std::string s = "[";
    for (int i = 0; i < rank_; ++i) s += fmt::format("{}{}", i ? ", " : "", dims_[static_cast<std::size_t>(i)]);
    return s + "]";
  }

 private:
  std::array<std::int64_t, max_rank> dims_{};
  int rank_ = 0;
};

}  // namespace parallax

template <>
struct fmt::formatter<parallax::Shape> : fmt::formatter<std::string> {
  auto format(const parallax::Shape& s, format_context& ctx) const { return fmt::formatter<std::string>::format(s.str(), ctx); }
};
