// The DLPack ABI, written out from the published specification: the unversioned "dltensor"
// capsule (v0.8) every array library accepts, and the versioned "dltensor_versioned" one (v1.0),
// which carries flags (read-only, copied) and is made for consumers that ask for it.
#pragma once
#include <cstdint>

extern "C" {
enum DLDeviceType { kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3, kDLCUDAManaged = 13 };
enum DLDataTypeCode { kDLInt = 0, kDLUInt = 1, kDLFloat = 2 };
struct DLDevice { int32_t device_type; int32_t device_id; };
struct DLDataType { uint8_t code; uint8_t bits; uint16_t lanes; };
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; NULL means compact row-major
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};
struct DLPackVersion { uint32_t major; uint32_t minor; };
struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(DLManagedTensorVersioned* self);
  uint64_t flags;
  DLTensor dl_tensor;
};
}
constexpr uint64_t kDLFlagReadOnly = 1ull << 0;  // the consumer must not write
constexpr uint64_t kDLFlagIsCopied = 1ull << 1;  // the producer copied for this export
