// XLA FFI custom calls running 2-D NHWC x HWIO float32 convolutions through oneDNN:
// forward, backward-data and backward-weights (resexp/core/onednn_conv.py). On an AVX-512 CPU
// oneDNN's kernels made a ResNet-20 training step 1.35-1.58x faster than XLA:CPU's Eigen
// convolutions (docs/performance.md "oneDNN convolutions on the CPU").
//
// Primitive descriptors and primitives are built once per shape (plus strides and pads) and
// kept in a process-wide cache. Weights are handed to oneDNN in HWIO and reordered to the
// blocked layout the primitive prefers (a small tensor); activations stay NHWC, which the
// jit:avx512/avx2 kernels take directly.
//
// Threads: oneDNN's OpenMP team size is set before every call from a process-wide setting
// (resexp_onednn_set_threads), so it can match the size of XLA's Eigen pool. A small convolution
// (under resexp_onednn_set_team_min_macs multiply-adds) runs on the calling thread alone: a team's fork and join cost more than it shares out, and far
// more when other processes hold the cores (measured on 2 Zen 4 cores, forward + both gradients:
// at 0.3M multiply-adds one thread took 76 us, a team of two 282 us; at 4.7M, 315-649 us against
// 413-603 us; from 58M up the team was 1.4-1.9x faster). A shape always gets the same team size,
// so a run's numbers stay a pure function of its config and machine.

#include <omp.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

int g_threads = 0;  // 0: leave OpenMP's default
int64_t g_team_min_macs = int64_t{8} << 20;  // below this many multiply-adds: one thread

dnnl::engine& cpu_engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

dnnl::stream& cpu_stream() {
  thread_local dnnl::stream s(cpu_engine());
  return s;
}

struct Geometry {
  int64_t n, h, w, c;      // input NHWC
  int64_t kh, kw, o;       // kernel HWIO: kh, kw, c, o
  int64_t oh, ow;          // output spatial
  int64_t sh, sw;          // strides
  int64_t ph0, ph1, pw0, pw1;  // pads (low, high)

  std::string key(char kind) const {
    std::string k(1, kind);
    for (int64_t v : {n, h, w, c, kh, kw, o, oh, ow, sh, sw, ph0, ph1, pw0, pw1}) k += "," + std::to_string(v);
    return k;
  }
  int64_t macs() const { return n * oh * ow * kh * kw * c * o; }
  memory::dims src() const { return {n, c, h, w}; }
  memory::dims wei() const { return {o, c, kh, kw}; }
  memory::dims dst() const { return {n, o, oh, ow}; }
  memory::dims strides() const { return {sh, sw}; }
  memory::dims pad_l() const { return {ph0, pw0}; }
  memory::dims pad_r() const { return {ph1, pw1}; }
};

// One cached convolution: the primitive, its memory descriptors, and the reorder between the
// user's HWIO weights and the primitive's own weight layout (if they differ).
struct Cached {
  dnnl::primitive prim;
  memory::desc src, wei, dst;  // as the primitive wants them
  memory::desc user_wei;       // HWIO
  bool reorder_wei = false;
  dnnl::reorder wei_reorder;  // user -> prim (fwd, bwd-data) or prim -> user (bwd-weights)
  size_t scratch_bytes = 0;
  std::string impl;
};

std::mutex g_mu;
std::unordered_map<std::string, std::shared_ptr<Cached>> g_cache;

dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::convolution_forward::primitive_desc fwd_pd(const Geometry& g, dnnl::prop_kind prop) {
  auto& eng = cpu_engine();
  memory::desc src(g.src(), dt::f32, tag::nhwc);
  memory::desc wei(g.wei(), dt::f32, tag::any);
  memory::desc dst(g.dst(), dt::f32, tag::nhwc);
  return dnnl::convolution_forward::primitive_desc(eng, prop, dnnl::algorithm::convolution_direct, src, wei, dst,
                                                   g.strides(), g.pad_l(), g.pad_r(), user_scratchpad());
}

