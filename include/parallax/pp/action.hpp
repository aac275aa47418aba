// parallax/pp/action.hpp — the vocabulary of pipeline schedules: what one rank does next (`Action`), and the
// size of a pipeline (`ScheduleShape`).
#pragma once

#include <string>
#include <string_view>

#include <fmt/format.h>

namespace parallax::pp {

//! What an action computes for one microbatch on one model chunk.
//!
//! A schedule either fuses the backward (`backward`: input and weight gradients together) or splits it
//! (`backward_input`, which the previous stage waits for, then `backward_weight`, which nobody waits for and
//! which a zero-bubble schedule moves into the pipeline's idle slots); it never mixes the two.
enum class Op : unsigned char { forward, backward, backward_input, backward_weight };

//! The op's name as written in messages: "forward", "backward", "backward_input", "backward_weight".
[[nodiscard]] constexpr std::string_view op_name(Op op) noexcept {
  switch (op) {
    case Op::forward: return "forward";
    case Op::backward: return "backward";
    case Op::backward_input: return "backward_input";
    case Op::backward_weight: return "backward_weight";
  }
  return "?";
}

//! The op's letter in a timeline: F (forward), B (backward or backward_input), W (backward_weight).
[[nodiscard]] constexpr char op_letter(Op op) noexcept {
  switch (op) {
    case Op::forward: return 'F';
    case Op::backward:
    case Op::backward_input: return 'B';
    case Op::backward_weight: return 'W';
  }
  return '?';
}

//! One step of one rank's schedule: `op` on `microbatch` (0..m-1) for the rank's model chunk `chunk` (0..v-1;
//! which virtual stage that chunk is, is the schedule's `stage_of`).
//! @code
//! constexpr pp::Action a{pp::Op::forward, 3, 0};   // forward of microbatch 3 through chunk 0
//! @endcode
struct Action {
  Op op = Op::forward;
  int microbatch = 0;
  int chunk = 0;

  friend constexpr bool operator==(const Action&, const Action&) = default;
};

//! "forward(microbatch 3, chunk 0)": an action as error messages name it.
[[nodiscard]] inline std::string describe(const Action& a) {
  return fmt::format("{}(microbatch {}, chunk {})", op_name(a.op), a.microbatch, a.chunk);
}

//! The size of a pipeline: `stages` ranks (p), `microbatches` per step (m) and `chunks` model chunks per rank
//! (v, the virtual stages of an interleaved schedule; 1 otherwise). The model is cut into p * v virtual stages.
struct ScheduleShape {
  int stages = 1;
  int microbatches = 1;
  int chunks = 1;

  //! p * v, the number of virtual stages.
  [[nodiscard]] constexpr int virtual_stages() const noexcept { return stages * chunks; }

  friend constexpr bool operator==(const ScheduleShape&, const ScheduleShape&) = default;
};

}  // namespace parallax::pp
