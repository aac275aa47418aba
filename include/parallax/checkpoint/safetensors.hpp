// parallax/checkpoint/safetensors.hpp — reads and writes safetensors files (Hugging Face's flat tensor format).
//
// A file is an 8-byte little-endian header length N, N bytes of JSON
//   {"__metadata__": {"key": "value"}, "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, ...}
// (padded with spaces to a multiple of 8), then the raw little-endian tensor bytes; data_offsets are relative
// to the end of the header.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "../core/dtype.hpp"
#include "../core/shape.hpp"
#include "../error.hpp"

namespace parallax::checkpoint {

static_assert(std::endian::native == std::endian::little,
              "parallax::checkpoint: safetensors data is little-endian and is read and written as raw host memory");

//! One tensor of a safetensors file: its name, element type, shape and where its bytes lie.
struct TensorInfo {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  std::uint64_t begin = 0;  // byte range [begin, end) in the data section (which follows the header)
  std::uint64_t end = 0;

  //! Size of the tensor's data in bytes.
  [[nodiscard]] std::uint64_t bytes() const noexcept { return end - begin; }
};

namespace detail {

// parallax's element types and the names safetensors gives them, in the order safetensors writes tensors:
// larger elements first (so every tensor stays aligned), i.e. its Dtype enum from the last: I64, F64, F32, I32,
// BF16, F16.
inline constexpr std::array<std::pair<DType, std::string_view>, 6> safetensors_dtypes{{
    {DType::i64, "I64"},
    {DType::f64, "F64"},
    {DType::f32, "F32"},
    {DType::i32, "I32"},
    {DType::bf16, "BF16"},
    {DType::f16, "F16"},
}};

//! "F32" for DType::f32, and so on.
[[nodiscard]] constexpr std::string_view safetensors_name(DType t) noexcept {
  for (const auto& [d, s] : safetensors_dtypes)
    if (d == t) return s;
  return "?";
}

//! The DType safetensors calls `s`, or nothing for a type parallax does not have.
[[nodiscard]] constexpr std::optional<DType> parse_safetensors_dtype(std::string_view s) noexcept {
  for (const auto& [d, n] : safetensors_dtypes)
    if (n == s) return d;
  return std::nullopt;
}

//! Position of `t` in the order safetensors writes tensors.
[[nodiscard]] constexpr std::size_t write_order(DType t) noexcept {
  for (std::size_t i = 0; i < safetensors_dtypes.size(); ++i)
    if (safetensors_dtypes[i].first == t) return i;
  return safetensors_dtypes.size();
}

[[nodiscard]] constexpr bool is_floating(DType t) noexcept {
  return t == DType::f32 || t == DType::bf16 || t == DType::f16 || t == DType::f64;
}

//! A Shape of `dims.size()` <= Shape::max_rank dimensions.
[[nodiscard]] inline Shape make_shape(std::span<const std::int64_t> d) {
  switch (d.size()) {
    case 0: return Shape{};
    case 1: return Shape{d[0]};
    case 2: return Shape{d[0], d[1]};
    case 3: return Shape{d[0], d[1], d[2]};
    case 4: return Shape{d[0], d[1], d[2], d[3]};
    default: throw Error(fmt::format("Shape: rank {} exceeds the maximum of {}", d.size(), Shape::max_rank));
  }
}

//! `value` converted between floating-point element types: exact when they match, else through float (which
//! bf16 and fp16 widen to exactly).
template <class To, class From>
[[nodiscard]] To convert_float(From value) {
  if constexpr (std::is_same_v<To, From>) {
    return value;
  } else {
    return To(static_cast<float>(value));
  }
}

//! The safetensors header of `tensors` (sorted in write order, offsets set) and `metadata`, padded with
//! spaces to a multiple of 8 bytes.
[[nodiscard]] inline std::string safetensors_header(const std::vector<TensorInfo>& tensors,
                                                    const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  for (const TensorInfo& t : tensors) {
    nlohmann::ordered_json shape = nlohmann::ordered_json::array();
    for (int i = 0; i < t.shape.rank(); ++i) shape.push_back(t.shape[i]);
    h[t.name] = {{"dtype", safetensors_name(t.dtype)}, {"shape", shape}, {"data_offsets", {t.begin, t.end}}};
  }
  std::string text;
  try {
    text = h.dump();
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("SafetensorsWriter: a tensor name or metadata string is not valid UTF-8 ({})", e.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

}  // namespace detail

//! A safetensors file opened for reading: the header is parsed and checked on `open`, and each `read` loads
//! one tensor's bytes from the file.
//!
//! `read<T>` returns the elements as T: a copy of the bytes when the file stores T, otherwise (between fp32,
//! bf16, fp16 and fp64 only) each value converted, rounding to nearest even (fp64 to bf16/fp16 goes through
//! float). Tensors are listed sorted by name. Every malformed file throws `parallax::Error` on `open`. Each
//! `read` opens the file anew, so several threads may read one `SafetensorsFile` at once.
//! @code
//! auto f = checkpoint::SafetensorsFile::open("model.safetensors");
//! std::vector<float> w = f.read<float>("h.0.attn.qkv.weight");     // stored as F32, BF16 or F16
//! Shape s = f.info("h.0.attn.qkv.weight").shape;
//! @endcode
class SafetensorsFile {
 public:
  //! Opens `path` and checks its header: JSON syntax, dtypes, shapes (rank <= 4) and that each tensor's
  //! data_offsets lie within the data section and span exactly dtype size x elements bytes.
  [[nodiscard]] static SafetensorsFile open(const std::filesystem::path& path) {
    SafetensorsFile f;
    f.path_ = path;
    std::error_code ec;
    const auto status = std::filesystem::status(path, ec);
    if (!std::filesystem::is_regular_file(status))
      throw Error(fmt::format("SafetensorsFile::open: cannot open '{}' ({})", path.string(),
                              std::filesystem::exists(status) ? "not a regular file" : "no such file"));
    const std::uintmax_t size = std::filesystem::file_size(path, ec);
    std::ifstream in(path, std::ios::binary);
    if (ec || !in)
      throw Error(fmt::format("SafetensorsFile::open: cannot read '{}'{}", path.string(),
                              ec ? fmt::format(" ({})", ec.message()) : std::string()));
    if (size < 8)
      throw Error(fmt::format("SafetensorsFile::open: '{}' is {} bytes, shorter than the 8-byte header length",
                              path.string(), size));
    std::array<unsigned char, 8> len{};
    in.read(reinterpret_cast<char*>(len.data()), 8);
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | len[static_cast<std::size_t>(i)];
    if (n > size - 8)
      throw Error(fmt::format("SafetensorsFile::open: '{}': header length {} exceeds the {} bytes after it",
                              path.string(), n, size - 8));
    std::string text(static_cast<std::size_t>(n), '\0');
    in.read(text.data(), static_cast<std::streamsize>(n));
    if (!in)
      throw Error(fmt::format("SafetensorsFile::open: '{}': could not read the {}-byte header", path.string(), n));
    f.data_start_ = 8 + n;
    f.parse_header(text, size - 8 - n);
    return f;
  }

  //! The file's path.
  [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }
  //! All tensors, sorted by name.
  [[nodiscard]] const std::vector<TensorInfo>& tensors() const noexcept { return tensors_; }
  //! The `__metadata__` entries (empty when the file has none).
  [[nodiscard]] const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }

  //! The metadata value of `key`; throws when the file has no such key.
  [[nodiscard]] const std::string& metadata(std::string_view key) const {
    const auto it = metadata_.find(std::string(key));
    if (it == metadata_.end())
      throw Error(fmt::format("SafetensorsFile '{}': no metadata key '{}' (has {})", path_.string(), key,
                              list_some(metadata_, [](const auto& kv) -> const std::string& { return kv.first; })));
    return it->second;
  }

  //! Whether the file has a tensor named `name`.
  [[nodiscard]] bool contains(std::string_view name) const noexcept { return find(name) != nullptr; }

  //! The tensor named `name`; throws, listing some of the names there are, when there is none.
  [[nodiscard]] const TensorInfo& info(std::string_view name) const {
    if (const TensorInfo* t = find(name)) return *t;
    throw Error(fmt::format("SafetensorsFile '{}': no tensor '{}' (has {})", path_.string(), name,
                            list_some(tensors_, [](const TensorInfo& t) -> const std::string& { return t.name; })));
  }

  //! The elements of tensor `name` as T, row-major (see the class comment for conversions).
  template <Element T>
  [[nodiscard]] std::vector<T> read(std::string_view name) const {
    const TensorInfo& t = info(name);
    const auto count = static_cast<std::size_t>(t.shape.numel());
    std::vector<T> out(count);
    if (t.dtype == dtype_of<T>) {
      read_bytes(t, std::as_writable_bytes(std::span(out)));
      return out;
    }
    if (!detail::is_floating(t.dtype) || !detail::is_floating(dtype_of<T>))
      throw Error(fmt::format("SafetensorsFile '{}': tensor '{}' is {}, cannot read it as {} (only floating-point "
                              "types convert)",
                              path_.string(), t.name, detail::safetensors_name(t.dtype),
                              detail::safetensors_name(dtype_of<T>)));
    std::vector<std::byte> raw(static_cast<std::size_t>(t.bytes()));
    read_bytes(t, raw);
    dispatch(t.dtype, [&]<class S>(std::type_identity<S>) {
      if constexpr (std::is_floating_point_v<S> || FloatElement<S>) {
        for (std::size_t i = 0; i < count; ++i) {
          S s;
          std::memcpy(&s, raw.data() + i * sizeof(S), sizeof(S));
          out[i] = detail::convert_float<T>(s);
        }
      }
    });
    return out;
  }

 private:
  SafetensorsFile() = default;

  [[nodiscard]] const TensorInfo* find(std::string_view name) const noexcept {
    const auto it = std::ranges::lower_bound(tensors_, name, {}, [](const TensorInfo& t) -> std::string_view {
      return t.name;
    });
    return it != tensors_.end() && it->name == name ? &*it : nullptr;
  }

  // "'a', 'b', 'c', ... (12 in all)": the names `name_of` gives the first few of `items`.
  template <class R, class F>
  [[nodiscard]] static std::string list_some(const R& items, F name_of) {
    constexpr std::size_t shown = 5;
    if (items.empty()) return "none";
    std::string s;
    std::size_t i = 0;
    for (const auto& item : items) {
      if (i == shown) break;
      s += fmt::format("{}'{}'", i++ ? ", " : "", name_of(item));
    }
    return items.size() > shown ? fmt::format("{}, ... ({} in all)", s, items.size()) : s;
  }

  void parse_header(const std::string& text, std::uint64_t data_size) {
    const std::string where = fmt::format("SafetensorsFile::open: '{}'", path_.string());
    nlohmann::json h;
    try {
      h = nlohmann::json::parse(text);
    } catch (const nlohmann::json::parse_error& e) {
      throw Error(fmt::format("{}: header is not valid JSON ({})", where, e.what()));
    }
    if (!h.is_object()) throw Error(fmt::format("{}: header is JSON {}, not an object", where, h.type_name()));
    for (const auto& [key, value] : h.items()) {
      if (key == "__metadata__") {
        if (!value.is_object()) throw Error(fmt::format("{}: __metadata__ is not an object", where));
        for (const auto& [k, v] : value.items()) {
          if (!v.is_string())
            throw Error(fmt::format("{}: __metadata__ value of '{}' is JSON {}, not a string", where, k, v.type_name()));
          metadata_.emplace(k, v.get<std::string>());
        }
        continue;
      }
      tensors_.push_back(parse_tensor(where, key, value, data_size));
    }
    // nlohmann::json keeps object keys sorted, so tensors_ is sorted by name.
  }

  [[nodiscard]] static TensorInfo parse_tensor(const std::string& where, const std::string& name,
                                               const nlohmann::json& e, std::uint64_t data_size) {
    const auto bad = [&](std::string_view what) {
      return Error(fmt::format("{}: tensor '{}': {}", where, name, what));
    };
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
      throw bad("entry is not an object with dtype, shape and data_offsets");
    const auto& jd = e["dtype"];
    const auto& js = e["shape"];
    const auto& jo = e["data_offsets"];
    if (!jd.is_string()) throw bad("dtype is not a string");
    const auto dtype = detail::parse_safetensors_dtype(jd.get<std::string>());
    if (!dtype)
      throw bad(fmt::format("unknown dtype '{}' (parallax reads F32, BF16, F16, F64, I32 and I64)",
                            jd.get<std::string>()));
    const auto is_count = [](const nlohmann::json& v) {
      return v.is_number_unsigned() && v.get<std::uint64_t>() <= std::uint64_t{std::numeric_limits<std::int64_t>::max()};
    };
    if (!js.is_array() || !std::ranges::all_of(js, is_count))
      throw bad(fmt::format("shape {} is not a list of non-negative integers", js.dump()));
    if (js.size() > static_cast<std::size_t>(Shape::max_rank))
      throw bad(fmt::format("shape {} has rank {}, more than parallax's maximum of {}", js.dump(), js.size(),
                            Shape::max_rank));
    if (!jo.is_array() || jo.size() != 2 || !std::ranges::all_of(jo, is_count))
      throw bad(fmt::format("data_offsets {} is not [begin, end] in non-negative integers", jo.dump()));

    std::vector<std::int64_t> dims;
    std::uint64_t expected = size_of(*dtype);
    bool overflow = false;
    for (const auto& d : js) {
      const auto n = d.get<std::uint64_t>();
      overflow = overflow || (n != 0 && expected > std::numeric_limits<std::uint64_t>::max() / n);
      expected *= n;
      dims.push_back(static_cast<std::int64_t>(n));
    }
    TensorInfo t{name, *dtype, detail::make_shape(dims), jo[0].get<std::uint64_t>(), jo[1].get<std::uint64_t>()};
    if (t.begin > t.end || t.end > data_size)
      throw bad(fmt::format("data_offsets [{}, {}] are outside the {}-byte data section", t.begin, t.end, data_size));
    if (overflow || t.bytes() != expected)
      throw bad(fmt::format("data_offsets [{}, {}] span {} bytes, but {} {} needs {}", t.begin, t.end, t.bytes(),
                            jd.get<std::string>(), t.shape,
                            overflow ? std::string("more than 2^64") : std::to_string(expected)));
    return t;
  }

  void read_bytes(const TensorInfo& t, std::span<std::byte> out) const {
    std::ifstream in(path_, std::ios::binary);
    in.seekg(static_cast<std::streamoff>(data_start_ + t.begin));
    in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(out.size()));
    if (!in)
      throw Error(fmt::format("SafetensorsFile '{}': could not read the {} bytes of tensor '{}' (file changed since "
                              "it was opened?)",
                              path_.string(), out.size(), t.name));
  }

  std::filesystem::path path_;
  std::uint64_t data_start_ = 0;     // 8 + header length
  std::vector<TensorInfo> tensors_;  // sorted by name
  std::map<std::string, std::string> metadata_;
};

//! Collects tensors and metadata, then writes them as one safetensors file laid out as the reference
//! implementation does: tensors ordered by element size (largest first), then by name; the header's keys in
//! that order after `__metadata__`; the header padded with spaces to a multiple of 8 bytes. The same tensors
//! give the same bytes, whatever order they were added in.
//! @code
//! checkpoint::SafetensorsWriter w;
//! w.add("linear.weight", weights, Shape{out, in}).add("step", std::vector<std::int64_t>{1000}, Shape{});
//! w.metadata("format", "pt");
//! w.write("model.safetensors");
//! @endcode
class SafetensorsWriter {
 public:
  //! Adds tensor `name` with the elements of `data` (a contiguous range of an `Element` type), row-major of
  //! `shape`; the data is copied.
  template <std::ranges::contiguous_range R>
    requires Element<std::remove_cv_t<std::ranges::range_value_t<R>>>
  SafetensorsWriter& add(std::string name, const R& data, const Shape& shape) {
    using T = std::remove_cv_t<std::ranges::range_value_t<R>>;
    const auto count = static_cast<std::int64_t>(std::ranges::size(data));
    if (count != shape.numel())
      throw Error(fmt::format("SafetensorsWriter::add: tensor '{}' has {} elements, its shape {} needs {}", name,
                              count, shape, shape.numel()));
    if (name == "__metadata__")
      throw Error("SafetensorsWriter::add: '__metadata__' is reserved for the metadata, not a tensor name");
    if (std::ranges::any_of(entries_, [&](const Entry& e) { return e.info.name == name; }))
      throw Error(fmt::format("SafetensorsWriter::add: tensor '{}' was already added", name));
    const auto bytes = std::as_bytes(std::span(std::ranges::data(data), std::ranges::size(data)));
    entries_.push_back(
        {TensorInfo{std::move(name), dtype_of<T>, shape}, std::vector<std::byte>(bytes.begin(), bytes.end())});
    return *this;
  }

