// parallax/nn/parameter.hpp — a trainable tensor: its shard of the value, its gradient and its sharding spec.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "../core/allocator.hpp"
#include "../core/tensor.hpp"
#include "../error.hpp"
#include "shard_spec.hpp"

namespace parallax::nn {

template <FloatElement T, MemorySpace Space>
class Parameter;

//! What a data-parallel reducer or a sharded optimizer does around a parameter's uses: modules bracket
//! every read of the value with `acquire_value` / `release_value` and every accumulation into the
//! gradient with `acquire_grad` / `release_grad`, which call these (when set). ZeRO-3 gathers the value
//! in `before_value` and frees it in `after_value`; a gradient bucket counts `after_grad` calls and starts
//! its reduction once every parameter in it has its final gradient.
template <FloatElement T, MemorySpace Space>
struct ParameterHooks {
  std::function<void(Parameter<T, Space>&)> before_value, after_value, before_grad, after_grad;
};

//! A trainable parameter: this rank's shard of the value (`parameters` category), its gradient
//! (`gradients` category, accumulated by `backward_weight`) and its `ShardSpec`.
//!
//! Value and gradient live in storage the parameter owns until someone binds other storage to them:
//! data-parallel gradient buckets bind each gradient to a slice of a flat buffer, and ZeRO-3 binds the
//! value to a gathered buffer only while a module runs. Binding frees the owned storage. Whoever bound
//! storage detaches it before freeing it (`detach_value`/`detach_grad`: reading the value or gradient then
//! throws, saying why, instead of reading freed memory) and gives the parameter owned storage back when it
//! goes away (`own_value`/`own_grad`).
//! @code
//! Parameter<float, host::Memory> w(alloc, ShardSpec::replicated("fc.weight", Shape{16, 8}));
//! init_shard(w.value(), w.spec(), init::normal(0.02f, seed_for(7, w.name())));
//! @endcode
template <FloatElement T, MemorySpace Space>
class Parameter {
 public:
  using value_type = T;
  using memory_space = Space;

  Parameter(Allocator<Space>& allocator, ShardSpec spec)
      : spec_(std::move(spec)),
        shape_(spec_.local_shape()),
        allocator_(&allocator),
        value_store_(allocator, shape_, MemoryCategory::parameters),
        grad_store_(allocator, shape_, MemoryCategory::gradients),
        value_(value_store_.view()),
        grad_(grad_store_.view()) {}

  [[nodiscard]] const ShardSpec& spec() const noexcept { return spec_; }
  [[nodiscard]] const std::string& name() const noexcept { return spec_.name; }
  [[nodiscard]] const Shape& shape() const noexcept { return shape_; }
  [[nodiscard]] std::int64_t numel() const noexcept { return shape_.numel(); }
  //! This rank's shard of the value, and its gradient. Throw, saying why, while detached.
  [[nodiscard]] View<T, Space> value() const {
    if (value_detached_ != nullptr) throw detached_error("value", value_detached_);
    return value_;
  }
  [[nodiscard]] View<T, Space> grad() const {
    if (grad_detached_ != nullptr) throw detached_error("gradient", grad_detached_);
    return grad_;
  }

  //! The value for a read by a module: runs the `before_value` hook first (ZeRO-3 gathers it there).
  [[nodiscard]] View<T, Space> acquire_value() {
    if (hooks_.before_value) hooks_.before_value(*this);
    return value();
  }
  //! Ends a read begun with `acquire_value`.
  void release_value() {
    if (hooks_.after_value) hooks_.after_value(*this);
  }
  //! The gradient for an accumulation by a module's backward_weight: runs the `before_grad` hook first.
  [[nodiscard]] View<T, Space> acquire_grad() {
    if (hooks_.before_grad) hooks_.before_grad(*this);
    return grad();
  }
  //! Ends an accumulation begun with `acquire_grad`: this microbatch's gradient is in (`after_grad` hook).
  void release_grad() {
    if (hooks_.after_grad) hooks_.after_grad(*this);
  }
  //! Installs `hooks`, returning the previous ones.
  ParameterHooks<T, Space> set_hooks(ParameterHooks<T, Space> hooks) { return std::exchange(hooks_, std::move(hooks)); }
  [[nodiscard]] const ParameterHooks<T, Space>& hooks() const noexcept { return hooks_; }

