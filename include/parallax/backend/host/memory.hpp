// parallax/backend/host/memory.hpp — host::Memory, the memory space of ordinary (pageable) CPU memory.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>

namespace parallax::host {

//! CPU memory, 64-byte aligned. Models `MemorySpace`.
struct Memory {
  static constexpr const char* name = "host";
  static constexpr bool host_accessible = true;
  static constexpr std::size_t alignment = 64;

  static void* allocate(std::size_t bytes) noexcept {
    return ::operator new(bytes, std::align_val_t{alignment}, std::nothrow);
  }
  static void deallocate(void* p, std::size_t) noexcept { ::operator delete(p, std::align_val_t{alignment}); }
  static void copy(void* dst, const void* src, std::size_t bytes) noexcept {
    if (bytes) std::memmove(dst, src, bytes);
  }
  static void upload(void* dst, const void* src, std::size_t bytes) noexcept { copy(dst, src, bytes); }
  static void download(void* dst, const void* src, std::size_t bytes) noexcept { copy(dst, src, bytes); }
  static void zero(void* p, std::size_t bytes) noexcept {
    if (bytes) std::memset(p, 0, bytes);
  }
};

}  // namespace parallax::host
