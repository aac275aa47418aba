// tests/cuda_emulated/support.hpp — what the emulated kernels' tests share: guarded stand-ins for device buffers,
// the size of the emulated GPU, a fresh kernel status, the attention backward's D, and the column-sum launch (two
// kernels) as the backend's launcher makes it.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include <parallax/backend/cuda/detail/column_sum_kernels.cuh>
#include <parallax/backend/cuda/detail/status_kernels.cuh>

#include "../support/compare.hpp"
#include "simt.hpp"

namespace parallax::test::emulated {

//! Streaming multiprocessors of the emulated GPU: few, so the launchers' grid caps (a multiple of the SM count)
//! are reached and the grid-stride loops wrap.
inline constexpr int sm_count = 2;

//! A stand-in for a device buffer: the elements between two guard bands of canary bytes, so a kernel writing out of
//! bounds is caught (`guards_intact`). Outputs start as NaN (`Buffer<T>::output(n)`), so an element no thread wrote
//! shows up in the comparison.
template <class T>
class Buffer {
 public:
  explicit Buffer(const std::vector<T>& v) : storage_(v.size() + 2 * guard) {
    std::memset(static_cast<void*>(storage_.data()), canary, storage_.size() * sizeof(T));
    std::copy(v.begin(), v.end(), storage_.begin() + guard);
  }
  [[nodiscard]] static Buffer output(std::size_t n) { return Buffer(std::vector<T>(n, T(NAN))); }

  [[nodiscard]] T* data() { return storage_.data() + guard; }
  [[nodiscard]] const T* data() const { return storage_.data() + guard; }
  [[nodiscard]] std::vector<T> values() const { return {storage_.begin() + guard, storage_.end() - guard}; }
  [[nodiscard]] bool guards_intact() const {
    const auto* bytes = reinterpret_cast<const unsigned char*>(storage_.data());
    const std::size_t band = guard * sizeof(T), total = storage_.size() * sizeof(T);
    for (std::size_t i = 0; i < band; ++i)
      if (bytes[i] != canary || bytes[total - 1 - i] != canary) return false;
    return true;
  }

 private:
  static constexpr std::size_t guard = 64;
  static constexpr unsigned char canary = 0xa5;
  std::vector<T> storage_;
};

//! A kernel status as reset_status leaves it before a checking kernel: no bad index, a count of 0.
[[nodiscard]] inline Buffer<cuda::detail::KernelStatus> fresh_status() {
  return Buffer(std::vector{cuda::detail::KernelStatus{cuda::detail::KernelStatus::none, 0}});
}

//! The attention backward's D: delta[r] = dout[r] . out[r] over rows of dh > 0 features, summed in feature order
//! (as the delta kernel sums them).
template <class T>
std::vector<float> reference_delta(const std::vector<T>& out, const std::vector<T>& dout, std::int64_t dh) {
  const auto n = static_cast<std::size_t>(dh);
  std::vector<float> delta(out.size() / n, 0.f);
  for (std::size_t r = 0; r < delta.size(); ++r)
    for (std::size_t i = 0; i < n; ++i) delta[r] += float(dout[r * n + i]) * float(out[r * n + i]);
  return delta;
}

//! out[k][c] += sum_r term_k(r, c): the two kernels with the geometry of cuda::detail::column_sums.
template <int K, class G, class Term>
void column_sums(Term term, std::int64_t n, std::int64_t d, cuda::detail::ColumnOutputs<G, K> out) {
  namespace cd = cuda::detail;
  if (n == 0 || d == 0) return;
  const cd::ColumnChunks chunks = cd::column_chunks(n);
  Buffer<float> partial = Buffer<float>::output(static_cast<std::size_t>(K * chunks.count * d));
  simt::launch("column_partial", cd::column_partial_kernel<K, Term>,
               dim3(static_cast<unsigned>((d + cd::colsum_cols - 1) / cd::colsum_cols),
                    static_cast<unsigned>(chunks.count)),
               dim3(cd::colsum_cols, cd::colsum_rows), 0, term, n, d, chunks.rows, partial.data());
  simt::launch("column_final", cd::column_final_kernel<K, G>, dim3(cd::column_final_blocks(d, sm_count)), dim3(256), 0,
               partial.data(), chunks.count, d, out);
  CHECK(partial.guards_intact());
}

}  // namespace parallax::test::emulated
