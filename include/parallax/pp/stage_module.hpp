// parallax/pp/stage_module.hpp — the protocol of the module of one virtual pipeline stage (`pp::StageModule`), its
// input and output, a step's microbatches, and how a model's layers split over the virtual stages.
#pragma once

#include <concepts>
#include <cstdint>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "../backend/concept.hpp"
#include "../comm/rank.hpp"
#include "../core/shape.hpp"
#include "../core/tensor.hpp"
#include "../error.hpp"
#include "../nn/loss_value.hpp"
#include "../nn/parameter.hpp"

namespace parallax::pp {

//! One microbatch of a step: token ids and next-token targets, int32 `[T, Bm]` (sequence first), in the
//! backend's memory. Every rank of a pipeline is given every microbatch: the first virtual stage reads the
//! tokens, the last one the targets, and the pipeline counts the targets for the loss's mean.
template <MemorySpace Space>
struct Microbatch {
  View<const std::int32_t, Space> tokens, targets;
};

//! What the forward of a virtual stage is given for one microbatch.
template <FloatElement T, MemorySpace Space>
struct StageInput {
  View<const T, Space> activation;                  //!< the previous virtual stage's output; empty on stage 0
  View<const std::int32_t, Space> tokens, targets;  //!< this microbatch's `[T, Bm]`
};

//! What the forward of a virtual stage returns for one microbatch: the activation for the next virtual stage,
//! or, on the last virtual stage, an empty activation and the loss (`LossValue{sum, count}` over the
//! microbatch's target tokens).
template <FloatElement T, MemorySpace Space>
struct StageOutput {
  Tensor<T, Space> activation;
  nn::LossValue loss;
};

namespace detail {

template <class M, class B, class T, class Space>
concept StageModuleOf = requires(M& m, const M& cm, typename M::Ctx& ctx, const StageInput<T, Space>& in,
                                 View<const T, Space> dy, float scale, const Shape& tokens) {
  { m.forward(ctx, in) } -> std::same_as<StageOutput<T, Space>>;
  { m.backward_input(ctx, dy, scale) } -> std::same_as<Tensor<T, Space>>;
  m.backward_weight(ctx);
  { m.parameters() } -> std::same_as<nn::ParameterList<T, Space>>;
  { cm.name() } -> std::convertible_to<std::string_view>;
  { cm.rank() } -> std::same_as<Rank<B>&>;
  { cm.input_shape(tokens) } -> std::same_as<Shape>;
};

}  // namespace detail

//! The module of one virtual pipeline stage (a model chunk), as `PipelineStage` runs it:
//!   - `backend`, `value_type` (the storage type T) and `Ctx`: what one microbatch's forward saved (default-
//!     constructible and movable: the pipeline keeps one per microbatch in flight);
//!   - `StageOutput forward(Ctx&, const StageInput&)`: virtual stage 0 embeds `tokens` (its `activation` is
//!     empty); the last virtual stage returns the loss against `targets` and an empty activation; the others map
//!     the activation to the next one;
//!   - `Tensor backward_input(Ctx&, View<const T> dy, float loss_scale)`: the gradient of the stage's input
//!     (empty on virtual stage 0) given that of its output; on the last virtual stage `dy` is empty and the loss
//!     gradient is that of `loss_scale * sum`;
//!   - `void backward_weight(Ctx&)`: accumulates (+=) the parameters' gradients and frees the context;
//!   - `Shape input_shape(const Shape& tokens) const`: the activation shape it takes for tokens of that shape
//!     (checked against what the previous stage sends; any value on virtual stage 0);
//!   - `parameters()`, `name()`, and `rank()` as every `nn::Module`.
//! @code
//! static_assert(pp::StageModule<MyStage>);
//! pp::PipelineStage<pp::OneFOneB, MyStage> stage(mesh, MyStage(mesh, ...), {.microbatches = 8});
//! @endcode
template <class M>
concept StageModule = Backend<typename M::backend> && FloatElement<typename M::value_type> &&
                      std::default_initializable<typename M::Ctx> && std::movable<typename M::Ctx> &&
                      std::movable<M> &&
                      detail::StageModuleOf<M, typename M::backend, typename M::value_type,
                                            typename M::backend::Memory>;

//! Layers [begin, end) of a model, the share of one virtual stage.
struct LayerRange {
  int begin = 0;
  int end = 0;
  [[nodiscard]] constexpr int count() const noexcept { return end - begin; }
  friend constexpr bool operator==(const LayerRange&, const LayerRange&) = default;
};

//! The layers of virtual stage `stage` (0..p*v-1) when `layers` layers are cut into `stages` x `chunks` (p x v)
//! equal, consecutive pieces. Throws `Error` unless `layers` divides by p x v, with the same message on every
//! rank (each builds its stages with it before any communication).
//! @code
//! const pp::LayerRange mine = pp::layers_of(12, S::stage_of(pp_rank, chunk, p), p, S::chunks);  // 12 layers
//! @endcode
[[nodiscard]] inline LayerRange layers_of(int layers, int stage, int stages, int chunks = 1) {
  if (stages < 1 || chunks < 1)
    throw Error(fmt::format("pp::layers_of: p = {} stages and v = {} chunks must be at least 1", stages, chunks));
  const int total = stages * chunks;
  if (layers < 1 || layers % total != 0)
    throw Error(fmt::format("pp::layers_of: {} layers are not divisible by p x v = {} x {} = {} virtual stages",
                            layers, stages, chunks, total));
  if (stage < 0 || stage >= total)
    throw Error(fmt::format("pp::layers_of: virtual stage {} is outside 0..{}", stage, total - 1));
  const int per = layers / total;
  return {stage * per, (stage + 1) * per};
}

}  // namespace parallax::pp
