// convnet._C: the Tensor type, device queries, DLPack, and every op family's entry points.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <utility>

#include "core/device.h"
#include "core/dlpack.h"
#include "core/tensor.h"
#include "ops/dispatch.h"

namespace py = pybind11;
using namespace convnet;

namespace {

// By value (kind, size, native byte order): arrays from files or pickles carry dtype
// objects that are equal to, but not the same object as, NumPy's own.
DType dtype_from_numpy(const py::dtype& dt) {
  bool native = dt.byteorder() != '>' ;
  if (native && dt.kind() == 'f' && dt.itemsize() == 4) return DType::f32;
  if (native && dt.kind() == 'i' && dt.itemsize() == 4) return DType::i32;
  if (dt.kind() == 'u' && dt.itemsize() == 1) return DType::u8;
  OpScope s("tensor");
  CHECK_TYPE(false, "unsupported dtype ", std::string(py::str(dt)), " (convnet holds float32, int32 and uint8)");
  return DType::f32;
}

py::dtype numpy_dtype(DType t) {
  switch (t) {
    case DType::f32: return py::dtype::of<float>();
    case DType::i32: return py::dtype::of<int32_t>();
    case DType::u8: return py::dtype::of<uint8_t>();
  }
  return py::dtype::of<float>();
}

// A C-contiguous ndarray of a supported dtype -> a new tensor on `device`.
Tensor from_numpy(py::array a, const std::string& device) {
  OpScope s("tensor");
  Device d = Device::parse(device);
  DType dt = dtype_from_numpy(a.dtype());
  CHECK_VALUE(a.flags() & py::array::c_style, "array is not C-contiguous (use numpy.ascontiguousarray)");
  std::vector<int64_t> shape(a.shape(), a.shape() + a.ndim());
  Tensor t = Tensor::empty(shape, dt, d);
  if (t.nbytes() == 0) return t;
  if (d.is_cpu()) std::memcpy(t.raw(), a.data(), t.nbytes());
  else gpu::copy(t.raw(), d.index, a.data(), -1, t.nbytes());
  return t;
}

// CPU tensors come out as views that keep the storage alive; GPU tensors are copied.
py::array to_numpy(const Tensor& t) {
  std::vector<py::ssize_t> shape(t.shape.begin(), t.shape.end());
  if (t.device().is_cpu()) {
    auto* keep = new std::shared_ptr<Storage>(t.storage);
    py::capsule owner(keep, [](void* p) { delete static_cast<std::shared_ptr<Storage>*>(p); });
    return py::array(numpy_dtype(t.dtype), shape, t.raw(), owner);
  }
  py::array out(numpy_dtype(t.dtype), shape);
  OpScope s("numpy");
  gpu::copy(out.mutable_data(), -1, t.raw(), t.device().index, t.nbytes());
  return out;
}

// ---- DLPack ----
struct ExportCtx {
  std::shared_ptr<Storage> storage;
  std::vector<int64_t> shape;
  DLManagedTensor managed;              // the unversioned export
  DLManagedTensorVersioned versioned;   // or the versioned one
};

// A capsule's destructor: frees the export when no consumer took it (a consumer renames it).
// It must leave any pending exception alone: capsules die while one unwinds, and clearing it
// there (as an else branch once did, for a renamed capsule) crashed the interpreter.
// PyCapsule_IsValid sets none.
template <class Managed>
void drop_unconsumed(PyObject* cap, const char* name) {
  if (PyCapsule_IsValid(cap, name)) {
    auto* m = static_cast<Managed*>(PyCapsule_GetPointer(cap, name));
    if (m && m->deleter) m->deleter(m);
  }
}

// The DLPack (device type, id) of t's device.
std::pair<int, int> dlpack_device(const Tensor& t) {
  return {t.device().is_cpu() ? (int)kDLCPU : (int)kDLCUDA, t.device().is_cpu() ? 0 : t.device().index};
}

// Either kind's deleter: frees the export's context.
template <class Managed>
void delete_export(Managed* m) {
  delete static_cast<ExportCtx*>(m->manager_ctx);
}

// t as a DLPack capsule; versioned: the v1.0 capsule, `copied` in its flags.
py::capsule to_dlpack(const Tensor& t, bool versioned, bool copied) {
  // The consumer reads on its own stream: finish ours first.
  {
    OpScope s("__dlpack__");
    synchronize(t.device());
  }
  auto* ctx = new ExportCtx{t.storage, t.shape, {}, {}};
  DLTensor& dl = versioned ? ctx->versioned.dl_tensor : ctx->managed.dl_tensor;
  dl.data = t.raw();
  const auto device = dlpack_device(t);
  dl.device = {device.first, device.second};
  dl.ndim = t.dim();
  dl.dtype = t.dtype == DType::f32 ? DLDataType{kDLFloat, 32, 1}
           : t.dtype == DType::i32 ? DLDataType{kDLInt, 32, 1} : DLDataType{kDLUInt, 8, 1};
  dl.shape = ctx->shape.data();
  dl.strides = nullptr;
  dl.byte_offset = 0;
  if (versioned) {
    ctx->versioned.version = {1, 0};
    ctx->versioned.manager_ctx = ctx;
    ctx->versioned.deleter = delete_export<DLManagedTensorVersioned>;
    ctx->versioned.flags = copied ? kDLFlagIsCopied : 0;
    return py::capsule(&ctx->versioned, "dltensor_versioned",
                       [](PyObject* cap) { drop_unconsumed<DLManagedTensorVersioned>(cap, "dltensor_versioned"); });
  }
  ctx->managed.manager_ctx = ctx;
  ctx->managed.deleter = delete_export<DLManagedTensor>;
  return py::capsule(&ctx->managed, "dltensor",
                     [](PyObject* cap) { drop_unconsumed<DLManagedTensor>(cap, "dltensor"); });
}

// Tensor.__dlpack__ as the array API has it: max_version (major >= 1: the versioned capsule, else
// the unversioned one), dl_device (only this tensor's own: BufferError otherwise), copy (True:
// export a copy; False and None: never copy, and none is ever needed). stream: see to_dlpack.
// A pair of ints from Python, or a TypeError naming the argument (pybind's own cast error named
// neither it nor the form).
std::pair<int, int> int_pair(const py::object& v, const char* what, const char* form) {
  if (py::isinstance<py::tuple>(v) && py::len(v) == 2) {
    try {
      return v.cast<std::pair<int, int>>();
    } catch (const py::cast_error&) {
    }
  }
  CHECK_TYPE(false, what, " must be ", form, ", got ", std::string(py::repr(v)));
  return {};
}

py::capsule export_dlpack(const Tensor& t, py::object max_version, py::object dl_device, py::object copy) {
  OpScope s("__dlpack__");
  CHECK_TYPE(copy.is_none() || PyBool_Check(copy.ptr()), "copy must be True, False or None, got ",
             std::string(py::repr(copy)));
  if (!dl_device.is_none()) {
    const auto want = int_pair(dl_device, "dl_device", "a (device type, device id) tuple"), have = dlpack_device(t);
    if (want != have)
      throw py::buffer_error(detail::message("this tensor is on ", t.device().str(),
                                             " (DLPack device ", have.first, ", ", have.second,
                                             ") and cannot be exported to DLPack device (", want.first, ", ",
                                             want.second, "); use .to() first"));
  }
  const bool versioned = !max_version.is_none() && int_pair(max_version, "max_version", "a (major, minor) tuple").first >= 1;
  const bool copied = !copy.is_none() && copy.cast<bool>();
  return to_dlpack(copied ? t.clone() : t, versioned, copied);
}

Tensor from_dlpack_capsule(py::capsule cap) {
  OpScope s("from_dlpack");
  const bool versioned = PyCapsule_IsValid(cap.ptr(), "dltensor_versioned");
  CHECK_TYPE(versioned || PyCapsule_IsValid(cap.ptr(), "dltensor"),
             "expected an unconsumed 'dltensor' or 'dltensor_versioned' capsule (a DLPack capsule can be used once)");
  // Until the capsule is renamed below, an error leaves it to its producer's destructor.
  const DLTensor* dlp;
  std::function<void()> release;
  const auto take = [&](auto* m) {
    dlp = &m->dl_tensor;
    release = [m] { if (m->deleter) m->deleter(m); };
  };
  if (versioned) {
    auto* m = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(cap.ptr(), "dltensor_versioned"));
    CHECK_VALUE(m->version.major == 1, "DLPack ", m->version.major, ".", m->version.minor,
                " is not supported (1.x is)");
    CHECK_VALUE(!(m->flags & kDLFlagReadOnly), "the array is read-only and convnet tensors are writable: pass a "
                "writable array, or convnet.tensor(array) for a copy");
    take(m);
  } else {
    take(static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor")));
  }
  const DLTensor& dl = *dlp;
  DType dt;
  if (dl.dtype.lanes == 1 && dl.dtype.code == kDLFloat && dl.dtype.bits == 32) dt = DType::f32;
  else if (dl.dtype.lanes == 1 && dl.dtype.code == kDLInt && dl.dtype.bits == 32) dt = DType::i32;
  else if (dl.dtype.lanes == 1 && dl.dtype.code == kDLUInt && dl.dtype.bits == 8) dt = DType::u8;
  else {
    CHECK_TYPE(false, "unsupported DLPack dtype (code ", (int)dl.dtype.code, ", bits ", (int)dl.dtype.bits,
               "); convnet holds float32, int32 and uint8");
  }
  Device d;
  if (dl.device.device_type == kDLCPU) d = Device{DeviceType::CPU, 0};
  else if (dl.device.device_type == kDLCUDA) d = Device::parse("cuda:" + std::to_string(dl.device.device_id));
  else CHECK_VALUE(false, "unsupported DLPack device type ", dl.device.device_type);
  CHECK_VALUE(dl.ndim >= 0 && (dl.ndim == 0 || dl.shape), "the capsule's shape is missing or its ndim negative");
  std::vector<int64_t> shape(dl.shape, dl.shape + dl.ndim);
  // Strides describe nothing when there are no elements (PyTorch gives shape (3, 0) strides (1, 1)).
  const bool no_elements = std::find(shape.begin(), shape.end(), 0) != shape.end();
  if (dl.strides && !no_elements) {
    int64_t expect = 1;
    for (int i = dl.ndim - 1; i >= 0; --i) {
      if (shape[i] != 1)
        CHECK_VALUE(dl.strides[i] == expect, "array is not contiguous (strides do not describe a dense row-major "
                                             "layout); make a contiguous copy first");
      expect *= shape[i];
    }
  }
  Tensor t;
  t.shape = shape;
  t.dtype = dt;
  check_shape(t);
  char* data = static_cast<char*>(dl.data) + dl.byte_offset;
  // Every kernel loads whole elements: on a GPU a misaligned float load faults.
  const auto misaligned = reinterpret_cast<uintptr_t>(data) % dtype_size(dt);
  CHECK_VALUE(misaligned == 0 || t.nbytes() == 0, "the array's data is not aligned to its ", dtype_size(dt),
              "-byte elements (its address is ", misaligned, " past a multiple of ", dtype_size(dt),
              "); pass an aligned copy (convnet.tensor(array))");
  auto st = std::make_shared<Storage>();
  st->data = data;
  st->device = d;
  st->nbytes = t.nbytes();
  st->release = release;
  t.storage = st;
  PyCapsule_SetName(cap.ptr(), versioned ? "used_dltensor_versioned" : "used_dltensor");
  return t;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "convnet's compiled core: tensors, devices and hand-written CPU/CUDA kernels";
  static py::exception<TypeError> type_error(m, "_TypeError", PyExc_TypeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const DeviceError& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });

