// parallax/comm/detail/call_history.hpp — a rank's ring buffer of its last completed calls on a group, for error messages.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include <fmt/format.h>

#include "../collective.hpp"

namespace parallax::detail {

//! A rank's last few completed calls on a group, printed when something goes wrong.
class CallHistory {
 public:
  void push(const CollectiveDesc& d) { ring_[static_cast<std::size_t>(n_++ % ring_.size())] = d; }
  //! "#56 broadcast(fp32, 10, root 0)", or "none".
  [[nodiscard]] std::string last() const {
    if (n_ == 0) return "none";
    const CollectiveDesc& d = ring_[static_cast<std::size_t>((n_ - 1) % ring_.size())];
    return fmt::format("#{} {}", d.seq, d.str());
  }
  //! The whole ring, oldest first.
  [[nodiscard]] std::string dump() const {
    std::string s;
    for (std::uint64_t i = n_ > ring_.size() ? n_ - ring_.size() : 0; i < n_; ++i) {
      const CollectiveDesc& d = ring_[static_cast<std::size_t>(i % ring_.size())];
      s += fmt::format("{}#{} {}", s.empty() ? "" : ", ", d.seq, d.str());
    }
    return s.empty() ? "none" : s;
  }

 private:
  std::array<CollectiveDesc, 8> ring_{};
  std::uint64_t n_ = 0;
};

}  // namespace parallax::detail
