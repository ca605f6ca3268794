#include "tensor.h"

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "device.h"

namespace convnet {

namespace {
thread_local const char* g_current_op = "convnet";
bool g_poison = false;
}  // namespace

const char* current_op() { return g_current_op; }
OpScope::OpScope(const char* name) : previous(g_current_op) { g_current_op = name; }
OpScope::~OpScope() { g_current_op = previous; }

void set_poison(bool on) { g_poison = on; }
bool poison() { return g_poison; }

size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::i32: return 4;
    case DType::u8: return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::i32: return "int32";
    case DType::u8: return "uint8";
  }
  return "?";
}

std::string Device::str() const {
  return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index);
}

Device Device::parse(const std::string& s) {
  OpScope scope("device");
  auto colon = s.find(':');
  std::string kind = s.substr(0, colon);
  int index = 0;
  if (colon != std::string::npos) {
    std::string num = s.substr(colon + 1);
    bool digits = !num.empty() && num.size() < 6 &&
                  num.find_first_not_of("0123456789") == std::string::npos;
    CHECK_VALUE(digits, "bad device name '", s, "' (expected 'cpu' or 'cuda:N')");
    index = std::stoi(num);
  }
  if (kind == "cpu") return Device{DeviceType::CPU, 0};
  CHECK_VALUE(kind == "cuda", "unknown device '", s, "' (expected 'cpu' or 'cuda:N')");
  CHECK_DEVICE(cuda_built(), "device '", s,
               "' asked for, but convnet was built without CUDA (rebuild with a CUDA toolkit, CONVNET_CUDA=1)");
  int n = cuda_device_count();
  CHECK_DEVICE(n > 0, "device '", s, "' asked for, but no CUDA GPU is visible");
  CHECK_DEVICE(index < n, "device '", s, "' does not exist: ", n, " CUDA GPU(s) visible (cuda:0..cuda:", n - 1, ")");
  return Device{DeviceType::CUDA, index};
}

Storage::~Storage() {
  if (release) release();
}

std::shared_ptr<Storage> Storage::allocate(size_t nbytes, Device d, bool pinned) {
  auto s = std::make_shared<Storage>();
  s->nbytes = nbytes;
  s->device = d;
  size_t n = nbytes ? nbytes : 1;
  if (pinned) {
    CHECK_VALUE(d.is_cpu(), "pinned memory is host memory: its device must be 'cpu', not '", d.str(), "'");
    CHECK_DEVICE(cuda_device_count() > 0, "pinned host memory needs a CUDA GPU, and none is visible",
                 cuda_built() ? "" : " (convnet was built without CUDA)");
    void* p = gpu::allocate_pinned(n);
    Storage* raw = s.get();  // the release runs in ~Storage, while *raw (and its last event) still exists
    s->data = p;
    s->pinned = true;
    s->release = [raw, p, n] { gpu::deallocate_pinned(p, n, raw->event); };
  } else if (d.is_cpu()) {
    void* p = host::allocate(n);
    s->data = p;
    s->release = [p, n] { host::deallocate(p, n); };
  } else {
    void* p = gpu::allocate(d.index, n);
    int dev = d.index;
    s->data = p;
    s->release = [dev, p, n] { gpu::deallocate(dev, p, n); };
  }
  return s;
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  return n;
}

std::string Tensor::shape_str() const {
  std::string o = "(";
  for (size_t i = 0; i < shape.size(); ++i) o += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) o += ",";
  return o + ")";
}

// Every dimension >= 0 and the byte count representable: a product that wrapped around would
// allocate a few bytes for a tensor that kernels then write far past. The product skips zeros, so
// that (0, 2^62) and (2^62, 0) are refused alike, and numel() never wraps on the way to its 0.
void check_shape(const Tensor& t) {
  int64_t bytes = (int64_t)dtype_size(t.dtype);
  for (auto s : t.shape) {
    CHECK_VALUE(s >= 0, "negative dimension in shape ", t.shape_str());
    CHECK_VALUE(s == 0 || !__builtin_mul_overflow(bytes, s, &bytes), "shape ", t.shape_str(),
                " is too large: its size overflows");
  }
}

Tensor Tensor::empty(const std::vector<int64_t>& shape, DType dtype, Device d, bool pinned) {
  Tensor t;
  t.shape = shape;
  t.dtype = dtype;
  check_shape(t);
  t.storage = Storage::allocate(t.nbytes(), d, pinned);
  if (g_poison) {
    if (d.is_cpu()) std::memset(t.raw(), 0xFF, t.nbytes());  // 0xFFFFFFFF is a float NaN
    else gpu::memset(d.index, t.raw(), 0xFF, t.nbytes());
  }
  return t;
}

