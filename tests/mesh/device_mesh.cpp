// Tests of DeviceMesh: layout (TP fastest, then CP, DP, PP), per-axis groups, dynamic extents, errors.
#include <catch2/catch.hpp>

#include <parallax/backend/host/backend.hpp>
#include <parallax/comm/launch.hpp>
#include <parallax/mesh/device_mesh.hpp>

#include <string>
#include <vector>

namespace px = parallax;
using B = px::host::Backend;

static_assert(px::DeviceMesh<2, 2, 2>::size == 8);
static_assert(px::DeviceMesh<2, 2, 2>::is_static);
static_assert(px::DeviceMesh<1, 4, 2, 2>::size == 16);
static_assert(px::DeviceMesh<px::dynamic, 2, 2>::size == px::dynamic);
static_assert(!px::DeviceMesh<2, px::dynamic, 2>::is_static);

TEST_CASE("MeshShape: TP varies fastest, then CP, DP, PP", "[mesh]") {
  constexpr px::MeshShape s{2, 3, 2, 2};  // dp, pp, tp, cp
  static_assert(s.size() == 24);
  static_assert(s.rank_of({0, 0, 1, 0}) == 1);   // tp
  static_assert(s.rank_of({0, 0, 0, 1}) == 2);   // cp
  static_assert(s.rank_of({1, 0, 0, 0}) == 4);   // dp
  static_assert(s.rank_of({0, 1, 0, 0}) == 8);   // pp
  for (int r = 0; r < s.size(); ++r) CHECK(s.rank_of(s.coords_of(r)) == r);
}

TEST_CASE("DeviceMesh::resolve fills the dynamic extent or says why not", "[mesh]") {
  CHECK(px::DeviceMesh<2, px::dynamic, 2>::resolve(16) == px::MeshShape{2, 4, 2, 1});
  CHECK(px::DeviceMesh<px::dynamic, 1, 1>::resolve(3) == px::MeshShape{3, 1, 1, 1});
  using Static = px::DeviceMesh<2, 2, 2>;
  using Dynamic = px::DeviceMesh<2, px::dynamic, 2>;
  CHECK_THROWS_WITH(Static::resolve(6, 1),
                    Catch::Contains("DeviceMesh<2, 2, 2, 1>: world size 6 does not match the mesh's 8 ranks") &&
                        Catch::Contains("rank 1"));
  CHECK_THROWS_WITH(Dynamic::resolve(10),
                    Catch::Contains("world size 10 is not a multiple of the static extents' product 4"));
}

namespace {
struct Seen {
  px::Coords coords;
  std::vector<int> dp, pp, tp, cp, dp_cp, mp;
  int tp_sum = 0;
};

template <class Mesh>
std::vector<Seen> run_mesh(int world) {
  std::vector<Seen> seen(static_cast<std::size_t>(world));
  px::launch<B>(world, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    Seen& s = seen[static_cast<std::size_t>(rank.id())];
    s.coords = mesh.coords();
    s.dp = mesh.dp().members();
    s.pp = mesh.pp().members();
    s.tp = mesh.tp().members();
    s.cp = mesh.cp().members();
    s.dp_cp = mesh.dp_cp().members();
    s.mp = mesh.model_parallel().members();
    std::int32_t v = rank.id();
    mesh.tp().all_reduce(px::View<std::int32_t, px::host::Memory>(&v, px::Shape{1}));
    s.tp_sum = v;
  });
  return seen;
}

// Every group holds exactly the ranks that agree with this one on all other axes, ordered along its axis.
void check_groups(const std::vector<Seen>& seen, const px::MeshShape& shape) {
  for (int r = 0; r < shape.size(); ++r) {
    const Seen& s = seen[static_cast<std::size_t>(r)];
    CHECK(s.coords == shape.coords_of(r));
    auto along = [&](px::Axis a) {
      std::vector<int> m;
      for (int i = 0; i < shape.extent(a); ++i) {
        px::Coords c = s.coords;
        (a == px::Axis::dp ? c.dp : a == px::Axis::pp ? c.pp : a == px::Axis::tp ? c.tp : c.cp) = i;
        m.push_back(shape.rank_of(c));
      }
      return m;
    };
    CHECK(s.dp == along(px::Axis::dp));
    CHECK(s.pp == along(px::Axis::pp));
    CHECK(s.tp == along(px::Axis::tp));
    CHECK(s.cp == along(px::Axis::cp));
    CHECK(s.dp_cp.size() == static_cast<std::size_t>(shape.dp * shape.cp));
    CHECK(s.mp.size() == static_cast<std::size_t>(shape.pp * shape.tp));
    int tp_sum = 0;
    for (int m : s.tp) tp_sum += m;
    CHECK(s.tp_sum == tp_sum);
  }
}
}  // namespace

TEST_CASE("DeviceMesh<2, 2, 2>: coordinates and groups on 8 ranks", "[mesh]") {
  check_groups(run_mesh<px::DeviceMesh<2, 2, 2>>(8), {2, 2, 2, 1});
}

TEST_CASE("DeviceMesh<2, 1, 2, 2>: context parallel axis", "[mesh]") {
  check_groups(run_mesh<px::DeviceMesh<2, 1, 2, 2>>(8), {2, 1, 2, 2});
}

TEST_CASE("DeviceMesh<dynamic, 3, 1>: the dynamic extent comes from the world size", "[mesh]") {
  check_groups(run_mesh<px::DeviceMesh<px::dynamic, 3, 1>>(6), {2, 3, 1, 1});
}

TEST_CASE("DeviceMesh: a world that does not fit throws on every rank", "[mesh]") {
  std::vector<std::string> errors(6);
  auto body = [&](px::Rank<B>& rank) {
    try {
      px::DeviceMesh<2, 2, 2> mesh(rank);
    } catch (const px::Error& e) {
      errors[static_cast<std::size_t>(rank.id())] = e.what();
      throw;
    }
  };
  CHECK_THROWS_WITH(px::launch<B>(6, body), Catch::Contains("world size 6 does not match the mesh's 8 ranks"));
  for (const auto& e : errors) CHECK_THAT(e, Catch::Contains("world size 6 does not match"));
}
