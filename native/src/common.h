// Shared pieces of the quicmap native addon: the registry of mappings (so a
// mapping can be viewed from several threads and is unmapped only when the
// last view is gone), the fault guard for copies done on native threads, and
// small error helpers.
#pragma once
#include <napi.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

namespace qm {

// One mmap'd range. `refs` counts owners: the creating object, each
// ArrayBuffer view (in any thread's isolate) and each in-flight native copy.
// At zero the range is unmapped. `Retire` replaces the pages with an
// inaccessible reservation (memory is freed at once, stale views trap
// deterministically instead of reading someone else's memory).
struct Mapping {
  uint32_t id;
  uint8_t* addr;
  size_t len;
  std::atomic<int> refs;
  std::atomic<bool> retired;
};

Mapping* MappingNew(uint8_t* addr, size_t len);  // refs = 1
void MappingRef(Mapping* m);
void MappingUnref(Mapping* m);
Mapping* MappingFindById(uint32_t id);      // returns with a new ref, or null
Mapping* MappingFindByAddr(const void* p);  // returns with a new ref, or null
void MappingRetire(Mapping* m);
// An ArrayBuffer over the whole mapping that holds a ref until collected.
Napi::ArrayBuffer MappingArrayBuffer(Napi::Env env, Mapping* m);

// Start fn(arg) on a detached thread with a stack of `stackBytes` (the
// per-connection loops: nbd_serve.cc, splice.cc). Returns 0 or the error
// number of pthread_create; on an error fn never runs.
int StartDetachedThread(void* (*fn)(void*), void* arg, size_t stackBytes);

// Throw a JS Error carrying `code` (errno name) and `errno`.
[[noreturn]] void ThrowErrno(Napi::Env env, int err, const std::string& what);
Napi::Error ErrnoError(Napi::Env env, int err, const std::string& what);
const char* ErrnoName(int err);

// Fault guard: a memcpy that turns SIGBUS/SIGSEGV on the guarded thread into
// an error code instead of killing the process. Returns 0, or EIO (SIGBUS:
// poisoned or failed page) / EFAULT (SIGSEGV: retired or unmapped range).
void GuardInstall();
int GuardedCopy(void* dst, const void* src, size_t len);

// A small pool of native threads for copies into and out of mappings whose
// pages may fault (a LazyRegion served by the JS thread must never be
// touched by that thread, and libuv's pool may be needed by the source).
void CopyPoolInit(Napi::Env env, Napi::Object exports);

void MmapInit(Napi::Env env, Napi::Object exports);
void UffdInit(Napi::Env env, Napi::Object exports);
void NbdInit(Napi::Env env, Napi::Object exports);
void FallocateInit(Napi::Env env, Napi::Object exports);
void NbdServeInit(Napi::Env env, Napi::Object exports);
void GcmPagesInit(Napi::Env env, Napi::Object exports);
void SpliceInit(Napi::Env env, Napi::Object exports);

inline uint64_t ToU64(const Napi::Value& v) {
  if (v.IsBigInt()) {
    bool lossless;
    return v.As<Napi::BigInt>().Uint64Value(&lossless);
  }
  return static_cast<uint64_t>(v.As<Napi::Number>().Int64Value());
}

}  // namespace qm
