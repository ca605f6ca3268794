// Tensor: a contiguous, row-major (NCHW) block of float32, int32 or uint8 on one device.
// Storage is reference counted; a tensor never aliases part of another, so every
// kernel may assume dense data starting at data<T>().
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "error.h"

namespace convnet {

enum class DType : int { f32 = 0, i32 = 1, u8 = 2 };
size_t dtype_size(DType t);
const char* dtype_name(DType t);  // "float32", "int32", "uint8"

enum class DeviceType : int { CPU = 0, CUDA = 1 };

// A physical device: the CPU, or CUDA device `index`.
struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;
  bool is_cuda() const { return type == DeviceType::CUDA; }
  bool is_cpu() const { return type == DeviceType::CPU; }
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const;                    // "cpu" or "cuda:1"
  static Device parse(const std::string& s);  // "cpu", "cpu:N", "cuda", "cuda:N"; checks the GPU exists
};

// Owns (or borrows, for DLPack imports) one allocation.
struct Storage {
  void* data = nullptr;
  size_t nbytes = 0;
  Device device;
  std::function<void()> release;  // frees the memory; empty for nothing to free
  bool pinned = false;            // page-locked host memory (can be copied to a GPU asynchronously)
  void* event = nullptr;          // pinned only: a cudaEvent_t after the last asynchronous copy from it
  Storage() = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage();
  static std::shared_ptr<Storage> allocate(size_t nbytes, Device d, bool pinned = false);
};

struct Tensor {
  std::shared_ptr<Storage> storage;
  std::vector<int64_t> shape;
  DType dtype = DType::f32;

  Device device() const { return storage->device; }
  int dim() const { return (int)shape.size(); }
  int64_t size(int i) const { return shape.at(i < 0 ? i + dim() : i); }
  int64_t numel() const;
  size_t nbytes() const { return (size_t)numel() * dtype_size(dtype); }
  void* raw() const { return storage->data; }
  template <class T> T* data() const { return static_cast<T*>(storage->data); }
  std::string shape_str() const;  // "(2, 3, 4)"

  // Uninitialised (filled with NaN / 0xFF bytes when poison mode is on).
  // pinned: page-locked host memory (d must be the CPU; needs a GPU).
  static Tensor empty(const std::vector<int64_t>& shape, DType dtype, Device d, bool pinned = false);
  static Tensor zeros(const std::vector<int64_t>& shape, DType dtype, Device d);
  static Tensor empty_like(const Tensor& t) { return empty(t.shape, t.dtype, t.device()); }

  // Copy to another device (itself if already there). non_blocking: a pinned host tensor's copy
  // to a GPU is only queued on this thread's stream (kernels queued after it see the data; the
  // host side must not be written until the stream is synchronised); otherwise ignored.
  Tensor to(Device d, bool non_blocking = false) const;
  Tensor clone() const { return to_new(device()); }
  Tensor to_new(Device d) const;     // always a fresh copy
  void copy_from(const Tensor& src); // same shape and dtype, any devices
  Tensor reshape(const std::vector<int64_t>& new_shape) const;  // shares storage
};

// Tests turn this on so that any element a kernel forgets to write shows up as NaN.
void set_poison(bool on);
bool poison();

// Argument checks shared by every op (the only place such checks live).
void check_shape(const Tensor& t);  // no negative dimension, a size in bytes that fits an int64
void check_defined(const Tensor& t, const char* name);
void check_dtype(const Tensor& t, DType want, const char* name);
void check_dim(const Tensor& t, int d, const char* name);
void check_shape(const Tensor& t, const std::vector<int64_t>& want, const char* name);
void check_same_device(const Tensor& a, const char* an, const Tensor& b, const char* bn);
// For in-place ops: a and b share no byte (views of one buffer through DLPack count, not only the
// same tensor); identical_ok: b may be a itself, same start and size (a += a is elementwise).
void check_disjoint(const Tensor& a, const char* an, const Tensor& b, const char* bn, bool identical_ok = false);
void check_finite(const Tensor& t, const char* name);  // float32 only; one pass over the data
void check_no_nonfinite(int64_t count, const char* name);  // for an op that counted them itself
// The usual check of a tensor that travels with an op's main input `ref` (its gradient, its
// saved output, a mask): defined, of `dtype`, on ref's device, of `shape`.
void check_matches(const Tensor& t, const char* name, DType dtype, const std::vector<int64_t>& shape,
                   const Tensor& ref, const char* ref_name);

}  // namespace convnet
