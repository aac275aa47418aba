// tests/support/support.hpp — small helpers shared by the test files (host-side only).
#pragma once

#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include <parallax/backend/host/memory.hpp>
#include <parallax/core/view.hpp>
#include <parallax/error.hpp>

namespace parallax::test {

//! Bit pattern of an element, so float and 16-bit values compare exactly (and -0 differs from 0).
template <class T>
std::uint32_t bits_of(T v) {
  if constexpr (std::is_same_v<T, float>) {
    std::uint32_t b;
    std::memcpy(&b, &v, sizeof b);
    return b;
  } else {
    return v.bits;
  }
}

//! A 1-D view of a vector's elements (host memory).
template <class T>
View<T, host::Memory> view(std::vector<T>& v) {
  return {v.data(), Shape{static_cast<std::int64_t>(v.size())}};
}
template <class T>
View<const T, host::Memory> cview(const std::vector<T>& v) {
  return {v.data(), Shape{static_cast<std::int64_t>(v.size())}};
}
//! A vector's elements viewed with shape `s` (host memory).
template <class T>
View<T, host::Memory> view(std::vector<T>& v, Shape s) {
  return {v.data(), s};
}
template <class T>
View<const T, host::Memory> cview(const std::vector<T>& v, Shape s) {
  return {v.data(), s};
}

//! Runs f and returns the message of the parallax::Error it throws (fails the test if it throws nothing).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  FAIL("expected a parallax::Error");
  return {};
}

}  // namespace parallax::test
