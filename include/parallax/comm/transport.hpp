// parallax/comm/transport.hpp — the interface each communication library implements (threads, MPI, NCCL).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "collective.hpp"
#include "work.hpp"

namespace parallax {

//! One rank's endpoint in a group, as implemented by `ThreadCommunicator`, `MpiCommunicator` or
//! `NcclCommunicator`. Users call it through `Communicator`, which checks arguments and types.
//!
//! The transport is a run-time choice (it depends on how the program was launched), so this one
//! boundary is virtual; everything above it is templates.
class Transport {
 public:
  virtual ~Transport() = default;
  //! This endpoint's rank in the group and the group's size.
  [[nodiscard]] virtual int rank() const noexcept = 0;
  [[nodiscard]] virtual int size() const noexcept = 0;
  //! World ranks of the group's members, in group-rank order.
  [[nodiscard]] virtual const std::vector<int>& members() const noexcept = 0;
  //! `Space::name` of the memory space its buffers live in ("host", "cuda").
  [[nodiscard]] virtual std::string_view memory_space() const noexcept = 0;
  //! The group's name ("world", "tp", "dp", ...).
  [[nodiscard]] virtual const std::string& label() const noexcept = 0;
  //! Starts one call. `desc.seq` is assigned by the transport. `in`/`out` point into the transport's
  //! memory space; for in-place calls they are equal. With `async == false` the returned Work is complete.
  virtual Work start(CollectiveDesc desc, const void* in, void* out, bool async) = 0;
  //! Collective over the group: members with the same `color` form a new group ordered by (key, rank);
  //! a negative color joins none and gets nullptr.
  virtual std::shared_ptr<Transport> split(int color, int key, std::string label) = 0;
};

}  // namespace parallax
