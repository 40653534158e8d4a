// 2-D convolutions on oneDNN as XLA FFI custom calls (CPU; opt-in, see
// mmvaeplus_jax/onednn.py).
//
// Layouts are JAX's: activations NHWC, weights HWIO. Three handlers:
//   MmvaeOnednnConvFwd(x[N,H,W,C], w[KH,KW,C,O])          -> y[N,OH,OW,O]
//   MmvaeOnednnConvBwdData(dy[N,OH,OW,O], w[KH,KW,C,O])   -> dx[N,H,W,C]
//   MmvaeOnednnConvBwdWeights(x[N,H,W,C], dy[N,OH,OW,O])  -> dw[KH,KW,C,O]
// with attributes stride_h, stride_w, pad_top, pad_bottom, pad_left,
// pad_right (explicit padding, no dilation, one group). Inputs are float32 or
// bfloat16 (both operands alike); outputs are float32 or bfloat16 (the
// product is accumulated in float32 by oneDNN either way).
//
// Activations are read and written in place as NHWC; the weights go through
// the primitive's preferred (blocked) layout with a reorder per call (cheap:
// the largest kernel here is 3 x 3 x 256 x 256). Primitives are built once
// per shape and kept in a process-wide cache.

#include <cstdint>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using tag = dnnl::memory::format_tag;

dnnl::engine& Engine() {
  static dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

bool ToDnnl(ffi::DataType t, memory::data_type* out) {
  switch (t) {
    case ffi::DataType::F32:
      *out = memory::data_type::f32;
      return true;
    case ffi::DataType::BF16:
      *out = memory::data_type::bf16;
      return true;
    default:
      return false;
  }
}

struct Geometry {
  int64_t n, h, w, c;     // input
  int64_t oh, ow, o;      // output
  int64_t kh, kw;         // kernel
  int64_t sh, sw, pt, pb, pl, pr;
  memory::data_type in_t, w_t, out_t;

  std::string Key(const char* kind) const {
    std::ostringstream s;
    s << kind << ':' << n << ',' << h << ',' << w << ',' << c << ',' << oh
      << ',' << ow << ',' << o << ',' << kh << ',' << kw << ',' << sh << ','
      << sw << ',' << pt << ',' << pb << ',' << pl << ',' << pr << ','
      << static_cast<int>(in_t) << ',' << static_cast<int>(w_t) << ','
      << static_cast<int>(out_t);
    return s.str();
  }
  memory::dims Src() const { return {n, c, h, w}; }
  memory::dims Dst() const { return {n, o, oh, ow}; }
  memory::dims Wei() const { return {o, c, kh, kw}; }
  memory::dims Strides() const { return {sh, sw}; }
  memory::dims PadL() const { return {pt, pl}; }
  memory::dims PadR() const { return {pb, pr}; }
};

dnnl::convolution_forward::primitive_desc ForwardPd(
    const Geometry& g, memory::data_type src_t, memory::data_type wei_t,
    memory::data_type dst_t) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training,
      dnnl::algorithm::convolution_direct,
      memory::desc(g.Src(), src_t, tag::nhwc),
      memory::desc(g.Wei(), wei_t, tag::any),
      memory::desc(g.Dst(), dst_t, tag::nhwc), g.Strides(), g.PadL(),
      g.PadR());
}

// One cached computation: the primitive, its weights layout, and the
// reorder between that layout and HWIO.
struct Entry {
  dnnl::primitive prim;
  memory::desc wei_md;       // the primitive's weights (or diff weights)
  memory::desc user_wei_md;  // HWIO
  bool reorder_needed;
  dnnl::reorder reorder;     // HWIO -> wei_md (fwd, bwd data) or back
};

std::mutex cache_mutex;
std::unordered_map<std::string, std::shared_ptr<Entry>>& Cache() {
  static auto* cache =
      new std::unordered_map<std::string, std::shared_ptr<Entry>>();
  return *cache;
}

std::shared_ptr<Entry> Lookup(const std::string& key) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto it = Cache().find(key);
  return it == Cache().end() ? nullptr : it->second;
}

void Store(const std::string& key, std::shared_ptr<Entry> e) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  Cache().emplace(key, std::move(e));
}

