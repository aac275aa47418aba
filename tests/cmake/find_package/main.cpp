// Uses an installed parallax (find_package): prints the version it was built against.
#include <parallax/parallax.hpp>

#include <cstdio>

int main() {
  std::printf("parallax %d.%d.%d (parallax::version = %d)\n", PARALLAX_VERSION_MAJOR, PARALLAX_VERSION_MINOR,
              PARALLAX_VERSION_PATCH, parallax::version);
  return 0;
}