Tensor Tensor::zeros(const std::vector<int64_t>& shape, DType dtype, Device d) {
  bool p = g_poison;
  g_poison = false;
  Tensor t = empty(shape, dtype, d);
  g_poison = p;
  if (d.is_cpu()) std::memset(t.raw(), 0, t.nbytes());
  else gpu::memset(d.index, t.raw(), 0, t.nbytes());
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  CHECK_VALUE(src.shape == shape && src.dtype == dtype, "copy between tensors of different shape or dtype");
  if (nbytes() == 0 || raw() == src.raw()) return;
  check_disjoint(*this, "self", src, "src");  // overlapping views (from DLPack): memcpy's result is undefined
  Device sd = src.device(), dd = device();
  if (sd.is_cpu() && dd.is_cpu()) {
    std::memcpy(raw(), src.raw(), nbytes());
    return;
  }
  gpu::copy(raw(), dd.is_cuda() ? dd.index : -1, src.raw(), sd.is_cuda() ? sd.index : -1, nbytes());
}

Tensor Tensor::to_new(Device d) const {
  Tensor t = empty(shape, dtype, d);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(Device d, bool non_blocking) const {
  if (d == device()) return *this;
  if (!(non_blocking && storage->pinned && d.is_cuda())) return to_new(d);
  Tensor t = empty(shape, dtype, d);
  if (nbytes()) gpu::copy_host_to_device_async(t.raw(), d.index, raw(), nbytes(), &storage->event);
  return t;
}

Tensor Tensor::reshape(const std::vector<int64_t>& new_shape) const {
  Tensor t = *this;
  t.shape = new_shape;
  check_shape(t);
  CHECK_VALUE(t.numel() == numel(), "cannot reshape ", shape_str(), " to ", t.shape_str());
  return t;
}

void check_defined(const Tensor& t, const char* name) {
  CHECK_VALUE(t.storage != nullptr, "argument '", name, "' is an empty tensor object");
}

void check_dtype(const Tensor& t, DType want, const char* name) {
  CHECK_TYPE(t.dtype == want, "'", name, "' must be ", dtype_name(want), ", got ", dtype_name(t.dtype));
}

void check_dim(const Tensor& t, int d, const char* name) {
  CHECK_VALUE(t.dim() == d, "'", name, "' must have ", d, " dimensions, got shape ", t.shape_str());
}

void check_shape(const Tensor& t, const std::vector<int64_t>& want, const char* name) {
  Tensor w;
  w.shape = want;
  CHECK_VALUE(t.shape == want, "'", name, "' must have shape ", w.shape_str(), ", got ", t.shape_str());
}

void check_same_device(const Tensor& a, const char* an, const Tensor& b, const char* bn) {
  CHECK_VALUE(a.device() == b.device(), "'", an, "' is on ", a.device().str(), " but '", bn, "' is on ",
              b.device().str(), " (move one with .to(device))");
}

void check_disjoint(const Tensor& a, const char* an, const Tensor& b, const char* bn, bool identical_ok) {
  if (a.device() != b.device() || a.nbytes() == 0 || b.nbytes() == 0) return;
  const char *a0 = static_cast<const char*>(a.raw()), *b0 = static_cast<const char*>(b.raw());
  if (identical_ok && a0 == b0 && a.nbytes() == b.nbytes()) return;
  CHECK_VALUE(!(a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes()), "'", an, "' and '", bn, "' share memory",
              identical_ok ? " (only the same tensor twice is allowed)" : "");
}

void check_matches(const Tensor& t, const char* name, DType dtype, const std::vector<int64_t>& shape,
                   const Tensor& ref, const char* ref_name) {
  check_defined(t, name);
  check_dtype(t, dtype, name);
  check_same_device(ref, ref_name, t, name);
  check_shape(t, shape, name);
}

void check_finite(const Tensor& t, const char* name) {
  if (t.dtype != DType::f32) return;
  int64_t bad = 0;
  if (t.device().is_cpu()) {
    const float* p = t.data<float>();
    int64_t n = t.numel();
    for (int64_t i = 0; i < n; ++i) bad += !std::isfinite(p[i]);
  } else {
    bad = gpu::count_nonfinite(t.device().index, t.data<float>(), t.numel());
  }
  check_no_nonfinite(bad, name);
}

void check_no_nonfinite(int64_t count, const char* name) {
  CHECK_VALUE(count == 0, "'", name, "' contains ", count, " NaN or infinite value(s)");
}

}  // namespace convnet
