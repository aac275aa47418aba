// benchmarks/support/cli.hpp — the command-line helpers every benchmark shares: usage errors, lists, integers.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace parallax::bench {

//! A benchmark's usage line, and the errors that print it and exit with status 2.
class Cli {
 public:
  Cli(std::string program, std::string usage) : program_(std::move(program)), usage_(std::move(usage)) {}

  //! Prints "program: why" and the usage line, and exits with status 2.
  [[noreturn]] void usage(const std::string& why) const {
    std::fprintf(stderr, "%s: %s\nusage: %s %s\n", program_.c_str(), why.c_str(), program_.c_str(), usage_.c_str());
    std::exit(2);
  }
  //! `s` as a positive integer, or a usage error naming `flag`.
  [[nodiscard]] std::int64_t positive(const std::string& flag, const std::string& s) const {
    char* end = nullptr;
    const long long v = std::strtoll(s.c_str(), &end, 10);
    if (end == s.c_str() || *end != '\0' || v <= 0) usage(fmt::format("{} {}: expected a positive integer", flag, s));
    return v;
  }
  //! The non-empty items of a comma-separated list.
  [[nodiscard]] static std::vector<std::string> split(const std::string& s) {
    std::vector<std::string> out;
    std::stringstream ss(s);
    for (std::string item; std::getline(ss, item, ',');)
      if (!item.empty()) out.push_back(item);
    return out;
  }
  //! A comma-separated list of positive integers.
  [[nodiscard]] std::vector<int> positives(const std::string& flag, const std::string& s) const {
    std::vector<int> out;
    for (const auto& item : split(s)) out.push_back(static_cast<int>(positive(flag, item)));
    return out;
  }

 private:
  std::string program_, usage_;
};

}  // namespace parallax::bench
