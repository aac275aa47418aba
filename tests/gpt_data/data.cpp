// examples/05_train_gpt/data.hpp: the addition task (deterministic, disjoint sets, answer-only targets), data
// files (text and uint16, floor((n - 1) / seq) sequences shifted by one), [T, B] batches and their DP/microbatch
// slices, accuracy, and every bad input.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <parallax/checkpoint/safetensors.hpp>

#include "../../examples/05_train_gpt/data.hpp"
#include "../checkpoint/temp_dir.hpp"
#include "../support/support.hpp"

namespace px = parallax;
using px::test::error_of;

namespace {

// Sequence s of a dataset as text.
std::string text_of(const gpt::Dataset& d, std::int64_t s) {
  std::string out;
  for (std::int64_t t = 0; t < d.seq; ++t) out += static_cast<char>(d.tokens[static_cast<std::size_t>(s * d.seq + t)]);
  return out;
}

// The problem of each sequence of a dataset, as a * 10^digits + b.
std::vector<std::int64_t> problems_of(const gpt::Dataset& d, int digits) {
  std::vector<std::int64_t> out;
  const auto width = static_cast<std::size_t>(digits);
  const std::int64_t base = digits == 1 ? 10 : digits == 2 ? 100 : 1000;
  for (std::int64_t s = 0; s < d.size(); ++s) {
    const auto text = text_of(d, s);
    out.push_back(std::stoll(text.substr(0, width)) * base + std::stoll(text.substr(width + 1, width)));
  }
  return out;
}

}  // namespace

TEST_CASE("addition task: problem text, answer-only targets shifted by one", "[gpt_data][addition]") {
  CHECK(gpt::addition_problem(7, 35, 2) == "07+35=240\n");
  CHECK(gpt::addition_problem(99, 99, 2) == "99+99=891\n");
  CHECK(gpt::addition_problem(5, 123, 3) == "005+123=8210\n");
  CHECK(gpt::addition_problem(9, 9, 1) == "9+9=81\n");

  const auto task = gpt::addition(16, {.digits = 2, .heldout = 100, .seed = 3});
  const auto& d = task.train;
  CHECK(d.seq == 16);
  CHECK(d.vocab == 256);
  CHECK(d.size() == 9900);  // one problem per sequence
  CHECK(task.heldout.size() == 100);
  REQUIRE(d.targets.size() == d.tokens.size());
  for (std::int64_t s = 0; s < d.size(); ++s) {
    const auto text = text_of(d, s);
    INFO(text);
    // "ab+cd=" and the reversed sum, padded.
    CHECK(text == gpt::addition_problem(std::stoi(text.substr(0, 2)), std::stoi(text.substr(3, 2)), 2) +
                      std::string(6, '\n'));
    // Targets: the 3 answer digits (the tokens at 6, 7, 8), predicted at 5, 6, 7; nothing else.
    std::vector<std::int32_t> want(16, gpt::ignore_index);
    for (std::size_t t = 5; t <= 7; ++t) want[t] = static_cast<unsigned char>(text[t + 1]);
    CHECK(std::vector<std::int32_t>(d.targets.begin() + s * 16, d.targets.begin() + (s + 1) * 16) == want);
  }
  CHECK(gpt::addition(10).train.size() == 9000);  // no padding
}

