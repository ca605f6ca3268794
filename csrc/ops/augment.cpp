// Entry points of the augment family (to be written).
#include "dispatch.h"

namespace convnet {

void register_augment(py::module_& m) { (void)m; }

}  // namespace convnet
