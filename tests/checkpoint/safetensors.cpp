// safetensors: round trips of every dtype (scalars, empty tensors), the reference layout byte for byte,
// conversions between floating types, and every malformed file and misuse.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include <parallax/checkpoint/safetensors.hpp>

#include "../support/support.hpp"
#include "temp_dir.hpp"

namespace px = parallax;
using px::Shape;
using px::checkpoint::SafetensorsFile;
using px::checkpoint::SafetensorsWriter;
using px::test::error_of;

namespace {

// A file: 8-byte little-endian `length` (default: the header's), the header text, then `data`.
std::string raw_file(const std::string& header, const std::string& data = {}, std::optional<std::uint64_t> length = {}) {
  const std::uint64_t n = length.value_or(header.size());
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xffu);
  return s + header + data;
}

// The message of opening a file holding `bytes`.
std::string open_error(const px::test::TempDir& dir, const std::string& bytes) {
  const auto p = dir.write("bad.safetensors", bytes);
  return error_of([&] { (void)SafetensorsFile::open(p); });
}

template <class T>
std::vector<T> values(std::initializer_list<float> v) {
  std::vector<T> out;
  for (float f : v) out.push_back(T(f));
  return out;
}

}  // namespace

TEST_CASE("safetensors round trip keeps every dtype, shape and value exactly", "[checkpoint][safetensors]") {
  px::test::TempDir dir;
  const auto f32 = values<float>({1.5f, -2.25f, 0.f, -0.f, 3e-39f, 65504.f});
  const auto b16 = values<px::bf16>({1.f, -0.5f, 3.f, 1e30f});
  const auto h16 = values<px::fp16>({0.1f, -2.f, 6e-8f, 100.f, 1.f, 2.f, 3.f, 4.f});
  const std::vector<double> f64{0.1, -1e300, 3.0};
  const std::vector<std::int32_t> i32{-7, 0, 2147483647, -2147483647 - 1, 5};
  const std::vector<std::int64_t> i64{std::int64_t{1} << 40};
  const std::vector<float> none;

  SafetensorsWriter w;
  w.add("layer.weight", f32, Shape{2, 3})
      .add("half", h16, Shape{2, 2, 2})
      .add("brain", b16, Shape{4})
      .add("double", f64, Shape{1, 1, 1, 3})
      .add("ids", i32, Shape{5})
      .add("step", i64, Shape{})
      .add("empty", none, Shape{0})
      .add("empty2d", none, Shape{2, 0});
  w.metadata("format", "pt").metadata("note", "ünïcode ok").metadata("format", "parallax");
  w.write(dir / "a.safetensors");

  const auto f = SafetensorsFile::open(dir / "a.safetensors");
  std::vector<std::string> names;
  for (const auto& t : f.tensors()) names.push_back(t.name);
  CHECK(names == std::vector<std::string>{"brain", "double", "empty", "empty2d", "half", "ids", "layer.weight", "step"});
  CHECK(f.metadata().size() == 2);
  CHECK(f.metadata("format") == "parallax");
  CHECK(f.metadata("note") == "ünïcode ok");

  const auto& info = f.info("layer.weight");
  CHECK(info.dtype == px::DType::f32);
  CHECK(info.shape == Shape{2, 3});
  CHECK(info.bytes() == 24);
  CHECK(f.info("step").shape.rank() == 0);
  CHECK(f.info("step").dtype == px::DType::i64);
  CHECK(f.info("half").dtype == px::DType::f16);
  CHECK(f.info("brain").dtype == px::DType::bf16);
  CHECK(f.info("double").shape == Shape{1, 1, 1, 3});
  CHECK(f.info("empty2d").shape == Shape{2, 0});
  CHECK(f.info("empty").bytes() == 0);
  CHECK(f.contains("ids"));
  CHECK_FALSE(f.contains("id"));

  const auto same_bits = [](const auto& a, const auto& b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
      if (px::test::bits_of(a[i]) != px::test::bits_of(b[i])) return false;
    return true;
  };
  CHECK(same_bits(f.read<float>("layer.weight"), f32));  // -0 and the subnormal survive
  CHECK(same_bits(f.read<px::bf16>("brain"), b16));
  CHECK(same_bits(f.read<px::fp16>("half"), h16));
  CHECK(f.read<double>("double") == f64);
  CHECK(f.read<std::int32_t>("ids") == i32);
  CHECK(f.read<std::int64_t>("step") == i64);
  CHECK(f.read<float>("empty").empty());
  CHECK(f.read<float>("empty2d").empty());
}

