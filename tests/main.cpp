// Catch2 main for every parallax test executable; compiled once and shared by the host test binaries.
//
// Built with PARALLAX_TEST_GPU_MAIN (the CUDA test binary only), it skips tests tagged [gpu] when the
// machine has no usable CUDA device, or when PARALLAX_TEST_NO_GPU is set in the environment.
#if defined(PARALLAX_TEST_GPU_MAIN)

#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <string>

int main(int argc, char* argv[]) {
  Catch::Session session;
  if (int rc = session.applyCommandLine(argc, argv); rc != 0) return rc;

  int devices = 0;
  const cudaError_t err = cudaGetDeviceCount(&devices);
  const bool forced_off = std::getenv("PARALLAX_TEST_NO_GPU") != nullptr;
  if (err != cudaSuccess || devices == 0 || forced_off) {
    std::fprintf(stderr, "parallax tests: no usable CUDA device (%s); skipping tests tagged [gpu]\n",
                 forced_off ? "PARALLAX_TEST_NO_GPU is set" : err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
    // Separate test specs are OR-ed by Catch; AND the exclusion into each tag expression the user gave. Catch 2
    // cannot AND a tag into a test name ("name ~[gpu]" matches nothing), so a test asked for by name runs as asked.
    auto& specs = session.configData().testsOrTags;
    if (specs.empty()) {
      specs.emplace_back("~[gpu]");
    } else {
      for (auto& spec : specs)
        if (!spec.empty() && (spec.front() == '[' || spec.front() == '~')) spec += " ~[gpu]";
    }
    session.useConfigData(session.configData());
  }
  return session.run();
}

#else

#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

#endif
