// parallax/core/memory_space.hpp — the MemorySpace concept: where a tensor's bytes live.
#pragma once

#include <concepts>
#include <cstddef>

namespace parallax {

//! A memory space is a type with static functions that allocate, free and move raw bytes.
//!
//! `host::Memory` and `cuda::Memory` model it. `upload` copies from host memory into the space and
//! `download` the other way; `copy` stays inside the space. `host_accessible` says whether the CPU may
//! dereference the space's pointers (enables element access on tensors).
template <class S>
concept MemorySpace = requires(void* p, const void* q, std::size_t n) {
  { S::name } -> std::convertible_to<const char*>;
  { S::host_accessible } -> std::convertible_to<bool>;
  { S::allocate(n) } -> std::same_as<void*>;
  S::deallocate(p, n);
  S::copy(p, q, n);
  S::upload(p, q, n);
  S::download(p, q, n);
  S::zero(p, n);
};

}  // namespace parallax
