// 01_hello_mesh — the first parallax program: 8 ranks on CPU threads, a 2 x 2 x 2 mesh, a sharded
// tensor initialised so that its shards equal slices of the unsharded tensor, and collectives over
// each mesh axis. Run: ./build/examples/01_hello_mesh/hello_mesh
#include <parallax/parallax.hpp>

#include <cstdio>
#include <string>
#include <vector>

namespace px = parallax;
using B = px::host::Backend;
using Mesh = px::DeviceMesh<2, 2, 2>;  // DP x PP x TP = 8 ranks

int main() {
  std::vector<std::string> lines(Mesh::size);  // one per rank, printed in rank order at the end
  px::launch<B>(Mesh::size, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    const auto [dp, pp, tp, cp] = mesh.coords();

    // A [4, 8] weight split by columns over TP: this rank holds columns [tp * 4, tp * 4 + 4).
    const px::Shape global{4, 8};
    const std::int64_t cols = global[1] / mesh.tp_size();
    px::Tensor<float, B::Memory> shard(rank.allocator(), {4, cols}, px::MemoryCategory::parameters);
    px::init::fill(shard.view(), px::init::normal(0.02f, /*seed=*/42), {global, /*dim=*/1, /*offset=*/tp * cols});

    // Sum of squares of the whole weight: each rank's part, summed over the TP group.
    double part = B::sum_squares(rank.context(), shard.cview());
    mesh.tp().all_reduce(px::View<double, B::Memory>(&part, {1}));

    // Gather the shards along TP (as [tp, 4, cols]) and check that they equal the unsharded init.
    px::Tensor<float, B::Memory> gathered(rank.allocator(), {mesh.tp_size(), 4, cols}, px::MemoryCategory::workspace);
    mesh.tp().all_gather(shard.cview().flatten(), gathered.view().flatten());
    px::Tensor<float, B::Memory> full(rank.allocator(), global, px::MemoryCategory::workspace);
    px::init::fill(full.view(), px::init::normal(0.02f, 42));
    bool equal = true;
    for (int t = 0; t < mesh.tp_size(); ++t)
      for (int i = 0; i < 4; ++i)
        for (std::int64_t j = 0; j < cols; ++j) equal = equal && gathered(t, i, j) == full(i, t * cols + j);

    lines[static_cast<std::size_t>(rank.id())] =
        fmt::format("rank {}  (dp {}, pp {}, tp {}, cp {})  {:<14} |W|^2 = {:.6f}  shards == slices: {}  params: {} B",
                    rank.id(), dp, pp, tp, cp, mesh.tp().describe(), part, equal ? "yes" : "NO",
                    rank.memory().live(px::MemoryCategory::parameters));
  });
  for (const auto& line : lines) std::puts(line.c_str());
}
