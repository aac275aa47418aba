// expect: the TP extent must be a positive integer or parallax::dynamic
#include <parallax/mesh/device_mesh.hpp>
int main() { return parallax::DeviceMesh<2, 1, 0>::size; }
