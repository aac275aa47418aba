// tests/cuda_emulated/shim/cuda_runtime.h — stands in for CUDA's runtime header when the host compiler builds the
// backend's device-only kernel headers (include/parallax/backend/cuda/detail/*_kernels.cuh) for the SIMT emulator.
#pragma once

#include "../simt.hpp"
