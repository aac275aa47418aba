// parallax/dp/detail/drain.hpp — waiting for outstanding collectives in a destructor, without throwing.
#pragma once

#include <vector>

#include "../../comm/work.hpp"

namespace parallax::dp::detail {

//! Waits for every pending `Work`; a failed group's error was already reported where it was waited for, so
//! it is swallowed here (destructors must not throw).
inline void drain(std::vector<Work>& works) noexcept {
  for (auto& w : works) {
    try {
      w.wait();
    } catch (...) {
    }
  }
}

}  // namespace parallax::dp::detail
