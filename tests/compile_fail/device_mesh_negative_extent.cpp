// expect: the DP extent must be a positive integer or parallax::dynamic
#include <parallax/mesh/device_mesh.hpp>
int main() { return parallax::DeviceMesh<-3, 1, 1>::size; }
