// ShardSpec: shapes and offsets of shards, assemble/extract round trips, init_shard equals the slice of the global init.
#include <catch2/catch.hpp>

#include <parallax/backend/host/memory.hpp>
#include <parallax/nn/shard_spec.hpp>

#include "../support/support.hpp"

namespace px = parallax;
using px::nn::ShardSpec;

TEST_CASE("ShardSpec: local shape, blocks and offsets", "[nn][shard_spec]") {
  const auto qkv = ShardSpec::split("qkv", px::Shape{12, 4}, px::Axis::tp, 0, 2, 1, 3);
  CHECK(qkv.local_shape() == px::Shape{6, 4});
  CHECK(qkv.block_length() == 4);
  CHECK(qkv.piece_length() == 2);
  CHECK(qkv.offset(0) == 2);
  CHECK(qkv.offset(2) == 10);
  CHECK(qkv.sharded());
  CHECK_FALSE(ShardSpec::replicated("b", px::Shape{4}).sharded());
}

TEST_CASE("ShardSpec: assemble and extract are inverse and agree with init_shard", "[nn][shard_spec]") {
  struct Index {  // an init whose value is the global index, so positions are visible
    float operator()(std::uint64_t k) const { return static_cast<float>(k); }
  };
  const px::Shape g{18, 6, 6};
  std::vector<float> full(static_cast<std::size_t>(g.numel()));
  for (std::size_t i = 0; i < full.size(); ++i) full[i] = static_cast<float>(i);
  for (int dim = 0; dim < 3; ++dim)
    for (int parts : {1, 2, 3})
      for (int blocks : {1, 3}) {
        if (blocks > 1 && dim != 0) continue;
        const auto spec = ShardSpec::split("w", g, px::Axis::tp, dim, parts, 0, blocks);
        std::vector<std::vector<float>> shards;
        for (int i = 0; i < parts; ++i) {
          shards.push_back(px::nn::extract<float>(spec.shard(i), full));
          std::vector<float> init(shards.back().size());
          px::nn::init_shard(px::View<float, px::host::Memory>(init.data(), spec.local_shape()), spec.shard(i), Index{});
          INFO("dim " << dim << " parts " << parts << " blocks " << blocks << " shard " << i);
          CHECK(init == shards.back());
        }
        CHECK(px::nn::assemble<float>(spec, shards) == full);
      }
}

TEST_CASE("ShardSpec: bad splits and shard sizes are errors naming the parameter", "[nn][shard_spec][errors]") {
  using px::test::error_of;
  CHECK_THAT(error_of([] { (void)ShardSpec::split("fc.weight", px::Shape{10, 4}, px::Axis::tp, 0, 4, 0); }),
             Catch::Contains("ShardSpec 'fc.weight': dimension 0 of [10, 4] (10 in 1 block(s)) does not divide into 4 parts over tp"));
  CHECK_THAT(error_of([] { (void)ShardSpec::split("w", px::Shape{10, 4}, px::Axis::tp, 2, 2, 0); }),
             Catch::Contains("split dimension 2 is outside shape [10, 4]"));
  CHECK_THAT(error_of([] { (void)ShardSpec::split("w", px::Shape{6, 6}, px::Axis::tp, 1, 2, 0, 3); }),
             Catch::Contains("a blocked split must be along dimension 0"));
  CHECK_THAT(error_of([] { (void)ShardSpec::split("w", px::Shape{6}, px::Axis::tp, 0, 2, 2); }),
             Catch::Contains("shard 2 of 2 parts"));
  const auto spec = ShardSpec::split("w", px::Shape{4, 2}, px::Axis::tp, 0, 2, 0);
  std::vector<std::vector<float>> one{std::vector<float>(4)};
  CHECK_THAT(error_of([&] { (void)px::nn::assemble<float>(spec, one); }), Catch::Contains("1 shards given, the spec has 2 parts"));
  std::vector<float> wrong(5);
  CHECK_THAT(error_of([&] { (void)px::nn::extract<float>(spec, wrong); }), Catch::Contains("5 elements given for global shape [4, 2]"));
}
