// expect: ColumnParallelLinear: fixed<N> output features are not divisible by the mesh's static TP extent
#include <parallax/backend/host/backend.hpp>
#include <parallax/tp/column_parallel_linear.hpp>
using Mesh = parallax::DeviceMesh<1, 1, 4>;
void build(Mesh& mesh) {
  parallax::tp::ColumnParallelLinear<Mesh, parallax::host::Backend, float> fc(mesh, parallax::fixed<12>,
                                                                              parallax::fixed<10>);
}
