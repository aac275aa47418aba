// examples/05_train_gpt/data.hpp — the trainer's data: a built-in addition task with a held-out set, or a file
// of text or uint16 tokens; batches laid out sequence-first [T, B], sliced per DP rank and microbatch.
//
// Byte-level: a token is a byte value (vocabulary 256), so any text is data and a model's output prints as text.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <parallax/core/shape.hpp>
#include <parallax/error.hpp>

namespace gpt {

//! Targets equal to this count in neither the loss nor the accuracy (the loss module's default `ignore_index`).
inline constexpr std::int32_t ignore_index = -100;

//! Sequences of `seq` tokens with their targets (the next token, or `ignore_index`), one sequence after the other.
struct Dataset {
  std::int64_t seq = 0;
  std::int64_t vocab = 256;
  std::vector<std::int32_t> tokens{}, targets{};  // [size(), seq] row-major

  //! The number of sequences.
  [[nodiscard]] std::int64_t size() const { return seq > 0 ? static_cast<std::int64_t>(tokens.size()) / seq : 0; }
};

//! A batch laid out sequence-first, as parallax's modules take it: token t of sequence b at `t * batch + b`.
struct Batch {
  std::int64_t seq = 0, batch = 0;
  std::vector<std::int32_t> tokens{}, targets{};  // [seq, batch]

  [[nodiscard]] parallax::Shape shape() const { return parallax::Shape{seq, batch}; }
};

// ---------------------------------------------------------------------------------------------------------------
// The built-in task: addition of two `digits`-digit numbers, e.g. (digits = 2) "07+35=240\n": operands zero
// padded, the sum written with digits + 1 digits in reverse (least significant first, the order one adds in, so
// each answer digit depends only on the digits before it and a carry). One problem per sequence, from position 0,
// padded with '\n' (causal attention: the padding changes nothing before it); packing several problems at varying
// offsets makes a model with learned positions learn far slower. Only the answer digits are targets (the rest is
// `ignore_index`), so the loss and the accuracy measure the additions alone. With digits = 2 and seq = 10, a GPT
// of width 128, 2 layers, 4 heads, AdamW (lr 2e-3, 30 warm-up steps, cosine decay) and batch 128 gets 97% of the
// held-out problems right after 500 steps (measured with PyTorch).

//! Options of the addition task.
struct AdditionOptions {
  int digits = 2;               // digits of each operand: 1, 2 or 3
  std::int64_t heldout = 1000;  // problems held out for evaluation (at most half of all 10^(2 digits))
  std::uint64_t seed = 1;       // which problems are held out, and the order of the rest
};

//! The text of the problem a + b, e.g. "07+35=240\n".
[[nodiscard]] inline std::string addition_problem(int a, int b, int digits) {
  std::string sum = fmt::format("{:0{}}", a + b, digits + 1);
  return fmt::format("{:0{}}+{:0{}}={}\n", a, digits, b, digits, std::string(sum.rbegin(), sum.rend()));
}

//! The training and held-out sets of the addition task.
struct AdditionTask {
  Dataset train, heldout;
};

namespace detail {

//! SplitMix64: a small, portable generator (std::shuffle differs between standard libraries).
[[nodiscard]] inline std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

//! 10^digits: the number of operands.
[[nodiscard]] constexpr std::int64_t operands(int digits) { return digits == 1 ? 10 : digits == 2 ? 100 : 1000; }

//! The problems `pairs` (a * operands + b), one per sequence of `seq` tokens.
[[nodiscard]] inline Dataset pack_problems(std::span<const std::int64_t> pairs, int digits, std::int64_t seq) {
  const std::int64_t base = operands(digits);
  const auto answer = static_cast<std::size_t>(2 * digits + 2);  // where the answer starts in a problem
  Dataset d{.seq = seq};
  for (const std::int64_t pair : pairs) {
    std::string text = addition_problem(static_cast<int>(pair / base), static_cast<int>(pair % base), digits);
    text.resize(static_cast<std::size_t>(seq + 1), '\n');  // the tokens, and one more that is only a target
    for (std::size_t t = 0; t < static_cast<std::size_t>(seq); ++t) {
      d.tokens.push_back(static_cast<unsigned char>(text[t]));
      const bool counted = t + 1 >= answer && t + 1 <= answer + static_cast<std::size_t>(digits);
      d.targets.push_back(counted ? static_cast<unsigned char>(text[t + 1]) : ignore_index);
    }
  }
  return d;
}

}  // namespace detail

//! The addition task in sequences of `seq` tokens: all (a, b) pairs of `digits`-digit numbers, shuffled by
//! `seed`; the first `heldout` are the held-out set, the rest the training set (so no problem is in both), one
//! problem per sequence.
//! Throws unless 1 <= digits <= 3, 0 < heldout <= half the pairs and a problem fits in `seq`.
[[nodiscard]] inline AdditionTask addition(std::int64_t seq, const AdditionOptions& o = {}) {
  if (o.digits < 1 || o.digits > 3)
    throw parallax::Error(fmt::format("gpt::addition: digits {} is not 1, 2 or 3", o.digits));
  const std::int64_t count = detail::operands(o.digits) * detail::operands(o.digits);
  if (o.heldout <= 0 || o.heldout > count / 2)
    throw parallax::Error(fmt::format("gpt::addition: {} held-out problems of {} is not in [1, {}]", o.heldout, count,
                                      count / 2));
  const auto length = static_cast<std::int64_t>(addition_problem(0, 0, o.digits).size());
  if (seq < length)
    throw parallax::Error(fmt::format("gpt::addition: seq {} is shorter than one problem ({} tokens, e.g. '{}')", seq,
                                      length, addition_problem(0, 0, o.digits).substr(0, length - 1)));
  std::vector<std::int64_t> pairs(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) pairs[static_cast<std::size_t>(i)] = i;
  std::uint64_t state = o.seed;
  for (std::size_t i = pairs.size() - 1; i > 0; --i)  // Fisher-Yates
    std::swap(pairs[i], pairs[detail::splitmix64(state) % (i + 1)]);
  const std::span<const std::int64_t> all(pairs);
  return {detail::pack_problems(all.subspan(static_cast<std::size_t>(o.heldout)), o.digits, seq),
          detail::pack_problems(all.first(static_cast<std::size_t>(o.heldout)), o.digits, seq)};
}

//! Teacher-forced accuracy: how many problems were predicted right, of how many.
struct Accuracy {
  std::int64_t correct = 0, total = 0;