TEST_CASE("safetensors writer lays files out as the reference implementation", "[checkpoint][safetensors]") {
  px::test::TempDir dir;
  const std::vector<float> b{1.f, 2.f};
  const std::vector<std::int64_t> a{7};
  const std::string header =
      R"({"__metadata__":{"k":"v"},"a":{"dtype":"I64","shape":[],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})";
  REQUIRE(header.size() == 132);
  std::string data(16, '\0');
  std::memcpy(data.data(), a.data(), 8);
  std::memcpy(data.data() + 8, b.data(), 8);
  const std::string want = raw_file(header + "    ", data);  // padded with spaces to 136

  SafetensorsWriter w1;
  w1.add("b", b, Shape{2}).add("a", a, Shape{}).metadata("k", "v");
  w1.write(dir / "1.safetensors");
  CHECK(px::test::read_file(dir / "1.safetensors") == want);

  SafetensorsWriter w2;  // the order of adding does not matter
  w2.metadata("k", "v").add("a", a, Shape{}).add("b", std::span<const float>(b), Shape{2});
  w2.write(dir / "2.safetensors");
  CHECK(px::test::read_file(dir / "2.safetensors") == want);

  SECTION("larger elements first, then by name; every tensor aligned to its element size") {
    const std::vector<px::fp16> h(3, px::fp16(1.f));
    const std::vector<px::bf16> bf(1, px::bf16(1.f));
    const std::vector<std::int32_t> i(3, 1);
    const std::vector<double> d(1, 1.0);
    SafetensorsWriter w;
    w.add("a16", h, Shape{3}).add("bf", bf, Shape{1}).add("i", i, Shape{3}).add("z32", b, Shape{2});
    w.add("d", d, Shape{1}).add("y32", b, Shape{2}).add("l", a, Shape{1});
    w.write(dir / "3.safetensors");
    const auto f = SafetensorsFile::open(dir / "3.safetensors");
    std::vector<std::pair<std::uint64_t, std::string>> by_offset;
    for (const auto& t : f.tensors()) {
      CHECK(t.begin % px::size_of(t.dtype) == 0);
      by_offset.emplace_back(t.begin, t.name);
    }
    std::sort(by_offset.begin(), by_offset.end());
    std::vector<std::string> order;
    for (const auto& [offset, name] : by_offset) order.push_back(name);
    CHECK(order == std::vector<std::string>{"l", "d", "y32", "z32", "i", "bf", "a16"});
    CHECK(px::test::read_file(dir / "3.safetensors")[0] % 8 == 0);  // header length (low byte) is padded to 8
  }
}

TEST_CASE("safetensors read converts between floating types only", "[checkpoint][safetensors]") {
  px::test::TempDir dir;
  const std::vector<float> f32{0.1f, -3.f, 1e6f};
  const auto b16 = values<px::bf16>({0.1f, -3.f});
  const std::vector<double> f64{0.1, 1e-3};
  const std::vector<std::int32_t> i32{1, 2};
  SafetensorsWriter w;
  w.add("f32", f32, Shape{3}).add("b16", b16, Shape{2}).add("f64", f64, Shape{2}).add("i32", i32, Shape{2});
  w.write(dir / "c.safetensors");
  const auto f = SafetensorsFile::open(dir / "c.safetensors");

  const auto as_b16 = f.read<px::bf16>("f32");
  const auto as_f16 = f.read<px::fp16>("f32");
  for (std::size_t i = 0; i < f32.size(); ++i) {
    CHECK(as_b16[i].bits == px::bf16(f32[i]).bits);  // rounded once, to nearest even
    CHECK(as_f16[i].bits == px::fp16(f32[i]).bits);  // 1e6 overflows to Inf as fp16 does
  }
  CHECK(f.read<double>("f32") == std::vector<double>{double(0.1f), -3.0, 1e6});
  CHECK(f.read<float>("b16") == std::vector<float>{float(b16[0]), -3.f});
  CHECK(f.read<float>("f64") == std::vector<float>{0.1f, 1e-3f});
  CHECK(f.read<px::fp16>("b16")[1].bits == px::fp16(-3.f).bits);

  const auto e1 = error_of([&] { (void)f.read<std::int32_t>("f32"); });
  CHECK_THAT(e1, Catch::Contains("tensor 'f32' is F32, cannot read it as I32"));
  const auto e2 = error_of([&] { (void)f.read<float>("i32"); });
  CHECK_THAT(e2, Catch::Contains("tensor 'i32' is I32, cannot read it as F32"));
  CHECK_THROWS_AS(f.read<std::int64_t>("i32"), px::Error);
}