  py::class_<Tensor>(m, "Tensor", "A contiguous float32/int32/uint8 array on the CPU or a GPU.")
      // Tensor.__new__(Tensor) made an object with no C++ tensor in it, which crashed the first
      // method called on it. Tensors come from C++ (pybind11 allocates those without __new__).
      .def_static("__new__", [](const py::args&, const py::kwargs&) -> py::object {
        OpScope s("convnet.Tensor");
        CHECK_TYPE(false, "tensors are made by convnet.tensor(data), convnet.empty(shape) or convnet.zeros(shape)");
        return py::none();
      })
      .def("__copy__", [](const Tensor& t) { OpScope s("copy"); py::gil_scoped_release nogil; return t.clone(); })
      .def("__deepcopy__", [](const Tensor& t, const py::object&) {
        OpScope s("deepcopy");
        py::gil_scoped_release nogil;
        return t.clone();
      }, py::arg("memo"))
      // pickle: the data as a NumPy array and the device, rebuilt by from_numpy
      .def("__reduce__", [](const Tensor& t) {
        OpScope s("pickle");
        return py::make_tuple(py::module_::import("convnet._C").attr("from_numpy"),
                              py::make_tuple(to_numpy(t), t.device().str()));
      })
      // np.asarray(t): a view of a CPU tensor, a copy of a GPU one (copy=False refuses that)
      .def("__array__", [](const Tensor& t, const py::object& dtype, const py::object& copy) {
        OpScope s("__array__");
        CHECK_TYPE(copy.is_none() || PyBool_Check(copy.ptr()), "copy must be True, False or None");
        CHECK_VALUE(!(t.device().is_cuda() && copy.is(py::bool_(false))), "a tensor on ", t.device().str(),
                    " cannot become a NumPy array without a copy (copy=False)");
        py::object a = to_numpy(t);
        if (t.device().is_cpu() && copy.is(py::bool_(true))) a = a.attr("copy")();
        return dtype.is_none() ? a : a.attr("astype")(dtype);
      }, py::arg("dtype") = py::none(), py::arg("copy") = py::none())
      .def_property_readonly("shape", [](const Tensor& t) { return py::tuple(py::cast(t.shape)); })
      .def_property_readonly("dtype", [](const Tensor& t) { return std::string(dtype_name(t.dtype)); })
      .def_property_readonly("device", [](const Tensor& t) { return t.device().str(); })
      .def_property_readonly("ndim", &Tensor::dim)
      .def_property_readonly("size", &Tensor::numel)
      .def_property_readonly("nbytes", &Tensor::nbytes)
      .def("numpy", &to_numpy, "Copy to a NumPy array (a view that shares memory for CPU tensors).")
      .def_property_readonly("is_pinned", [](const Tensor& t) { return t.storage->pinned; })
      .def("to", [](const Tensor& t, const std::string& dev, bool non_blocking) {
             OpScope s("to");
             Device d = Device::parse(dev);
             py::gil_scoped_release nogil;
             return t.to(d, non_blocking);
           }, py::arg("device"), py::arg("non_blocking") = false,
           "This tensor on another device (itself if already there). non_blocking: a pinned host "
           "tensor's copy to a GPU is only queued on this thread's stream (see convnet.empty).")
      .def("clone", [](const Tensor& t) { OpScope s("clone"); py::gil_scoped_release nogil; return t.clone(); })
      .def("copy_", [](Tensor& t, const Tensor& src) {
             OpScope s("copy_");
             py::gil_scoped_release nogil;
             t.copy_from(src);
             return t;
           }, py::arg("src"), "Copy src (same shape and dtype, any device) into this tensor, in place.")
      .def("reshape", [](const Tensor& t, std::vector<int64_t> shape) {
             OpScope s("reshape");
             int64_t known = 1, infer = -1;
             for (size_t i = 0; i < shape.size(); ++i) {
               if (shape[i] == -1) { CHECK_VALUE(infer < 0, "only one dimension can be -1"); infer = (int64_t)i; }
               else known *= shape[i];
             }
             if (infer >= 0) {
               CHECK_VALUE(known > 0 && t.numel() % known == 0, "cannot reshape ", t.shape_str());
               shape[infer] = t.numel() / known;
             }
             return t.reshape(shape);
           })
      .def("data_ptr", [](const Tensor& t) { return reinterpret_cast<uintptr_t>(t.raw()); })
      .def("__dlpack__", [](const Tensor& t, py::object /*stream*/, py::object max_version, py::object dl_device,
                            py::object copy) { return export_dlpack(t, max_version, dl_device, copy); },
           py::arg("stream") = py::none(), py::arg("max_version") = py::none(), py::arg("dl_device") = py::none(),
           py::arg("copy") = py::none())
      .def("__dlpack_device__", [](const Tensor& t) { return dlpack_device(t); })
      .def("__len__", [](const Tensor& t) {
        OpScope s("len");
        CHECK_VALUE(t.dim() > 0, "len() of a 0-d tensor");
        return t.shape[0];
      })
      .def("__repr__", [](const Tensor& t) {
        return "convnet.Tensor(shape=" + t.shape_str() + ", dtype=" + dtype_name(t.dtype) + ", device='" +
               t.device().str() + "')";
      });

