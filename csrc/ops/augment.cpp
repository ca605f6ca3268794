// Entry points of the augment family: check arguments once, allocate outputs, dispatch.
#include <pybind11/stl.h>

#include <optional>

#include "../kernels/augment.h"
#include "dispatch.h"

namespace convnet {

// Crop offsets and source indices decide which memory the kernel reads, so every value is
// checked here (on a host copy when they live on a GPU: they are small).
static Tensor on_host(const Tensor& t) { return t.device().is_cpu() ? t : t.to(Device{}); }

Tensor augment(const Tensor& images, const Tensor& offsets, const std::optional<Tensor>& flips,
               const std::optional<Tensor>& rgb_shift, const std::optional<Tensor>& mean, std::optional<int64_t> crop_h_arg,
               std::optional<int64_t> crop_w_arg, const std::optional<Tensor>& source) {
  OpScope op("augment");
  check_defined(images, "images");
  check_dtype(images, DType::u8, "images");
  CHECK_VALUE(images.dim() == 4 && images.size(3) == 3,
              "'images' must be uint8 (batch, height, width, 3), got shape ", images.shape_str());
  const int64_t n_in = images.size(0), h = images.size(1), w = images.size(2);
  const int64_t crop_h = crop_h_arg.value_or(h), crop_w = crop_w_arg.value_or(w);  // none: the whole image
  CHECK_VALUE(crop_h >= 1 && crop_h <= h && crop_w >= 1 && crop_w <= w, "crop ", crop_h, "x", crop_w,
              " does not fit in ", h, "x", w, " images");

  int64_t n_out = n_in;
  if (source) {
    check_dtype(*source, DType::i32, "source");
    check_dim(*source, 1, "source");
    check_same_device(images, "images", *source, "source");
    n_out = source->size(0);
    Tensor s = on_host(*source);
    const int32_t* sp = s.data<int32_t>();
    for (int64_t k = 0; k < n_out; ++k)
      CHECK_VALUE(sp[k] >= 0 && sp[k] < n_in, "source[", k, "] = ", sp[k], " is not an index into ", n_in,
                  " images");
  }

  check_dtype(offsets, DType::i32, "offsets");
  check_shape(offsets, {n_out, 2}, "offsets");
  check_same_device(images, "images", offsets, "offsets");
  {
    Tensor o = on_host(offsets);
    const int32_t* op_ = o.data<int32_t>();
    for (int64_t k = 0; k < n_out; ++k) {
      const int64_t y = op_[2 * k], x = op_[2 * k + 1];
      CHECK_VALUE(y >= 0 && y + crop_h <= h && x >= 0 && x + crop_w <= w, "offsets[", k, "] = (", y, ", ", x,
                  "): a ", crop_h, "x", crop_w, " crop there leaves the ", h, "x", w, " image");
    }
  }
  if (flips) {
    check_dtype(*flips, DType::u8, "flips");
    check_shape(*flips, {n_out}, "flips");
    check_same_device(images, "images", *flips, "flips");
  }
  if (rgb_shift) {
    check_dtype(*rgb_shift, DType::f32, "rgb_shift");
    check_shape(*rgb_shift, {n_out, 3}, "rgb_shift");
    check_same_device(images, "images", *rgb_shift, "rgb_shift");
  }
  if (mean) {
    check_dtype(*mean, DType::f32, "mean");
    check_shape(*mean, {h, w, 3}, "mean");
    check_same_device(images, "images", *mean, "mean");
  }

  Tensor out = Tensor::empty({n_out, 3, crop_h, crop_w}, DType::f32, images.device());
  CONVNET_DISPATCH(images.device(), augment, images.data<uint8_t>(), source ? source->data<int32_t>() : nullptr,
                   offsets.data<int32_t>(), flips ? flips->data<uint8_t>() : nullptr,
                   rgb_shift ? rgb_shift->data<float>() : nullptr, mean ? mean->data<float>() : nullptr,
                   out.data<float>(), n_out, h, w, crop_h, crop_w);
  return out;
}

void register_augment(py::module_& m) {
  m.def("augment", &augment, py::arg("images"), py::arg("offsets"), py::arg("flips"), py::arg("rgb_shift"),
        py::arg("mean"), py::arg("crop_h"), py::arg("crop_w"), py::arg("source") = py::none(), CONVNET_NOGIL);
}

}  // namespace convnet
