// mmap / munmap / msync / madvise / memfd_create over ArrayBuffers.
#include "common.h"

#include <sys/mman.h>
#include <unistd.h>

namespace qm {

namespace {

Mapping* FromBuffer(const Napi::CallbackInfo& info, size_t i) {
  Napi::Env env = info.Env();
  if (!info[i].IsArrayBuffer()) throw Napi::TypeError::New(env, "expected the ArrayBuffer returned by mmap()");
  auto ab = info[i].As<Napi::ArrayBuffer>();
  Mapping* m = MappingFindByAddr(ab.Data());
  if (!m || ab.ByteLength() != m->len) {
    if (m) MappingUnref(m);
    throw Napi::TypeError::New(env, "not a mapping created by this addon (or already unmapped)");
  }
  return m;
}

// mmap(fd, length, prot, flags, offset) -> ArrayBuffer. fd < 0 maps anonymous memory.
Napi::Value Mmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  size_t len = static_cast<size_t>(ToU64(info[1]));
  int prot = info[2].As<Napi::Number>().Int32Value();
  int flags = info[3].As<Napi::Number>().Int32Value();
  off_t off = info.Length() > 4 ? static_cast<off_t>(ToU64(info[4])) : 0;
  if (len == 0) throw Napi::RangeError::New(env, "mmap: length must be > 0");
  if (fd < 0) flags |= MAP_ANONYMOUS;
  void* p = mmap(nullptr, len, prot, flags, fd < 0 ? -1 : fd, off);
  if (p == MAP_FAILED) ThrowErrno(env, errno, "mmap");
  Mapping* m = MappingNew(static_cast<uint8_t*>(p), len);
  auto ab = MappingArrayBuffer(env, m);
  MappingUnref(m);  // the ArrayBuffer holds the only owner ref
  return ab;
}

// munmap(ab): the pages go away now; the ArrayBuffer (and every view on it in
// this thread) is detached; views in other threads trap if used.
Napi::Value Munmap(const Napi::CallbackInfo& info) {
  Mapping* m = FromBuffer(info, 0);
  MappingRetire(m);
  auto ab = info[0].As<Napi::ArrayBuffer>();
  if (!ab.IsDetached()) ab.Detach();
  MappingUnref(m);
  return info.Env().Undefined();
}

Napi::Value Msync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Mapping* m = FromBuffer(info, 0);
  size_t off = static_cast<size_t>(ToU64(info[1]));
  size_t len = static_cast<size_t>(ToU64(info[2]));
  int flags = info[3].As<Napi::Number>().Int32Value();
  long page = sysconf(_SC_PAGESIZE);
  size_t start = off - off % page;
  int rc = 0, err = 0;
  if (off + len > m->len) err = EINVAL;
  else if (msync(m->addr + start, len + (off - start), flags) != 0) rc = -1, err = errno;
  MappingUnref(m);
  if (err || rc) ThrowErrno(env, err, "msync");
  return env.Undefined();
}

Napi::Value Madvise(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Mapping* m = FromBuffer(info, 0);
  size_t off = static_cast<size_t>(ToU64(info[1]));
  size_t len = static_cast<size_t>(ToU64(info[2]));
  int advice = info[3].As<Napi::Number>().Int32Value();
  int err = 0;
  if (off + len > m->len) err = EINVAL;
  else if (madvise(m->addr + off, len, advice) != 0) err = errno;
  MappingUnref(m);
  if (err) ThrowErrno(env, err, "madvise");
  return env.Undefined();
}

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = info[0].As<Napi::String>().Utf8Value();
  size_t size = info.Length() > 1 ? static_cast<size_t>(ToU64(info[1])) : 0;
  int fd = memfd_create(name.c_str(), MFD_CLOEXEC);
  if (fd < 0) ThrowErrno(env, errno, "memfd_create");
  if (size && ftruncate(fd, static_cast<off_t>(size)) != 0) {
    int e = errno;
    close(fd);
    ThrowErrno(env, e, "ftruncate");
  }
  return Napi::Number::New(env, fd);
}

// mappingId(ab) -> id usable with view(id) from any thread of this process.
Napi::Value MappingId(const Napi::CallbackInfo& info) {
  Mapping* m = FromBuffer(info, 0);
  uint32_t id = m->id;
  MappingUnref(m);
  return Napi::Number::New(info.Env(), id);
}

// view(id) -> a new ArrayBuffer over an existing mapping (e.g. in a worker).
// It keeps the address range reserved until collected.
Napi::Value View(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Mapping* m = MappingFindById(info[0].As<Napi::Number>().Uint32Value());
  if (!m) throw Napi::Error::New(env, "view: no such mapping (closed?)");
  if (m->retired.load()) {
    MappingUnref(m);
    throw Napi::Error::New(env, "view: mapping is closed");
  }
  auto ab = MappingArrayBuffer(env, m);
  MappingUnref(m);
  return ab;
}


}  // namespace

void MmapInit(Napi::Env env, Napi::Object exports) {
  exports.Set("mmap", Napi::Function::New(env, Mmap, "mmap"));
  exports.Set("munmap", Napi::Function::New(env, Munmap, "munmap"));
  exports.Set("msync", Napi::Function::New(env, Msync, "msync"));
  exports.Set("madvise", Napi::Function::New(env, Madvise, "madvise"));
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate, "memfdCreate"));
  exports.Set("mappingId", Napi::Function::New(env, MappingId, "mappingId"));
  exports.Set("view", Napi::Function::New(env, View, "view"));
  auto c = Napi::Object::New(env);
  c.Set("PROT_NONE", PROT_NONE);
  c.Set("PROT_READ", PROT_READ);
  c.Set("PROT_WRITE", PROT_WRITE);
  c.Set("MAP_SHARED", MAP_SHARED);
  c.Set("MAP_PRIVATE", MAP_PRIVATE);
  c.Set("MAP_POPULATE", MAP_POPULATE);
  c.Set("MAP_NORESERVE", MAP_NORESERVE);
  c.Set("MS_ASYNC", MS_ASYNC);
  c.Set("MS_SYNC", MS_SYNC);
  c.Set("MS_INVALIDATE", MS_INVALIDATE);
  c.Set("MADV_NORMAL", MADV_NORMAL);
  c.Set("MADV_RANDOM", MADV_RANDOM);
  c.Set("MADV_SEQUENTIAL", MADV_SEQUENTIAL);
  c.Set("MADV_WILLNEED", MADV_WILLNEED);
  c.Set("MADV_DONTNEED", MADV_DONTNEED);
  c.Set("MADV_REMOVE", MADV_REMOVE);
  c.Set("MADV_DONTFORK", MADV_DONTFORK);
  c.Set("MADV_HUGEPAGE", MADV_HUGEPAGE);
  c.Set("MADV_NOHUGEPAGE", MADV_NOHUGEPAGE);
  c.Set("PAGE_SIZE", static_cast<double>(sysconf(_SC_PAGESIZE)));
  exports.Set("constants", c);
}

}  // namespace qm
