// examples/05_train_gpt/train_ranks.cpp — the rank loop of train_gpt for one mesh type and one storage type.
//
// CMake compiles this file once per pair the program runs, defining TRAIN_GPT_MESH (fixed or dynamic) and
// TRAIN_GPT_STORAGE (float or parallax::bf16): three translation units that build in parallel.
#include "trainer.hpp"

template void train_gpt::run_ranks<train_gpt::MeshType::TRAIN_GPT_MESH, TRAIN_GPT_STORAGE>(const Plan&, Report&);
