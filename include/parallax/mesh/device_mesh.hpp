// parallax/mesh/device_mesh.hpp — DeviceMesh<DP, PP, TP, CP>: ranks as coordinates, one group per axis.
#pragma once

#include <array>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "../backend/concept.hpp"
#include "../comm/communicator.hpp"
#include "../comm/rank.hpp"
#include "../core/extent.hpp"
#include "../error.hpp"
#include "axis.hpp"

namespace parallax {

//! A rank's position on each axis.
struct Coords {
  int dp = 0, pp = 0, tp = 0, cp = 0;
  friend constexpr bool operator==(const Coords&, const Coords&) = default;
};

//! The extents of a mesh, resolved (no `dynamic` left).
struct MeshShape {
  int dp = 1, pp = 1, tp = 1, cp = 1;
  [[nodiscard]] constexpr int size() const noexcept { return dp * pp * tp * cp; }
  //! World rank of `c`: TP varies fastest, then CP, DP, and PP slowest.
  [[nodiscard]] constexpr int rank_of(Coords c) const noexcept { return ((c.pp * dp + c.dp) * cp + c.cp) * tp + c.tp; }
  [[nodiscard]] constexpr Coords coords_of(int rank) const noexcept {
    Coords c;
    c.tp = rank % tp;
    rank /= tp;
    c.cp = rank % cp;
    rank /= cp;
    c.dp = rank % dp;
    c.pp = rank / dp;
    return c;
  }
  [[nodiscard]] constexpr int extent(Axis a) const noexcept {
    return a == Axis::dp ? dp : a == Axis::pp ? pp : a == Axis::tp ? tp : cp;
  }
  friend constexpr bool operator==(const MeshShape&, const MeshShape&) = default;
};

//! A data x pipeline x tensor (x context) parallel mesh over the world's ranks.
//!
//! Each extent is a positive integer or `parallax::dynamic` (at most one), resolved from the world size.
//! Ranks are laid out with TP varying fastest, then CP, then DP, with PP slowest: TP exchanges the most
//! bytes per step (two collectives per layer), so its ranks are neighbours, i.e. GPUs of one node on
//! NVLink; CP (ring attention) comes next; DP reduces once per step; PP sends only activations between
//! stage boundaries and tolerates the slowest links.
//!
//! @tparam DP, PP, TP, CP extents or `dynamic`.
//! @code
//! using Mesh = parallax::DeviceMesh<2, 2, 2>;        // 8 ranks; Mesh::size == 8
//! Mesh mesh(rank);
//! mesh.tp().all_reduce(y.view());                   // over this rank's TP group
//! @endcode
template <int DP, int PP, int TP, int CP = 1>
class DeviceMesh {
  static_assert(DP > 0 || DP == dynamic, "DeviceMesh: the DP extent must be a positive integer or parallax::dynamic");
  static_assert(PP > 0 || PP == dynamic, "DeviceMesh: the PP extent must be a positive integer or parallax::dynamic");
  static_assert(TP > 0 || TP == dynamic, "DeviceMesh: the TP extent must be a positive integer or parallax::dynamic");
  static_assert(CP > 0 || CP == dynamic, "DeviceMesh: the CP extent must be a positive integer or parallax::dynamic");
  static constexpr int dynamic_count = (DP == dynamic) + (PP == dynamic) + (TP == dynamic) + (CP == dynamic);
  static_assert(dynamic_count <= 1, "DeviceMesh: at most one extent may be parallax::dynamic");

 public:
  //! Compile-time extents (`dynamic` where resolved at run time).
  static constexpr int static_dp = DP, static_pp = PP, static_tp = TP, static_cp = CP;
  //! Whether every extent is known at compile time.
  static constexpr bool is_static = dynamic_count == 0;
  //! Number of ranks, or `dynamic` when one extent is.
  static constexpr int size = is_static ? DP * PP * TP * CP : dynamic;

  //! The mesh shape for a world of `world_size` ranks, or an error naming the numbers.
  [[nodiscard]] static MeshShape resolve(int world_size, int rank = -1) {
    const int known = (DP == dynamic ? 1 : DP) * (PP == dynamic ? 1 : PP) * (TP == dynamic ? 1 : TP) *
                      (CP == dynamic ? 1 : CP);
    if (is_static && world_size != known)
      throw Error(fmt::format("{}: world size {} does not match the mesh's {} ranks", name(), world_size, known), rank);
    if (!is_static && (world_size <= 0 || world_size % known != 0))
      throw Error(fmt::format("{}: world size {} is not a multiple of the static extents' product {}", name(),
                              world_size, known),
                  rank);
    const int d = world_size / known;
    return {DP == dynamic ? d : DP, PP == dynamic ? d : PP, TP == dynamic ? d : TP, CP == dynamic ? d : CP};
  }

  //! "DeviceMesh<2, dynamic, 2, 1>".
  [[nodiscard]] static std::string name() {
    auto e = [](int x) { return x == dynamic ? std::string("dynamic") : std::to_string(x); };
    return fmt::format("DeviceMesh<{}, {}, {}, {}>", e(DP), e(PP), e(TP), e(CP));
  }