TEST_CASE("addition task: deterministic from the seed; training and held-out sets are disjoint and complete",
          "[gpt_data][addition]") {
  for (int digits : {1, 2, 3}) {
    INFO("digits " << digits);
    const std::int64_t seq = 3 * digits + 4, heldout = digits == 1 ? 20 : 500;  // no padding
    const auto a = gpt::addition(seq, {.digits = digits, .heldout = heldout, .seed = 11});
    if (digits < 3) {  // (3 digits: a million problems; generated once)
      const auto b = gpt::addition(seq, {.digits = digits, .heldout = heldout, .seed = 11});
      const auto c = gpt::addition(seq, {.digits = digits, .heldout = heldout, .seed = 12});
      CHECK(a.train.tokens == b.train.tokens);
      CHECK(a.heldout.targets == b.heldout.targets);
      CHECK(a.heldout.tokens != c.heldout.tokens);
    }
    // Every problem exactly once, in one set or the other.
    const auto train = problems_of(a.train, digits), held = problems_of(a.heldout, digits);
    const std::size_t all = digits == 1 ? 100u : digits == 2 ? 10000u : 1000000u;
    CHECK(held.size() == static_cast<std::size_t>(heldout));
    CHECK(train.size() + held.size() == all);
    std::vector<int> seen(all, 0);
    for (const auto p : train) seen[static_cast<std::size_t>(p)] += 1;
    for (const auto p : held) seen[static_cast<std::size_t>(p)] += 2;
    CHECK(std::count(seen.begin(), seen.end(), 1) == static_cast<std::ptrdiff_t>(all - held.size()));
    CHECK(std::count(seen.begin(), seen.end(), 2) == static_cast<std::ptrdiff_t>(held.size()));
  }
}

TEST_CASE("addition task: bad options", "[gpt_data][addition][errors]") {
  CHECK(error_of([] { (void)gpt::addition(64, {.digits = 4}); }) == "gpt::addition: digits 4 is not 1, 2 or 3");
  CHECK(error_of([] { (void)gpt::addition(64, {.digits = 1}); }) ==
        "gpt::addition: 1000 held-out problems of 100 is not in [1, 50]");
  CHECK(error_of([] { (void)gpt::addition(64, {.heldout = 0}); }) ==
        "gpt::addition: 0 held-out problems of 10000 is not in [1, 5000]");
  CHECK(error_of([] { (void)gpt::addition(9); }) ==
        "gpt::addition: seq 9 is shorter than one problem (10 tokens, e.g. '00+00=000')");
}

TEST_CASE("batches are [T, B]; training wraps around, evaluation pads, slices tile the batch", "[gpt_data][batch]") {
  gpt::Dataset d{.seq = 3};
  for (std::int32_t s = 0; s < 5; ++s)
    for (std::int32_t t = 0; t < 3; ++t) {
      d.tokens.push_back(10 * s + t);
      d.targets.push_back(10 * s + t + 1);
    }
  REQUIRE(d.size() == 5);

  const auto b = gpt::train_batch(d, 1, 4);  // sequences 4, 0, 1, 2
  CHECK(b.shape() == px::Shape{3, 4});
  CHECK(b.tokens == std::vector<std::int32_t>{40, 0, 10, 20, 41, 1, 11, 21, 42, 2, 12, 22});
  CHECK(b.targets == std::vector<std::int32_t>{41, 1, 11, 21, 42, 2, 12, 22, 43, 3, 13, 23});
  CHECK(gpt::train_batch(d, 5, 4).tokens == gpt::train_batch(d, 0, 4).tokens);  // 20 sequences later: same again

  CHECK(gpt::eval_batches(d, 2) == 3);
  const auto e = gpt::eval_batch(d, 2, 2);  // sequence 4 and one of padding
  CHECK(e.tokens == std::vector<std::int32_t>{40, 0, 41, 0, 42, 0});
  CHECK(e.targets == std::vector<std::int32_t>{41, -100, 42, -100, 43, -100});

  // DP 2 x 2 microbatches of a batch of 8: each slice is [T, 2], and together they are the batch's columns.
  const auto g = gpt::train_batch(d, 0, 8);
  std::vector<std::int32_t> joined;
  for (std::int64_t t = 0; t < 3; ++t)
    for (int r = 0; r < 2; ++r)
      for (int m = 0; m < 2; ++m) {
        const auto s = gpt::slice(g, r, 2, m, 2);
        CHECK(s.shape() == px::Shape{3, 2});
        for (std::int64_t j = 0; j < 2; ++j) {
          joined.push_back(s.tokens[static_cast<std::size_t>(t * 2 + j)]);
          CHECK(s.targets[static_cast<std::size_t>(t * 2 + j)] == s.tokens[static_cast<std::size_t>(t * 2 + j)] + 1);
        }
      }
  CHECK(joined == g.tokens);
  CHECK(gpt::slice(g, 1, 2, 1, 2).tokens == std::vector<std::int32_t>{10, 20, 11, 21, 12, 22});  // sequences 6, 7

  CHECK(error_of([&] { (void)gpt::slice(g, 0, 3, 0, 1); }) ==
        "gpt::slice: batch 8 does not split into DP 3 x 1 microbatches (asked for DP rank 0, microbatch 0)");
  CHECK(error_of([&] { (void)gpt::slice(g, 2, 2, 0, 2); }) ==
        "gpt::slice: batch 8 does not split into DP 2 x 2 microbatches (asked for DP rank 2, microbatch 0)");
  CHECK(error_of([&] { (void)gpt::eval_batch(d, 3, 2); }) ==
        "gpt::eval_batch: batch 3 of 3 (batch size 2, 5 sequences)");
  CHECK(error_of([] { (void)gpt::train_batch(gpt::Dataset{}, 0, 4); }) == "gpt::train_batch: batch 4 from 0 sequences");
}

