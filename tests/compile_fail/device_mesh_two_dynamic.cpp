// expect: at most one extent may be parallax::dynamic
#include <parallax/mesh/device_mesh.hpp>
int main() { return parallax::DeviceMesh<parallax::dynamic, 1, parallax::dynamic>::size; }
