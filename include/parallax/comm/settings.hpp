// parallax/comm/settings.hpp — communication settings read from the environment.
#pragma once

#include <chrono>
#include <cstdlib>
#include <string>

#include <fmt/format.h>

#include "../config.hpp"
#include "../error.hpp"

namespace parallax {

//! Timeout of every blocking communication wait: `PARALLAX_COMM_TIMEOUT` seconds (fractions allowed),
//! 300 s when unset. On expiry the error names the ranks that did not arrive.
[[nodiscard]] inline std::chrono::milliseconds comm_timeout_from_env() {
  const char* v = std::getenv("PARALLAX_COMM_TIMEOUT");
  if (v == nullptr || *v == '\0') return std::chrono::seconds(300);
  char* end = nullptr;
  const double s = std::strtod(v, &end);
  if (end == v || *end != '\0' || !(s > 0))
    throw Error(fmt::format("PARALLAX_COMM_TIMEOUT={} is not a positive number of seconds", v));
  return std::chrono::milliseconds(static_cast<long long>(s * 1000.0 + 0.5));
}

//! Whether transports that need an extra exchange to verify each collective (MPI, NCCL) do it:
//! on in debug builds, otherwise when `PARALLAX_DEBUG_COLLECTIVES=1`. The thread transport always checks,
//! at no cost, because it exchanges each call's description anyway.
[[nodiscard]] inline bool debug_collectives_from_env() {
  const char* v = std::getenv("PARALLAX_DEBUG_COLLECTIVES");
  if (v == nullptr || *v == '\0') return PARALLAX_DEBUG_BUILD != 0;
  return std::string(v) != "0";
}

//! Whether the thread transport runs each group's calls one at a time, as NCCL does on a stream
//! (`LaunchOptions::in_order`): `PARALLAX_COMM_IN_ORDER=1`; off when unset or 0.
[[nodiscard]] inline bool comm_in_order_from_env() {
  const char* v = std::getenv("PARALLAX_COMM_IN_ORDER");
  return v != nullptr && *v != '\0' && std::string(v) != "0";
}

}  // namespace parallax
