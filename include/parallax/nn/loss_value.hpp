// parallax/nn/loss_value.hpp — what a loss module's forward returns: the summed loss and the token count.
#pragma once

#include <cstdint>

namespace parallax::nn {

//! A loss over some tokens: the sum of per-token losses and how many tokens were counted (ignored tokens
//! are not). Sums and counts add across microbatches and ranks, so a mean over a global batch is
//! `sum / count` of the totals, whatever the layout. A loss module's `backward_input(ctx, scale)` returns
//! the gradient of `scale * sum`: pass `1 / count` of the global batch for the global mean.
struct LossValue {
  double sum = 0;
  std::int64_t count = 0;
  [[nodiscard]] double mean() const noexcept { return count > 0 ? sum / static_cast<double>(count) : 0.0; }
  LossValue& operator+=(const LossValue& o) noexcept {
    sum += o.sum;
    count += o.count;
    return *this;
  }
};

}  // namespace parallax::nn
