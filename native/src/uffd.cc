// UffdRegion: an anonymous mapping whose missing pages are filled on demand.
//
// A native fault thread reads userfaultfd messages and hands batches of
// missing granule indices to a JS callback through a thread-safe function;
// JS fetches the bytes from any ReadWriterAt and calls fill() (UFFDIO_COPY,
// which wakes every thread waiting in that range) or fail() (UFFDIO_POISON:
// the waiting access gets SIGBUS). Write tracking uses userfaultfd
// write-protect: filled pages are mapped write-protected, the first write to
// a chunk faults, the fault thread marks the chunk dirty and lifts the
// protection for that chunk; takeDirty() re-protects and reports.
#include "common.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif
// Not in older uapi headers (kernel 6.6+).
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#endif
#ifndef UFFDIO_POISON
struct uffdio_poison {
  struct uffdio_range range;
  __u64 mode;
  __s64 updated;
};
#define UFFDIO_POISON _IOWR(0xAA, 0x08, struct uffdio_poison)
#endif

namespace qm {

namespace {

enum : uint8_t { kAbsent = 0, kPending = 1, kPresent = 2, kFailed = 3 };
constexpr uint32_t kPrefetchBit = 0x80000000u;

int OpenUffd(int flags) {
  int fd = static_cast<int>(syscall(SYS_userfaultfd, flags));
  if (fd >= 0) return fd;
  int e1 = errno;
  // Unprivileged callers may only handle user-mode faults.
  fd = static_cast<int>(syscall(SYS_userfaultfd, flags | UFFD_USER_MODE_ONLY));
  if (fd >= 0) return fd;
  int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev >= 0) {
    fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
    close(dev);
    if (fd >= 0) return fd;
  }
  errno = e1;
  return -1;
}

// Features the kernel offers (UFFDIO_API may be called once per fd).
uint64_t ProbeFeatures() {
  int fd = OpenUffd(O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return 0;
  struct uffdio_api api = {};
  api.api = UFFD_API;
  api.features = 0;
  uint64_t f = 0;
  if (ioctl(fd, UFFDIO_API, &api) == 0) f = api.features;
  close(fd);
  return f;
}

class UffdRegion;
struct FaultBatch {
  std::vector<uint32_t> granules;
};
void DeliverFaults(Napi::Env env, Napi::Function cb, std::nullptr_t*, FaultBatch* b);
using FaultFn = Napi::TypedThreadSafeFunction<std::nullptr_t, FaultBatch, DeliverFaults>;

void DeliverFaults(Napi::Env env, Napi::Function cb, std::nullptr_t*, FaultBatch* b) {
  if (env != nullptr && cb) {
    auto arr = Napi::Uint32Array::New(env, b->granules.size());
    std::memcpy(arr.Data(), b->granules.data(), b->granules.size() * sizeof(uint32_t));
    cb.Call({arr});
  }
  delete b;
}

class UffdRegion : public Napi::ObjectWrap<UffdRegion> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "UffdRegion",
                       {
                           InstanceMethod("mappingId", &UffdRegion::MappingIdM),
                           InstanceMethod("buffer", &UffdRegion::Buffer),
                           InstanceMethod("fill", &UffdRegion::Fill),
                           InstanceMethod("fail", &UffdRegion::Fail),
                           InstanceMethod("takeDirty", &UffdRegion::TakeDirty),
                           InstanceMethod("state", &UffdRegion::State),
                           InstanceMethod("stats", &UffdRegion::Stats),
                           InstanceMethod("ref", &UffdRegion::RefM),
                           InstanceMethod("unref", &UffdRegion::UnrefM),
                           InstanceMethod("close", &UffdRegion::CloseM),
                       });
  }

  // new UffdRegion(length, granule, { trackWrites, prefetch }, onFaults)
  explicit UffdRegion(const Napi::CallbackInfo& info) : Napi::ObjectWrap<UffdRegion>(info) {
    Napi::Env env = info.Env();
    size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    size_t length = static_cast<size_t>(ToU64(info[0]));
    granule_ = static_cast<size_t>(ToU64(info[1]));
    auto opts = info[2].As<Napi::Object>();
    track_ = opts.Get("trackWrites").ToBoolean().Value();
    prefetch_ = opts.Has("prefetch") && opts.Get("prefetch").IsNumber() ? opts.Get("prefetch").As<Napi::Number>().Int32Value() : 0;
    if (!info[3].IsFunction()) throw Napi::TypeError::New(env, "UffdRegion: onFaults must be a function");
    if (length == 0) throw Napi::RangeError::New(env, "UffdRegion: length must be > 0");
    if (granule_ < page || granule_ % page != 0) throw Napi::RangeError::New(env, "UffdRegion: granule must be a multiple of the page size");
    len_ = (length + page - 1) / page * page;
    ngranules_ = (len_ + granule_ - 1) / granule_;

    uint64_t offered = ProbeFeatures();
    uint64_t want = UFFD_FEATURE_EVENT_REMOVE;
    if (offered & UFFD_FEATURE_POISON) want |= UFFD_FEATURE_POISON;
    if (track_) {
      if (!(offered & UFFD_FEATURE_PAGEFAULT_FLAG_WP)) throw ErrnoError(env, ENOTSUP, "userfaultfd write-protect (UFFD_FEATURE_PAGEFAULT_FLAG_WP) not offered by this kernel");
      want |= UFFD_FEATURE_PAGEFAULT_FLAG_WP;
    }
    want &= offered;

    uffd_ = OpenUffd(O_CLOEXEC | O_NONBLOCK);
    if (uffd_ < 0) ThrowErrno(env, errno, "userfaultfd");
    struct uffdio_api api = {};
    api.api = UFFD_API;
    api.features = want;
    if (ioctl(uffd_, UFFDIO_API, &api) != 0) {
      int e = errno;
      close(uffd_);
      ThrowErrno(env, e, "UFFDIO_API");
    }
    features_ = api.features;
    poison_ = (features_ & UFFD_FEATURE_POISON) != 0;

    void* p = mmap(nullptr, len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      close(uffd_);
      ThrowErrno(env, e, "mmap");
    }
    base_ = static_cast<uint8_t*>(p);
    // Predictable 4 KiB pages, and children (spawned processes) never share
    // or copy this range.
    madvise(p, len_, MADV_NOHUGEPAGE);
    madvise(p, len_, MADV_DONTFORK);

    struct uffdio_register reg = {};
    reg.range.start = reinterpret_cast<uintptr_t>(p);
    reg.range.len = len_;
    reg.mode = UFFDIO_REGISTER_MODE_MISSING | (track_ ? UFFDIO_REGISTER_MODE_WP : 0);
    if (ioctl(uffd_, UFFDIO_REGISTER, &reg) != 0) {
      int e = errno;
      munmap(p, len_);
      close(uffd_);
      ThrowErrno(env, e, "UFFDIO_REGISTER");
    }
    if (track_ && !(reg.ioctls & (1ULL << _UFFDIO_WRITEPROTECT))) {
      munmap(p, len_);
      close(uffd_);
      ThrowErrno(env, ENOTSUP, "UFFDIO_WRITEPROTECT not available for this range");
    }
    map_ = MappingNew(base_, len_);

    state_.reset(new std::atomic<uint8_t>[ngranules_]);
    for (size_t i = 0; i < ngranules_; i++) state_[i].store(kAbsent);
    dirty_.assign(track_ ? ngranules_ : 0, 0);

    stopfd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    faults_ = FaultFn::New(env, info[3].As<Napi::Function>(), "quicmap-uffd", 0, 1, nullptr);
    thread_ = std::thread([this] { Loop(); });
    // Registered after the thread-safe function, so it runs before that is
    // torn down when the environment (process or worker) exits with the
    // region still open.
    env_ = env;
    if (napi_add_env_cleanup_hook(env, &UffdRegion::OnEnvCleanup, this) == napi_ok) hooked_ = true;
  }

  ~UffdRegion() override {
    Unhook();
    Shutdown();
  }

 private:
  size_t Span(size_t g) const { return std::min(granule_, len_ - g * granule_); }
  uint8_t* At(size_t g) const { return base_ + g * granule_; }

  void Loop() {
    struct uffd_msg msgs[64];
    for (;;) {
      struct pollfd pfd[2] = {{uffd_, POLLIN, 0}, {stopfd_, POLLIN, 0}};
      int r = poll(pfd, 2, -1);
      if (r < 0) {
        if (errno == EINTR) continue;
        break;
      }
      if (pfd[1].revents) break;
      if (pfd[0].revents & (POLLERR | POLLHUP)) break;
      ssize_t n = read(uffd_, msgs, sizeof msgs);
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) continue;
        break;
      }
      FaultBatch* batch = nullptr;
      std::vector<uint32_t> prefetch;
      for (size_t i = 0; i < static_cast<size_t>(n) / sizeof(struct uffd_msg); i++) {
        const auto& m = msgs[i];
        if (m.event == UFFD_EVENT_PAGEFAULT) {
          uint64_t addr = m.arg.pagefault.address;
          uint64_t off = addr - reinterpret_cast<uintptr_t>(base_);
          if (off >= len_) continue;
          size_t g = off / granule_;
          if (m.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) {
            OnWriteFault(g);
            continue;
          }
          missing_.fetch_add(1, std::memory_order_relaxed);
          uint8_t st = state_[g].load();
          if (st == kPending) continue;  // already being fetched; the fill wakes this thread too
          if (!state_[g].compare_exchange_strong(st, kPending)) continue;
          if (!batch) batch = new FaultBatch();
          batch->granules.push_back(static_cast<uint32_t>(g));
          for (int k = 1; k <= prefetch_; k++) {
            size_t h = g + k;
            if (h >= ngranules_) break;
            uint8_t a = kAbsent;
            if (state_[h].compare_exchange_strong(a, kPending)) prefetch.push_back(static_cast<uint32_t>(h) | kPrefetchBit);
          }
        } else if (m.event == UFFD_EVENT_REMOVE) {
          // madvise(DONTNEED/REMOVE): those pages are missing again.
          uint64_t s = m.arg.remove.start - reinterpret_cast<uintptr_t>(base_);
          uint64_t e = m.arg.remove.end - reinterpret_cast<uintptr_t>(base_);
          if (e > len_) e = len_;
          for (size_t g = s / granule_; g < ngranules_ && g * granule_ < e; g++) {
            uint8_t p = kPresent;
            state_[g].compare_exchange_strong(p, kAbsent);
            uint8_t f = kFailed;
            state_[g].compare_exchange_strong(f, kAbsent);
          }
        }
      }
      if (!prefetch.empty()) {
        if (!batch) batch = new FaultBatch();
        batch->granules.insert(batch->granules.end(), prefetch.begin(), prefetch.end());
      }
      if (batch) {
        batches_.fetch_add(1, std::memory_order_relaxed);
        if (faults_.NonBlockingCall(batch) != napi_ok) {
          // The JS side is gone (closing): nobody will fill these.
          delete batch;
        }
      }
    }
  }

  void OnWriteFault(size_t g) {
    wpfaults_.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard<std::mutex> lk(wp_mu_);
    dirty_[g] = 1;
    struct uffdio_writeprotect wp = {};
    wp.range.start = reinterpret_cast<uintptr_t>(At(g));
    wp.range.len = Span(g);
    wp.mode = 0;  // lift protection for the whole chunk and wake the writer
    for (int tries = 0; tries < 1000; tries++) {
      if (ioctl(uffd_, UFFDIO_WRITEPROTECT, &wp) == 0) return;
      if (errno != EAGAIN && errno != EINTR) break;
    }
    struct uffdio_range wake = wp.range;
    ioctl(uffd_, UFFDIO_WAKE, &wake);
  }

  // Place `data` into missing pages of [at, at+len). Pages already present are
  // left alone (EEXIST): local writes are never overwritten by a late fill.
  // Returns bytes placed, or -errno.
  long Place(uint8_t* at, const uint8_t* data, size_t len, bool poison) {
    size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    size_t pos = 0, placed = 0;
    bool skipped = false;
    while (pos < len) {
      long done;
      int err = 0;
      if (poison) {
        struct uffdio_poison po = {};
        po.range.start = reinterpret_cast<uintptr_t>(at + pos);
        po.range.len = len - pos;
        if (ioctl(uffd_, UFFDIO_POISON, &po) != 0) err = errno;
        done = po.updated > 0 ? static_cast<long>(po.updated) : 0;
        if (!err) done = static_cast<long>(len - pos);
      } else {
        struct uffdio_copy c = {};
        c.dst = reinterpret_cast<uintptr_t>(at + pos);
        c.src = reinterpret_cast<uintptr_t>(data + pos);
        c.len = len - pos;
        c.mode = track_ ? UFFDIO_COPY_MODE_WP : 0;
        if (ioctl(uffd_, UFFDIO_COPY, &c) != 0) err = errno;
        done = c.copy > 0 ? static_cast<long>(c.copy) : 0;
        if (!err) done = static_cast<long>(len - pos);
      }
      pos += done;
      placed += done;
      if (!err) continue;
      if (err == EEXIST) {
        pos += page;
        skipped = true;
      } else if (err == EAGAIN || err == EINTR) {
        continue;
      } else {
        return -err;
      }
    }
    if (skipped) {
      struct uffdio_range r = {reinterpret_cast<uintptr_t>(at), len};
      ioctl(uffd_, UFFDIO_WAKE, &r);
    }
    return static_cast<long>(placed);
  }

  Napi::Value MappingIdM(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), map_ ? map_->id : 0); }

  Napi::Value Buffer(const Napi::CallbackInfo& info) {
    if (closed_) throw ErrnoError(info.Env(), ESHUTDOWN, "region is closed");
    return MappingArrayBuffer(info.Env(), map_);
  }

  size_t GranuleArg(const Napi::CallbackInfo& info) {
    uint32_t g = info[0].As<Napi::Number>().Uint32Value() & ~kPrefetchBit;
    if (g >= ngranules_) throw Napi::RangeError::New(info.Env(), "granule index out of range");
    return g;
  }

  // fill(g, data) -> bytes placed (0 if every page was already there).
  Napi::Value Fill(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_) throw ErrnoError(env, ESHUTDOWN, "region is closed");
    size_t g = GranuleArg(info);
    auto data = info[1].As<Napi::Uint8Array>();
    size_t span = Span(g);
    if (data.ByteLength() < span) throw Napi::RangeError::New(env, "fill: data shorter than the granule");
    long r = Place(At(g), data.Data(), span, false);
    if (r < 0) {
      state_[g].store(kAbsent);
      ThrowErrno(env, static_cast<int>(-r), "UFFDIO_COPY");
    }
    state_[g].store(kPresent);
    fills_.fetch_add(1, std::memory_order_relaxed);
    filled_bytes_.fetch_add(static_cast<uint64_t>(r), std::memory_order_relaxed);
    return Napi::Number::New(env, static_cast<double>(r));
  }

  // fail(g): the missing pages of the granule fail every access with SIGBUS
  // (UFFDIO_POISON), or SIGSEGV (PROT_NONE) on kernels without poison.
  Napi::Value Fail(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_) return env.Undefined();
    size_t g = GranuleArg(info);
    FailRange(g);
    return env.Undefined();
  }

  void FailRange(size_t g) {
    failed_.fetch_add(1, std::memory_order_relaxed);
    if (poison_ && Place(At(g), nullptr, Span(g), true) >= 0) {
      state_[g].store(kFailed);
      return;
    }
    mprotect(At(g), Span(g), PROT_NONE);
    struct uffdio_range r = {reinterpret_cast<uintptr_t>(At(g)), Span(g)};
    ioctl(uffd_, UFFDIO_WAKE, &r);
    state_[g].store(kFailed);
  }

  // takeDirty() -> Uint32Array of chunk (granule) indices written since the
  // last call. Re-protects them first, so no write can fall between.
  Napi::Value TakeDirty(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!track_) throw ErrnoError(env, ENOTSUP, "region was created without trackWrites");
    if (closed_) throw ErrnoError(env, ESHUTDOWN, "region is closed");
    std::vector<uint32_t> out;
    std::lock_guard<std::mutex> lk(wp_mu_);
    size_t g = 0;
    while (g < ngranules_) {
      if (!dirty_[g]) {
        g++;
        continue;
      }
      size_t s = g;
      while (g < ngranules_ && dirty_[g]) g++;
      struct uffdio_writeprotect wp = {};
      wp.range.start = reinterpret_cast<uintptr_t>(At(s));
      wp.range.len = std::min(len_, g * granule_) - s * granule_;
      wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
      int err = 0;
      for (int tries = 0; tries < 1000; tries++) {
        if (ioctl(uffd_, UFFDIO_WRITEPROTECT, &wp) == 0) {
          err = 0;
          break;
        }
        err = errno;
        if (err != EAGAIN && err != EINTR) break;
      }
      if (err) ThrowErrno(env, err, "UFFDIO_WRITEPROTECT");
      for (size_t k = s; k < g; k++) {
        dirty_[k] = 0;
        out.push_back(static_cast<uint32_t>(k));
      }
    }
    auto arr = Napi::Uint32Array::New(env, out.size());
    if (!out.empty()) std::memcpy(arr.Data(), out.data(), out.size() * sizeof(uint32_t));
    return arr;
  }

  // state(g) -> 0 absent, 1 pending, 2 present, 3 failed
  Napi::Value State(const Napi::CallbackInfo& info) {
    size_t g = GranuleArg(info);
    return Napi::Number::New(info.Env(), state_[g].load());
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto o = Napi::Object::New(env);
    o.Set("missingFaults", static_cast<double>(missing_.load()));
    o.Set("writeFaults", static_cast<double>(wpfaults_.load()));
    o.Set("batches", static_cast<double>(batches_.load()));
    o.Set("fills", static_cast<double>(fills_.load()));
    o.Set("filledBytes", static_cast<double>(filled_bytes_.load()));
    o.Set("failed", static_cast<double>(failed_.load()));
    o.Set("features", static_cast<double>(features_));
    o.Set("poison", poison_);
    o.Set("length", static_cast<double>(len_));
    o.Set("granules", static_cast<double>(ngranules_));
    return o;
  }

  Napi::Value RefM(const Napi::CallbackInfo& info) {
    if (!closed_) faults_.Ref(info.Env());
    return info.Env().Undefined();
  }
  Napi::Value UnrefM(const Napi::CallbackInfo& info) {
    if (!closed_) faults_.Unref(info.Env());
    return info.Env().Undefined();
  }

  static void OnEnvCleanup(void* arg) {
    auto* self = static_cast<UffdRegion*>(arg);
    self->hooked_ = false;
    self->Shutdown();
  }

  void Unhook() {
    if (hooked_) napi_remove_env_cleanup_hook(env_, &UffdRegion::OnEnvCleanup, this);
    hooked_ = false;
  }

  Napi::Value CloseM(const Napi::CallbackInfo& info) {
    Unhook();
    Shutdown();
    return info.Env().Undefined();
  }

  // Safe with faults pending: threads waiting on a granule being fetched get
  // SIGBUS (poison) — a guarded copy reports EIO — and any later access to the
  // range traps (PROT_NONE) instead of reading zeros or foreign memory.
  void Shutdown() {
    if (closed_ || !map_) return;
    closed_ = true;
    uint64_t one = 1;
    if (write(stopfd_, &one, sizeof one) < 0) {
    }
    if (thread_.joinable()) thread_.join();
    for (size_t g = 0; g < ngranules_; g++) {
      if (state_[g].load() == kPending) FailRange(g);
    }
    MappingRetire(map_);
    close(uffd_);  // wakes anything still waiting; it then traps on PROT_NONE
    close(stopfd_);
    faults_.Abort();
    MappingUnref(map_);
  }

  uint8_t* base_ = nullptr;
  size_t len_ = 0, granule_ = 0, ngranules_ = 0;
  bool track_ = false, poison_ = false, closed_ = false, hooked_ = false;
  napi_env env_ = nullptr;
  int prefetch_ = 0;
  int uffd_ = -1, stopfd_ = -1;
  uint64_t features_ = 0;
  Mapping* map_ = nullptr;
  std::unique_ptr<std::atomic<uint8_t>[]> state_;
  std::vector<uint8_t> dirty_;
  std::mutex wp_mu_;
  std::thread thread_;
  FaultFn faults_;
  std::atomic<uint64_t> missing_{0}, wpfaults_{0}, batches_{0}, fills_{0}, filled_bytes_{0}, failed_{0};
};

Napi::Value Features(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t f = ProbeFeatures();
  auto o = Napi::Object::New(env);
  int fd = OpenUffd(O_CLOEXEC | O_NONBLOCK);
  o.Set("available", fd >= 0);
  if (fd < 0) o.Set("error", Napi::String::New(env, strerror(errno)));
  else close(fd);
  o.Set("raw", static_cast<double>(f));
  o.Set("writeProtect", (f & UFFD_FEATURE_PAGEFAULT_FLAG_WP) != 0);
  o.Set("poison", (f & UFFD_FEATURE_POISON) != 0);
  o.Set("eventRemove", (f & UFFD_FEATURE_EVENT_REMOVE) != 0);
  return o;
}

}  // namespace

void UffdInit(Napi::Env env, Napi::Object exports) {
  exports.Set("UffdRegion", UffdRegion::Define(env));
  exports.Set("uffdFeatures", Napi::Function::New(env, Features, "uffdFeatures"));
}

}  // namespace qm
