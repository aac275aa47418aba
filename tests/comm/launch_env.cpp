// Tests for parallax/comm/launch_env.hpp: each launcher, their priority, and malformed values.
#include "parallax/comm/launch_env.hpp"

#include <catch2/catch.hpp>

#include <map>
#include <string>

namespace {

using Env = std::map<std::string, std::string>;

std::optional<parallax::LaunchEnv> detect(const Env& env) {
  return parallax::detect_launch_env([&env](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}

const Env torchrun{{"RANK", "3"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"},
                   {"MASTER_ADDR", "node0"}, {"MASTER_PORT", "29500"}};
const Env slurm{{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "16"}, {"SLURM_LOCALID", "2"}};
const Env openmpi{{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "0"}};

Env merge(Env a, const Env& b) {
  a.insert(b.begin(), b.end());
  return a;
}

Env with(Env env, const std::string& name, const std::string& value) {
  env[name] = value;
  return env;
}

}  // namespace

TEST_CASE("detect_launch_env finds nothing in an empty environment", "[comm][launch_env]") {
  CHECK_FALSE(detect({}).has_value());
  CHECK_FALSE(detect({{"MASTER_ADDR", "node0"}, {"WORLD_SIZE", "4"}}).has_value());
}

TEST_CASE("detect_launch_env reads each launcher", "[comm][launch_env]") {
  SECTION("torchrun") {
    auto env = detect(torchrun);
    REQUIRE(env);
    CHECK(env->source == "torchrun");
    CHECK(env->rank == 3);
    CHECK(env->world_size == 8);
    CHECK(env->local_rank == 1);
    CHECK(env->master_addr == "node0");
    CHECK(env->master_port == 29500);
  }
  SECTION("slurm without MASTER_*") {
    auto env = detect(slurm);
    REQUIRE(env);
    CHECK(env->source == "slurm");
    CHECK(env->rank == 5);
    CHECK(env->world_size == 16);
    CHECK(env->local_rank == 2);
    CHECK(env->master_addr.empty());
    CHECK(env->master_port == 0);
  }
  SECTION("slurm with MASTER_*") {
    auto env = detect(merge(slurm, {{"MASTER_ADDR", "10.0.0.1"}, {"MASTER_PORT", "1234"}}));
    REQUIRE(env);
    CHECK(env->master_addr == "10.0.0.1");
    CHECK(env->master_port == 1234);
  }
  SECTION("openmpi") {
    auto env = detect(merge(openmpi, {{"MASTER_PORT", "65535"}}));
    REQUIRE(env);
    CHECK(env->source == "openmpi");
    CHECK(env->rank == 0);
    CHECK(env->world_size == 2);
    CHECK(env->local_rank == 0);
    CHECK(env->master_addr.empty());
    CHECK(env->master_port == 65535);
  }
}

TEST_CASE("detect_launch_env prefers torchrun, then slurm, then openmpi", "[comm][launch_env]") {
  CHECK(detect(merge(merge(torchrun, slurm), openmpi))->source == "torchrun");
  CHECK(detect(merge(slurm, openmpi))->source == "slurm");
  CHECK(detect(merge(torchrun, openmpi))->rank == 3);
}

TEST_CASE("detect_launch_env rejects malformed values", "[comm][launch_env]") {
  using Catch::Matchers::Message;
  const Env four = with(torchrun, "WORLD_SIZE", "4");
  const std::pair<Env, const char*> cases[] = {
      {with(four, "RANK", "5"), "detect_launch_env: RANK=5 is not below WORLD_SIZE=4"},
      {with(four, "RANK", "4"), "detect_launch_env: RANK=4 is not below WORLD_SIZE=4"},
      {with(four, "RANK", "-1"), "detect_launch_env: RANK=-1 is negative"},
      {with(four, "RANK", "two"), "detect_launch_env: RANK=two is not an integer"},
      {with(four, "RANK", "1x"), "detect_launch_env: RANK=1x is not an integer"},
      {with(four, "RANK", ""), "detect_launch_env: RANK= is not an integer"},
      {with(four, "WORLD_SIZE", "0"), "detect_launch_env: WORLD_SIZE=0 is not positive"},
      {with(four, "WORLD_SIZE", "99999999999"), "detect_launch_env: WORLD_SIZE=99999999999 is out of range"},
      {with(four, "LOCAL_RANK", "-2"), "detect_launch_env: LOCAL_RANK=-2 is not in 0..3"},
      {with(four, "MASTER_PORT", "0"), "detect_launch_env: MASTER_PORT=0 is not in 1..65535"},
      {with(four, "MASTER_PORT", "65536"), "detect_launch_env: MASTER_PORT=65536 is not in 1..65535"},
      {with(four, "MASTER_PORT", "http"), "detect_launch_env: MASTER_PORT=http is not an integer"},
      {with(four, "MASTER_ADDR", ""), "detect_launch_env: MASTER_ADDR is not set or empty (torchrun)"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "1"}}, "detect_launch_env: LOCAL_RANK is not set (torchrun)"},
      {with(slurm, "SLURM_PROCID", "16"), "detect_launch_env: SLURM_PROCID=16 is not below SLURM_NTASKS=16"},
      {with(slurm, "MASTER_PORT", "70000"), "detect_launch_env: MASTER_PORT=70000 is not in 1..65535"},
      {with(openmpi, "OMPI_COMM_WORLD_SIZE", "-3"), "detect_launch_env: OMPI_COMM_WORLD_SIZE=-3 is not positive"},
  };
  for (const auto& [env, message] : cases) {
    INFO(message);
    CHECK_THROWS_MATCHES(detect(env), parallax::Error, Message(message));
  }
}
