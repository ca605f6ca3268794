// Entry points of the pool family (to be written).
#include "dispatch.h"

namespace convnet {

void register_pool(py::module_& m) { (void)m; }

}  // namespace convnet