TEST_CASE("accuracy: a problem counts when all its answer digits are predicted", "[gpt_data][accuracy]") {
  const auto task = gpt::addition(16, {.digits = 2, .heldout = 12, .seed = 5});
  const auto b = gpt::eval_batch(task.heldout, 0, 12);
  auto predicted = b.targets;
  CHECK(gpt::score(b, predicted).correct == 12);
  CHECK(gpt::score(b, predicted).total == 12);
  // Wrong guesses where nothing is counted change nothing; one wrong digit fails its problem only.
  for (std::size_t i = 0; i < predicted.size(); ++i)
    if (b.targets[i] == gpt::ignore_index) predicted[i] = 'x';
  CHECK(gpt::score(b, predicted).correct == 12);
  std::size_t digit = 0;
  while (b.targets[digit] == gpt::ignore_index) ++digit;
  predicted[digit] = predicted[digit] == '0' ? '1' : '0';
  const auto a = gpt::score(b, predicted);
  CHECK(a.correct == 11);
  CHECK(a.value() == Approx(11.0 / 12));
  gpt::Accuracy sum;
  sum += a;
  sum += gpt::score(b, b.targets);
  CHECK(sum.correct == 23);
  CHECK(sum.total == 24);
  // Runs of counted targets are problems, however many a sequence holds: [T = 6, B = 1] with two runs.
  const gpt::Batch two{
      .seq = 6, .batch = 1, .tokens = std::vector<std::int32_t>(6), .targets = {-100, 1, 2, -100, 3, -100}};
  CHECK(gpt::score(two, std::vector<std::int32_t>{0, 1, 2, 0, 3, 0}).correct == 2);
  CHECK(gpt::score(two, std::vector<std::int32_t>{0, 1, 0, 0, 3, 0}).correct == 1);
  CHECK(gpt::score(two, std::vector<std::int32_t>{0, 1, 0, 0, 3, 0}).total == 2);
  CHECK(error_of([&] { (void)gpt::score(b, std::vector<std::int32_t>(3)); }) ==
        "gpt::score: 3 predictions for a batch of 192 targets");
}