TEST_CASE("safetensors file with no tensors or metadata", "[checkpoint][safetensors]") {
  px::test::TempDir dir;
  SafetensorsWriter().write(dir / "e.safetensors");
  CHECK(px::test::read_file(dir / "e.safetensors") == raw_file("{}      "));
  const auto f = SafetensorsFile::open(dir / "e.safetensors");
  CHECK(f.tensors().empty());
  CHECK(f.metadata().empty());
  CHECK_THAT(error_of([&] { (void)f.info("x"); }), Catch::Contains("no tensor 'x' (has none)"));
  CHECK_THAT(error_of([&] { (void)f.metadata("T"); }), Catch::Contains("no metadata key 'T' (has none)"));
}

TEST_CASE("safetensors missing names list what the file has", "[checkpoint][safetensors][errors]") {
  px::test::TempDir dir;
  SafetensorsWriter w;
  const std::vector<float> v{1.f};
  for (const char* n : {"a", "b", "c", "d", "e", "f", "g"}) w.add(n, v, Shape{1});
  w.metadata("T", "8");
  w.write(dir / "m.safetensors");
  const auto f = SafetensorsFile::open(dir / "m.safetensors");
  const auto e = error_of([&] { (void)f.read<float>("h.0.mlp.fc.weight"); });
  CHECK_THAT(e, Catch::Contains("m.safetensors': no tensor 'h.0.mlp.fc.weight' (has 'a', 'b', 'c', 'd', 'e', ... (7 in all))"));
  CHECK_THAT(error_of([&] { (void)f.metadata("B"); }), Catch::Contains("no metadata key 'B' (has 'T')"));
}