std::shared_ptr<Entry> MakeEntry(const char* kind, const Geometry& g) {
  auto e = std::make_shared<Entry>();
  std::string k(kind);
  memory::desc wei_md;
  memory::data_type user_t = g.w_t;
  if (k == "fwd") {
    auto pd = ForwardPd(g, g.in_t, g.w_t, g.out_t);
    e->prim = dnnl::convolution_forward(pd);
    wei_md = pd.weights_desc();
  } else if (k == "bwd_data") {
    // in_t: dy's type, w_t: w's type, out_t: dx's type (the hint: a
    // forward pass in the operands' type).
    auto hint = ForwardPd(g, g.in_t, g.w_t, g.in_t);
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct,
        memory::desc(g.Src(), g.out_t, tag::nhwc),
        memory::desc(g.Wei(), g.w_t, tag::any),
        memory::desc(g.Dst(), g.in_t, tag::nhwc), g.Strides(), g.PadL(),
        g.PadR(), hint);
    e->prim = dnnl::convolution_backward_data(pd);
    wei_md = pd.weights_desc();
  } else {  // bwd_weights. in_t: x's (and dy's) type, out_t: dw's type.
    auto hint = ForwardPd(g, g.in_t, g.in_t, g.in_t);
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct,
        memory::desc(g.Src(), g.in_t, tag::nhwc),
        memory::desc(g.Wei(), g.out_t, tag::any),
        memory::desc(g.Dst(), g.in_t, tag::nhwc), g.Strides(), g.PadL(),
        g.PadR(), hint);
    e->prim = dnnl::convolution_backward_weights(pd);
    wei_md = pd.diff_weights_desc();
    user_t = g.out_t;
  }
  // The weights (or their gradient) between HWIO and the primitive's layout.
  e->wei_md = wei_md;
  e->user_wei_md = memory::desc(g.Wei(), user_t, tag::hwio);
  e->reorder_needed = e->wei_md != e->user_wei_md;
  if (e->reorder_needed) {
    bool to_user = k == "bwd_weights";
    e->reorder = dnnl::reorder(dnnl::reorder::primitive_desc(
        Engine(), to_user ? e->wei_md : e->user_wei_md, Engine(),
        to_user ? e->user_wei_md : e->wei_md));
  }
  return e;
}

std::shared_ptr<Entry> Get(const char* kind, const Geometry& g) {
  std::string key = g.Key(kind);
  auto e = Lookup(key);
  if (e) return e;
  e = MakeEntry(kind, g);
  Store(key, e);
  return e;
}

// One convolution at a time: each runs on all cores through OpenMP, and
// XLA:CPU may call custom calls from several of its threads at once; two
// OpenMP teams on the same cores spin against each other (a full-width step
// ran many times slower without this lock).
std::mutex run_mutex;

ffi::Error Run(const char* kind, const Geometry& g, void* a, void* b,
               void* out) {
  std::lock_guard<std::mutex> run_lock(run_mutex);
  try {
    auto e = Get(kind, g);
    dnnl::engine& eng = Engine();
    dnnl::stream stream(eng);
    std::string k(kind);
    if (k != "bwd_weights") {
      // fwd: a = x, b = w, out = y; bwd_data: a = dy, b = w, out = dx.
      bool fwd = k == "fwd";
      memory in(memory::desc(fwd ? g.Src() : g.Dst(), g.in_t, tag::nhwc), eng,
                a);
      memory user_w(e->user_wei_md, eng, b);
      memory res(memory::desc(fwd ? g.Dst() : g.Src(), g.out_t, tag::nhwc),
                 eng, out);
      memory w = user_w;
      if (e->reorder_needed) {
        w = memory(e->wei_md, eng);
        e->reorder.execute(stream, user_w, w);
      }
      e->prim.execute(stream,
                      {{fwd ? DNNL_ARG_SRC : DNNL_ARG_DIFF_DST, in},
                       {DNNL_ARG_WEIGHTS, w},
                       {fwd ? DNNL_ARG_DST : DNNL_ARG_DIFF_SRC, res}});
    } else {  // a = x, b = dy, out = dw
      memory src(memory::desc(g.Src(), g.in_t, tag::nhwc), eng, a);
      memory ddst(memory::desc(g.Dst(), g.in_t, tag::nhwc), eng, b);
      memory user_dw(e->user_wei_md, eng, out);
      memory dw = e->reorder_needed ? memory(e->wei_md, eng) : user_dw;
      e->prim.execute(stream, {{DNNL_ARG_SRC, src},
                               {DNNL_ARG_DIFF_DST, ddst},
                               {DNNL_ARG_DIFF_WEIGHTS, dw}});
      if (e->reorder_needed) e->reorder.execute(stream, dw, user_dw);
    }
    stream.wait();
  } catch (const dnnl::error& err) {
    return ffi::Error(ffi::ErrorCode::kInternal,
                      std::string("oneDNN convolution (") + kind +
                          ") failed: " + err.what());
  }
  return ffi::Error::Success();
}

