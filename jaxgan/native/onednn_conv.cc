// XLA FFI handlers: 2-D f32 convolutions (NHWC activations, HWIO kernels) through oneDNN.
//
// Why: XLA:CPU's convolutions (Eigen) multiply every tap of every window, padding included;
// oneDNN's skip the padding taps, which is 12-30% of the multiplies in a DCGAN's small layers.
// Three handlers, the three bilinear operations of a convolution (jaxgan/layers.py's VJP table):
//   forward          y  = C(x, w)      args (x, w)  -> y
//   backward data    dx = DX(dy, w)    args (dy, w) -> dx
//   backward weights dw = DW(x, dy)    args (x, dy) -> dw
// A fourth puts a kernel in the blocked layout a forward / backward-data plan reads
// (`jaxgan_onednn_kernel_blocked`); those two handlers then take that 1-D buffer for their
// kernel, so XLA reorders each kernel value once, not once per call (jaxgan/onednn.py).
// oneDNN is called through the few functions of its stable C API declared below (no oneDNN
// headers needed; libdnnl.so.3 comes from the `onednn-cpu-gomp` wheel). Primitives are built
// once per shape and kept; calls are serialized (oneDNN's own threads use every core).
//
// Implementation choice: oneDNN's first implementation for a shape is its heuristic's pick,
// tuned on Intel cores; on others another one can be faster (Zen 4: its older jit kernels beat
// the brgemm ones by up to 17% on some DCGAN layers; BUILD_NOTES.md, session 32). So the first
// time a shape is seen, each of its implementations runs on the call's own buffers and the
// fastest is kept, the way cuDNN is autotuned; the choice is appended to a file
// (`jaxgan_onednn_configure`, one per CPU model and thread count) and read back by later
// processes, so only the first run on a machine pays for it.
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

extern "C" {
typedef void* dnnl_handle;
typedef int dnnl_status;
struct dnnl_exec_arg { int arg; dnnl_handle memory; };
dnnl_status dnnl_engine_create(dnnl_handle* engine, int kind, size_t index);
dnnl_status dnnl_stream_create(dnnl_handle* stream, dnnl_handle engine, unsigned flags);
dnnl_status dnnl_stream_wait(dnnl_handle stream);
dnnl_status dnnl_memory_desc_create_with_string_tag(dnnl_handle* md, int ndims,
    const int64_t* dims, int data_type, const char* tag);
dnnl_status dnnl_memory_desc_create_with_tag(dnnl_handle* md, int ndims, const int64_t* dims,
    int data_type, int tag);
dnnl_status dnnl_memory_desc_destroy(dnnl_handle md);
size_t dnnl_memory_desc_get_size(const void* md);
int dnnl_memory_desc_equal(const void* lhs, const void* rhs);
dnnl_status dnnl_memory_create(dnnl_handle* memory, const void* md, dnnl_handle engine,
    void* handle);
dnnl_status dnnl_memory_destroy(dnnl_handle memory);
dnnl_status dnnl_convolution_forward_primitive_desc_create(dnnl_handle* pd, dnnl_handle engine,
    int prop_kind, int alg_kind, const void* src, const void* weights, const void* bias,
    const void* dst, const int64_t* strides, const int64_t* dilates, const int64_t* pad_l,
    const int64_t* pad_r, const void* attr);
dnnl_status dnnl_convolution_backward_data_primitive_desc_create(dnnl_handle* pd,
    dnnl_handle engine, int alg_kind, const void* diff_src, const void* weights,
    const void* diff_dst, const int64_t* strides, const int64_t* dilates, const int64_t* pad_l,
    const int64_t* pad_r, const void* hint_fwd_pd, const void* attr);
dnnl_status dnnl_convolution_backward_weights_primitive_desc_create(dnnl_handle* pd,
    dnnl_handle engine, int alg_kind, const void* src, const void* diff_weights,
    const void* diff_bias, const void* diff_dst, const int64_t* strides, const int64_t* dilates,
    const int64_t* pad_l, const int64_t* pad_r, const void* hint_fwd_pd, const void* attr);
dnnl_status dnnl_reorder_primitive_desc_create(dnnl_handle* pd, const void* src_md,
    dnnl_handle src_engine, const void* dst_md, dnnl_handle dst_engine, const void* attr);
const void* dnnl_primitive_desc_query_md(const void* pd, int what, int index);
dnnl_status dnnl_primitive_desc_destroy(dnnl_handle pd);
dnnl_status dnnl_primitive_desc_next_impl(dnnl_handle pd);
dnnl_status dnnl_primitive_desc_query(const void* pd, int what, int index, void* result);
dnnl_status dnnl_primitive_destroy(dnnl_handle primitive);
dnnl_status dnnl_primitive_create(dnnl_handle* primitive, const void* pd);
dnnl_status dnnl_primitive_get_primitive_desc(const void* primitive, const void** pd);
dnnl_status dnnl_primitive_attr_create(dnnl_handle* attr);
dnnl_status dnnl_primitive_attr_set_scratchpad_mode(dnnl_handle attr, int mode);
dnnl_status dnnl_primitive_execute(const void* primitive, dnnl_handle stream, int nargs,
    const dnnl_exec_arg* args);
}

