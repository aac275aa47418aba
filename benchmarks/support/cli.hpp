// benchmarks/support/cli.hpp — the command-line helpers every benchmark shares: flags, usage errors, lists, integers.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <initializer_list>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace parallax::bench {

//! A benchmark's usage line, its flag parser, and the errors that print the usage line and exit with status 2.
class Cli {
 public:
  //! One flag of `parse`: its name and what it does, either with the argument after it (a flag with a value,
  //! `void(const std::string&)`) or alone (a switch, `void()`).
  struct Flag {
    //! A flag with a value: `take` gets the argument after the flag.
    Flag(std::string name, std::function<void(const std::string&)> take)
        : name(std::move(name)), take(std::move(take)) {}
    //! A switch: `set` runs when the flag is there.
    Flag(std::string name, std::function<void()> set) : name(std::move(name)), set(std::move(set)) {}

    std::string name;
    std::function<void(const std::string&)> take;  // empty for a switch
    std::function<void()> set;                     // empty for a flag with a value
  };

  Cli(std::string program, std::string usage) : program_(std::move(program)), usage_(std::move(usage)) {}

  //! Runs the flags of `argv[1..argc)`, in order, through `flags`. `--help` or `-h`, an unknown argument, and a
  //! flag with a value that comes last are usage errors ("help", "unknown argument X", "X needs a value").
  //! @code
  //! Options o;
  //! cli.parse(argc, argv, {{"--dim", [&](const std::string& v) { o.dim = cli.positive("--dim", v); }},
  //!                        {"--sp", [&] { o.sp = true; }}});
  //! @endcode
  void parse(int argc, char** argv, std::initializer_list<Flag> flags) const {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      const auto flag = std::find_if(flags.begin(), flags.end(), [&](const Flag& f) { return f.name == a; });
      if (flag == flags.end()) usage(a == "--help" || a == "-h" ? "help" : fmt::format("unknown argument {}", a));
      if (flag->set) {
        flag->set();
      } else {
        if (i + 1 >= argc) usage(fmt::format("{} needs a value", a));
        flag->take(argv[++i]);
      }
    }
  }

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
