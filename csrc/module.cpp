// Python module entry of kern_d2._C. The ops themselves register with TORCH_LIBRARY(kern_d2, ...) in the
// per-op files; importing this module loads them into torch.ops.kern_d2.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "kern_d2 compiled ops (torch.ops.kern_d2.*)";
#ifdef WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
