// Entry points of the lrn family (to be written).
#include "dispatch.h"

namespace convnet {

void register_lrn(py::module_& m) { (void)m; }

}  // namespace convnet
