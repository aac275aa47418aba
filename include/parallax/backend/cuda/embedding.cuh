// parallax/backend/cuda/embedding.cuh — embedding lookup and its deterministic gradient on the GPU, whole table or
// a vocabulary shard (nvcc).
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>

#include <cub/device/device_radix_sort.cuh>
#include <cuda_runtime.h>
#include <fmt/format.h>

#include "../../core/dtype.hpp"
#include "../../core/view.hpp"
#include "../../error.hpp"
#include "check.hpp"
#include "context.hpp"
#include "detail/embedding_kernels.cuh"
#include "detail/kernel_args.hpp"
#include "detail/scratch.hpp"
#include "detail/status.cuh"
#include "elementwise.cuh"
#include "memory.hpp"

namespace parallax::cuda {

//! Embedding kernels of the CUDA backend: row lookup in table[V, D] by int32 ids[N] (token ids, or positions
//! 0..T-1 for a position embedding). A vocabulary shard holds the rows [vocab_begin, vocab_begin + V) of a
//! table of vocab_size rows; ids are always global. Same functions, arguments, checks and errors as
//! `host::Embedding`; queued on the context's compute stream.
//!
//! The forward validates the ids on the device and waits for the compute stream to read the verdict back.
//! The backward is deterministic without atomics: (row, position) pairs are sorted on the device (CUB's stable
//! radix sort, in stream-ordered scratch memory), then each row's run of positions is summed in position order,
//! as the host does, and added to its row once.
//! @code
//! Embedding::embedding_forward(ctx, ids, table, out);                          // whole table
//! Embedding::embedding_forward(ctx, ids, shard, out, vocab_begin, vocab_size); // shard: other rows give 0
//! Embedding::embedding_backward(ctx, ids, dout, dshard, vocab_begin);           // dshard += scatter(dout)
//! @endcode
struct Embedding {
  //! ids[n] = first + n / batch: the position of every token of a [T, B] batch, flattened (T = ids.numel() / batch),
  //! the ids of a position embedding; queued on the compute stream (no upload, no host wait).
  static void position_ids(const Context& ctx, View<std::int32_t, Memory> ids, std::int64_t first, std::int64_t batch) {
    detail::check_position_ids(ids.numel(), first, batch);
    if (ids.empty()) return;
    const unsigned blocks = detail::elementwise_blocks(ctx, ids.numel());
    detail::position_ids_kernel<std::int32_t><<<blocks, detail::elementwise_threads, 0, ctx.stream()>>>(
        ids.data(), ids.numel(), first, batch);
    check_launch("cuda::Embedding::position_ids");
  }

  //! out[n, :] = table[ids[n], :]. Throws if an id lies outside [0, V), naming the id and its position.
  template <FloatElement T>
  static void embedding_forward(const Context& ctx, View<const std::int32_t, Memory> ids, detail::In<T> table,
                                View<T, Memory> out) {
    detail::expect_rank("embedding_forward", "table", table.shape(), 2, "[V, D]");
    embedding_forward(ctx, ids, table, out, 0, table.shape()[0]);
  }

