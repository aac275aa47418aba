// parallax/core/dtype.hpp — the closed set of element types and their run-time tags.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

#include "bf16.hpp"
#include "fp16.hpp"

namespace parallax {

//! Run-time tag of an element type (what a collective or a checkpoint records).
enum class DType : int { f32, bf16, f16, i32, i64, f64 };

//! The element types tensors, kernels and collectives accept.
template <class T>
concept Element = std::is_same_v<T, float> || std::is_same_v<T, bf16> || std::is_same_v<T, fp16> ||
                  std::is_same_v<T, std::int32_t> || std::is_same_v<T, std::int64_t> || std::is_same_v<T, double>;

//! Floating-point element types that kernels compute with (storage; accumulation is fp32).
template <class T>
concept FloatElement = std::is_same_v<T, float> || std::is_same_v<T, bf16> || std::is_same_v<T, fp16>;

template <Element T>
inline constexpr DType dtype_of = std::is_same_v<T, float>          ? DType::f32
                                  : std::is_same_v<T, bf16>         ? DType::bf16
                                  : std::is_same_v<T, fp16>         ? DType::f16
                                  : std::is_same_v<T, std::int32_t> ? DType::i32
                                  : std::is_same_v<T, std::int64_t> ? DType::i64
                                                                    : DType::f64;

[[nodiscard]] constexpr std::string_view name(DType t) noexcept {
  switch (t) {
    case DType::f32: return "fp32";
    case DType::bf16: return "bf16";
    case DType::f16: return "fp16";
    case DType::i32: return "int32";
    case DType::i64: return "int64";
    case DType::f64: return "fp64";
  }
  return "?";
}

//! Calls `f(std::type_identity<T>{})` with the element type `T` that `t` names.
template <class F>
constexpr decltype(auto) dispatch(DType t, F&& f) {
  switch (t) {
    case DType::bf16: return f(std::type_identity<bf16>{});
    case DType::f16: return f(std::type_identity<fp16>{});
    case DType::i32: return f(std::type_identity<std::int32_t>{});
    case DType::i64: return f(std::type_identity<std::int64_t>{});
    case DType::f64: return f(std::type_identity<double>{});
    case DType::f32: break;
  }
  return f(std::type_identity<float>{});
}

[[nodiscard]] constexpr std::size_t size_of(DType t) noexcept {
  switch (t) {
    case DType::bf16:
    case DType::f16: return 2;
    case DType::f32:
    case DType::i32: return 4;
    case DType::i64:
    case DType::f64: return 8;
  }
  return 0;
}

}  // namespace parallax
