// parallax/config.hpp — compiler and architecture detection; the only place for macros.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define PARALLAX_HOST_DEVICE __host__ __device__
#define PARALLAX_DEVICE __device__
#else
#define PARALLAX_HOST_DEVICE
#define PARALLAX_DEVICE
#endif

#if defined(__CUDA_ARCH__)
#define PARALLAX_IN_DEVICE_CODE 1
#else
#define PARALLAX_IN_DEVICE_CODE 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define PARALLAX_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define PARALLAX_ALWAYS_INLINE inline
#endif

#if !defined(NDEBUG)
#define PARALLAX_DEBUG_BUILD 1
#else
#define PARALLAX_DEBUG_BUILD 0
#endif