  //! Vocabulary shard: out[n, :] = table[ids[n] - vocab_begin, :] when ids[n] lies in [vocab_begin, vocab_begin + V),
  //! else 0. Throws if an id lies outside [0, vocab_size) (so every rank of a vocab-parallel group throws alike),
  //! after waiting for the compute stream; `out` may have been written then.
  template <FloatElement T>
  static void embedding_forward(const Context& ctx, View<const std::int32_t, Memory> ids, detail::In<T> table,
                                View<T, Memory> out, std::int64_t vocab_begin, std::int64_t vocab_size) {
    constexpr const char* op = "embedding_forward";
    detail::expect_rank(op, "ids", ids.shape(), 1, "[N]");
    detail::expect_rank(op, "table", table.shape(), 2, "[V, D]");
    const std::int64_t n = ids.shape()[0], v = table.shape()[0], d = table.shape()[1];
    detail::expect_shape(op, "out", out.shape(), Shape{n, d});
    if (vocab_begin < 0 || vocab_begin + v > vocab_size)
      throw Error(fmt::format("{}: table rows [{}, {}) do not fit a vocabulary of {}", op, vocab_begin, vocab_begin + v,
                              vocab_size));
    if (n == 0) return;
    detail::KernelStatus* status = detail::reset_status(ctx, op);
    detail::embedding_forward_kernel<<<static_cast<unsigned>((n + detail::embedding_warps - 1) /
                                                             detail::embedding_warps),
                                       detail::embedding_warps * 32, 0, ctx.stream()>>>(
        ids.data(), table.data(), out.data(), n, v, d, vocab_begin, vocab_size, status);
    check_launch("cuda::Embedding::embedding_forward");
    const detail::KernelStatus s = detail::read_status(ctx, status, op);
    if (s.ok()) return;
    std::int32_t id = 0;
    Memory::download(&id, ids.data() + s.first_bad, sizeof id);
    throw Error(fmt::format("{}: id {} at position {} is outside [0, {})", op, id, s.first_bad, vocab_size));
  }

  //! dtable[ids[n] - vocab_begin, :] += dout[n, :] for ids in [vocab_begin, vocab_begin + V); other ids are skipped.
  //! Repeated ids are summed in fp32 in position order and added to their row once (deterministic).
  //! dtable has the table's type or fp32.
  template <FloatElement T, FloatElement G>
  static void embedding_backward(const Context& ctx, View<const std::int32_t, Memory> ids, View<const T, Memory> dout,
                                 View<G, Memory> dtable, std::int64_t vocab_begin = 0) {
    constexpr const char* op = "embedding_backward";
    detail::expect_rank(op, "ids", ids.shape(), 1, "[N]");
    detail::expect_rank(op, "dtable", dtable.shape(), 2, "[V, D]");
    const std::int64_t n = ids.shape()[0], v = dtable.shape()[0], d = dtable.shape()[1];
    detail::expect_shape(op, "dout", dout.shape(), Shape{n, d});
    if (n == 0 || v == 0 || d == 0) return;
    constexpr const char* what = "cuda::Embedding::embedding_backward";
    // Rows of a shard hit by int32 ids are < 2^31: `skip` sorts after all of them.
    const auto skip = static_cast<std::uint32_t>(std::min<std::int64_t>(v, std::int64_t{1} << 31));
    const auto count = static_cast<std::size_t>(n);
    detail::Scratch<std::uint32_t> keys(ctx, count, what), sorted_keys(ctx, count, what);
    detail::Scratch<std::int32_t> positions(ctx, count, what), sorted_positions(ctx, count, what);
    detail::embedding_keys_kernel<<<detail::elementwise_blocks(ctx, n), detail::elementwise_threads, 0,
                                    ctx.stream()>>>(ids.data(), n, v, vocab_begin, skip, keys.get(),
                                                    positions.get());
    check_launch(what);

    const int end_bit = std::bit_width(skip);
    std::size_t temp_bytes = 0;
    check(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys.get(), sorted_keys.get(), positions.get(),
                                          sorted_positions.get(), n, 0, end_bit, ctx.stream()),
          "cub::DeviceRadixSort::SortPairs (embedding_backward)");
    detail::Scratch<unsigned char> temp(ctx, temp_bytes, what);
    check(cub::DeviceRadixSort::SortPairs(temp.get(), temp_bytes, keys.get(), sorted_keys.get(), positions.get(),
                                          sorted_positions.get(), n, 0, end_bit, ctx.stream()),
          "cub::DeviceRadixSort::SortPairs (embedding_backward)");

    detail::embedding_backward_kernel<<<detail::embedding_backward_blocks(n, ctx.sm_count()), detail::embedding_threads,
                                        0, ctx.stream()>>>(sorted_keys.get(), sorted_positions.get(), dout.data(),
                                                           dtable.data(), n, d, skip);
    check_launch(what);
  }
};

}  // namespace parallax::cuda
