// parallax/core/view.hpp — View<T, Space>: a non-owning, row-major window on elements in a memory space.
#pragma once

#include <cstdint>
#include <type_traits>

#include <fmt/format.h>

#include "../error.hpp"
#include "memory_space.hpp"
#include "shape.hpp"

namespace parallax {

//! A non-owning row-major view of `shape.numel()` elements of `T` at `data` in memory space `Space`.
//!
//! `T` may be const. Element access (`operator()`) exists only for host-accessible spaces and is
//! bounds-checked; kernels take `data()`.
//! @code
//! View<float, host::Memory> v(ptr, Shape{2, 3});
//! v(1, 2) = 5.f;
//! auto row = v.rows(1, 2);   // shape [1, 3]
//! @endcode
template <class T, MemorySpace Space>
class View {
 public:
  using element_type = T;
  using value_type = std::remove_const_t<T>;
  using memory_space = Space;

  constexpr View() = default;
  View(T* data, Shape shape) : data_(data), shape_(shape) {
    if (data == nullptr && shape.numel() != 0)
      throw Error(fmt::format("View: null data for shape {} ({} elements)", shape, shape.numel()));
  }
  //! A view of non-const elements converts to a view of const ones.
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  View(const View<U, Space>& other) : data_(other.data()), shape_(other.shape()) {}

  [[nodiscard]] T* data() const noexcept { return data_; }
  [[nodiscard]] const Shape& shape() const noexcept { return shape_; }
  [[nodiscard]] std::int64_t numel() const noexcept { return shape_.numel(); }
  [[nodiscard]] std::size_t bytes() const noexcept { return static_cast<std::size_t>(numel()) * sizeof(T); }
  [[nodiscard]] bool empty() const noexcept { return numel() == 0; }

  //! Bounds-checked element access; the number of indices must equal the rank.
  template <class... I>
    requires(Space::host_accessible && sizeof...(I) <= Shape::max_rank && (std::is_integral_v<I> && ...))
  T& operator()(I... idx) const {
    const std::int64_t ix[] = {static_cast<std::int64_t>(idx)..., 0};
    if (static_cast<int>(sizeof...(I)) != shape_.rank())
      throw Error(fmt::format("View: {} indices given for a rank {} view of shape {}", sizeof...(I), shape_.rank(), shape_));
    std::int64_t off = 0;
    for (int i = 0; i < shape_.rank(); ++i) {
      if (ix[i] < 0 || ix[i] >= shape_[i])
        throw Error(fmt::format("View: index {} is out of range [0, {}) in dimension {} of shape {}", ix[i], shape_[i], i, shape_));
      off = off * shape_[i] + ix[i];
    }
    return data_[off];
  }
  //! Bounds-checked flat access.
  T& flat(std::int64_t i) const
    requires Space::host_accessible
  {
    if (i < 0 || i >= numel())
      throw Error(fmt::format("View: flat index {} is out of range [0, {}) for shape {}", i, numel(), shape_));
    return data_[i];
  }

  //! Rows [begin, end) of dimension 0.
  [[nodiscard]] View rows(std::int64_t begin, std::int64_t end) const {
    if (shape_.rank() == 0 || begin < 0 || end < begin || end > shape_[0])
      throw Error(fmt::format("View::rows: [{}, {}) does not fit shape {}", begin, end, shape_));
    return View(data_ + begin * shape_.stride(0), shape_.with(0, end - begin));
  }
  //! The same elements under another shape with as many elements.
  [[nodiscard]] View reshape(Shape s) const {
    if (s.numel() != numel())
      throw Error(fmt::format("View::reshape: shape {} has {} elements, the view {} has {}", s, s.numel(), shape_, numel()));
    return View(data_, s);
  }
  //! The whole view as one dimension.
  [[nodiscard]] View flatten() const { return View(data_, Shape{numel()}); }

 private:
  T* data_ = nullptr;
  Shape shape_{0};  // empty: [0], not the one-element scalar []
};

}  // namespace parallax
