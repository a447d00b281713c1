#include "common.h"

#include <pthread.h>

#include <map>
#include <mutex>
#include <sys/mman.h>

namespace qm {

namespace {
// Leaked on purpose: finalizers may run during exit, after static destructors.
std::mutex& g_mu = *new std::mutex();
std::map<uint32_t, Mapping*>& g_by_id = *new std::map<uint32_t, Mapping*>();
std::map<uintptr_t, Mapping*>& g_by_addr = *new std::map<uintptr_t, Mapping*>();
uint32_t g_next_id = 1;
}  // namespace

Mapping* MappingNew(uint8_t* addr, size_t len) {
  auto* m = new Mapping();
  m->addr = addr;
  m->len = len;
  m->refs.store(1);
  m->retired.store(false);
  std::lock_guard<std::mutex> lk(g_mu);
  m->id = g_next_id++;
  g_by_id[m->id] = m;
  g_by_addr[reinterpret_cast<uintptr_t>(addr)] = m;
  return m;
}

void MappingRef(Mapping* m) { m->refs.fetch_add(1); }

void MappingUnref(Mapping* m) {
  {
    std::lock_guard<std::mutex> lk(g_mu);
    if (m->refs.fetch_sub(1) != 1) return;
    g_by_id.erase(m->id);
    g_by_addr.erase(reinterpret_cast<uintptr_t>(m->addr));
  }
  if (m->len) munmap(m->addr, m->len);
  delete m;
}

Mapping* MappingFindById(uint32_t id) {
  std::lock_guard<std::mutex> lk(g_mu);
  auto it = g_by_id.find(id);
  if (it == g_by_id.end()) return nullptr;
  it->second->refs.fetch_add(1);
  return it->second;
}

Mapping* MappingFindByAddr(const void* p) {
  std::lock_guard<std::mutex> lk(g_mu);
  auto it = g_by_addr.find(reinterpret_cast<uintptr_t>(p));
  if (it == g_by_addr.end()) return nullptr;
  it->second->refs.fetch_add(1);
  return it->second;
}

void MappingRetire(Mapping* m) {
  bool expected = false;
  if (!m->retired.compare_exchange_strong(expected, true)) return;
  // Keep the address range reserved (so nothing else lands there while stale
  // views exist) but drop the pages and make every access trap.
  if (m->len) mmap(m->addr, m->len, PROT_NONE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
}

Napi::ArrayBuffer MappingArrayBuffer(Napi::Env env, Mapping* m) {
  MappingRef(m);
  return Napi::ArrayBuffer::New(env, m->addr, m->len, [](Napi::Env, void*, Mapping* mm) { MappingUnref(mm); }, m);
}

const char* ErrnoName(int err) {
  switch (err) {
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EIO: return "EIO";
    case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EFAULT: return "EFAULT";
    case EBUSY: return "EBUSY";
    case EEXIST: return "EEXIST";
    case ENODEV: return "ENODEV";
    case EINVAL: return "EINVAL";
    case ENOTTY: return "ENOTTY";
    case ENOSPC: return "ENOSPC";
    case ENOSYS: return "ENOSYS";
    case ENOTSUP: return "ENOTSUP";
    case ETIMEDOUT: return "ETIMEDOUT";
    case ESHUTDOWN: return "ESHUTDOWN";
    case ENXIO: return "ENXIO";
    case ESRCH: return "ESRCH";
    case ECONNRESET: return "ECONNRESET";
    case EPIPE: return "EPIPE";
    case ECONNABORTED: return "ECONNABORTED";
    case ENOTCONN: return "ENOTCONN";
    case EHOSTUNREACH: return "EHOSTUNREACH";
    case ENETUNREACH: return "ENETUNREACH";
    default: return "EIO";
  }
}

int StartDetachedThread(void* (*fn)(void*), void* arg, size_t stackBytes) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, stackBytes);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_t t;
  int err = pthread_create(&t, &attr, fn, arg);
  pthread_attr_destroy(&attr);
  return err;
}

Napi::Error ErrnoError(Napi::Env env, int err, const std::string& what) {
  auto e = Napi::Error::New(env, what + ": " + strerror(err));
  e.Set("code", Napi::String::New(env, ErrnoName(err)));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, what));
  return e;
}

void ThrowErrno(Napi::Env env, int err, const std::string& what) {
  throw ErrnoError(env, err, what);
}

}  // namespace qm

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  qm::GuardInstall();
  qm::MmapInit(env, exports);
  qm::CopyPoolInit(env, exports);
  qm::UffdInit(env, exports);
  qm::NbdInit(env, exports);
  qm::FallocateInit(env, exports);
  qm::NbdServeInit(env, exports);
  qm::GcmPagesInit(env, exports);
  qm::SpliceInit(env, exports);
  exports.Set("abiVersion", Napi::Number::New(env, 1));
  return exports;
}

NODE_API_MODULE(quicmap_native, Init)
