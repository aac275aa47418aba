// parallax/backend/host/embedding.hpp — host embedding lookup and its gradient, whole table or a vocabulary shard.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <fmt/format.h>

#include "../../core/dtype.hpp"
#include "../../core/view.hpp"
#include "../../error.hpp"
#include "context.hpp"
#include "detail/kernel_args.hpp"
#include "memory.hpp"

namespace parallax::host {

//! Embedding kernels of the host backend: row lookup in table[V, D] by int32 ids[N] (token ids, or positions
//! 0..T-1 for a position embedding). A vocabulary shard holds the rows [vocab_begin, vocab_begin + V) of a
//! table of vocab_size rows; ids are always global.
//! @code
//! Embedding::position_ids(ctx, positions, 0, batch);                           // 0 0 .. 1 1 .. for [T, B]
//! Embedding::embedding_forward(ctx, ids, table, out);                          // whole table
//! Embedding::embedding_forward(ctx, ids, shard, out, vocab_begin, vocab_size); // shard: other rows give 0
//! Embedding::embedding_backward(ctx, ids, dout, dshard, vocab_begin);           // dshard += scatter(dout)
//! @endcode
struct Embedding {
  //! ids[n] = first + n / batch: the position of every token of a [T, B] batch, flattened (T = ids.numel() / batch),
  //! the ids of a position embedding.
  static void position_ids(const Context&, View<std::int32_t, Memory> ids, std::int64_t first, std::int64_t batch) {
    detail::check_position_ids(ids.numel(), first, batch);
    for (std::int64_t n = 0; n < ids.numel(); ++n) ids.data()[n] = static_cast<std::int32_t>(first + n / batch);
  }

  //! out[n, :] = table[ids[n], :]. Throws if an id lies outside [0, V), naming the id and its position.
  template <FloatElement T>
  static void embedding_forward(const Context& ctx, View<const std::int32_t, Memory> ids, detail::In<T> table,
                                View<T, Memory> out) {
    detail::expect_rank("embedding_forward", "table", table.shape(), 2, "[V, D]");
    embedding_forward(ctx, ids, table, out, 0, table.shape()[0]);
  }

  //! Vocabulary shard: out[n, :] = table[ids[n] - vocab_begin, :] when ids[n] lies in [vocab_begin, vocab_begin + V),
  //! else 0. Throws if an id lies outside [0, vocab_size) (so every rank of a vocab-parallel group throws alike).
  template <FloatElement T>
  static void embedding_forward(const Context&, View<const std::int32_t, Memory> ids, detail::In<T> table,
                                View<T, Memory> out, std::int64_t vocab_begin, std::int64_t vocab_size) {
    constexpr const char* op = "embedding_forward";
    detail::expect_rank(op, "ids", ids.shape(), 1, "[N]");
    detail::expect_rank(op, "table", table.shape(), 2, "[V, D]");
    const std::int64_t n = ids.shape()[0], v = table.shape()[0], d = table.shape()[1];
    detail::expect_shape(op, "out", out.shape(), Shape{n, d});
    if (vocab_begin < 0 || vocab_begin + v > vocab_size)
      throw Error(fmt::format("{}: table rows [{}, {}) do not fit a vocabulary of {}", op, vocab_begin, vocab_begin + v,
                              vocab_size));
    for (std::int64_t i = 0; i < n; ++i)
      if (const std::int32_t id = ids.data()[i]; id < 0 || id >= vocab_size)
        throw Error(fmt::format("{}: id {} at position {} is outside [0, {})", op, id, i, vocab_size));
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t row = ids.data()[i] - vocab_begin;
      T* o = out.data() + i * d;
      if (row >= 0 && row < v)
        std::copy_n(table.data() + row * d, d, o);
      else
        std::fill_n(o, d, T(0.f));
    }
  }

  //! dtable[ids[n] - vocab_begin, :] += dout[n, :] for ids in [vocab_begin, vocab_begin + V); other ids are skipped.
  //! Repeated ids are summed in fp32 in position order and added to their row once (deterministic).
  //! dtable has the table's type or fp32.
  template <FloatElement T, FloatElement G>
  static void embedding_backward(const Context&, View<const std::int32_t, Memory> ids, View<const T, Memory> dout,
                                 View<G, Memory> dtable, std::int64_t vocab_begin = 0) {
    constexpr const char* op = "embedding_backward";
    detail::expect_rank(op, "ids", ids.shape(), 1, "[N]");
    detail::expect_rank(op, "dtable", dtable.shape(), 2, "[V, D]");
    const std::int64_t n = ids.shape()[0], v = dtable.shape()[0], d = dtable.shape()[1];
    detail::expect_shape(op, "dout", dout.shape(), Shape{n, d});
    const auto row_of = [&](std::int64_t i) { return std::int64_t{ids.data()[i]} - vocab_begin; };
    std::vector<std::int64_t> order;  // local positions, stably sorted by row
    for (std::int64_t i = 0; i < n; ++i)
      if (row_of(i) >= 0 && row_of(i) < v) order.push_back(i);
    std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) { return row_of(a) < row_of(b); });
    std::vector<float> acc(static_cast<std::size_t>(d));
    for (std::size_t i = 0; i < order.size();) {
      const std::int64_t row = row_of(order[i]);
      std::fill(acc.begin(), acc.end(), 0.f);
      for (; i < order.size() && row_of(order[i]) == row; ++i)
        for (std::int64_t j = 0; j < d; ++j) acc[static_cast<std::size_t>(j)] += float(dout.data()[order[i] * d + j]);
      G* g = dtable.data() + row * d;
      for (std::int64_t j = 0; j < d; ++j) g[j] = G(float(g[j]) + acc[static_cast<std::size_t>(j)]);
    }
  }
};

}  // namespace parallax::host