  //! Builds the mesh over `world` (collective over the world: every rank must construct it).
  explicit DeviceMesh(Communicator& world)
      : shape_(resolve(world.size(), world.world_rank())),
        coords_(shape_.coords_of(world.rank())),
        world_(world) {
    const Coords c = coords_;
    const MeshShape s = shape_;
    // color: the coordinates that stay fixed within the group; key: the position along the group.
    tp_ = world.split(((c.pp * s.dp + c.dp) * s.cp + c.cp), c.tp, "tp");
    cp_ = world.split(((c.pp * s.dp + c.dp) * s.tp + c.tp), c.cp, "cp");
    dp_ = world.split(((c.pp * s.cp + c.cp) * s.tp + c.tp), c.dp, "dp");
    pp_ = world.split(((c.dp * s.cp + c.cp) * s.tp + c.tp), c.pp, "pp");
    dp_cp_ = world.split(c.pp * s.tp + c.tp, c.dp * s.cp + c.cp, "dp_cp");
    mp_ = world.split(c.dp * s.cp + c.cp, c.pp * s.tp + c.tp, "pp_tp");
  }
  //! Builds the mesh over the rank's world group; modules built on this mesh use the rank's context and
  //! allocator (see `mesh_rank`).
  template <Backend B>
  explicit DeviceMesh(Rank<B>& rank) : DeviceMesh(rank.world()) {
    rank_ = &rank;
    rank_backend_ = B::name;
  }

  [[nodiscard]] const MeshShape& shape() const noexcept { return shape_; }
  [[nodiscard]] const Coords& coords() const noexcept { return coords_; }
  [[nodiscard]] int rank() const { return world_.rank(); }
  [[nodiscard]] int world_size() const noexcept { return shape_.size(); }
  [[nodiscard]] int extent(Axis a) const noexcept { return shape_.extent(a); }

  [[nodiscard]] int dp_size() const noexcept { return shape_.dp; }
  [[nodiscard]] int pp_size() const noexcept { return shape_.pp; }
  [[nodiscard]] int tp_size() const noexcept { return shape_.tp; }
  [[nodiscard]] int cp_size() const noexcept { return shape_.cp; }
  [[nodiscard]] int dp_rank() const noexcept { return coords_.dp; }
  [[nodiscard]] int pp_rank() const noexcept { return coords_.pp; }
  [[nodiscard]] int tp_rank() const noexcept { return coords_.tp; }
  [[nodiscard]] int cp_rank() const noexcept { return coords_.cp; }

  //! One group per axis: the ranks that differ from this one only along that axis.
  [[nodiscard]] Communicator& dp() noexcept { return dp_; }
  [[nodiscard]] Communicator& pp() noexcept { return pp_; }
  [[nodiscard]] Communicator& tp() noexcept { return tp_; }
  [[nodiscard]] Communicator& cp() noexcept { return cp_; }
  [[nodiscard]] Communicator& group(Axis a) noexcept {
    return a == Axis::dp ? dp_ : a == Axis::pp ? pp_ : a == Axis::tp ? tp_ : cp_;
  }
  //! DP x CP: the ranks holding replicas of the same parameters (gradient reduction).
  [[nodiscard]] Communicator& dp_cp() noexcept { return dp_cp_; }
  //! PP x TP: all model-parallel shards of one replica (global gradient norm, checkpoint shards).
  [[nodiscard]] Communicator& model_parallel() noexcept { return mp_; }
  [[nodiscard]] Communicator& world() noexcept { return world_; }

  //! The rank this mesh was built from, as a `Rank<B>`; throws if it was built from a bare communicator
  //! or from a rank of another backend. Prefer the free function `mesh_rank<B>(mesh)`.
  template <Backend B>
  [[nodiscard]] Rank<B>& backend_rank() const {
    if (rank_ == nullptr)
      throw Error(fmt::format("{}: built from a communicator, not a Rank; build it from the Rank<{}> to create modules "
                              "on it",
                              name(), B::name),
                  world_rank_or_unknown());
    if (std::string_view(rank_backend_) != B::name)
      throw Error(fmt::format("{}: built from a Rank of the {} backend, asked for the {} backend", name(),
                              rank_backend_, B::name),
                  world_rank_or_unknown());
    return *static_cast<Rank<B>*>(rank_);
  }

 private:
  [[nodiscard]] int world_rank_or_unknown() const { return world_.valid() ? world_.world_rank() : -1; }

  MeshShape shape_;
  Coords coords_;
  Communicator world_, dp_, pp_, tp_, cp_, dp_cp_, mp_;
  void* rank_ = nullptr;              // the Rank<B> the mesh was built from, if any
  const char* rank_backend_ = "";     // its backend's name
};

//! The `Rank<B>` a mesh was built from: its backend context and allocator are what modules use.
template <Backend B, class Mesh>
[[nodiscard]] Rank<B>& mesh_rank(const Mesh& mesh) {
  return mesh.template backend_rank<B>();
}

}  // namespace parallax
