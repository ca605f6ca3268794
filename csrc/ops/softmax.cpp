// Entry points of the softmax family (to be written).
#include "dispatch.h"

namespace convnet {

void register_softmax(py::module_& m) { (void)m; }

}  // namespace convnet