namespace {

// oneDNN C API constants (dnnl_types.h, stable across oneDNN 3.x).
constexpr int kCpu = 1, kInOrder = 1, kF32 = 3, kTagAny = 1;
constexpr int kForwardTraining = 64, kConvolutionDirect = 1;
constexpr int kQueryWeightsMd = 131, kQueryDiffWeightsMd = 132, kQueryImplInfoStr = 8;
constexpr int kQueryScratchpadMd = 136, kScratchpadUser = 1, kArgScratchpad = 80;
constexpr int kArgSrc = 1, kArgDst = 17, kArgWeights = 33;
constexpr int kArgDiffSrc = 129, kArgDiffDst = 145, kArgDiffWeights = 161;

enum Kind { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

struct Failure : std::runtime_error { using std::runtime_error::runtime_error; };

void Check(dnnl_status status, const char* what) {
  if (status != 0) throw Failure(std::string("oneDNN ") + what + " failed (status " +
                                 std::to_string(status) + ")");
}

struct Context {
  dnnl_handle engine = nullptr, stream = nullptr;
  Context() {
    Check(dnnl_engine_create(&engine, kCpu, 0), "engine_create");
    Check(dnnl_stream_create(&stream, engine, kInOrder), "stream_create");
  }
};

Context& GetContext() {
  static Context* context = new Context();  // never destroyed: XLA may call at exit
  return *context;
}

struct MemoryDesc {
  dnnl_handle md = nullptr;
  MemoryDesc() = default;
  MemoryDesc(std::vector<int64_t> dims, const char* tag) {
    Check(dnnl_memory_desc_create_with_string_tag(&md, 4, dims.data(), kF32, tag), "md");
  }
  static MemoryDesc Any(std::vector<int64_t> dims) {
    MemoryDesc d;
    Check(dnnl_memory_desc_create_with_tag(&d.md, 4, dims.data(), kF32, kTagAny), "md any");
    return d;
  }
  MemoryDesc(MemoryDesc&& o) noexcept : md(o.md) { o.md = nullptr; }
  MemoryDesc& operator=(MemoryDesc&& o) noexcept { std::swap(md, o.md); return *this; }
  ~MemoryDesc() { if (md) dnnl_memory_desc_destroy(md); }
};

struct Memory {
  dnnl_handle mem = nullptr;
  Memory(const void* md, void* data) {
    Check(dnnl_memory_create(&mem, md, GetContext().engine, data), "memory_create");
  }
  ~Memory() { if (mem) dnnl_memory_destroy(mem); }
};

dnnl_handle MakePrimitive(const void* pd) {
  dnnl_handle prim;
  Check(dnnl_primitive_create(&prim, pd), "primitive_create");
  return prim;
}

// Every primitive gets its scratch memory from us (the handlers' mutex held), not from oneDNN.
// Why: oneDNN's own ("library") scratchpad is one buffer per thread, sized by the primitives
// created on that thread, but XLA calls a primitive from whichever of its threads runs the
// custom call, and plans are built at trace time on Python's: an im2col kernel then wrote
// into another thread's smaller (or absent) buffer and crashed.
const void* UserScratchpadAttr() {
  static dnnl_handle attr = [] {
    dnnl_handle a;
    Check(dnnl_primitive_attr_create(&a), "primitive_attr_create");
    Check(dnnl_primitive_attr_set_scratchpad_mode(a, kScratchpadUser), "scratchpad mode");
    return a;
  }();
  return attr;
}

// The one scratch buffer, grown to the largest a call has needed (calls are serialized).
void* Scratch(size_t bytes) {
  static void* data = nullptr;
  static size_t size = 0;
  if (bytes > size) {
    std::free(data);
    size = (bytes + 4095) / 4096 * 4096;
    data = std::aligned_alloc(4096, size);
    if (!data) size = 0, throw Failure("scratchpad allocation failed");
  }
  return data;
}

void Execute(dnnl_handle prim, std::vector<dnnl_exec_arg> args) {
  const void* pd = nullptr;
  Check(dnnl_primitive_get_primitive_desc(prim, &pd), "primitive_get_primitive_desc");
  const void* scratch_md = dnnl_primitive_desc_query_md(pd, kQueryScratchpadMd, 0);
  std::unique_ptr<Memory> scratch;
  if (size_t bytes = scratch_md ? dnnl_memory_desc_get_size(scratch_md) : 0) {
    scratch = std::make_unique<Memory>(scratch_md, Scratch(bytes));
    args.push_back({kArgScratchpad, scratch->mem});
  }
  Check(dnnl_primitive_execute(prim, GetContext().stream, args.size(), args.data()), "execute");
}

// Which implementation each shape uses: measured once (in `BuildPlan`), kept in `choices`
// and in `file`. Guarded by the handlers' mutex.
struct Tuning {
  bool enabled = true;
  std::string file;                                 // "" keeps the choices in memory only
  std::map<std::string, std::string> choices;       // shape text -> implementation name
  int64_t tuned = 0;                                // shapes measured by this process
  double seconds = 0;                               // and the time that took
};

Tuning& GetTuning() {
  static Tuning* tuning = new Tuning();
  return *tuning;
}

std::string ImplName(const void* pd) {
  const char* name = nullptr;
  if (dnnl_primitive_desc_query(pd, kQueryImplInfoStr, 0, &name) != 0 || !name) return "";
  return name;
}

// Not tried: oneDNN's reference and SSE4.1 kernels (a hundred times slower where a vector
// kernel exists, a trial run of seconds) and its im2col + GEMM ones, whose backward-data
// execute failed now and then (status 2) while XLA ran another operation beside it (most
// likely oneDNN's per-thread scratchpad, replaced by ours since; allowed again, they won no
// HW6 shape on Zen 4: BUILD_NOTES.md, session 38).
bool WorthTrying(const std::string& name) {
  return name.rfind("ref", 0) != 0 && name.find("sse41") == std::string::npos &&
         name.find("gemm") == std::string::npos;
}

// One convolution of one shape: its primitive, and a reorder between the kernel's HWIO
// layout and the blocked layout oneDNN's kernel wants (absent when they are the same).
struct Plan {
  dnnl_handle conv = nullptr, reorder = nullptr;
  MemoryDesc src, dst, weights_user;  // NHWC x, NHWC y, HWIO kernel
  const void* weights_blocked = nullptr;  // owned by the conv's primitive descriptor
  std::vector<float> blocked;  // the kernel in that layout, for calls that reorder it themselves
};

// kind, x [N, C, H, W], w [O, KH, KW], y [OH, OW], strides, pads low, pads high
using Key = std::array<int64_t, 16>;

// A convolution primitive's arguments for each operation, with x / y / the kernel in that
// operation's roles (y is dy for both backward passes, the kernel dw for the weights one).
std::vector<dnnl_exec_arg> ConvArgs(Kind kind, dnnl_handle x, dnnl_handle weights,
                                    dnnl_handle y) {
  if (kind == kForward) return {{kArgSrc, x}, {kArgWeights, weights}, {kArgDst, y}};
  if (kind == kBackwardData) return {{kArgDiffDst, y}, {kArgWeights, weights}, {kArgDiffSrc, x}};
  return {{kArgSrc, x}, {kArgDiffDst, y}, {kArgDiffWeights, weights}};
}

std::string KeyText(const Key& key) {
  std::string text;
  for (int64_t v : key) text += (text.empty() ? "" : ",") + std::to_string(v);
  return text;
}

// Seconds of one run of the primitive `pd` describes, on the call's own activations and a
// scratch kernel (a trial run's results are overwritten by the real one); the fastest of two
// runs after one that warms up (page faults, code generation). Stops after the first timed
// run when that is already slower than `give_up`.
double TrialSeconds(const void* pd, Kind kind, const MemoryDesc& src, const MemoryDesc& dst,
                    float* x_data, float* y_data, int weights_query, double give_up) {
  auto& ctx = GetContext();
  const void* weights_md = dnnl_primitive_desc_query_md(pd, weights_query, 0);
  std::vector<float> scratch(dnnl_memory_desc_get_size(weights_md) / sizeof(float), 0.0f);
  dnnl_handle prim = MakePrimitive(pd);
  Memory s(src.md, x_data), d(dst.md, y_data), wts(weights_md, scratch.data());
  const auto args = ConvArgs(kind, s.mem, wts.mem, d.mem);
  double best = 1e30;
  try {
    for (int run = 0; run < 3; ++run) {
      auto start = std::chrono::steady_clock::now();
      Execute(prim, args);
      Check(dnnl_stream_wait(ctx.stream), "stream_wait");
      std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
      if (run > 0) best = std::min(best, took.count());
      if (run == 1 && best > give_up) break;
    }
  } catch (...) {
    dnnl_primitive_destroy(prim);
    throw;
  }
  dnnl_primitive_destroy(prim);
  return best;
}

// dims are oneDNN's logical order: x [N, C, H, W], w [O, I, KH, KW], y [N, O, OH, OW].
// x_data / y_data are the call's buffers, which tuning may run on (null: scratch ones).
std::unique_ptr<Plan> BuildPlan(Kind kind, const Key& key, std::vector<int64_t> x,
                                std::vector<int64_t> w, std::vector<int64_t> y,
                                const int64_t* strides, const int64_t* pad_l,
                                const int64_t* pad_r, float* x_data, float* y_data) {
  auto& ctx = GetContext();
  auto plan = std::make_unique<Plan>();
  std::vector<float> x_scratch, y_scratch;  // tuning's activations when no call's are given
  auto count = [](const std::vector<int64_t>& d) { return d[0] * d[1] * d[2] * d[3]; };
  if (!x_data) x_scratch.assign(count(x), 0.5f), x_data = x_scratch.data();
  if (!y_data) y_scratch.assign(count(y), 0.5f), y_data = y_scratch.data();
  plan->src = MemoryDesc(x, "acdb");
  plan->dst = MemoryDesc(y, "acdb");
  plan->weights_user = MemoryDesc(w, "cdba");
  MemoryDesc weights_any = MemoryDesc::Any(w);
  const int64_t dilates[2] = {0, 0};
  auto forward_pd = [&]() {
    dnnl_handle pd;
    Check(dnnl_convolution_forward_primitive_desc_create(
              &pd, ctx.engine, kForwardTraining, kConvolutionDirect, plan->src.md,
              weights_any.md, nullptr, plan->dst.md, strides, dilates, pad_l, pad_r,
              UserScratchpadAttr()),
          "convolution forward desc");
    return pd;
  };
  dnnl_handle fwd_pd = forward_pd();  // the backward descriptors' hint
  int weights_query = kind == kBackwardWeights ? kQueryDiffWeightsMd : kQueryWeightsMd;
  // a new descriptor at oneDNN's first implementation (tuning steps it through the others)
  auto first_pd = [&]() {
    if (kind == kForward) return forward_pd();
    dnnl_handle pd;
    if (kind == kBackwardData) {
      Check(dnnl_convolution_backward_data_primitive_desc_create(
                &pd, ctx.engine, kConvolutionDirect, plan->src.md, weights_any.md,
                plan->dst.md, strides, dilates, pad_l, pad_r, fwd_pd, UserScratchpadAttr()),
            "convolution backward data desc");
    } else {
      Check(dnnl_convolution_backward_weights_primitive_desc_create(
                &pd, ctx.engine, kConvolutionDirect, plan->src.md, weights_any.md, nullptr,
                plan->dst.md, strides, dilates, pad_l, pad_r, fwd_pd, UserScratchpadAttr()),
            "convolution backward weights desc");
    }
    return pd;
  };
  dnnl_handle pd = first_pd();
  auto& tuning = GetTuning();
  if (tuning.enabled) {
    const std::string text = KeyText(key);
    auto known = tuning.choices.find(text);
    std::string choice;
    if (known != tuning.choices.end()) {
      choice = known->second;
    } else {  // measure every implementation worth a try, keep the fastest
      auto start = std::chrono::steady_clock::now();
      double best = 1e30;
      do {
        std::string name = ImplName(pd);
        if (!WorthTrying(name)) continue;
        double t;
        try {
          t = TrialSeconds(pd, kind, plan->src, plan->dst, x_data, y_data, weights_query,
                           1.5 * best);
        } catch (const Failure&) {
          continue;  // an implementation that fails to run is not a candidate
        }
        if (t < best) best = t, choice = name;
      } while (dnnl_primitive_desc_next_impl(pd) == 0);
      dnnl_primitive_desc_destroy(pd);
      pd = first_pd();
      tuning.choices[text] = choice;
      tuning.tuned += 1;
      tuning.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
                            .count();
      if (!tuning.file.empty() && !choice.empty()) {
        if (FILE* f = std::fopen(tuning.file.c_str(), "a")) {  // one line, appended whole
          std::fprintf(f, "%s\t%s\n", text.c_str(), choice.c_str());
          std::fclose(f);
        }
      }
    }
    // step to the chosen implementation; a name this oneDNN lacks keeps its first choice
    std::string name = ImplName(pd);
    while (name != choice && dnnl_primitive_desc_next_impl(pd) == 0) name = ImplName(pd);
    if (name != choice) {
      dnnl_primitive_desc_destroy(pd);
      pd = first_pd();
    }
  }
  plan->conv = MakePrimitive(pd);
  plan->weights_blocked = dnnl_primitive_desc_query_md(pd, weights_query, 0);
  if (!dnnl_memory_desc_equal(plan->weights_blocked, plan->weights_user.md)) {
    dnnl_handle reorder_pd;
    bool to_user = kind == kBackwardWeights;
    const void* from = to_user ? plan->weights_blocked : plan->weights_user.md;
    const void* to = to_user ? plan->weights_user.md : plan->weights_blocked;
    Check(dnnl_reorder_primitive_desc_create(&reorder_pd, from, ctx.engine, to, ctx.engine,
                                             UserScratchpadAttr()),
          "reorder desc");
    plan->reorder = MakePrimitive(reorder_pd);
    dnnl_primitive_desc_destroy(reorder_pd);
  }
  // The primitive keeps what it needs; the descriptors that answered the weights query stay
  // alive with the plan (weights_blocked points into pd).
  dnnl_primitive_desc_destroy(fwd_pd);  // only the hint: pd is a descriptor of its own
  return plan;
}

std::mutex mutex;
std::map<Key, std::unique_ptr<Plan>>& Plans() {
  static auto* plans = new std::map<Key, std::unique_ptr<Plan>>();
  return *plans;
}

// Per shape: calls, seconds inside the lock (oneDNN's work: reorders, convolution) and
// seconds waiting for it. Why: a profiler's event for the custom call spans both, and with two
// XLA threads calling, the waits are a third of the events' time (BUILD_NOTES.md, session 33).
struct CallTimes { int64_t calls = 0; double busy = 0, waiting = 0; };
std::map<Key, CallTimes>& Times() {  // guarded by the mutex
  static auto* times = new std::map<Key, CallTimes>();
  return *times;
}

// Adds one call's times when it goes out of scope (the lock is still held: declared after it).
// A kernel reorder's call adds its times to its convolution's but no call.
struct CallTimer {
  using Clock = std::chrono::steady_clock;
  const Key& key;
  Clock::time_point asked, started;
  bool counts_a_call = true;
  ~CallTimer() {
    auto& times = Times()[key];
    times.calls += counts_a_call;
    times.waiting += std::chrono::duration<double>(started - asked).count();
    times.busy += std::chrono::duration<double>(Clock::now() - started).count();
  }
};

// dims in oneDNN's logical order (nhwc / hwio below), kind, strides and pads: the plan's key
Key MakeKey(Kind kind, const std::vector<int64_t>& x, const std::vector<int64_t>& w,
            const std::vector<int64_t>& y, const int64_t* st, const int64_t* lo,
            const int64_t* hi) {
  return Key{kind, x[0], x[1], x[2], x[3], w[0], w[2], w[3], y[2], y[3], st[0], st[1], lo[0],
             lo[1], hi[0], hi[1]};
}

template <typename Dims>
std::vector<int64_t> Nhwc(const Dims& dims) {  // NHWC buffer dims -> oneDNN's (N, C, H, W)
  return {dims[0], dims[3], dims[1], dims[2]};
}

template <typename Dims>
std::vector<int64_t> Hwio(const Dims& dims) {  // HWIO kernel dims -> oneDNN's (O, I, KH, KW)
  return {dims[3], dims[2], dims[0], dims[1]};
}

// The shape's plan, built (and its implementation chosen) on first use; the mutex is held.
// A built plan stays for the process, failed calls included: a traced program's kernel
// reorder and its convolutions must agree on the layout, which a rebuilt plan could change.
Plan& GetPlan(Kind kind, const Key& key, const std::vector<int64_t>& x,
              const std::vector<int64_t>& w, const std::vector<int64_t>& y, const int64_t* st,
              const int64_t* lo, const int64_t* hi, float* x_data, float* y_data) {
  auto& plan = Plans()[key];
  if (!plan) plan = BuildPlan(kind, key, x, w, y, st, lo, hi, x_data, y_data);
  return *plan;
}

// Floats of the kernel in the layout the plan's convolution reads, 0 when that is HWIO itself.
int64_t BlockedFloats(const Plan& plan) {
  return plan.reorder ? dnnl_memory_desc_get_size(plan.weights_blocked) / sizeof(float) : 0;
}

bool Is4d(const std::vector<int64_t>& dims) { return dims.size() == 4; }

template <typename Buffer>
std::vector<int64_t> DimsOf(const Buffer& buffer) {
  auto d = buffer.dimensions();
  return std::vector<int64_t>(d.begin(), d.end());
}

// Runs body (which returns the call's ffi::Error) under the handlers' mutex with the call
// timed for key's stats; a oneDNN failure becomes the call's error.
template <typename Body>
ffi::Error Serialized(const Key& key, bool counts_a_call, Body body) {
  auto asked = CallTimer::Clock::now();
  std::lock_guard<std::mutex> lock(mutex);
  CallTimer timer{key, asked, CallTimer::Clock::now(), counts_a_call};
  try {
    return body();
  } catch (const Failure& e) {
    return ffi::Error::Internal(e.what());
  }
}

// a: x (forward, weights) or dy (data); b: w (forward, data) or dy (weights); out: the result.
// kernel: the HWIO kernel's dims. For forward and backward data, b may instead be the kernel
// already in the plan's blocked layout (1-D, from `jaxgan_onednn_kernel_blocked`): XLA then
// computes that layout once per kernel value, not once per call.
ffi::Error Run(Kind kind, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
               ffi::ResultBuffer<ffi::F32> out, ffi::Span<const int64_t> strides,
               ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi,
               ffi::Span<const int64_t> kernel) {
  const auto a_dims = DimsOf(a), b_dims = DimsOf(b), out_dims = DimsOf(*out);
  const std::vector<int64_t> kernel_dims(kernel.begin(), kernel.end());
  const bool pre_blocked = kind != kBackwardWeights && b_dims.size() == 1;
  const auto& plain_kernel = kind == kBackwardWeights ? out_dims : b_dims;
  if (!Is4d(a_dims) || !Is4d(kind == kBackwardWeights ? b_dims : out_dims) ||
      !Is4d(kernel_dims) || (!pre_blocked && plain_kernel != kernel_dims) ||
      strides.size() != 2 || pad_lo.size() != 2 || pad_hi.size() != 2)
    return ffi::Error::InvalidArgument(
        "jaxgan onednn conv: 4-D operands (or a blocked 1-D kernel), 2 strides, 2 pads");
  std::vector<int64_t> x, w = Hwio(kernel_dims), y;
  float *x_data, *w_data, *y_data;
  if (kind == kForward) {
    x = Nhwc(a_dims); y = Nhwc(out_dims);
    x_data = a.typed_data(); w_data = b.typed_data(); y_data = out->typed_data();
  } else if (kind == kBackwardData) {
    y = Nhwc(a_dims); x = Nhwc(out_dims);
    y_data = a.typed_data(); w_data = b.typed_data(); x_data = out->typed_data();
  } else {
    x = Nhwc(a_dims); y = Nhwc(b_dims);
    x_data = a.typed_data(); y_data = b.typed_data(); w_data = out->typed_data();
  }
  const int64_t st[2] = {strides[0], strides[1]};
  const int64_t lo[2] = {pad_lo[0], pad_lo[1]}, hi[2] = {pad_hi[0], pad_hi[1]};
  const Key key = MakeKey(kind, x, w, y, st, lo, hi);
  return Serialized(key, true, [&]() -> ffi::Error {
    auto& plan = GetPlan(kind, key, x, w, y, st, lo, hi, x_data, y_data);
    Memory src(plan.src.md, x_data), dst(plan.dst.md, y_data);
    if (pre_blocked) {
      if (b_dims[0] != BlockedFloats(plan) || b_dims[0] == 0)
        return ffi::Error::InvalidArgument(
            "jaxgan onednn conv: the blocked kernel's size is not this plan's");
      Memory weights(plan.weights_blocked, w_data);
      Execute(plan.conv, ConvArgs(kind, src.mem, weights.mem, dst.mem));
    } else {
      Memory weights_user(plan.weights_user.md, w_data);
      std::unique_ptr<Memory> blocked;
      dnnl_handle weights = weights_user.mem;
      if (plan.reorder) {
        // allocated on first use: plans whose kernels come pre-blocked never need it
        if (plan.blocked.empty()) plan.blocked.resize(BlockedFloats(plan));
        blocked = std::make_unique<Memory>(plan.weights_blocked, plan.blocked.data());
        weights = blocked->mem;
      }
      if (kind != kBackwardWeights && plan.reorder)  // the kernel in, to oneDNN's layout
        Execute(plan.reorder, {{kArgSrc, weights_user.mem}, {kArgDst, weights}});
      Execute(plan.conv, ConvArgs(kind, src.mem, weights, dst.mem));
      if (kind == kBackwardWeights && plan.reorder)  // the kernel gradient out, back to HWIO
        Execute(plan.reorder, {{kArgSrc, weights}, {kArgDst, weights_user.mem}});
    }
    Check(dnnl_stream_wait(GetContext().stream), "stream_wait");
    return ffi::Error::Success();
  });
}

template <Kind kind>
ffi::Error RunKind(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                   ffi::ResultBuffer<ffi::F32> out, ffi::Span<const int64_t> strides,
                   ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi,
                   ffi::Span<const int64_t> kernel) {
  return Run(kind, a, b, out, strides, pad_lo, pad_hi, kernel);
}

// The HWIO kernel w in the blocked layout of the plan for (kind, x, y, strides, pads): the
// reorder each forward / backward-data call would otherwise run on its own.
ffi::Error ReorderKernel(ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> out,
                         int64_t kind_attr, ffi::Span<const int64_t> x_nhwc,
                         ffi::Span<const int64_t> y_nhwc, ffi::Span<const int64_t> strides,
                         ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi) {
  const auto w_dims = DimsOf(w), out_dims = DimsOf(*out);
  if ((kind_attr != kForward && kind_attr != kBackwardData) || !Is4d(w_dims) ||
      out_dims.size() != 1 || x_nhwc.size() != 4 || y_nhwc.size() != 4 ||
      strides.size() != 2 || pad_lo.size() != 2 || pad_hi.size() != 2)
    return ffi::Error::InvalidArgument(
        "jaxgan onednn kernel reorder: forward or backward data, a 4-D kernel, 1-D result");
  const Kind kind = static_cast<Kind>(kind_attr);
  const auto x = Nhwc(x_nhwc), w_ = Hwio(w_dims), y = Nhwc(y_nhwc);
  const int64_t st[2] = {strides[0], strides[1]};
  const int64_t lo[2] = {pad_lo[0], pad_lo[1]}, hi[2] = {pad_hi[0], pad_hi[1]};
  const Key key = MakeKey(kind, x, w_, y, st, lo, hi);
  return Serialized(key, false, [&]() -> ffi::Error {
    auto& plan = GetPlan(kind, key, x, w_, y, st, lo, hi, nullptr, nullptr);
    if (out_dims[0] != BlockedFloats(plan) || out_dims[0] == 0)
      return ffi::Error::InvalidArgument(
          "jaxgan onednn kernel reorder: the result's size is not this plan's blocked kernel");
    Memory user(plan.weights_user.md, w.typed_data()), blocked(plan.weights_blocked,
                                                                out->typed_data());
    Execute(plan.reorder, {{kArgSrc, user.mem}, {kArgDst, blocked.mem}});
    Check(dnnl_stream_wait(GetContext().stream), "stream_wait");
    return ffi::Error::Success();
  });
}

}  // namespace

// Called from Python (ctypes) before the first convolution: where the implementation choices
// persist ("" or null: nowhere), and whether to measure at all (0: oneDNN's first choice).
// Reads the file's "shape<TAB>implementation" lines; unreadable lines are skipped.
extern "C" void jaxgan_onednn_configure(const char* file, int tune) {
  std::lock_guard<std::mutex> lock(mutex);
  auto& tuning = GetTuning();
  tuning.enabled = tune != 0;
  tuning.file = file ? file : "";
  if (tuning.file.empty()) return;
  if (FILE* f = std::fopen(tuning.file.c_str(), "r")) {
    char line[512];
    while (std::fgets(line, sizeof line, f)) {
      std::string text(line);
      auto tab = text.find('\t');
      auto end = text.find('\n');
      if (tab == std::string::npos || end == std::string::npos || end <= tab + 1) continue;
      tuning.choices[text.substr(0, tab)] = text.substr(tab + 1, end - tab - 1);
    }
    std::fclose(f);
  }
}

// Shapes this process measured, and the seconds that took.
extern "C" void jaxgan_onednn_tuning_stats(int64_t* tuned, double* seconds) {
  std::lock_guard<std::mutex> lock(mutex);
  *tuned = GetTuning().tuned;
  *seconds = GetTuning().seconds;
}

// At trace time: floats of the kernel in the blocked layout that the plan for this forward
// (kind 0) or backward-data (kind 1) convolution reads, 0 when it reads HWIO itself, -1 when
// the plan cannot be built. Builds the plan (measuring its implementations on scratch buffers).
// Dims as the XLA buffers have them: x and y NHWC, w HWIO.
extern "C" int64_t jaxgan_onednn_blocked_kernel_floats(int kind, const int64_t* x_nhwc,
                                                       const int64_t* w_hwio,
                                                       const int64_t* y_nhwc,
                                                       const int64_t* strides,
                                                       const int64_t* pad_lo,
                                                       const int64_t* pad_hi) {
  if (kind != kForward && kind != kBackwardData) return -1;
  const auto x = Nhwc(x_nhwc), w = Hwio(w_hwio), y = Nhwc(y_nhwc);
  const Key key = MakeKey(static_cast<Kind>(kind), x, w, y, strides, pad_lo, pad_hi);
  std::lock_guard<std::mutex> lock(mutex);
  try {
    return BlockedFloats(GetPlan(static_cast<Kind>(kind), key, x, w, y, strides, pad_lo,
                                 pad_hi, nullptr, nullptr));
  } catch (const Failure&) {  // no plan was kept: the next use tries to build it again
    return -1;
  }
}

// The calls since the last reset, one "shape<TAB>calls<TAB>busy s<TAB>waiting s" line per
// shape, into buf (at most size bytes, NUL-terminated); returns the length the whole text needs
// (call again with a larger buffer when it is >= size). reset: clear the counts afterwards.
extern "C" int64_t jaxgan_onednn_call_stats(char* buf, int64_t size, int reset) {
  std::lock_guard<std::mutex> lock(mutex);
  std::string text;
  char line[64];
  for (const auto& [key, times] : Times()) {
    std::snprintf(line, sizeof line, "\t%lld\t%.6f\t%.6f\n", static_cast<long long>(times.calls),
                  times.busy, times.waiting);
    text += KeyText(key) + line;
  }
  if (size > 0) {
    auto n = std::min<int64_t>(text.size(), size - 1);
    std::copy(text.begin(), text.begin() + n, buf);
    buf[n] = '\0';
  }
  if (reset && static_cast<int64_t>(text.size()) < size) Times().clear();
  return static_cast<int64_t>(text.size());
}

#define JAXGAN_CONV_HANDLER(name, kind)                                             \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, RunKind<kind>,                                \
                                ffi::Ffi::Bind()                                    \
                                    .Arg<ffi::Buffer<ffi::F32>>()                   \
                                    .Arg<ffi::Buffer<ffi::F32>>()                   \
                                    .Ret<ffi::Buffer<ffi::F32>>()                   \
                                    .Attr<ffi::Span<const int64_t>>("strides")      \
                                    .Attr<ffi::Span<const int64_t>>("pad_lo")       \
                                    .Attr<ffi::Span<const int64_t>>("pad_hi")       \
                                    .Attr<ffi::Span<const int64_t>>("kernel"));

JAXGAN_CONV_HANDLER(jaxgan_onednn_conv_forward, kForward)
JAXGAN_CONV_HANDLER(jaxgan_onednn_conv_backward_data, kBackwardData)
JAXGAN_CONV_HANDLER(jaxgan_onednn_conv_backward_weights, kBackwardWeights)

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxgan_onednn_kernel_blocked, ReorderKernel,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("kind")
                                  .Attr<ffi::Span<const int64_t>>("x")
                                  .Attr<ffi::Span<const int64_t>>("y")
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("pad_lo")
                                  .Attr<ffi::Span<const int64_t>>("pad_hi"));
