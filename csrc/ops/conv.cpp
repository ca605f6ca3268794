// Entry points of the conv family (to be written).
#include "dispatch.h"

namespace convnet {

void register_conv(py::module_& m) { (void)m; }

}  // namespace convnet
