// parallax/error.hpp — parallax::Error, the one exception type the library throws.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

#include <fmt/format.h>

namespace parallax {

//! The exception parallax throws for bad input and failed operations.
//!
//! Its message reads "function: reason, numbers" and names the rank where it is known, e.g.
//! `ColumnParallelLinear: out_features 1000 is not divisible by TP 3 (rank 5)`.
//! `rank()` is -1 where no rank applies (for instance on the launching thread before ranks start).
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message, int rank = -1, std::string group = {}, std::string operation = {})
      : std::runtime_error(rank >= 0 && message.find("(rank ") == std::string::npos
                               ? fmt::format("{} (rank {})", message, rank)
                               : message),
        rank_(rank),
        group_(std::move(group)),
        operation_(std::move(operation)) {}

  //! The rank the error happened on, or -1.
  [[nodiscard]] int rank() const noexcept { return rank_; }
  //! The communication group involved ("TP {4,5}"), or empty.
  [[nodiscard]] const std::string& group() const noexcept { return group_; }
  //! The operation that failed ("all_reduce"), or empty.
  [[nodiscard]] const std::string& operation() const noexcept { return operation_; }

 private:
  int rank_;
  std::string group_;
  std::string operation_;
};

//! Throws `Error` with a formatted message when `condition` is false.
template <class... Args>
inline void check(bool condition, fmt::format_string<Args...> format, Args&&... args) {
  if (!condition) throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace parallax