void finish(Cached& c, const memory::desc& prim_wei, bool to_user) {
  auto& eng = cpu_engine();
  c.wei = prim_wei;
  c.reorder_wei = prim_wei != c.user_wei;
  if (c.reorder_wei) {
    if (to_user)
      c.wei_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(eng, prim_wei, eng, c.user_wei));
    else
      c.wei_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(eng, c.user_wei, eng, prim_wei));
  }
}

std::shared_ptr<Cached> build(const Geometry& g, char kind) {
  auto c = std::make_shared<Cached>();
  c->user_wei = memory::desc(g.wei(), dt::f32, tag::hwio);
  auto hint = fwd_pd(g, kind == 'f' ? dnnl::prop_kind::forward_inference : dnnl::prop_kind::forward_training);
  if (kind == 'f') {
    c->prim = dnnl::convolution_forward(hint);
    c->src = hint.src_desc();
    c->dst = hint.dst_desc();
    c->scratch_bytes = hint.scratchpad_desc().get_size();
    c->impl = hint.impl_info_str();
    finish(*c, hint.weights_desc(), false);
  } else if (kind == 'd') {
    memory::desc dsrc(g.src(), dt::f32, tag::nhwc);
    memory::desc wei(g.wei(), dt::f32, tag::any);
    memory::desc ddst(g.dst(), dt::f32, tag::nhwc);
    dnnl::convolution_backward_data::primitive_desc pd(cpu_engine(), dnnl::algorithm::convolution_direct, dsrc, wei,
                                                       ddst, g.strides(), g.pad_l(), g.pad_r(), hint,
                                                       user_scratchpad());
    c->prim = dnnl::convolution_backward_data(pd);
    c->src = pd.diff_src_desc();
    c->dst = pd.diff_dst_desc();
    c->scratch_bytes = pd.scratchpad_desc().get_size();
    c->impl = pd.impl_info_str();
    finish(*c, pd.weights_desc(), false);
  } else {
    memory::desc src(g.src(), dt::f32, tag::nhwc);
    memory::desc dwei(g.wei(), dt::f32, tag::any);
    memory::desc ddst(g.dst(), dt::f32, tag::nhwc);
    dnnl::convolution_backward_weights::primitive_desc pd(cpu_engine(), dnnl::algorithm::convolution_direct, src,
                                                          dwei, ddst, g.strides(), g.pad_l(), g.pad_r(), hint,
                                                          user_scratchpad());
    c->prim = dnnl::convolution_backward_weights(pd);
    c->src = pd.src_desc();
    c->dst = pd.diff_dst_desc();
    c->scratch_bytes = pd.scratchpad_desc().get_size();
    c->impl = pd.impl_info_str();
    finish(*c, pd.diff_weights_desc(), true);
  }
  return c;
}

std::shared_ptr<Cached> lookup(const Geometry& g, char kind) {
  std::string k = g.key(kind);
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = g_cache.find(k);
    if (it != g_cache.end()) return it->second;
  }
  auto c = build(g, kind);
  std::lock_guard<std::mutex> lock(g_mu);
  return g_cache.emplace(k, c).first->second;
}

// Per-thread buffers: the primitive's scratchpad and the reordered weights.
struct Scratch {
  std::vector<char> pad, wei;
};

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

void* sized(std::vector<char>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

Geometry geometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w, ffi::Span<const int64_t> y, int64_t sh,
                  int64_t sw, int64_t ph0, int64_t ph1, int64_t pw0, int64_t pw1) {
  return Geometry{x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2], sh, sw, ph0, ph1, pw0, pw1};
}

int team_size(const Geometry& g) {
  static const int omp_default = omp_get_max_threads();
  if (g.macs() < g_team_min_macs) return 1;
  return g_threads > 0 ? g_threads : omp_default;
}

