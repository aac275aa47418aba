// parallax/comm/launch_env.hpp — rank, world size and rendezvous address, read from the environment
// that torchrun, SLURM or OpenMPI set for each process they launch.
#pragma once

#include <charconv>
#include <cstdlib>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

#include <fmt/format.h>

#include "parallax/error.hpp"

namespace parallax {

//! Where this process sits in a multi-process launch.
//!
//! `master_addr`/`master_port` say where rank 0 listens for the rendezvous; under SLURM and OpenMPI
//! they come from MASTER_ADDR/MASTER_PORT when set and are otherwise empty and 0.
//! ```
//! if (auto env = parallax::detect_launch_env())
//!   parallax::TcpRendezvous rdv(env->master_addr, env->master_port, env->rank, env->world_size, 30s);
//! ```
struct LaunchEnv {
  int rank;
  int world_size;
  int local_rank;
  std::string master_addr;
  int master_port;
  std::string source;  //!< "torchrun", "slurm" or "openmpi"
};

namespace detail {

using EnvLookup = std::function<const char*(const char*)>;

// The integer in variable `name`; throws when it is unset, not an integer or out of int range.
inline int env_int(const EnvLookup& lookup, const char* name, const char* source) {
  const char* value = lookup(name);
  if (value == nullptr) throw Error(fmt::format("detect_launch_env: {} is not set ({})", name, source));
  const std::string_view text(value);
  int result = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), result);
  if (ec == std::errc::result_out_of_range)
    throw Error(fmt::format("detect_launch_env: {}={} is out of range", name, text));
  if (ec != std::errc{} || end != text.data() + text.size())
    throw Error(fmt::format("detect_launch_env: {}={} is not an integer", name, text));
  return result;
}

struct Launcher {
  const char* source;
  const char* rank;
  const char* world_size;
  const char* local_rank;
  bool master_required;
};

}  // namespace detail

//! Detects the launcher through `lookup` (a getenv stand-in): torchrun first, then SLURM, then OpenMPI.
//! Returns nullopt when no launcher's rank variable is set; throws `Error` naming the variable and its
//! value when one is malformed.
inline std::optional<LaunchEnv> detect_launch_env(const std::function<const char*(const char*)>& lookup) {
  static constexpr detail::Launcher launchers[] = {
      {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", true},
      {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", false},
      {"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", false},
  };
  for (const auto& l : launchers) {
    if (lookup(l.rank) == nullptr) continue;
    LaunchEnv out{detail::env_int(lookup, l.rank, l.source), detail::env_int(lookup, l.world_size, l.source),
                  detail::env_int(lookup, l.local_rank, l.source), {}, 0, l.source};
    if (out.world_size <= 0)
      throw Error(fmt::format("detect_launch_env: {}={} is not positive", l.world_size, out.world_size));
    if (out.rank < 0) throw Error(fmt::format("detect_launch_env: {}={} is negative", l.rank, out.rank));
    if (out.rank >= out.world_size)
      throw Error(fmt::format("detect_launch_env: {}={} is not below {}={}", l.rank, out.rank, l.world_size,
                              out.world_size));
    if (out.local_rank < 0 || out.local_rank >= out.world_size)
      throw Error(fmt::format("detect_launch_env: {}={} is not in 0..{}", l.local_rank, out.local_rank,
                              out.world_size - 1));
    if (const char* addr = lookup("MASTER_ADDR"); addr != nullptr || l.master_required) {
      out.master_addr = addr != nullptr ? addr : "";
      if (out.master_addr.empty())
        throw Error(fmt::format("detect_launch_env: MASTER_ADDR is not set or empty ({})", l.source));
    }
    if (l.master_required || lookup("MASTER_PORT") != nullptr) {
      out.master_port = detail::env_int(lookup, "MASTER_PORT", l.source);
      if (out.master_port < 1 || out.master_port > 65535)
        throw Error(fmt::format("detect_launch_env: MASTER_PORT={} is not in 1..65535", out.master_port));
    }
    return out;
  }
  return std::nullopt;
}

//! Detects the launcher from this process's environment; see the overload taking a lookup.
inline std::optional<LaunchEnv> detect_launch_env() {
  return detect_launch_env([](const char* name) -> const char* { return std::getenv(name); });
}

}  // namespace parallax