  m.def("from_numpy", &from_numpy, py::arg("array"), py::arg("device") = "cpu");
  m.def("from_dlpack_capsule", &from_dlpack_capsule, py::arg("capsule"));
  m.def("empty", [](std::vector<int64_t> shape, const std::string& dtype, const std::string& device, bool pinned) {
    OpScope s("empty");
    DType dt = dtype == "float32" ? DType::f32 : dtype == "int32" ? DType::i32 : dtype == "uint8" ? DType::u8 : (DType)-1;
    CHECK_TYPE((int)dt >= 0, "unsupported dtype '", dtype, "'");
    return Tensor::empty(shape, dt, Device::parse(device), pinned);
  }, py::arg("shape"), py::arg("dtype") = "float32", py::arg("device") = "cpu", py::arg("pinned") = false);
  // Test hook: dst.copy_(src) between two GPU tensors through a forced path ("peer" or "staged"),
  // so both paths run on a machine with one GPU.
  m.def("_copy_between_gpus", [](Tensor& dst, const Tensor& src, const std::string& path) {
    OpScope s("copy_between_gpus");
    CHECK_VALUE(dst.device().is_cuda() && src.device().is_cuda(), "both tensors must be on GPUs");
    CHECK_VALUE(dst.shape == src.shape && dst.dtype == src.dtype, "copy between tensors of different shape or dtype");
    CHECK_VALUE(path == "peer" || path == "staged" || path == "automatic", "path must be peer, staged or automatic");
    gpu::GpuCopyPath p = path == "peer" ? gpu::GpuCopyPath::peer
                         : path == "staged" ? gpu::GpuCopyPath::staged : gpu::GpuCopyPath::automatic;
    py::gil_scoped_release nogil;
    gpu::copy_between_gpus(dst.raw(), dst.device().index, src.raw(), src.device().index, dst.nbytes(), p);
    synchronize(dst.device());
  });
  m.def("zeros", [](std::vector<int64_t> shape, const std::string& dtype, const std::string& device) {
    OpScope s("zeros");
    DType dt = dtype == "float32" ? DType::f32 : dtype == "int32" ? DType::i32 : dtype == "uint8" ? DType::u8 : (DType)-1;
    CHECK_TYPE((int)dt >= 0, "unsupported dtype '", dtype, "'");
    return Tensor::zeros(shape, dt, Device::parse(device));
  }, py::arg("shape"), py::arg("dtype") = "float32", py::arg("device") = "cpu");