  [[nodiscard]] double value() const {
    return total > 0 ? static_cast<double>(correct) / static_cast<double>(total) : 0;
  }
  Accuracy& operator+=(const Accuracy& o) {
    correct += o.correct;
    total += o.total;
    return *this;
  }
};

//! Scores `predicted` (the argmax token at each position, laid out like `b.targets`): a problem is a run of
//! consecutive counted targets along a sequence (an addition's answer digits), and it is right when every one
//! of them is predicted (given the true tokens before it).
[[nodiscard]] inline Accuracy score(const Batch& b, std::span<const std::int32_t> predicted) {
  if (predicted.size() != b.targets.size())
    throw parallax::Error(fmt::format("gpt::score: {} predictions for a batch of {} targets", predicted.size(),
                                      b.targets.size()));
  Accuracy a;
  for (std::int64_t s = 0; s < b.batch; ++s) {
    bool in_run = false, right = true;
    for (std::int64_t t = 0; t <= b.seq; ++t) {
      const auto i = static_cast<std::size_t>(t * b.batch + s);
      const bool counted = t < b.seq && b.targets[i] != ignore_index;
      if (counted) {
        right = (!in_run || right) && predicted[i] == b.targets[i];  // a new run starts right
      } else if (in_run) {
        ++a.total;
        a.correct += right ? 1 : 0;
      }
      in_run = counted;
    }
  }
  return a;
}

// ---------------------------------------------------------------------------------------------------------------
// Data files.

//! How a data file is read: its bytes as tokens (text), or little-endian uint16 token ids (GPT-2-style .bin).
enum class FileFormat { text, u16 };

//! `u16` for a name ending in .bin or .u16, `text` otherwise.
[[nodiscard]] inline FileFormat format_of(const std::filesystem::path& path) {
  const auto ext = path.extension();
  return ext == ".bin" || ext == ".u16" ? FileFormat::u16 : FileFormat::text;
}

//! The tokens of the file at `path`. Throws for a missing or empty file, an odd number of bytes in a uint16
//! file, and a token not below `vocab`.
[[nodiscard]] inline std::vector<std::int32_t> read_tokens(const std::filesystem::path& path, FileFormat format,
                                                           std::int64_t vocab) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw parallax::Error(fmt::format("gpt::read_tokens: cannot open '{}' ({})", path.string(),
                                      std::filesystem::exists(path, ec) ? "not a regular file" : "no such file"));
  std::ifstream in(path, std::ios::binary);
  const std::string bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (bytes.empty()) throw parallax::Error(fmt::format("gpt::read_tokens: '{}' is empty", path.string()));
  const std::size_t width = format == FileFormat::u16 ? 2 : 1;
  if (bytes.size() % width != 0)
    throw parallax::Error(fmt::format("gpt::read_tokens: '{}' has {} bytes, not a whole number of uint16 tokens",
                                      path.string(), bytes.size()));
  std::vector<std::int32_t> tokens(bytes.size() / width);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    const auto byte = [&](std::size_t k) { return static_cast<std::int32_t>(static_cast<unsigned char>(bytes[k])); };
    tokens[i] = width == 1 ? byte(i) : byte(2 * i) | byte(2 * i + 1) << 8;
    if (tokens[i] >= vocab)
      throw parallax::Error(fmt::format("gpt::read_tokens: token {} at position {} of '{}' is outside the vocabulary "
                                        "of {}",
                                        tokens[i], i, path.string(), vocab));
  }
  return tokens;
}