ffi::Error run(char kind, const Geometry& g, void* src, void* wei, void* dst) {
  omp_set_num_threads(team_size(g));  // before lookup: a primitive is built for the team that runs it
  try {
    auto c = lookup(g, kind);
    auto& eng = cpu_engine();
    auto& s = cpu_stream();
    Scratch& sc = scratch();
    memory pad(memory::desc({static_cast<int64_t>(c->scratch_bytes)}, dt::u8, tag::x), eng,
               sized(sc.pad, c->scratch_bytes));
    memory user_wei(c->user_wei, eng, wei);
    memory prim_wei = c->reorder_wei ? memory(c->wei, eng, sized(sc.wei, c->wei.get_size())) : user_wei;
    memory src_m(c->src, eng, src), dst_m(c->dst, eng, dst);
    if (kind == 'f') {
      if (c->reorder_wei) c->wei_reorder.execute(s, user_wei, prim_wei);
      c->prim.execute(s, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, prim_wei}, {DNNL_ARG_DST, dst_m},
                          {DNNL_ARG_SCRATCHPAD, pad}});
    } else if (kind == 'd') {  // src = diff_src (result), dst = diff_dst
      if (c->reorder_wei) c->wei_reorder.execute(s, user_wei, prim_wei);
      c->prim.execute(s, {{DNNL_ARG_DIFF_SRC, src_m}, {DNNL_ARG_WEIGHTS, prim_wei}, {DNNL_ARG_DIFF_DST, dst_m},
                          {DNNL_ARG_SCRATCHPAD, pad}});
    } else {  // weights gradient: wei is the result
      c->prim.execute(s, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_DIFF_WEIGHTS, prim_wei}, {DNNL_ARG_DIFF_DST, dst_m},
                          {DNNL_ARG_SCRATCHPAD, pad}});
      if (c->reorder_wei) c->wei_reorder.execute(s, prim_wei, user_wei);
    }
    s.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvFwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y, int64_t sh,
                   int64_t sw, int64_t ph0, int64_t ph1, int64_t pw0, int64_t pw1) {
  auto g = geometry(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, ph0, ph1, pw0, pw1);
  return run('f', g, x.typed_data(), w.typed_data(), y->typed_data());
}

ffi::Error ConvBwdData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx,
                       int64_t sh, int64_t sw, int64_t ph0, int64_t ph1, int64_t pw0, int64_t pw1) {
  auto g = geometry(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, ph0, ph1, pw0, pw1);
  return run('d', g, dx->typed_data(), w.typed_data(), dy.typed_data());
}

ffi::Error ConvBwdWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw,
                          int64_t sh, int64_t sw, int64_t ph0, int64_t ph1, int64_t pw0, int64_t pw1) {
  auto g = geometry(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, ph0, ph1, pw0, pw1);
  return run('w', g, x.typed_data(), dw->typed_data(), dy.typed_data());
}

}  // namespace

#define CONV_BINDING(A, B, R)                                                                              \
  ffi::Ffi::Bind()                                                                                         \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                        \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                        \
      .Ret<ffi::Buffer<ffi::F32>>()                                                                        \
      .Attr<int64_t>("stride_h")                                                                           \
      .Attr<int64_t>("stride_w")                                                                           \
      .Attr<int64_t>("pad_h_lo")                                                                           \
      .Attr<int64_t>("pad_h_hi")                                                                           \
      .Attr<int64_t>("pad_w_lo")                                                                           \
      .Attr<int64_t>("pad_w_hi")

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvFwd, ConvFwd, CONV_BINDING(x, w, y));
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBwdData, ConvBwdData, CONV_BINDING(dy, w, dx));
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBwdWeights, ConvBwdWeights, CONV_BINDING(x, dy, dw));

extern "C" {
void resexp_onednn_set_threads(int n) { g_threads = n; }
void resexp_onednn_set_team_min_macs(int64_t macs) { g_team_min_macs = macs; }

// The implementation oneDNN picked for a shape ("jit:avx512_core", "gemm:jit", ...), for the record.
// kind: 'f', 'd' or 'w'. Returns the number of bytes written (without the terminating zero).
int resexp_onednn_impl(char kind, const int64_t* geo, char* out, int cap) {
  Geometry g{geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6], geo[7],
             geo[8], geo[9], geo[10], geo[11], geo[12], geo[13], geo[14]};
  try {
    std::string impl = lookup(g, kind)->impl;
    int n = static_cast<int>(impl.size()) < cap - 1 ? static_cast<int>(impl.size()) : cap - 1;
    std::memcpy(out, impl.data(), n);
    out[n] = 0;
    return n;
  } catch (const dnnl::error& e) {
    return -1;
  }
}
}