TEST_CASE("safetensors open rejects malformed files", "[checkpoint][safetensors][errors]") {
  px::test::TempDir dir;
  const std::string ok_entry = R"("w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]})";
  const std::string data16(16, '\x01');
  // The well-formed version of the files below opens.
  const auto good = dir.write("good.safetensors", raw_file("{" + ok_entry + "}", data16));
  CHECK(SafetensorsFile::open(good).info("w").shape == Shape{2, 2});

  CHECK_THAT(error_of([&] { (void)SafetensorsFile::open(dir / "nope.safetensors"); }),
             Catch::Contains("SafetensorsFile::open: cannot open '") && Catch::Contains("nope.safetensors' (no such file)"));
  CHECK_THAT(error_of([&] { (void)SafetensorsFile::open(dir / "."); }), Catch::Contains("(not a regular file)"));
  CHECK_THAT(open_error(dir, "12345"), Catch::Contains("is 5 bytes, shorter than the 8-byte header length"));
  CHECK_THAT(open_error(dir, ""), Catch::Contains("is 0 bytes, shorter than the 8-byte header length"));
  CHECK_THAT(open_error(dir, raw_file("{}", "", 11)), Catch::Contains("header length 11 exceeds the 2 bytes after it"));
  CHECK_THAT(open_error(dir, raw_file("{}", "", ~std::uint64_t{0})),
             Catch::Contains("header length 18446744073709551615 exceeds the 2 bytes after it"));
  CHECK_THAT(open_error(dir, raw_file(R"({"w":{"dtype":"F32",)", data16)), Catch::Contains("header is not valid JSON ("));
  CHECK_THAT(open_error(dir, raw_file("[1, 2]")), Catch::Contains("header is JSON array, not an object"));
  CHECK_THAT(open_error(dir, raw_file(R"({"__metadata__":{"T":8}})")),
             Catch::Contains("__metadata__ value of 'T' is JSON number, not a string"));
  CHECK_THAT(open_error(dir, raw_file(R"({"__metadata__":[]})")), Catch::Contains("__metadata__ is not an object"));

  // data_offsets outside the data section, reversed, or not dtype size x elements.
  CHECK_THAT(open_error(dir, raw_file("{" + ok_entry + "}", std::string(15, '\0'))),
             Catch::Contains("tensor 'w': data_offsets [0, 16] are outside the 15-byte data section"));
  CHECK_THAT(open_error(dir, raw_file(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", data16)),
             Catch::Contains("tensor 'w': data_offsets [8, 4] are outside the 16-byte data section"));
  CHECK_THAT(open_error(dir, raw_file(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", data16)),
             Catch::Contains("tensor 'w': data_offsets [0, 16] span 16 bytes, but F32 [3] needs 12"));
  CHECK_THAT(open_error(dir, raw_file(R"({"w":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,16]}})", data16)),
             Catch::Contains("span 16 bytes, but BF16 [2, 2] needs 8"));
  CHECK_THAT(open_error(dir, raw_file(R"({"w":{"dtype":"I64","shape":[4294967296,4294967296],"data_offsets":[0,16]}})",
                                      data16)),
             Catch::Contains("but I64 [4294967296, 4294967296] needs more than 2^64"));

  // Entries that are not what safetensors allows.
  CHECK_THAT(open_error(dir, raw_file(R"({"w":{"dtype":"U8","shape":[16],"data_offsets":[0,16]}})", data16)),
             Catch::Contains("tensor 'w': unknown dtype 'U8' (parallax reads F32, BF16, F16, F64, I32 and I64)"));
  CHECK_THAT(open_error(dir, raw_file(R"({"w":{"dtype":"F32","shape":[1,1,1,2,2],"data_offsets":[0,16]}})", data16)),
             Catch::Contains("tensor 'w': shape [1,1,1,2,2] has rank 5, more than parallax's maximum of 4"));
  CHECK_THAT(open_error(dir, raw_file(R"({"w":{"dtype":"F32","shape":[-2,-2],"data_offsets":[0,16]}})", data16)),
             Catch::Contains("tensor 'w': shape [-2,-2] is not a list of non-negative integers"));
  CHECK_THAT(open_error(dir, raw_file(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0]}})", data16)),
             Catch::Contains("tensor 'w': data_offsets [0] is not [begin, end] in non-negative integers"));
  CHECK_THAT(open_error(dir, raw_file(R"({"w":{"dtype":"F32","shape":[4]}})", data16)),
             Catch::Contains("tensor 'w': entry is not an object with dtype, shape and data_offsets"));
  CHECK_THAT(open_error(dir, raw_file(R"({"w":{"dtype":32,"shape":[4],"data_offsets":[0,16]}})", data16)),
             Catch::Contains("tensor 'w': dtype is not a string"));
}

TEST_CASE("safetensors writer rejects bad tensors and unwritable paths", "[checkpoint][safetensors][errors]") {
  px::test::TempDir dir;
  const std::vector<float> v{1.f, 2.f, 3.f};
  SafetensorsWriter w;
  CHECK_THAT(error_of([&] { w.add("w", v, Shape{2, 2}); }),
             Catch::Contains("SafetensorsWriter::add: tensor 'w' has 3 elements, its shape [2, 2] needs 4"));
  CHECK_THAT(error_of([&] { w.add("__metadata__", v, Shape{3}); }), Catch::Contains("'__metadata__' is reserved"));
  w.add("w", v, Shape{3});
  CHECK_THAT(error_of([&] { w.add("w", v, Shape{3, 1}); }), Catch::Contains("tensor 'w' was already added"));
  CHECK_THAT(error_of([&] { w.write(dir / "no" / "such" / "dir.safetensors"); }),
             Catch::Contains("SafetensorsWriter::write: cannot open '") && Catch::Contains("dir.safetensors' for writing"));
  w.metadata("bad", std::string("\xff\xfe"));
  CHECK_THAT(error_of([&] { w.write(dir / "x.safetensors"); }), Catch::Contains("is not valid UTF-8"));
}