  //! Whether this parameter is a copy of another that ends every step with the same gradient (tied weights on two
  //! pipeline stages, kept equal by summing their gradients): global gradient norms count the other one only, as
  //! if the model held the weight once (Megatron's `shared` embedding on the last stage).
  [[nodiscard]] bool shared_copy() const noexcept { return shared_copy_; }
  void set_shared_copy(bool shared) noexcept { shared_copy_ = shared; }

  //! Sets the gradient to zero (nothing while it is detached).
  void zero_grad() const {
    if (grad_detached_ == nullptr && !grad_.empty()) Space::zero(grad_.data(), grad_.bytes());
  }
  //! Makes `storage` (same shape) the gradient, freeing owned storage; returns the previous binding.
  View<T, Space> bind_grad(View<T, Space> storage) {
    check_binding("bind_grad", storage);
    grad_store_.reset();
    grad_detached_ = nullptr;
    return std::exchange(grad_, storage);
  }
  //! Makes `storage` (same shape) the value, freeing owned storage; returns the previous binding.
  View<T, Space> bind_value(View<T, Space> storage) {
    check_binding("bind_value", storage);
    value_store_.reset();
    value_detached_ = nullptr;
    return std::exchange(value_, storage);
  }
  //! Drops the bound value (its storage is about to be freed): until storage is bound again, `value()` and
  //! `acquire_value()` throw an Error "Parameter '<name>': its value <why>" (`why`, a string literal: what holds
  //! the value, where to read it instead). Allocates nothing: optimizers detach on every step.
  void detach_value(const char* why) noexcept {
    value_store_.reset();
    value_ = {};
    value_detached_ = why;
  }
  //! Drops the bound gradient, like `detach_value` ("Parameter '<name>': its gradient <why>").
  void detach_grad(const char* why) noexcept {
    grad_store_.reset();
    grad_ = {};
    grad_detached_ = why;
  }
  //! Gives the value owned storage again, holding its current contents (zeros when detached); nothing when it
  //! owns its storage already. For whoever bound storage, before that storage goes away.
  void own_value() { own(value_store_, value_, value_detached_, MemoryCategory::parameters); }
  //! Gives the gradient owned storage again, like `own_value`.
  void own_grad() { own(grad_store_, grad_, grad_detached_, MemoryCategory::gradients); }

 private:
  void check_binding(const char* op, const View<T, Space>& v) const {
    if (v.shape() != spec_.local_shape())
      throw Error(fmt::format("Parameter '{}': {} with shape {}, the shard is {}", spec_.name, op, v.shape(),
                              spec_.local_shape()));
  }

  void own(Tensor<T, Space>& store, View<T, Space>& view, const char*& detached, MemoryCategory category) {
    if (!store.empty() && store.data() == view.data()) return;
    Tensor<T, Space> owned(*allocator_, shape_, category);
    if (detached == nullptr) copy(owned.view(), View<const T, Space>(view));
    store = std::move(owned);
    view = store.view();
    detached = nullptr;
  }
  [[nodiscard]] Error detached_error(const char* what, const char* why) const {
    return Error(fmt::format("Parameter '{}': its {} {}", spec_.name, what, why), allocator_->rank());
  }

  ShardSpec spec_;
  Shape shape_;  // the local shard's
  Allocator<Space>* allocator_;
  Tensor<T, Space> value_store_, grad_store_;
  View<T, Space> value_, grad_;
  ParameterHooks<T, Space> hooks_;
  const char* value_detached_ = nullptr;  // why value() throws (a literal); null: it doesn't
  const char* grad_detached_ = nullptr;   // why grad() throws
  bool shared_copy_ = false;
};

//! The parameters of a module, in a fixed order (the same on every rank of a replica group). The pointers
//! stay valid while the module is not moved.
template <FloatElement T, MemorySpace Space>
using ParameterList = std::vector<Parameter<T, Space>*>;

//! Appends `more` to `list`.
template <FloatElement T, MemorySpace Space>
void append(ParameterList<T, Space>& list, const ParameterList<T, Space>& more) {
  list.insert(list.end(), more.begin(), more.end());
}

//! A per-parameter seed: the global seed mixed with the parameter's name (FNV-1a), so every parameter draws
//! a different stream and a parameter's values do not depend on how the model is laid out.
[[nodiscard]] constexpr std::uint64_t seed_for(std::uint64_t seed, std::string_view name) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ull ^ seed;
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  return h;
}

//! "prefix.name", or "name" when prefix is empty.
[[nodiscard]] inline std::string join_name(std::string_view prefix, std::string_view name) {
  return prefix.empty() ? std::string(name) : fmt::format("{}.{}", prefix, name);
}

}  // namespace parallax::nn
