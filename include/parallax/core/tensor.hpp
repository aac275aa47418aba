// parallax/core/tensor.hpp — Tensor<T, Space>: an owning, zero-initialised, accounted row-major array.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "../error.hpp"
#include "allocator.hpp"
#include "dtype.hpp"
#include "view.hpp"

namespace parallax {

//! An owning tensor: its bytes come from a rank's `Allocator` under one `MemoryCategory` and go back
//! when it is destroyed. Move-only. Elements start at zero.
//!
//! @tparam T an `Element` type.  @tparam Space a `MemorySpace`.
//! @code
//! Tensor<float, host::Memory> w(rank.allocator(), Shape{1024, 4096}, MemoryCategory::parameters);
//! View<float, host::Memory> v = w.view();
//! @endcode
template <Element T, MemorySpace Space>
class Tensor {
 public:
  using value_type = T;
  using memory_space = Space;

  Tensor() = default;
  Tensor(Allocator<Space>& allocator, Shape shape, MemoryCategory category)
      : allocator_(&allocator), shape_(shape), category_(category) {
    data_ = static_cast<T*>(allocator.allocate(bytes(), category));
    if (data_ != nullptr) allocator.zero(data_, bytes());
  }
  Tensor(Tensor&& o) noexcept
      : allocator_(std::exchange(o.allocator_, nullptr)),
        data_(std::exchange(o.data_, nullptr)),
        shape_(std::exchange(o.shape_, Shape{0})),
        category_(o.category_) {}
  Tensor& operator=(Tensor&& o) noexcept {
    if (this != &o) {
      release();
      allocator_ = std::exchange(o.allocator_, nullptr);
      data_ = std::exchange(o.data_, nullptr);
      shape_ = std::exchange(o.shape_, Shape{0});
      category_ = o.category_;
    }
    return *this;
  }
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;
  ~Tensor() { release(); }

  [[nodiscard]] T* data() const noexcept { return data_; }
  [[nodiscard]] const Shape& shape() const noexcept { return shape_; }
  [[nodiscard]] std::int64_t numel() const noexcept { return shape_.numel(); }
  [[nodiscard]] std::size_t bytes() const noexcept { return static_cast<std::size_t>(numel()) * sizeof(T); }
  [[nodiscard]] MemoryCategory category() const noexcept { return category_; }
  [[nodiscard]] bool empty() const noexcept { return numel() == 0; }

  [[nodiscard]] View<T, Space> view() const { return View<T, Space>(data_, shape_); }
  [[nodiscard]] View<const T, Space> cview() const { return View<const T, Space>(data_, shape_); }
  operator View<T, Space>() const { return view(); }
  operator View<const T, Space>() const { return cview(); }

  template <class... I>
    requires Space::host_accessible
  T& operator()(I... idx) const {
    return view()(idx...);
  }

  //! Frees the storage now (the tensor becomes empty).
  void reset() noexcept { release(); }

 private:
  void release() noexcept {
    if (data_ != nullptr && allocator_ != nullptr) {
      try {
        allocator_->deallocate(data_, bytes(), category_);
      } catch (...) {  // accounting underflow cannot happen for a tensor's own bytes
      }
    }
    data_ = nullptr;
    shape_ = Shape{0};
  }

  Allocator<Space>* allocator_ = nullptr;
  T* data_ = nullptr;
  Shape shape_{0};  // empty: [0], not the one-element scalar []
  MemoryCategory category_ = MemoryCategory::workspace;
};

//! Copies a view's elements into a host vector (downloading from device memory when needed).
template <class T, MemorySpace Space>
[[nodiscard]] std::vector<std::remove_const_t<T>> to_vector(View<T, Space> v) {
  std::vector<std::remove_const_t<T>> out(static_cast<std::size_t>(v.numel()));
  if (!out.empty()) Space::download(out.data(), v.data(), v.bytes());
  return out;
}

//! Copies host values into a view (uploading to device memory when needed); sizes must match.
template <class T, MemorySpace Space>
void copy_from(View<T, Space> dst, std::span<const T> src) {
  if (static_cast<std::int64_t>(src.size()) != dst.numel())
    throw Error(fmt::format("copy_from: {} values given for a view of shape {} ({} elements)", src.size(), dst.shape(), dst.numel()));
  if (!src.empty()) Space::upload(dst.data(), src.data(), dst.bytes());
}

//! Copies between two views of one memory space; shapes must hold the same number of elements.
template <class T, MemorySpace Space>
void copy(View<T, Space> dst, View<const T, Space> src) {
  if (dst.numel() != src.numel())
    throw Error(fmt::format("copy: destination {} has {} elements, source {} has {}", dst.shape(), dst.numel(), src.shape(), src.numel()));
  if (!dst.empty()) Space::copy(dst.data(), src.data(), dst.bytes());
}

}  // namespace parallax
