// FlatLayout: buckets by bytes, padding to the group size, each rank's slice, pieces of a range, bad input.
#include <catch2/catch.hpp>

#include <tuple>
#include <vector>

#include <parallax/dp/flat_layout.hpp>

#include "../support/support.hpp"

namespace px = parallax;
using px::dp::FlatLayout;
using px::test::error_of;

TEST_CASE("FlatLayout groups parameters into padded buckets", "[dp][layout]") {
  // 35 | 7 + 21 + 3 with 40-element buckets; over 4 ranks: 36 + 32 padded, one zero each.
  const std::vector<std::int64_t> numels{35, 7, 21, 3};
  FlatLayout l(numels, 4, 40 * 4, 4);
  REQUIRE(l.buckets().size() == 2);
  CHECK(l.bucket(0).first == 0);
  CHECK(l.bucket(0).count == 1);
  CHECK(l.bucket(0).padded == 36);
  CHECK(l.bucket(1).first == 1);
  CHECK(l.bucket(1).count == 3);
  CHECK(l.bucket(1).offset == 36);
  CHECK(l.bucket(1).numel == 31);
  CHECK(l.bucket(1).padded == 32);
  CHECK(l.bucket(1).shard_offset == 9);
  CHECK(l.numel() == 66);
  CHECK(l.padded_numel() == 68);
  CHECK(l.padding() == 2);
  CHECK(l.shard_numel() == 17);
  CHECK(l.slot(2).bucket == 1);
  CHECK(l.slot(2).offset == 36 + 7);
  CHECK(l.slice_offset(1, 3) == 36 + 24);

  // One rank: no padding; a parameter larger than a bucket gets its own.
  FlatLayout one(numels, 4, 8 * 4, 1);
  CHECK(one.buckets().size() == 4);  // 35 | 7 | 21 | 3 with 8-element buckets
  CHECK(one.padding() == 0);
  CHECK(one.shard_numel() == one.padded_numel());
}

TEST_CASE("FlatLayout lists the parameter pieces of a rank's slice", "[dp][layout]") {
  FlatLayout l(std::vector<std::int64_t>{7, 21, 3}, 2, 1000, 4);  // one bucket of 31, padded to 32
  std::vector<std::tuple<std::size_t, std::int64_t, std::int64_t, std::int64_t>> pieces;
  const std::int64_t at = l.slice_offset(0, 3);  // elements 24..31: the end of parameter 1, parameter 2, padding
  l.for_each_piece(0, at, at + 8, [&](std::size_t i, std::int64_t off, std::int64_t full, std::int64_t n) {
    pieces.emplace_back(i, off, full, n);
  });
  REQUIRE(pieces.size() == 2);
  CHECK(pieces[0] == std::tuple<std::size_t, std::int64_t, std::int64_t, std::int64_t>{1, 17, 24, 4});
  CHECK(pieces[1] == std::tuple<std::size_t, std::int64_t, std::int64_t, std::int64_t>{2, 0, 28, 3});
}

TEST_CASE("FlatLayout rejects a bad group size and buckets too small for one element", "[dp][layout][errors]") {
  const std::vector<std::int64_t> numels{4};
  CHECK_THAT(error_of([&] { FlatLayout(numels, 4, 64, 0); }), Catch::Contains("group size 0 is not positive"));
  CHECK_THAT(error_of([&] { FlatLayout(numels, 4, 2, 2); }),
             Catch::Contains("bucket_bytes 2 holds no element of 4 bytes"));
}
