// expect: RowParallelLinear: fixed<N> input features are not divisible by the mesh's static TP extent
#include <parallax/backend/host/backend.hpp>
#include <parallax/tp/row_parallel_linear.hpp>
using Mesh = parallax::DeviceMesh<2, 1, 4>;
void build(Mesh& mesh) {
  parallax::tp::RowParallelLinear<Mesh, parallax::host::Backend, float> fc(mesh, parallax::fixed<10>,
                                                                           parallax::fixed<12>);
}