#define MMVAE_RETURN_IF_ERROR(expr)   \
  do {                                \
    ffi::Error _e = (expr);           \
    if (_e.failure()) return _e;      \
  } while (0)

ffi::Error Check4(const char* what, ffi::AnyBuffer::Dimensions d) {
  if (d.size() != 4)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      std::string(what) + " must have rank 4");
  return ffi::Error::Success();
}

// One handler body for the three kinds. Operands (a, b) -> out:
//   fwd: (x, w) -> y;  bwd_data: (dy, w) -> dx;  bwd_weights: (x, dy) -> dw.
ffi::Error Handle(const char* kind, ffi::AnyBuffer a, ffi::AnyBuffer b,
                  ffi::AnyBuffer out, int64_t stride_h, int64_t stride_w,
                  int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                  int64_t pad_right) {
  MMVAE_RETURN_IF_ERROR(Check4("first operand", a.dimensions()));
  MMVAE_RETURN_IF_ERROR(Check4("second operand", b.dimensions()));
  MMVAE_RETURN_IF_ERROR(Check4("result", out.dimensions()));
  std::string k(kind);
  const ffi::AnyBuffer& x = k == "bwd_data" ? out : a;
  const ffi::AnyBuffer& y = k == "fwd" ? out : (k == "bwd_data" ? a : b);
  const ffi::AnyBuffer& w = k == "bwd_weights" ? out : b;
  auto xd = x.dimensions(), yd = y.dimensions(), wd = w.dimensions();
  Geometry g{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], yd[3], wd[0], wd[1],
             stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right};
  ffi::DataType second = b.element_type();
  if (k == "bwd_weights") {
    if (a.element_type() != b.element_type())
      return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                        "oneDNN weight gradient: x and dy of one type");
    second = a.element_type();
  }
  if (!ToDnnl(a.element_type(), &g.in_t) || !ToDnnl(second, &g.w_t) ||
      !ToDnnl(out.element_type(), &g.out_t))
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "oneDNN convolution: float32 or bfloat16 only");
  return Run(kind, g, a.untyped_data(), b.untyped_data(),
             out.untyped_data());
}

#define MMVAE_CONV_HANDLER(name, kind)                                     \
  ffi::Error name(ffi::AnyBuffer a, ffi::AnyBuffer b,                      \
                  ffi::Result<ffi::AnyBuffer> out, int64_t sh, int64_t sw, \
                  int64_t pt, int64_t pb, int64_t pl, int64_t pr) {        \
    return Handle(kind, a, b, *out, sh, sw, pt, pb, pl, pr);               \
  }

MMVAE_CONV_HANDLER(ConvFwd, "fwd")
MMVAE_CONV_HANDLER(ConvBwdData, "bwd_data")
MMVAE_CONV_HANDLER(ConvBwdWeights, "bwd_weights")

}  // namespace

#define MMVAE_CONV_BINDING                    \
  ffi::Ffi::Bind()                            \
      .Arg<ffi::AnyBuffer>()                  \
      .Arg<ffi::AnyBuffer>()                  \
      .Ret<ffi::AnyBuffer>()                  \
      .Attr<int64_t>("stride_h")              \
      .Attr<int64_t>("stride_w")              \
      .Attr<int64_t>("pad_top")               \
      .Attr<int64_t>("pad_bottom")            \
      .Attr<int64_t>("pad_left")              \
      .Attr<int64_t>("pad_right")

XLA_FFI_DEFINE_HANDLER_SYMBOL(MmvaeOnednnConvFwd, ConvFwd,
                              MMVAE_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(MmvaeOnednnConvBwdData, ConvBwdData,
                              MMVAE_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(MmvaeOnednnConvBwdWeights, ConvBwdWeights,
                              MMVAE_CONV_BINDING);
