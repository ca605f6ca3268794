// Entry points of the linear family (to be written).
#include "dispatch.h"

namespace convnet {

void register_linear(py::module_& m) { (void)m; }

}  // namespace convnet