//! The floor((n - 1) / seq) sequences of n tokens: sequence i is tokens [i seq, (i + 1) seq), its targets the
//! same shifted by one. Throws when there are fewer than seq + 1 tokens (`source` names them in the message).
[[nodiscard]] inline Dataset sequences(std::span<const std::int32_t> tokens, std::int64_t seq, std::int64_t vocab,
                                       std::string_view source = "tokens") {
  const auto n = static_cast<std::int64_t>(tokens.size());
  if (seq <= 0 || n < seq + 1)
    throw parallax::Error(fmt::format("gpt::sequences: {} has {} tokens, fewer than seq + 1 = {}", source, n, seq + 1));
  Dataset d{.seq = seq, .vocab = vocab};
  const auto count = static_cast<std::size_t>((n - 1) / seq * seq);
  d.tokens.assign(tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(count));
  d.targets.assign(tokens.begin() + 1, tokens.begin() + 1 + static_cast<std::ptrdiff_t>(count));
  return d;
}

//! The sequences of a data file (its format from its extension, see `format_of`).
[[nodiscard]] inline Dataset load_file(const std::filesystem::path& path, std::int64_t seq, std::int64_t vocab = 256) {
  return sequences(read_tokens(path, format_of(path), vocab), seq, vocab, fmt::format("'{}'", path.string()));
}

// ---------------------------------------------------------------------------------------------------------------
// Batches.

namespace detail {

//! Sequences `which` of `d` as a batch; an index past the end is padding (tokens 0, nothing counted).
[[nodiscard]] inline Batch gather(const Dataset& d, const std::vector<std::int64_t>& which) {
  Batch b{.seq = d.seq, .batch = static_cast<std::int64_t>(which.size())};
  for (std::int64_t t = 0; t < d.seq; ++t)
    for (const std::int64_t s : which) {
      const bool pad = s >= d.size();
      b.tokens.push_back(pad ? 0 : d.tokens[static_cast<std::size_t>(s * d.seq + t)]);
      b.targets.push_back(pad ? ignore_index : d.targets[static_cast<std::size_t>(s * d.seq + t)]);
    }
  return b;
}

}  // namespace detail

//! The global training batch of step `step`: sequences (step * batch + j) mod size for j < batch, so successive
//! steps walk through the data and wrap around at the end of each epoch.
[[nodiscard]] inline Batch train_batch(const Dataset& d, std::int64_t step, std::int64_t batch) {
  if (d.size() == 0 || batch <= 0)
    throw parallax::Error(fmt::format("gpt::train_batch: batch {} from {} sequences", batch, d.size()));
  std::vector<std::int64_t> which;
  for (std::int64_t j = 0; j < batch; ++j) which.push_back((step * batch + j) % d.size());
  return detail::gather(d, which);
}

//! How many evaluation batches of `batch` sequences cover the dataset.
[[nodiscard]] inline std::int64_t eval_batches(const Dataset& d, std::int64_t batch) {
  return batch > 0 ? (d.size() + batch - 1) / batch : 0;
}

//! Evaluation batch `index`: sequences [index * batch, (index + 1) * batch); those past the end are padding whose
//! targets are all `ignore_index`, so every sequence counts exactly once whatever the batch size.
[[nodiscard]] inline Batch eval_batch(const Dataset& d, std::int64_t index, std::int64_t batch) {
  if (index < 0 || index >= eval_batches(d, batch))
    throw parallax::Error(fmt::format("gpt::eval_batch: batch {} of {} (batch size {}, {} sequences)", index,
                                      eval_batches(d, batch), batch, d.size()));
  std::vector<std::int64_t> which;
  for (std::int64_t j = 0; j < batch; ++j) which.push_back(index * batch + j);
  return detail::gather(d, which);
}

//! The part of a global batch one DP rank runs as one microbatch: of the batch's `batch` sequences, DP rank r
//! takes the r-th of `dp` equal shares, and microbatch m the m-th of `microbatches` equal parts of that share.
//! Throws unless dp x microbatches divides the batch.
[[nodiscard]] inline Batch slice(const Batch& b, int dp_rank, int dp, int microbatch, int microbatches) {
  if (dp <= 0 || microbatches <= 0 || b.batch % (std::int64_t{dp} * microbatches) != 0 || dp_rank < 0 ||
      dp_rank >= dp || microbatch < 0 || microbatch >= microbatches)
    throw parallax::Error(fmt::format("gpt::slice: batch {} does not split into DP {} x {} microbatches (asked for "
                                      "DP rank {}, microbatch {})",
                                      b.batch, dp, microbatches, dp_rank, microbatch));
  const std::int64_t width = b.batch / dp / microbatches;
  const std::int64_t first = (std::int64_t{dp_rank} * microbatches + microbatch) * width;
  Batch out{.seq = b.seq, .batch = width};
  for (std::int64_t t = 0; t < b.seq; ++t) {
    const auto row = static_cast<std::ptrdiff_t>(t * b.batch + first);
    out.tokens.insert(out.tokens.end(), b.tokens.begin() + row, b.tokens.begin() + row + width);
    out.targets.insert(out.targets.end(), b.targets.begin() + row, b.targets.begin() + row + width);
  }
  return out;
}

}  // namespace gpt
