// A block whose fixed<N> head count does not divide over a static TP extent must not compile.
// expect: TransformerBlock: fixed<N> heads are not divisible by the mesh's static TP extent
#include <parallax/backend/host/backend.hpp>
#include <parallax/tp/transformer_block.hpp>

namespace px = parallax;

void build(px::DeviceMesh<1, 1, 4>& mesh) {
  px::tp::TransformerBlock<px::DeviceMesh<1, 1, 4>, px::host::Backend, float> block(mesh, px::fixed<48>, px::fixed<6>);
}
