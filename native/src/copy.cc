// Guarded copies on native threads. Copies into and out of a LazyRegion must
// not run on the JS thread that serves its faults (it would wait for itself),
// and a failed fetch poisons pages (SIGBUS on access): on these threads the
// signal is caught and the copy fails with EIO instead of killing the process.
#include "common.h"

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

namespace qm {

namespace {

constexpr int kPoolThreads = 4;

struct GuardSlot {
  pthread_t thread;
  std::atomic<bool> used{false};
  volatile sig_atomic_t active = 0;
  volatile sig_atomic_t sig = 0;
  sigjmp_buf jb;
};
GuardSlot g_slots[kPoolThreads];
struct sigaction g_old_bus, g_old_segv;
std::once_flag g_guard_once;

void Chain(const struct sigaction& old, int sig, siginfo_t* si, void* uc) {
  if (old.sa_flags & SA_SIGINFO) {
    if (old.sa_sigaction) {
      old.sa_sigaction(sig, si, uc);
      return;
    }
  } else if (old.sa_handler == SIG_IGN) {
    return;
  } else if (old.sa_handler != SIG_DFL && old.sa_handler) {
    old.sa_handler(sig);
    return;
  }
  // Default action: restore it and return; the faulting instruction runs
  // again and the kernel applies the default (terminate with the signal).
  signal(sig, SIG_DFL);
}

void Handler(int sig, siginfo_t* si, void* uc) {
  pthread_t self = pthread_self();
  for (auto& s : g_slots) {
    if (s.used.load(std::memory_order_relaxed) && s.active && pthread_equal(s.thread, self)) {
      s.sig = sig;
      s.active = 0;
      siglongjmp(s.jb, 1);
    }
  }
  Chain(sig == SIGBUS ? g_old_bus : g_old_segv, sig, si, uc);
}

int GuardedCopySlot(GuardSlot& s, void* dst, const void* src, size_t len) {
  s.sig = 0;
  if (sigsetjmp(s.jb, 1) != 0) return s.sig == SIGBUS ? EIO : EFAULT;
  s.active = 1;
  std::memcpy(dst, src, len);
  s.active = 0;
  return 0;
}

struct Job {
  Mapping* m;
  size_t off;
  uint8_t* buf;
  size_t len;
  bool toMapping;
  int err = 0;
  Napi::Promise::Deferred deferred;
  Napi::Reference<Napi::Value> keep;
  explicit Job(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
};

void Deliver(Napi::Env env, Napi::Function, std::nullptr_t*, Job* job);
using DoneFn = Napi::TypedThreadSafeFunction<std::nullptr_t, Job, Deliver>;

struct Pending {
  Job* job;
  DoneFn done;
};

// Never destroyed: the pool threads outlive main(), and destroying a
// condition variable with waiters blocks process exit.
struct Pool {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Pending> queue;
};
Pool* g_pool = new Pool();
std::once_flag g_pool_once;

void Deliver(Napi::Env env, Napi::Function, std::nullptr_t*, Job* job) {
  // While a worker thread is being terminated, Node 24 still runs this
  // callback but every call into its env fails; node-addon-api turns that
  // into a C++ exception, which escaping here would abort the process
  // ("terminate called after throwing an instance of 'Napi::Error'"). Nobody
  // can wait for the promise any more: drop it without touching the env.
  bool live = env != nullptr;
  if (live) {
    try {
      if (job->err == 0) {
        job->deferred.Resolve(env.Undefined());
      } else {
        job->deferred.Reject(ErrnoError(env, job->err, job->toMapping ? "copy into mapping" : "copy from mapping").Value());
      }
      job->keep.Reset();
    } catch (const Napi::Error&) {
      live = false;
    }
  }
  if (!live) job->keep.SuppressDestruct();
  MappingUnref(job->m);
  delete job;
}

void Worker(int idx) {
  GuardSlot& s = g_slots[idx];
  s.thread = pthread_self();
  s.used.store(true);
  // Block nothing; this thread only copies.
  for (;;) {
    Pending p;
    {
      std::unique_lock<std::mutex> lk(g_pool->mu);
      g_pool->cv.wait(lk, [] { return !g_pool->queue.empty(); });
      p = std::move(g_pool->queue.front());
      g_pool->queue.pop_front();
    }
    Job* j = p.job;
    if (j->m->retired.load()) {
      j->err = ESHUTDOWN;
    } else if (j->toMapping) {
      j->err = GuardedCopySlot(s, j->m->addr + j->off, j->buf, j->len);
    } else {
      j->err = GuardedCopySlot(s, j->buf, j->m->addr + j->off, j->len);
    }
    p.done.BlockingCall(j);
    p.done.Release();
  }
}

// copy(id, offset, buffer, toMapping) -> Promise<void>
Napi::Value Copy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t id = info[0].As<Napi::Number>().Uint32Value();
  size_t off = static_cast<size_t>(ToU64(info[1]));
  if (!info[2].IsTypedArray()) throw Napi::TypeError::New(env, "copy: buffer must be a Uint8Array");
  auto ta = info[2].As<Napi::Uint8Array>();
  bool toMapping = info[3].ToBoolean().Value();
  Mapping* m = MappingFindById(id);
  if (!m) throw ErrnoError(env, ESHUTDOWN, "copy: mapping is closed");
  if (off > m->len || ta.ByteLength() > m->len - off) {
    MappingUnref(m);
    throw Napi::RangeError::New(env, "copy: range outside the mapping");
  }
  std::call_once(g_pool_once, [] {
    for (int i = 0; i < kPoolThreads; i++) std::thread(Worker, i).detach();
  });
  auto* job = new Job(env);
  job->m = m;
  job->off = off;
  job->buf = ta.Data();
  job->len = ta.ByteLength();
  job->toMapping = toMapping;
  job->keep = Napi::Persistent(info[2]);
  auto promise = job->deferred.Promise();
  auto done = DoneFn::New(env, "quicmap-copy", 0, 1, nullptr);
  {
    std::lock_guard<std::mutex> lk(g_pool->mu);
    g_pool->queue.push_back(Pending{job, done});
  }
  g_pool->cv.notify_one();
  return promise;
}

}  // namespace

void GuardInstall() {
  std::call_once(g_guard_once, [] {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = Handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &g_old_bus);
    sigaction(SIGSEGV, &sa, &g_old_segv);
  });
}

void CopyPoolInit(Napi::Env env, Napi::Object exports) {
  exports.Set("copy", Napi::Function::New(env, Copy, "copy"));
}

}  // namespace qm