  //! Sets the `__metadata__` entry `key` to `value` (replacing an earlier value).
  SafetensorsWriter& metadata(std::string key, std::string value) {
    metadata_.insert_or_assign(std::move(key), std::move(value));
    return *this;
  }

  //! Writes the file (replacing `path` if it exists).
  void write(const std::filesystem::path& path) const {
    std::vector<const Entry*> order;
    for (const Entry& e : entries_) order.push_back(&e);
    std::ranges::sort(order, [](const Entry* a, const Entry* b) {
      const auto ka = detail::write_order(a->info.dtype), kb = detail::write_order(b->info.dtype);
      return ka != kb ? ka < kb : a->info.name < b->info.name;
    });
    std::vector<TensorInfo> infos;
    std::uint64_t offset = 0;
    for (const Entry* e : order) {
      TensorInfo t = e->info;
      t.begin = offset;
      t.end = offset += e->data.size();
      infos.push_back(std::move(t));
    }
    const std::string header = detail::safetensors_header(infos, metadata_);

    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(fmt::format("SafetensorsWriter::write: cannot open '{}' for writing", path.string()));
    std::array<char, 8> len{};
    for (std::size_t i = 0; i < 8; ++i) len[i] = static_cast<char>((header.size() >> (8 * i)) & 0xffu);
    out.write(len.data(), 8);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    for (const Entry* e : order)
      out.write(reinterpret_cast<const char*>(e->data.data()), static_cast<std::streamsize>(e->data.size()));
    out.flush();
    if (!out) throw Error(fmt::format("SafetensorsWriter::write: writing '{}' failed", path.string()));
  }

 private:
  struct Entry {
    TensorInfo info;  // begin and end are set by write
    std::vector<std::byte> data;
  };

  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace parallax::checkpoint