  m.def("cuda_built", &cuda_built);
  m.def("cuda_device_count", &cuda_device_count);
  m.def("cuda_device_name", &cuda_device_name);
  m.def("cuda_peer_access", &cuda_peer_access, py::arg("src"), py::arg("dst"));
  m.def("parse_device", [](const std::string& s) { return Device::parse(s).str(); });
  m.def("synchronize", [](const std::string& dev) {
    OpScope s("synchronize");
    Device d = Device::parse(dev);
    py::gil_scoped_release nogil;
    synchronize(d);
  }, py::arg("device"));
  m.def("set_poison", &set_poison);
  m.def("poison", &poison);
  m.def("empty_cache", [] {  // the cached blocks of every device, the host's included
    host::empty_cache();
    gpu::empty_cache();
  });
  m.def("host_memory_cached", &host::cached_bytes);
  // For a helper thread (the data loader's): its CPU kernels run on this many OpenMP threads.
  // Its own team of several would make libgomp count more threads than cores, and then every
  // team, the training thread's included, sleeps and is woken at each region instead of spinning.
  m.def("set_cpu_threads_of_this_thread", [](int n) {
    OpScope s("set_cpu_threads_of_this_thread");
    CHECK_VALUE(n >= 1, "n must be >= 1, got ", n);
    omp_set_num_threads(n);
  }, py::arg("n"));
  m.def("cpu_threads_of_this_thread", [] { return omp_get_max_threads(); });
  m.def("memory_allocated", &gpu::allocated_bytes);
  m.def("memory_cached", &gpu::cached_bytes);
  m.def("check_finite", [](const Tensor& t, const std::string& name) {
    OpScope s("check_finite");
    py::gil_scoped_release nogil;
    check_finite(t, name.c_str());
  }, py::arg("tensor"), py::arg("name") = "tensor");

  register_elementwise(m);
  register_lrn(m);
  register_pool(m);
  register_softmax(m);
  register_conv(m);
  register_linear(m);
  register_augment(m);
  register_join(m);
}