TEST_CASE("data files: text and uint16 tokens give floor((n - 1) / seq) sequences shifted by one", "[gpt_data][file]") {
  px::test::TempDir dir;
  CHECK(gpt::format_of("a/train.bin") == gpt::FileFormat::u16);
  CHECK(gpt::format_of("x.u16") == gpt::FileFormat::u16);
  CHECK(gpt::format_of("input.txt") == gpt::FileFormat::text);
  CHECK(gpt::format_of("README") == gpt::FileFormat::text);

  const auto text = gpt::load_file(dir.write("t.txt", "hello world\n"), 4);  // 12 tokens: 2 sequences
  CHECK(text.size() == 2);
  CHECK(text.vocab == 256);
  CHECK(text.tokens == std::vector<std::int32_t>{'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o'});
  CHECK(text.targets == std::vector<std::int32_t>{'e', 'l', 'l', 'o', ' ', 'w', 'o', 'r'});
  CHECK(gpt::load_file(dir.write("u.txt", "\xff\x80"), 1).tokens == std::vector<std::int32_t>{255});  // bytes, unsigned

  // Little-endian uint16: 9 tokens, seq 4 -> 2 sequences (the 9th token is only a target).
  std::string bytes;
  for (int v : {0, 1, 256, 300, 65535, 7, 8, 9, 10}) bytes += {static_cast<char>(v & 0xff), static_cast<char>(v >> 8)};
  const auto ids = gpt::load_file(dir.write("ids.bin", bytes), 4, 65536);
  CHECK(ids.size() == 2);
  CHECK(ids.tokens == std::vector<std::int32_t>{0, 1, 256, 300, 65535, 7, 8, 9});
  CHECK(ids.targets == std::vector<std::int32_t>{1, 256, 300, 65535, 7, 8, 9, 10});
  CHECK(gpt::load_file(dir.write("ids.u16", bytes), 8, 65536).size() == 1);

  // The GPT-2 fixture's token file holds the tokens its loss was computed on.
  const auto fixture = px::checkpoint::SafetensorsFile::open(PARALLAX_FIXTURE_DIR "/gpt2_tiny/gpt2_tiny.safetensors");
  const auto seq = std::stoll(fixture.metadata("seq"));
  const auto tokens = nlohmann::json::parse(fixture.metadata("tokens")).get<std::vector<std::int32_t>>();
  const auto d = gpt::load_file(PARALLAX_FIXTURE_DIR "/gpt2_tiny/gpt2_tiny.u16", seq, 64);
  CHECK(d.size() == 4);
  CHECK(d.tokens == std::vector<std::int32_t>(tokens.begin(), tokens.end() - 1));
  CHECK(d.targets == std::vector<std::int32_t>(tokens.begin() + 1, tokens.end()));
}

TEST_CASE("data files: missing, empty, short, odd-sized, and out-of-vocabulary files are errors",
          "[gpt_data][file][errors]") {
  px::test::TempDir dir;
  const auto missing = (dir / "none.bin").string();
  CHECK(error_of([&] { (void)gpt::load_file(missing, 4); }) ==
        "gpt::read_tokens: cannot open '" + missing + "' (no such file)");
  CHECK(error_of([&] { (void)gpt::load_file(dir / "", 4); }) ==
        "gpt::read_tokens: cannot open '" + (dir / "").string() + "' (not a regular file)");
  const auto empty = dir.write("empty.txt", "");
  CHECK(error_of([&] { (void)gpt::load_file(empty, 4); }) == "gpt::read_tokens: '" + empty.string() + "' is empty");
  const auto odd = dir.write("odd.bin", "abc");
  CHECK(error_of([&] { (void)gpt::load_file(odd, 1); }) ==
        "gpt::read_tokens: '" + odd.string() + "' has 3 bytes, not a whole number of uint16 tokens");
  const auto short_file = dir.write("short.txt", "abcd");
  CHECK(error_of([&] { (void)gpt::load_file(short_file, 4); }) ==
        "gpt::sequences: '" + short_file.string() + "' has 4 tokens, fewer than seq + 1 = 5");
  CHECK(gpt::load_file(short_file, 3).size() == 1);
  const auto wide = dir.write("wide.bin", std::string("\x01\x00\x00\x01", 4));  // tokens 1 and 256
  CHECK(error_of([&] { (void)gpt::load_file(wide, 1); }) ==
        "gpt::read_tokens: token 256 at position 1 of '" + wide.string() + "' is outside the vocabulary of 256");
  const auto text = dir.write("text.txt", "ab@");
  CHECK(error_of([&] { (void)gpt::load_file(text, 1, 64); }) ==
        "gpt::read_tokens: token 97 at position 0 of '" + text.string() + "' is outside the vocabulary of 64");
  CHECK(error_of([] { (void)gpt::sequences(std::vector<std::int32_t>{1, 2}, 0, 256); }) ==
        "gpt::sequences: tokens has 2 tokens, fewer than seq + 1 = 1");
}
